"""Chapter 12 - what the checks need to run and judge a learner's code (public)."""
from __future__ import annotations

import torch

from ..core import compare_tensors


def compare_scalar(expected, got, atol=1e-5, rtol=1e-5):
    """A loss: a 0-dim tensor, or a plain Python number, close to the reference."""
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        got = torch.tensor(float(got), dtype=torch.float64)
    return compare_tensors(torch.as_tensor(expected), got, atol=atol, rtol=rtol)


def compare_routing(expected, got, atol=1e-6, rtol=1e-5, sort=False):
    """A router's (weights, index): the same experts per token, then the same weights."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"return a pair (weights, index), got {type(got).__name__}"
    ew, ei = expected
    gw, gi = got
    if not isinstance(gi, torch.Tensor) or not isinstance(gw, torch.Tensor):
        return "weights and index must both be tensors"
    if tuple(gi.shape) != tuple(ei.shape):
        return f"index has shape {tuple(gi.shape)}, expected {tuple(ei.shape)} (one row per token, k experts)"
    if gi.dtype.is_floating_point:
        return "index must be an integer tensor (the expert numbers)"
    if sort:  # the order within a row is free: compare as sets
        ei, perm_e = ei.sort(dim=-1)
        ew = ew.gather(-1, perm_e)
        gi, perm_g = gi.long().sort(dim=-1)
        gw = gw.gather(-1, perm_g) if gw.shape == perm_g.shape else gw
    if not torch.equal(gi.long(), ei.long()):
        bad = int((gi.long() != ei.long()).any(-1).nonzero()[0])
        return f"token {bad} chose experts {gi[bad].tolist()}, expected {ei[bad].tolist()}"
    problem = compare_tensors(ew, gw, atol=atol, rtol=rtol)
    return None if problem is None else f"the right experts, but the weights differ: {problem}"
