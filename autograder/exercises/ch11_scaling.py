"""Chapter 11 - Scaling laws.

References, all independent of the course's solutions:
- parameter count: ``sum(p.numel())`` over the parameters of the chapter-6 GPT built from
  the config (on the meta device: no memory, no time), minus its ``nn.Embedding`` tables;
- FLOPs per token: ``torch.utils.flop_counter.FlopCounterMode`` around a forward and a
  backward pass of that GPT (on the meta device);
- the power-law fit: ``scipy.optimize.curve_fit`` (bounded, a few starting points) on the
  same data; graded by the sum of squared residuals, never against the "true" exponent;
- the IsoFLOP minimum: ``numpy.polynomial.Polynomial.fit`` in ln N and the root of its
  derivative;
- the compute-optimal split: ``scipy.optimize.minimize_scalar`` of L(N, C/(6N)) over ln N;
- the bootstrap: ``scipy.stats.bootstrap(..., paired=True, method="percentile")`` with the
  same generator.
"""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch

from ..core import Case, Exercise, Mistake, hidden_seed, register
from ..drivers.ch11_scaling import (STATISTICS as _STATISTICS, compare_int as _compare_int,
                                      compare_optimal as _compare_optimal, compare_pair, compare_residual,
                                      gpt_config as _gpt_config, law as _law, sse as _sse,
                                      with_config as _with_config, with_statistic as _with_statistic)

CH = "ch11"
SOL = "solutions.ch11_scaling"


# The core's in-place check compares tensors, lists and dicts; numpy arrays would always look
# changed, so the cases with arrays switch it off (each call still gets its own copy).


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _meta_gpt(config):
    from solutions.ch06_gpt import GPT

    with torch.device("meta"):
        return GPT(config)


def _config_specs(name: str, hidden: bool, n_hidden: int = 3):
    """(label, (V, T, L, H, d)) configurations: fixed ones, then hidden ones from the secret."""
    specs = [("a 2-layer char model: V=65, T=64, d=32", (65, 64, 2, 4, 32)),
             ("one layer, V=100, T=16, d=16", (100, 16, 1, 2, 16)),
             ("V=50, T=128, 4 layers, d=48", (50, 128, 4, 4, 48))]
    if hidden:
        for k in range(n_hidden):
            r = _rng(hidden_seed(name, k))
            H = int(r.choice([1, 2, 4]))
            d = H * int(r.integers(4, 17))
            specs.append((f"hidden case {k + 1}", (int(r.integers(20, 400)), int(r.integers(8, 129)),
                                                    int(r.integers(1, 5)), H, d)))
    return specs


# ========================================================================================
# param_count
# ========================================================================================
@functools.lru_cache(maxsize=64)
def _param_expected(config, non_embedding):
    model = _meta_gpt(config)
    total = sum(p.numel() for p in model.parameters())  # a shared (tied) parameter once
    if non_embedding:
        total -= sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    return int(total)


def _param_cases(hidden: bool):
    for label, spec in _config_specs("ch11.param_count", hidden):
        cfg = _gpt_config(*spec)
        for non_emb in (False, True):
            yield Case(f"{label}, non_embedding={non_emb}", (tuple(spec),), {"non_embedding": non_emb},
                       run=_with_config, expected=lambda cfg=cfg, ne=non_emb: _param_expected(cfg, ne),
                       compare=_compare_int)


def _exact_params(c, non_embedding=False):
    d, L = c.n_embd, c.n_layer
    n = L * (12 * d * d + 13 * d) + 2 * d
    return n if non_embedding else n + (c.vocab_size + c.block_size) * d


def _p_tied_twice(c, non_embedding=False):
    return _exact_params(c, non_embedding) + c.vocab_size * c.n_embd


def _p_matrices_only(c, non_embedding=False):
    n = 12 * c.n_layer * c.n_embd ** 2
    return n if non_embedding else n + (c.vocab_size + c.block_size) * c.n_embd


def _p_no_positions(c, non_embedding=False):
    return _exact_params(c, non_embedding) - (0 if non_embedding else c.block_size * c.n_embd)


register(Exercise(
    id="ch11.param_count", chapter=CH, title="Parameters of the GPT from its config", points=1,
    name="param_count", signature="param_count(config: GPTConfig, non_embedding: bool = False) -> int",
    reference="sum(p.numel()) over GPT(config) (chapter 6, built on the meta device), minus its nn.Embedding tables",
    solution=f"{SOL}:param_count", cases=_param_cases, difficulty="*",
    mistakes=[
        Mistake("tied-counted-twice", "you counted the output layer as its own vocab_size x d matrix: it is TIED to "
                "the token table (one Parameter), so it adds nothing", _p_tied_twice),
        Mistake("matrices-only", "you counted only the 12 L d^2 weights of the matrices: the biases and the "
                "LayerNorms (13 L d + 2 d) are parameters too (12 L d^2 is Kaplan's approximation, not the count)",
                _p_matrices_only),
        Mistake("no-position-table", "the learned position table (block_size x d) is missing from the total",
                _p_no_positions),
    ]))


# ========================================================================================
# flops_per_token
# ========================================================================================
@functools.lru_cache(maxsize=64)
def _flops_expected(config, seq_len):
    from torch.utils.flop_counter import FlopCounterMode

    model = _meta_gpt(config)
    idx = torch.zeros(1, seq_len, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(idx).sum().backward()
    total = counter.get_total_flops()
    assert total % seq_len == 0
    return int(total // seq_len)


def _flops_cases(hidden: bool):
    specs = _config_specs("ch11.flops_per_token", hidden)
    for i, (label, spec) in enumerate(specs):
        cfg = _gpt_config(*spec)
        T = cfg.block_size if i % 2 == 0 else max(1, cfg.block_size // 2)
        name = label if label.startswith("hidden") else f"{label}, seq_len={T}"
        yield Case(name, (tuple(spec), T), run=_with_config, expected=lambda cfg=cfg, T=T: _flops_expected(cfg, T),
                   compare=_compare_int)


def _f_parts(c, T):
    d, L, V = c.n_embd, c.n_layer, c.vocab_size
    return 12 * L * d * d, V * d, 2 * L * T * d  # block matrices, output layer, attention (q k^T + a v) per token


def _f_forward_only(c, T):
    blocks, head, attn = _f_parts(c, T)
    return 2 * (blocks + head) + 2 * attn


def _f_no_attention(c, T):
    blocks, head, _ = _f_parts(c, T)
    return 6 * (blocks + head)


def _f_non_embedding_n(c, T):
    blocks, _, attn = _f_parts(c, T)
    return 6 * blocks + 6 * attn


def _f_all_params(c, T):
    _, _, attn = _f_parts(c, T)
    return 6 * _exact_params(c) + 6 * attn


def _f_causal_half(c, T):
    blocks, head, attn = _f_parts(c, T)
    return 6 * (blocks + head) + 3 * attn


register(Exercise(
    id="ch11.flops_per_token", chapter=CH, title="Training FLOPs per token: 6N plus attention", points=2,
    name="flops_per_token", signature="flops_per_token(config: GPTConfig, seq_len: int) -> int",
    reference="torch.utils.flop_counter.FlopCounterMode around GPT(config)'s forward and backward (meta device)",
    solution=f"{SOL}:flops_per_token", cases=_flops_cases, difficulty="**",
    forbidden=["torch.utils.flop_counter:FlopCounterMode"],
    mistakes=[
        Mistake("2N-instead-of-6N", "you counted the forward pass only (2 FLOPs per weight): training also runs the "
                "backward pass, which costs twice the forward (a gradient for the input AND for the weight): 6N",
                _f_forward_only),
        Mistake("no-attention-term", "the attention term is missing: q k^T and the weighted sum of the values are "
                "matrix products too, 2 x seq_len x d multiply-adds per token and layer, not in N", _f_no_attention),
        Mistake("output-layer-left-out", "you used the NON-embedding N for the FLOPs: the output layer (tied to the "
                "token table) is still a vocab_size x d matrix product for every token. Count embeddings the same way "
                "in N and in C", _f_non_embedding_n),
        Mistake("lookups-counted", "you multiplied ALL parameters by 6: the token and position lookups, the biases "
                "and the LayerNorms are not matrix products (FlopCounterMode counts none of them)", _f_all_params),
        Mistake("causal-halved", "you halved the attention term for the causal mask: the model computes the full "
                "seq_len x seq_len scores and then masks them, so the FLOPs are spent", _f_causal_half),
    ]))


# ========================================================================================
# fit_power_law: graded by the residual, against curve_fit on the same data
# ========================================================================================
def _curve_fit_reference(N, L):
    from scipy.optimize import curve_fit

    best, best_sse = None, math.inf
    for a0 in (0.1, 0.3, 0.6, 1.0):  # several starts: the reference must not stop in a poor valley
        E0 = max(0.5 * float(L.min()), 0.0)
        A0 = max(float(L.max() - E0) * float(N.min()) ** a0, 1e-6)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p, _ = curve_fit(_law, N, L, p0=(E0, A0, a0), bounds=([0, 0, 0], [np.inf, np.inf, 3]), maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        s = _sse(p, N, L)
        if s < best_sse:
            best, best_sse = tuple(float(v) for v in p), s
    return best


@functools.lru_cache(maxsize=64)
def _cached_curve_fit(N_bytes, L_bytes):
    return _curve_fit_reference(np.frombuffer(N_bytes), np.frombuffer(L_bytes))


def _law_data(seed, n, E, A, alpha, noise, lo=3.0, hi=7.0):
    r = _rng(seed)
    N = np.geomspace(10 ** lo, 10 ** hi, n)
    L = _law(N, E, A, alpha) * (1 + noise * r.standard_normal(n))
    return N, L


def _fit_cases(hidden: bool):
    specs = [("7 sizes, E=1.5, alpha=0.3, 1% noise", _law_data(0, 7, 1.5, 20.0, 0.3, 0.01)),
             ("5 sizes, E=0.8, alpha=0.5, no noise", _law_data(1, 5, 0.8, 40.0, 0.5, 0.0, 2.5, 6.0)),
             ("8 sizes, no irreducible loss in the data (E=0), 2% noise", _law_data(2, 8, 0.0, 8.0, 0.12, 0.02)),
             ("6 sizes, E=1.2, alpha=0.2, 0.5% noise", _law_data(3, 6, 1.2, 6.0, 0.2, 0.005))]
    if hidden:
        for k in range(3):
            r = _rng(hidden_seed("ch11.fit_power_law", k))
            n = int(r.integers(5, 10))
            E = float(r.uniform(0.0, 2.0)) if k else 0.0
            data = _law_data(int(r.integers(2 ** 31)), n, E, float(r.uniform(5, 60)), float(r.uniform(0.08, 0.7)),
                             float(r.uniform(0.0, 0.02)), float(r.uniform(2.5, 4)), float(r.uniform(6, 8)))
            specs.append((f"hidden case {k + 1}", data))
    for label, (N, L) in specs:
        yield Case(label, (N, L), expected=lambda N=N, L=L: {"curve_fit": _cached_curve_fit(N.tobytes(), L.tobytes())},
                   compare=functools.partial(compare_residual, N=N, L=L), check_mutation=False)


def _m_loglog_line(N, L):
    slope, intercept = np.polyfit(np.log(N), np.log(L), 1)
    return 0.0, float(np.exp(intercept)), float(-slope)


def _m_unbounded(N, L):
    from scipy.optimize import curve_fit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, _ = curve_fit(_law, N, L, p0=(1.0, 10.0, 0.3), maxfev=20000)
    return tuple(float(v) for v in p)


def _m_unbounded_signed(N, L):
    from scipy.optimize import curve_fit

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, _ = curve_fit(lambda N, E, A, a: E + A * N ** a, N, L, p0=(1.0, 10.0, -0.3),
                         bounds=([0, 0, -3], [np.inf, np.inf, 0]), maxfev=20000)
    return tuple(float(v) for v in p)


register(Exercise(
    id="ch11.fit_power_law", chapter=CH, title="Fit L(N) = E + A / N^alpha", points=2,
    name="fit_power_law", signature="fit_power_law(N: ndarray[n], L: ndarray[n]) -> (E, A, alpha)",
    reference="scipy.optimize.curve_fit (bounded, several starts) on the same data: your sum of squared residuals "
              "must be at most curve_fit's",
    solution=f"{SOL}:fit_power_law", cases=_fit_cases, difficulty="**",
    # curve_fit is allowed: the lesson is the model, its bounds and its starting point.
    mistakes=[
        Mistake("no-irreducible-term", "you fitted a straight line in log-log space, a pure power law L = A N^-alpha: "
                "there is no irreducible term E, so the curve must flatten to zero loss and bends the wrong way",
                _m_loglog_line),
        Mistake("unbounded-exponent", "you fitted in linear space without bounds: on these points the optimiser "
                "walks to a negative E (or a huge alpha). Keep E >= 0, A >= 0 and 0 <= alpha <= 3", _m_unbounded),
        Mistake("exponent-sign", "your alpha is negative: you fitted E + A * N**alpha. The law is written "
                "A / N**alpha, with alpha > 0", _m_unbounded_signed),
    ]))


# ========================================================================================
# isoflop_minimum
# ========================================================================================
def _isoflop_expected(N, L):
    from numpy.polynomial import Polynomial

    p = Polynomial.fit(np.log(N), L, 2)
    x = float(p.deriv().roots()[0].real)
    return float(np.exp(x)), float(p(x))


def _profile(seed, n, x_opt, curv, L0, noise, half_width):
    r = _rng(seed)
    lnN = np.linspace(x_opt - half_width + r.uniform(-0.4, 0.4), x_opt + half_width + r.uniform(-0.4, 0.4), n)
    L = L0 + curv * (lnN - x_opt) ** 2 + 0.01 * curv * (lnN - x_opt) ** 3 + noise * r.standard_normal(n)
    return np.exp(lnN), L


def _isoflop_cases(hidden: bool):
    specs = [("7 sizes around 3e5, 0.5% noise", _profile(0, 7, math.log(3e5), 0.04, 2.0, 0.01, 2.5)),
             ("5 sizes, optimum between two of them", _profile(1, 5, math.log(5e4) + 0.3, 0.08, 1.7, 0.0, 2.0)),
             ("9 sizes, a wide profile", _profile(2, 9, math.log(2e6), 0.02, 1.5, 0.005, 3.5))]
    if hidden:
        for k in range(3):
            r = _rng(hidden_seed("ch11.isoflop_minimum", k))
            n = int(r.integers(5, 10))
            specs.append((f"hidden case {k + 1}",
                          _profile(int(r.integers(2 ** 31)), n, float(r.uniform(8, 20)), float(r.uniform(0.02, 0.1)),
                                   float(r.uniform(1, 3)), float(r.uniform(0, 0.01)), float(r.uniform(1.5, 3.5)))))
    for label, (N, L) in specs:
        yield Case(label, (N, L), expected=lambda N=N, L=L: _isoflop_expected(N, L),
                   compare=functools.partial(compare_pair, rtol=1e-6, names=("N_opt", "L_opt")), check_mutation=False)


def _i_argmin(N, L):
    i = int(np.argmin(L))
    return float(N[i]), float(L[i])


def _i_linear_N(N, L):
    a, b, c = np.polyfit(N, L, 2)
    x = -b / (2 * a)
    return float(x), float(a * x * x + b * x + c)


def _i_vertex_factor(N, L):
    a, b, c = np.polyfit(np.log(N), L, 2)
    x = -b / a
    return float(np.exp(x)), float(a * x * x + b * x + c)


def _i_log_returned(N, L):
    a, b, c = np.polyfit(np.log(N), L, 2)
    x = -b / (2 * a)
    return float(x), float(a * x * x + b * x + c)


register(Exercise(
    id="ch11.isoflop_minimum", chapter=CH, title="The minimum of an IsoFLOP profile", points=1,
    name="isoflop_minimum", signature="isoflop_minimum(N: ndarray[n], L: ndarray[n]) -> (N_opt, L_opt)",
    reference="numpy.polynomial.Polynomial.fit(ln N, L, 2) and the root of its derivative",
    solution=f"{SOL}:isoflop_minimum", cases=_isoflop_cases, difficulty="*",
    mistakes=[
        Mistake("optimum-from-data-points", "you read the optimum off the data points (the smallest loss measured): "
                "the fitted parabola's vertex lies between them, and uses every point, not just one noisy run",
                _i_argmin),
        Mistake("parabola-in-N", "you fitted the parabola in N itself: an IsoFLOP profile is a valley on a LOG axis; "
                "fit in ln N", _i_linear_N),
        Mistake("vertex-factor", "the vertex of a x^2 + b x + c is at x = -b / (2a), not -b / a", _i_vertex_factor),
        Mistake("log-returned", "you returned ln N_opt: return the size itself, exp(-b / (2a))", _i_log_returned),
    ]))


# ========================================================================================
# compute_optimal
# ========================================================================================
def _optimal_expected(C, E, A, B, alpha, beta):
    from scipy.optimize import minimize_scalar

    def one(c):
        def loss(lnN):
            return A * math.exp(-alpha * lnN) + B * (c / (6 * math.exp(lnN))) ** -beta
        r = minimize_scalar(loss, bounds=(0.0, math.log(c / 6)), method="bounded", options={"xatol": 1e-11})
        n = math.exp(r.x)
        return n, c / (6 * n)

    if np.ndim(C) == 0:
        return one(float(C))
    pairs = [one(float(c)) for c in np.ravel(C)]
    return (np.array([p[0] for p in pairs]).reshape(np.shape(C)), np.array([p[1] for p in pairs]).reshape(np.shape(C)))


def _optimal_cases(hidden: bool):
    hoff = (1.69, 406.4, 410.7, 0.34, 0.28)
    besi = (1.8172, 482.01, 2085.43, 0.3478, 0.3658)
    specs = [("Hoffmann et al. 2022's fit, C = 5.76e23 (Gopher's budget)", 5.76e23, hoff),
             ("Besiroglu et al. 2024's fit, C = 1e21", 1e21, besi),
             ("Besiroglu's fit, an array of 4 budgets", np.array([1e18, 1e20, 1e22, 1e24]), besi),
             ("a toy fit with alpha = beta, C = 1e15", 1e15, (1.0, 100.0, 100.0, 0.3, 0.3))]
    if hidden:
        for k in range(3):
            r = _rng(hidden_seed("ch11.compute_optimal", k))
            C = 10 ** r.uniform(14, 24, size=int(r.integers(1, 4))) if k % 2 else float(10 ** r.uniform(14, 24))
            params = (float(r.uniform(1, 2)), float(r.uniform(50, 800)), float(r.uniform(50, 3000)),
                      float(r.uniform(0.2, 0.5)), float(r.uniform(0.2, 0.5)))
            specs.append((f"hidden case {k + 1}", C, params))
    for label, C, p in specs:
        yield Case(label, (C, *p), expected=lambda C=C, p=p: _optimal_expected(C, *p), compare=_compare_optimal,
                   check_mutation=False)


def _opt_variant(kind):
    def produce(C, E, A, B, alpha, beta):
        C = np.asarray(C, dtype=np.float64)
        per = 2.0 if kind == "2ND" else 6.0
        if kind == "swapped":
            G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
            N = G * (C / 6) ** (alpha / (alpha + beta))
        elif kind == "G-inverted":
            G = (beta * B / (alpha * A)) ** (1 / (alpha + beta))
            N = G * (C / 6) ** (beta / (alpha + beta))
        else:
            G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
            N = G * (C / per) ** (beta / (alpha + beta))
        D = C / N if kind == "D-without-6" else C / (per * N)
        return (float(N), float(D)) if N.ndim == 0 else (N, D)
    return produce


register(Exercise(
    id="ch11.compute_optimal", chapter=CH, title="Compute-optimal N and D for a budget", points=2,
    name="compute_optimal",
    signature="compute_optimal(C: float | ndarray, E, A, B, alpha, beta) -> (N_opt, D_opt)",
    reference="scipy.optimize.minimize_scalar of L(N, C / (6N)) over ln N",
    solution=f"{SOL}:compute_optimal", cases=_optimal_cases, difficulty="**",
    mistakes=[
        Mistake("2ND-instead-of-6ND", "you used C = 2 N D (the forward pass only): training costs 6 N D, so "
                "every budget buys three times fewer parameter-tokens", _opt_variant("2ND")),
        Mistake("exponents-swapped", "N_opt grows as C^(beta / (alpha + beta)): the exponent of the PARAMETERS' "
                "share is the DATA's exponent beta (the harder D is to exploit, the more goes to N)",
                _opt_variant("swapped")),
        Mistake("G-inverted", "G = (alpha A / (beta B))^(1 / (alpha + beta)): yours is its inverse",
                _opt_variant("G-inverted")),
        Mistake("D-without-6", "D_opt = C / (6 N_opt): you divided by N_opt only", _opt_variant("D-without-6")),
    ]))


# ========================================================================================
# bootstrap_interval
# ========================================================================================
def _bootstrap_expected(x, y, statistic, n_boot, level, seed):
    return _cached_bootstrap(x.tobytes(), y.tobytes(), statistic, n_boot, level, seed)


@functools.lru_cache(maxsize=64)
def _cached_bootstrap(x_bytes, y_bytes, statistic, n_boot, level, seed):
    from scipy.stats import bootstrap

    x, y = np.frombuffer(x_bytes), np.frombuffer(y_bytes)
    res = bootstrap((x, y), statistic, paired=True, vectorized=False, n_resamples=n_boot,
                    confidence_level=level, method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _pairs(seed, n):
    r = _rng(seed)
    x = np.geomspace(1e3, 1e6, n) * np.exp(0.1 * r.standard_normal(n))
    y = 5.0 * x ** -0.3 * np.exp(0.05 * r.standard_normal(n))
    return x, y


def _bootstrap_cases(hidden: bool):
    specs = [("log-log slope of 8 pairs, 200 resamples, 95%", *_pairs(0, 8), "slope", 200, 0.95, 0),
             ("ratio of means of 12 pairs, 300 resamples, 90%", *_pairs(1, 12), "ratio", 300, 0.90, 7),
             ("log-log slope of 6 pairs, 101 resamples, 80%", *_pairs(2, 6), "slope", 101, 0.80, 123)]
    if hidden:
        for k in range(2):
            r = _rng(hidden_seed("ch11.bootstrap_interval", k))
            n = int(r.integers(5, 15))
            x, y = _pairs(int(r.integers(2 ** 31)), n)
            specs.append((f"hidden case {k + 1}", x, y, ["slope", "ratio"][k % 2],
                          int(r.integers(50, 400)), float(r.choice([0.8, 0.9, 0.95])), int(r.integers(2 ** 31))))
    for label, x, y, stat, n_boot, level, seed in specs:
        yield Case(label, (x, y, stat), {"n_boot": n_boot, "level": level, "seed": seed}, run=_with_statistic,
                   expected=lambda x=x, y=y, s=stat, b=n_boot, lv=level, sd=seed: _bootstrap_expected(
                       x, y, _STATISTICS[s], b, lv, sd),
                   compare=functools.partial(compare_pair, rtol=1e-7, atol=1e-10, names=("lower end", "upper end")),
                   check_mutation=False)


def _b_unpaired(x, y, statistic, n_boot=1000, level=0.95, seed=0):
    rng = np.random.default_rng(seed)
    stats = [statistic(rng.choice(x, len(x)), rng.choice(y, len(y))) for _ in range(n_boot)]
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _b_no_replacement(x, y, statistic, n_boot=1000, level=0.95, seed=0):
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        i = rng.permutation(len(x))
        stats.append(statistic(x[i], y[i]))
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _b_tails(x, y, statistic, n_boot=1000, level=0.95, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    stats = [statistic(x[i], y[i]) for i in idx]
    lo, hi = np.quantile(stats, [1 - level, level])
    return float(lo), float(hi)


def _b_normal(x, y, statistic, n_boot=1000, level=0.95, seed=0):
    from statistics import NormalDist

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    stats = np.array([statistic(x[i], y[i]) for i in idx])
    z = NormalDist().inv_cdf((1 + level) / 2)
    centre = statistic(x, y)
    return float(centre - z * stats.std()), float(centre + z * stats.std())


register(Exercise(
    id="ch11.bootstrap_interval", chapter=CH, title="A bootstrap interval for a fitted exponent", points=2,
    name="bootstrap_interval",
    signature="bootstrap_interval(x: ndarray[n], y: ndarray[n], statistic, n_boot=1000, level=0.95, seed=0) "
              "-> (lo, hi)",
    reference="scipy.stats.bootstrap((x, y), statistic, paired=True, method='percentile') with "
              "np.random.default_rng(seed)",
    solution=f"{SOL}:bootstrap_interval", cases=_bootstrap_cases, difficulty="**",
    forbidden=["scipy.stats:bootstrap"],
    mistakes=[
        Mistake("pairs-broken", "you resampled x and y separately: a bootstrap of a fit resamples PAIRS (x_i, y_i) "
                "with the same indices, or the relation between them is destroyed", _b_unpaired),
        Mistake("without-replacement", "you shuffled without replacement: every resample is the same set of points, "
                "so the statistic never varies. Draw indices WITH replacement", _b_no_replacement),
        Mistake("tails-not-halved", "your quantiles are (1 - level, level): a two-sided interval leaves "
                "(1 - level) / 2 in EACH tail", _b_tails),
        Mistake("normal-approximation", "you built statistic +- z * std (a normal approximation): the percentile "
                "bootstrap takes the quantiles of the resampled statistics themselves", _b_normal),
    ]))
