"""Correct answers to chapter 11, in other styles than the reference."""
import math
import warnings

import numpy as np
import torch
from scipy.optimize import curve_fit, minimize, minimize_scalar

from . import right


# -- param_count ----------------------------------------------------------------------------
@right("ch11.param_count", style="build the model on the meta device and count")
def param_count_meta(config, non_embedding=False):
    from solutions.ch06_gpt import GPT

    with torch.device("meta"):
        model = GPT(config)
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        n -= model.embed.tok.weight.numel() + model.embed.pos.weight.numel()
    return n


@right("ch11.param_count", style="a table of shapes, summed")
def param_count_shapes(config, non_embedding=False):
    d, V, T = config.n_embd, config.vocab_size, config.block_size
    block = [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    shapes = block * config.n_layer + [(d,), (d,)]
    if not non_embedding:
        shapes += [(V, d), (T, d)]
    return sum(math.prod(s) for s in shapes)


# -- flops_per_token ------------------------------------------------------------------------
@right("ch11.flops_per_token", style="forward FLOPs layer by layer, times 3")
def flops_by_layer(config, seq_len):
    d, T = config.n_embd, seq_len
    forward = 0
    for _ in range(config.n_layer):
        forward += 2 * d * 3 * d      # qkv
        forward += 2 * T * d          # q k^T: one row of T scores, d multiply-adds each
        forward += 2 * T * d          # weights @ v
        forward += 2 * d * d          # proj
        forward += 2 * d * 4 * d * 2  # fc and proj of the MLP
    forward += 2 * d * config.vocab_size  # the output layer
    return 3 * forward


@right("ch11.flops_per_token", style="whole-sequence FLOPs divided by the sequence length")
def flops_per_sequence(config, seq_len):
    d, L, V, T = config.n_embd, config.n_layer, config.vocab_size, seq_len
    linear = 2 * T * (12 * L * d * d + V * d)      # every token through every weight
    attention = 2 * 2 * L * T * T * d             # two (T x d) @ (d x T)-sized products per layer
    return (3 * (linear + attention)) // T


# -- fit_power_law --------------------------------------------------------------------------
@right("ch11.fit_power_law", style="curve_fit with bounds and a sensible start")
def fit_curve_fit_bounded(N, L):
    def law(n, E, A, alpha):
        return E + A * n ** -alpha
    best = None
    for alpha0 in (0.1, 0.3, 0.6):
        p0 = [0.5 * L.min(), (L.max() - 0.5 * L.min()) * N.min() ** alpha0, alpha0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, _ = curve_fit(law, N, L, p0=p0, bounds=([0, 0, 0], [np.inf, np.inf, 3]), maxfev=20000)
        sse = ((law(N, *p) - L) ** 2).sum()
        if best is None or sse < best[0]:
            best = (sse, p)
    return tuple(float(v) for v in best[1])


@right("ch11.fit_power_law", style="profile out (E, A) and minimise over alpha with minimize_scalar")
def fit_profile(N, L):
    def best_linear(alpha):
        x = N ** -alpha
        X = np.column_stack([np.ones_like(x), x])
        E, A = np.linalg.lstsq(X, L, rcond=None)[0]
        if E < 0:
            E, A = 0.0, (x @ L) / (x @ x)
        A = max(A, 0.0)
        return ((L - E - A * x) ** 2).sum(), E, A

    grid = np.linspace(0.01, 3, 300)
    a0 = grid[np.argmin([best_linear(a)[0] for a in grid])]
    res = minimize_scalar(lambda a: best_linear(a)[0], bounds=(max(a0 - 0.02, 0), min(a0 + 0.02, 3)),
                          method="bounded", options={"xatol": 1e-10})
    _, E, A = best_linear(res.x)
    return float(E), float(A), float(res.x)


@right("ch11.fit_power_law", style="scipy.optimize.minimize on a log-parametrised (E, A, alpha)")
def fit_log_params(N, L):
    def sse(theta):
        E, A, alpha = np.exp(theta[0]), np.exp(theta[1]), 3 / (1 + np.exp(-theta[2]))
        return ((L - E - A * N ** -alpha) ** 2).sum()
    best = None
    for alpha0 in (0.1, 0.3, 0.6, 1.0):
        E0 = 0.5 * L.min()
        theta0 = [np.log(max(E0, 1e-6)), np.log((L.max() - E0) * N.min() ** alpha0), -np.log(3 / alpha0 - 1)]
        r = minimize(sse, theta0, method="Nelder-Mead", options={"xatol": 1e-12, "fatol": 1e-16, "maxiter": 20000})
        if best is None or r.fun < best.fun:
            best = r
    t = best.x
    return float(np.exp(t[0])), float(np.exp(t[1])), float(3 / (1 + np.exp(-t[2])))


# -- isoflop_minimum ------------------------------------------------------------------------
@right("ch11.isoflop_minimum", style="np.polyfit and np.polyval")
def isoflop_polyfit(N, L):
    coef = np.polyfit(np.log(N), L, 2)
    x = -coef[1] / (2 * coef[0])
    return float(np.exp(x)), float(np.polyval(coef, x))


@right("ch11.isoflop_minimum", style="normal equations by hand, log10 axis")
def isoflop_normal_equations(N, L):
    x = np.log10(N)
    X = np.vander(x, 3)  # columns x^2, x, 1
    a, b, c = np.linalg.solve(X.T @ X, X.T @ L)
    v = -b / (2 * a)
    return 10 ** v, a * v * v + b * v + c


# -- compute_optimal ------------------------------------------------------------------------
@right("ch11.compute_optimal", style="exponents a and b written out")
def optimal_exponents(C, E, A, B, alpha, beta):
    a = beta / (alpha + beta)
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    N = G * (np.asarray(C, dtype=float) / 6) ** a
    D = (1 / G) * (np.asarray(C, dtype=float) / 6) ** (1 - a)
    if np.ndim(C) == 0:
        return float(N), float(D)
    return N, D


@right("ch11.compute_optimal", style="a numerical minimisation per budget, in float64 logs")
def optimal_numeric(C, E, A, B, alpha, beta):
    def one(c):
        f = lambda x: A * np.exp(-alpha * x) + B * np.exp(-beta * (np.log(c / 6) - x))  # noqa: E731
        r = minimize_scalar(f, bounds=(0, np.log(c / 6)), method="bounded", options={"xatol": 1e-12})
        return np.exp(r.x), c / (6 * np.exp(r.x))
    if np.ndim(C) == 0:
        return one(float(C))
    out = np.array([one(c) for c in np.ravel(C)])
    return out[:, 0].reshape(np.shape(C)), out[:, 1].reshape(np.shape(C))


# -- bootstrap_interval ---------------------------------------------------------------------
@right("ch11.bootstrap_interval", style="sorted statistics with linear interpolation by hand")
def bootstrap_by_hand(x, y, statistic, n_boot=1000, level=0.95, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    values = sorted(statistic(x[row], y[row]) for row in idx)

    def quantile(q):
        pos = q * (len(values) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(values) - 1)
        return values[lo] + (pos - lo) * (values[hi] - values[lo])
    return quantile((1 - level) / 2), quantile((1 + level) / 2)


@right("ch11.bootstrap_interval", style="stack the pairs into one array and np.percentile")
def bootstrap_stacked(x, y, statistic, n_boot=1000, level=0.95, seed=0):
    data = np.stack([x, y], axis=1)  # (n, 2): row i is the pair (x_i, y_i)
    rng = np.random.default_rng(seed)
    samples = data[rng.integers(0, len(data), size=(n_boot, len(data)))]  # (n_boot, n, 2)
    values = np.array([statistic(s[:, 0], s[:, 1]) for s in samples])
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)
