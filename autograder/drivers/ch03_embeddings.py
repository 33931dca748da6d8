"""Chapter 3 - what the checks need to run and judge a learner's code (public).

A module exercise receives its weights as a state dict: the driver builds the learner's
module, copies the weights in by name (``load_by_name``, which names any attribute or
shape that differs from the docstring) and runs it. Chapter 4 loads its modules the same
way.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class ContractError(Exception):
    """The learner's module does not have the attributes its docstring names."""


def load_by_name(module, state: dict[str, torch.Tensor]):
    """Copy ``state`` into ``module``'s parameters by name, after checking names and shapes."""
    if not isinstance(module, nn.Module):
        raise ContractError(f"expected an nn.Module instance, got {type(module).__name__}: subclass nn.Module "
                            "and call super().__init__() first")
    params = dict(module.named_parameters())
    for name, value in state.items():
        if name not in params:
            have = ", ".join(params) or "none"
            raise ContractError(f"your module has no parameter named {name!r} (it has: {have}); name the "
                                "sub-modules as the docstring says")
        if tuple(params[name].shape) != tuple(value.shape):
            raise ContractError(f"parameter {name!r} has shape {tuple(params[name].shape)}, expected "
                                f"{tuple(value.shape)}")
    extra = [n for n in params if n not in state]
    if extra:
        raise ContractError(f"your module has parameters the reference does not: {', '.join(extra)}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    return module


# -- embed_onehot -------------------------------------------------------------------------
def grad_run(fn, ids, weight, upstream):
    """Backpropagate sum(out * upstream) through the submission; return d/d weight."""
    w = weight.clone().requires_grad_(True)
    out = fn(ids, w)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise RuntimeError("no gradient reaches `weight` through your result: keep the computation in torch "
                           "(no .detach(), no numpy, no torch.no_grad())")
    (out * upstream).sum().backward()
    if w.grad is None:
        raise RuntimeError("no gradient reached `weight`")
    return w.grad


# -- TokenAndPositionEmbedding ------------------------------------------------------------
def tpe_run(cls, vocab_size, n_positions, d_model, tok, pos, ids):
    """Build the learner's module, load the two tables by name, embed ``ids``."""
    module = cls(vocab_size, n_positions, d_model)
    load_by_name(module, {"tok.weight": tok, "pos.weight": pos})
    module.eval()
    with torch.no_grad():
        return module(ids)
