"""Chapter 11 - what the checks need to run and judge a learner's code (public)."""
from __future__ import annotations

import math

import numpy as np

from ..core import compare_float


def gpt_config(V, T, L, H, d):
    from solutions.ch06_gpt import GPTConfig  # the model being measured (chapter 6), not the answer

    return GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=d)


def with_config(fn, spec, *args, **kwargs):
    """Call ``fn`` with a GPTConfig built from ``spec`` = (V, T, L, H, d): the cases carry plain
    numbers (the trusted grader sends inputs as data, and a NamedTuple arrives as a tuple)."""
    return fn(gpt_config(*spec), *args, **kwargs)


def compare_int(expected, got):
    if isinstance(got, bool) or not isinstance(got, (int, np.integer, float)) or isinstance(got, float) and not \
            float(got).is_integer():
        return f"expected a whole number (int), got {type(got).__name__}: {got!r}"
    if int(got) != int(expected):
        return f"expected {int(expected):,}, got {int(got):,} (difference {int(got) - int(expected):+,})"
    return None


# -- fit_power_law ------------------------------------------------------------------------
def law(N, E, A, alpha):
    return E + A * N ** -alpha


def sse(params, N, L):
    E, A, alpha = (float(v) for v in params)
    with np.errstate(all="ignore"):
        return float(((L - law(N, E, A, alpha)) ** 2).sum())


def _in_bounds(p) -> str | None:
    E, A, alpha = p
    if not (E >= -1e-9):
        return f"E = {E:.4g} is negative: an irreducible loss below zero is impossible (a cross-entropy is >= 0)"
    if not (A >= 0):
        return f"A = {A:.4g} is negative: the loss would grow with N"
    if not (-1e-9 <= alpha <= 3 + 1e-9):
        return (f"alpha = {alpha:.4g} is outside [0, 3]: the law is written A / N**alpha with alpha > 0; an "
                "unbounded exponent drifts to where the data cannot pin it")
    return None


def compare_residual(expected, got, N, L):
    """Accept any (E, A, alpha) inside the bounds whose residual is at most curve_fit's.

    ``expected`` is ``{"curve_fit": (E, A, alpha)}`` for the answer the case expects; when it
    is a plain fit instead (a reproduced mistake, while the feedback looks for a name), the
    two fits must agree in their residual and their predictions.
    """
    tol = 1e-9 * len(L) * float(np.mean(L)) ** 2
    try:
        got = tuple(float(v) for v in got)
    except (TypeError, ValueError):
        return f"expected a tuple of three floats (E, A, alpha), got {type(got).__name__}: {got!r}"
    if len(got) != 3:
        return f"expected three numbers (E, A, alpha), got {len(got)}"
    if any(math.isnan(v) for v in got):
        return f"your fit contains NaN: {got}"
    reference = isinstance(expected, dict)
    fit = tuple(float(v) for v in (expected["curve_fit"] if reference else expected))
    s_got, s_exp = sse(got, N, L), sse(fit, N, L)
    if reference:
        problem = _in_bounds(got)
        if problem:
            return problem
        if s_got <= s_exp * (1 + 1e-3) + tol:
            return None
        return (f"your fit leaves a sum of squared residuals of {s_got:.4g}; curve_fit reaches {s_exp:.4g} on the "
                f"same data (E={fit[0]:.4g}, A={fit[1]:.4g}, alpha={fit[2]:.4g}); yours is "
                f"E={got[0]:.4g}, A={got[1]:.4g}, alpha={got[2]:.4g}")
    with np.errstate(all="ignore"):
        same_curve = np.allclose(law(N, *got), law(N, *fit), rtol=1e-3, atol=1e-6)
    if same_curve and abs(s_got - s_exp) <= 1e-2 * s_exp + tol:
        return None
    return "a different fit"


# -- pairs of numbers -----------------------------------------------------------------------
def compare_pair(expected, got, rtol=1e-6, atol=1e-9, names=("first value", "second value")):
    try:
        got = tuple(got)
    except TypeError:
        return f"expected a pair of numbers, got {type(got).__name__}: {got!r}"
    if len(got) != 2:
        return f"expected a pair of numbers, got {len(got)} values"
    for name, e, g in zip(names, expected, got):
        try:
            gf = float(g)
        except (TypeError, ValueError):
            return f"{name}: expected a number, got {type(g).__name__}"
        problem = compare_float(float(e), gf, atol=atol, rtol=rtol)
        if problem:
            return f"{name}: {problem}"
    return None


def compare_optimal(expected, got):
    try:
        got = tuple(got)
    except TypeError:
        return f"expected a pair (N_opt, D_opt), got {type(got).__name__}: {got!r}"
    if len(got) != 2:
        return f"expected a pair (N_opt, D_opt), got {len(got)} values"
    for name, e, g in zip(("N_opt", "D_opt"), expected, got):
        e = np.asarray(e, dtype=np.float64)
        try:
            g = np.asarray(g, dtype=np.float64)
        except (TypeError, ValueError):
            return f"{name}: expected numbers, got {type(g).__name__}"
        if g.shape != e.shape:
            return f"{name}: expected shape {e.shape} (the shape of C), got {g.shape}"
        bad = ~np.isclose(g, e, rtol=2e-5, atol=0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            ev, gv = float(e.ravel()[i]), float(g.ravel()[i])
            return f"{name}: expected {ev:.6g}, got {gv:.6g} (ratio {gv / ev:.4g})" + (
                f" at C index {i}" if e.ndim else "")
    return None


# -- bootstrap_interval -----------------------------------------------------------------------
def loglog_slope(x, y):
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def mean_ratio(x, y):
    return float(np.mean(y) / np.mean(x))


STATISTICS = {"slope": loglog_slope, "ratio": mean_ratio}


def with_statistic(fn, x, y, which, **kwargs):
    """Call ``fn(x, y, statistic, ...)`` with the statistic named ``which``: the cases carry its
    name, not the function (the trusted grader sends inputs as data)."""
    return fn(x, y, STATISTICS[which], **kwargs)
