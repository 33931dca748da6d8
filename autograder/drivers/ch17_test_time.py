"""Chapter 17 - what the checks need to run and judge a learner's code (public).

Most exercises of this chapter are small functions of strings and numbers: a case calls
the learner's function on a list of inputs (``each_call``) and ``compare_calls`` names the
first input whose answer is wrong. ``replay_run`` drives the replay mixer many times with
seeded generators and summarises what it drew, so that randomness can be judged.
"""
from __future__ import annotations

import math

import torch


# --------------------------------------------------------------------------------------
# Many calls of one function
# --------------------------------------------------------------------------------------
NAN = "<nan>"   # a NaN answer, made comparable: NaN != NaN, but two answers that are NaN agree


def each_call(fn, calls):
    """``[fn(*args) for args in calls]``: one case checks a whole list of inputs. A float
    NaN answer is recorded as ``NAN``."""
    out = []
    for args in calls:
        value = fn(*args)
        if isinstance(value, float) and math.isnan(value):
            value = NAN
        out.append(value)
    return out


def _show(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _number(x):
    """x as a Python number (a 0-d tensor or numpy scalar too); None when it is not one."""
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.item() if x.numel() == 1 and not x.dtype == torch.bool else None
    if hasattr(x, "item") and not isinstance(x, (list, tuple, dict, str)):
        try:
            x = x.item()
        except Exception:
            return None
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _same(e, g, rtol: float, atol: float) -> bool:
    if e is None:
        return g is None
    if isinstance(e, str):
        return isinstance(g, str) and g == e
    if isinstance(e, int):
        n = _number(g)
        return isinstance(n, int) and n == e
    n = _number(g)
    if n is None or math.isnan(n):
        return False
    if math.isinf(e) or math.isinf(n):
        return n == e
    return abs(n - e) <= atol + rtol * abs(e)


def compare_calls(expected, got, calls, name: str = "your function", rtol: float = 1e-9,
                  atol: float = 1e-12):
    """None when every answer matches; else the first call whose answer differs.

    Strings and ints must be equal (an int answer must be an int, not a float or a bool);
    None must be None; floats agree within ``atol + rtol * |expected|``."""
    if not isinstance(got, list) or len(got) != len(expected):
        return f"could not collect your answers: {_show(got)}"
    for args, e, g in zip(calls, expected, got):
        if not _same(e, g, rtol, atol):
            shown = ", ".join(_show(a) for a in args)
            if g == NAN:
                return f"{name}({shown}) returned nan, expected {_show(e)}"
            kind = "" if e is None or type(g) is type(e) else f" (a {type(g).__name__})"
            return f"{name}({shown}) returned {_show(g)}{kind}, expected {_show(e)}"
    return None


# --------------------------------------------------------------------------------------
# The replay mixer: randomness judged over many draws
# --------------------------------------------------------------------------------------
def replay_run(fn, new, old, replay_fraction, draws: int = 200):
    """Call ``fn(new, old, replay_fraction, generator)`` with generators seeded 0..draws-1
    and summarise: the shape of the result, whether every new row is there exactly once,
    whether every other row comes from ``old``, whether an old row was ever drawn twice in
    one call, whether the same seed gives the same rows, and how often each old row was
    drawn (a fraction of the calls, float64 (M,))."""
    new_keys = [tuple(r) for r in new.tolist()]
    old_index = {tuple(r): j for j, r in enumerate(old.tolist())}
    freq = torch.zeros(len(old), dtype=torch.float64)
    summary = {"shape": None, "n_new": len(new), "new_once": True, "from_old": True,
               "repeats": False, "reproducible": True}
    for seed in range(draws):
        out = fn(new.clone(), old.clone(), replay_fraction, torch.Generator().manual_seed(seed))
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"return a tensor of rows, not {type(out).__name__}")
        if seed == 0:
            again = fn(new.clone(), old.clone(), replay_fraction, torch.Generator().manual_seed(0))
            summary["reproducible"] = isinstance(again, torch.Tensor) and again.shape == out.shape and bool(
                torch.equal(torch.sort(again.long(), dim=0).values, torch.sort(out.long(), dim=0).values))
            summary["shape"] = list(out.shape)
        elif list(out.shape) != summary["shape"]:
            summary["shape"] = "varies"
        rows = [tuple(r) for r in out.long().tolist()]
        counts = {}
        for r in rows:
            counts[r] = counts.get(r, 0) + 1
        if any(counts.get(k, 0) != 1 for k in new_keys):
            summary["new_once"] = False
        for r, c in counts.items():
            if r in old_index:
                freq[old_index[r]] += 1
                if c > 1:
                    summary["repeats"] = True
            elif r not in new_keys:
                summary["from_old"] = False
    summary["freq"] = freq / draws
    return summary


def compare_replay(expected, got, tolerance: float = 0.15):
    """The summary of ``replay_run`` against the one a correct mixer gives."""
    if not isinstance(got, dict) or "shape" not in got:
        return f"could not run your mixer: {_show(got)}"
    if got["shape"] != expected["shape"]:
        if got["shape"] == "varies":
            return "the number of rows you return changes from call to call: it is fixed by N and f"
        n_new = expected["n_new"]
        R = expected["shape"][0] - n_new
        return (f"expected {expected['shape'][0]} rows ({n_new} new + {R} replayed, so that the replayed "
                f"rows are the fraction f of the result), got shape {got['shape']}")
    messages = {
        "new_once": "not every new row is in your result exactly once: keep all the new rows, each once",
        "from_old": "your result has rows that are neither new rows nor rows of `old`",
        "repeats": "an old row appears twice in one result: draw the replayed rows WITHOUT replacement",
        "reproducible": ("two calls with generators seeded alike gave different rows: draw with the "
                         "generator you are given (generator=generator)"),
    }
    for flag, message in messages.items():
        if got.get(flag) != expected.get(flag):
            return message
    diff = (got["freq"] - expected["freq"]).abs()
    if float(diff.max()) > tolerance:
        j = int(diff.argmax())
        return (f"the replayed rows are not drawn uniformly: over 200 calls old row {j} was drawn in "
                f"{float(got['freq'][j]):.0%} of them, expected about {float(expected['freq'][j]):.0%}")
    return None
