"""Chapter 5 - what the checks need to run and judge a learner's code (public).

Every exercise of the chapter is a module. ``module_run`` builds the learner's class with
the case's constructor arguments, loads the reference weights into it BY NAME (the names
are part of the contract, as in a real checkpoint), casts it to the input's dtype and runs
it; a case binds the constructor arguments with ``functools.partial``. Chapter 6 runs its
checks on one thread too (``one_thread``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core import one_thread


class ContractError(Exception):
    """The learner's module does not have the parameters the docstring names."""


def load_by_name(module, state: dict[str, torch.Tensor], dtype=torch.float64):
    """Cast ``module`` to ``dtype`` and copy ``state`` into its parameters, by name."""
    if not isinstance(module, nn.Module):
        raise ContractError(f"expected an nn.Module instance, got {type(module).__name__}: subclass nn.Module and "
                            "call super().__init__() first")
    module.to(dtype)
    params = dict(module.named_parameters(remove_duplicate=False))
    for name, value in state.items():
        if name not in params:
            have = ", ".join(params) or "none"
            raise ContractError(f"your module has no parameter named {name!r} (it has: {have}); "
                                "name the parameters and sub-modules as the docstring says")
        if tuple(params[name].shape) != tuple(value.shape):
            raise ContractError(f"parameter {name!r} has shape {tuple(params[name].shape)}, expected "
                                f"{tuple(value.shape)}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
    return module


@one_thread
def module_run(cls, state, x, init_args=(), init_kwargs=None):
    """Build ``cls(*init_args, **init_kwargs)``, load ``state`` by name, cast to x's dtype,
    call it on ``x`` (no gradients)."""
    module = cls(*init_args, **(init_kwargs or {}))
    load_by_name(module, state, x.dtype)
    module.eval()
    with torch.no_grad():
        return module(x)
