"""Chapter 13 - what the checks need to run and judge a learner's code (public)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core import compare_float, compare_tensors


class Weights(nn.Module):
    """The attribute names the learner's MambaWeights has (and MambaMixer's), loaded from MambaMixer."""

    def __init__(self, mixer, state_dict=None):
        super().__init__()
        for name in ("hidden_size", "intermediate_size", "time_step_rank"):
            setattr(self, name, getattr(mixer, name))
        self.ssm_state_size, self.conv_kernel_size = mixer.ssm_state_size, mixer.conv_kernel_size
        D, K, H = mixer.intermediate_size, mixer.conv_kernel_size, mixer.hidden_size
        self.in_proj = nn.Linear(H, 2 * D, bias=False)
        self.conv1d = nn.Conv1d(D, D, K, groups=D, padding=K - 1, bias=True)
        self.x_proj = nn.Linear(D, self.time_step_rank + 2 * self.ssm_state_size, bias=False)
        self.dt_proj = nn.Linear(self.time_step_rank, D, bias=True)
        self.A_log = nn.Parameter(torch.zeros(D, self.ssm_state_size))
        self.D = nn.Parameter(torch.zeros(D))
        self.out_proj = nn.Linear(D, H, bias=False)
        self.load_state_dict(mixer.state_dict() if state_dict is None else state_dict)


class Shape:
    """The sizes of a mixer, read off its state dict (the weights travel to a sandbox as plain tensors)."""

    def __init__(self, sd):
        self.intermediate_size, self.hidden_size = sd["in_proj.weight"].shape[0] // 2, sd["in_proj.weight"].shape[1]
        self.ssm_state_size, self.conv_kernel_size = sd["A_log"].shape[1], sd["conv1d.weight"].shape[2]
        self.time_step_rank = sd["dt_proj.weight"].shape[1]


def weights(sd) -> Weights:
    """A MambaWeights-like module (the learner's attribute names) holding the state dict ``sd``."""
    return Weights(Shape(sd), sd)


def run_mixer(fn, sd, x):
    with torch.no_grad():
        return fn(weights(sd), x)


def run_step(fn, sd, xs, conv, ssm):
    w = weights(sd)
    shapes = (tuple(conv.shape), tuple(ssm.shape))
    ys = []
    with torch.no_grad():
        for t in range(xs.shape[1]):
            out = fn(w, xs[:, t], conv, ssm)
            if not isinstance(out, (tuple, list)) or len(out) != 3:
                return {"error": f"return (y_t, conv_state, ssm_state), got {type(out).__name__}"}
            y, conv, ssm = out
            if (tuple(conv.shape), tuple(ssm.shape)) != shapes:
                return {"error": f"after step {t + 1} the states have shapes {tuple(conv.shape)} and "
                                 f"{tuple(ssm.shape)}; they must keep {shapes[0]} and {shapes[1]} (constant memory)"}
            ys.append(y)
    return {"y": torch.stack(ys, 1), "conv_state": conv, "ssm_state": ssm}


def compare_step(expected, got):
    if not isinstance(got, dict):
        return f"could not read your result: {got!r}"
    if "error" in got:
        return got["error"]
    for key in ("y", "conv_state", "ssm_state"):
        problem = compare_tensors(expected[key], got[key], atol=2e-5, rtol=1e-4)
        if problem:
            return f"{key} after the steps: {problem}"
    return None


def compare_yarn(expected, got):
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"return a pair (inv_freq, attention_factor), got {type(got).__name__}"
    problem = compare_tensors(expected[0], got[0], atol=1e-6, rtol=1e-5)
    if problem:
        return f"inv_freq: {problem}"
    problem = compare_float(float(expected[1]), got[1], atol=1e-6, rtol=1e-6)
    return None if problem is None else f"attention_factor: {problem}"


def compare_cos_sin(expected, got):
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"return a pair (cos, sin), got {type(got).__name__}"
    for label, e, g in (("cos", expected[0], got[0]), ("sin", expected[1], got[1])):
        # Angles reach thousands of radians: float32 rounding of the angle alone moves cos by ~1e-4.
        problem = compare_tensors(e, g, atol=1e-3, rtol=1e-3)
        if problem:
            return f"{label}: {problem}"
    return None


def compare_named_pair(expected, got, names=("first", "second"), atol=1e-5, rtol=1e-4):
    """A pair of tensors, each close to the reference, named in the feedback."""
    n1, n2 = names
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"return a pair ({n1}, {n2}), got {type(got).__name__}"
    for label, e, g in ((n1, expected[0], got[0]), (n2, expected[1], got[1])):
        problem = compare_tensors(e, g, atol=atol, rtol=rtol)
        if problem:
            return f"{label}: {problem}"
    return None
