"""Chapter 19 - what the checks need to run and judge a learner's code (public).

The language-model exercises receive a model: a case carries it as a GPT-2 config (a
dict) and a state dict, and ``with_model`` builds it (Hugging Face ``GPT2LMHeadModel``,
eager attention, eval mode) and hands the learner a plain ``model(idx) -> logits``
callable. The comparisons accept ints/floats/0-d tensors for numbers and lists or
tensors for vectors.
"""
from __future__ import annotations


import torch

from autograder.core import compare_float, compare_tensors, single_thread


# --------------------------------------------------------------------------------------
# Running: a model from plain data
# --------------------------------------------------------------------------------------
class LogitsModel:
    """What a learner's function receives as ``model``: ``model(idx (B, T) int64) -> logits
    (B, T, V) float32``, without gradients."""

    def __init__(self, hf_model):
        self._model = hf_model

    @torch.no_grad()
    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            raise TypeError("call the model on an int64 tensor of shape (batch, length), e.g. ids[None]")
        return self._model(input_ids=idx.long()).logits


def build_gpt2(config: dict, state: dict):
    """A ``GPT2LMHeadModel`` from a config dict and a state dict, in eval mode."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    model = GPT2LMHeadModel(GPT2Config(**config, attn_implementation="eager"))
    model.load_state_dict(state, strict=False)
    return model.eval()


def with_model(fn, config, state, *args, **kwargs):
    """Run ``fn(model, *args, **kwargs)`` with the model the case describes (one thread)."""
    with single_thread():
        return fn(LogitsModel(build_gpt2(config, state)), *args, **kwargs)


# --------------------------------------------------------------------------------------
# Comparing
# --------------------------------------------------------------------------------------
def _number(x):
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return x.item()
    if hasattr(x, "item") and not isinstance(x, (list, tuple, dict)):  # numpy scalars
        try:
            return x.item()
        except Exception:
            return x
    return x


def compare_number(expected, got, atol: float = 1e-6, rtol: float = 1e-6):
    """A float result: a Python number, a numpy scalar or a one-element tensor."""
    return compare_float(float(expected), _number(got), atol=atol, rtol=rtol)


def compare_fields(expected: dict, got, atol: float = 1e-6, rtol: float = 1e-6, keys=None):
    """A dict of numbers (or of lists of ints) with the keys of ``expected``; ``keys`` limits
    the comparison to some of them (a check group per key)."""
    if not isinstance(got, dict):
        return f"return a dict with keys {sorted(expected)}, got {type(got).__name__}"
    for key in keys or list(expected):
        if key not in got:
            return f"the key {key!r} is missing from your dict (keys: {sorted(map(str, got))})"
        e, g = expected[key], got[key]
        if isinstance(e, list):
            g = g.tolist() if isinstance(g, torch.Tensor) else g
            if not isinstance(g, (list, tuple)) or [_number(v) for v in g] != e:
                return f"{key}: expected {e}, got {g!r}"
            continue
        if isinstance(e, bool):
            if _number(g) is not e and _number(g) != e:
                return f"{key}: expected {e}, got {g!r}"
            continue
        if isinstance(e, int) and not isinstance(_number(g), float):
            if _number(g) != e:
                return f"{key}: expected {e}, got {g!r}"
            continue
        problem = compare_float(float(e), _number(g), atol=atol, rtol=rtol)
        if problem:
            return f"{key}: {problem}"
    return None


def compare_loglik(expected, got, atol: float = 1e-4, rtol: float = 1e-5):
    """``(loglik: float, is_greedy: bool)``."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"return a pair (loglik, is_greedy), got {type(got).__name__}"
    problem = compare_float(float(expected[0]), _number(got[0]), atol=atol, rtol=rtol)
    if problem:
        return f"the log-likelihood: {problem}"
    g = _number(got[1])
    if not isinstance(g, bool) and g not in (0, 1):
        return f"is_greedy must be a bool, got {got[1]!r}"
    if bool(g) != bool(expected[1]):
        return f"is_greedy: expected {bool(expected[1])}, got {bool(g)}"
    return None


def compare_choices(expected: dict, got, atol: float = 1e-4, rtol: float = 1e-5):
    """``{"loglik": Tensor[C], "pred": int, "pred_norm": int}``."""
    if not isinstance(got, dict):
        return f"return a dict with keys loglik, pred, pred_norm; got {type(got).__name__}"
    for key in ("loglik", "pred", "pred_norm"):
        if key not in got:
            return f"the key {key!r} is missing from your dict"
    ll = got["loglik"]
    if isinstance(ll, (list, tuple)):
        ll = torch.tensor([float(_number(v)) for v in ll], dtype=torch.float64)
    problem = compare_tensors(expected["loglik"], ll, atol=atol, rtol=rtol)
    if problem:
        return f"loglik: {problem}"
    for key, what in (("pred", "argmax of the log-likelihoods"),
                      ("pred_norm", "argmax of the log-likelihoods per character of the choice")):
        g = _number(got[key])
        if isinstance(g, bool) or not isinstance(g, int):
            return f"{key} must be an int (the index of a choice), got {got[key]!r}"
        if g != expected[key]:
            return f"{key} ({what}): expected choice {expected[key]}, got {g}"
    return None


def compare_grounding(expected, got, atol: float = 1e-5, rtol: float = 1e-4):
    """``(score: float (S,), index: int64 (S,), supported: bool (S,))``."""
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        return f"return a triple (score, index, supported), got {type(got).__name__}"
    score, index, supported = expected
    problem = compare_tensors(score, got[0], atol=atol, rtol=rtol)
    if problem:
        return f"the best similarity per claim: {problem}"
    gi = got[1]
    if not isinstance(gi, torch.Tensor) or gi.dtype.is_floating_point or tuple(gi.shape) != tuple(index.shape):
        return f"index must be an integer tensor of shape {tuple(index.shape)} (one passage per claim)"
    if not torch.equal(gi.long(), index):
        bad = int((gi.long() != index).nonzero()[0])
        return f"claim {bad}: best passage {index[bad].item()} expected, got {gi[bad].item()}"
    gs = got[2]
    if not isinstance(gs, torch.Tensor) or tuple(gs.shape) != tuple(supported.shape):
        return f"supported must be a bool tensor of shape {tuple(supported.shape)}"
    if not torch.equal(gs.bool(), supported):
        bad = int((gs.bool() != supported).nonzero()[0])
        return (f"claim {bad}: supported should be {bool(supported[bad])} (score {score[bad].item():.4f}); "
                "a claim is supported when its best score is >= the threshold")
    return None

