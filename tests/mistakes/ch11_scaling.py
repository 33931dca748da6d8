"""Wrong answers to chapter 11, as learners write them."""
import warnings

import numpy as np
from scipy.optimize import curve_fit

from . import wrong


# -- param_count ----------------------------------------------------------------------------
@wrong("ch11.param_count", diagnosis="tied-counted-twice")
def param_count_head_separate(config, non_embedding=False):
    d, L, V, T = config.n_embd, config.n_layer, config.vocab_size, config.block_size
    blocks = L * (4 * d + 3 * d * d + 3 * d + d * d + d + 4 * d * d + 4 * d + 4 * d * d + d)
    head = V * d  # lm_head.weight
    total = blocks + 2 * d + head
    if non_embedding:
        return total
    return total + V * d + T * d


@wrong("ch11.param_count", diagnosis="matrices-only")
def param_count_kaplan(config, non_embedding=False):
    n = 12 * config.n_layer * config.n_embd ** 2
    if not non_embedding:
        n += config.vocab_size * config.n_embd + config.block_size * config.n_embd
    return n


@wrong("ch11.param_count", diagnosis="no-position-table")
def param_count_token_table_only(config, non_embedding=False):
    d = config.n_embd
    n = config.n_layer * (12 * d * d + 13 * d) + 2 * d
    return n if non_embedding else n + config.vocab_size * d


@wrong("ch11.param_count", diagnosis=None)
def param_count_one_layernorm(config, non_embedding=False):
    d = config.n_embd
    n = config.n_layer * (12 * d * d + 11 * d) + 2 * d  # forgot ln_2
    return n if non_embedding else n + (config.vocab_size + config.block_size) * d


# -- flops_per_token ------------------------------------------------------------------------
@wrong("ch11.flops_per_token", diagnosis="2N-instead-of-6N")
def flops_forward_only(config, seq_len):
    d, L = config.n_embd, config.n_layer
    N = 12 * L * d * d + config.vocab_size * d
    return 2 * N + 4 * L * seq_len * d


@wrong("ch11.flops_per_token", diagnosis="no-attention-term")
def flops_six_n(config, seq_len):
    N = 12 * config.n_layer * config.n_embd ** 2 + config.vocab_size * config.n_embd
    return 6 * N


@wrong("ch11.flops_per_token", diagnosis="output-layer-left-out")
def flops_non_embedding(config, seq_len):
    d, L = config.n_embd, config.n_layer
    N = 12 * L * d * d  # Kaplan's non-embedding N
    return 6 * N + 12 * L * seq_len * d


@wrong("ch11.flops_per_token", diagnosis="lookups-counted")
def flops_all_parameters(config, seq_len):
    d, L, V, T = config.n_embd, config.n_layer, config.vocab_size, config.block_size
    N = L * (12 * d * d + 13 * d) + 2 * d + V * d + T * d  # every parameter of the model
    return 6 * N + 12 * L * seq_len * d


@wrong("ch11.flops_per_token", diagnosis="causal-halved")
def flops_causal_half(config, seq_len):
    d, L = config.n_embd, config.n_layer
    N = 12 * L * d * d + config.vocab_size * d
    return 6 * N + 6 * L * seq_len * d  # only half the scores are needed under the mask


# -- fit_power_law --------------------------------------------------------------------------
@wrong("ch11.fit_power_law", diagnosis="no-irreducible-term")
def fit_loglog_line(N, L):
    slope, intercept = np.polyfit(np.log(N), np.log(L), 1)
    return 0.0, float(np.exp(intercept)), float(-slope)


@wrong("ch11.fit_power_law", diagnosis="unbounded-exponent")
def fit_curve_fit_unbounded(N, L):
    def law(n, E, A, alpha):
        return E + A * n ** -alpha
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (E, A, alpha), _ = curve_fit(law, N, L, p0=[1.0, 10.0, 0.3], maxfev=20000)
    return E, A, alpha


@wrong("ch11.fit_power_law", diagnosis="exponent-sign")
def fit_positive_power(N, L):
    def law(n, E, A, alpha):
        return E + A * n ** alpha
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, _ = curve_fit(law, N, L, p0=[1.0, 10.0, -0.3], bounds=([0, 0, -3], [np.inf, np.inf, 0]), maxfev=20000)
    return tuple(p)


@wrong("ch11.fit_power_law", diagnosis=None)
def fit_coarse_grid(N, L):
    # a grid over alpha in steps of 0.1, with the least-squares E and A at each
    best = None
    for alpha in np.arange(0.1, 1.01, 0.1):
        X = np.stack([np.ones_like(N), N ** -alpha], axis=1)
        (E, A), *_ = np.linalg.lstsq(X, L, rcond=None)
        sse = ((X @ [E, A] - L) ** 2).sum()
        if best is None or sse < best[0]:
            best = (sse, max(E, 0.0), A, alpha)
    return best[1], best[2], best[3]


# -- isoflop_minimum ------------------------------------------------------------------------
@wrong("ch11.isoflop_minimum", diagnosis="optimum-from-data-points")
def isoflop_best_run(N, L):
    i = np.argmin(L)
    return N[i], L[i]


@wrong("ch11.isoflop_minimum", diagnosis="parabola-in-N")
def isoflop_linear_axis(N, L):
    a, b, c = np.polyfit(N, L, 2)
    n_opt = -b / (2 * a)
    return n_opt, np.polyval([a, b, c], n_opt)


@wrong("ch11.isoflop_minimum", diagnosis="vertex-factor")
def isoflop_vertex_without_2(N, L):
    a, b, c = np.polyfit(np.log(N), L, 2)
    x = -b / a
    return np.exp(x), a * x ** 2 + b * x + c


@wrong("ch11.isoflop_minimum", diagnosis="log-returned")
def isoflop_log_size(N, L):
    a, b, c = np.polyfit(np.log(N), L, 2)
    x = -b / (2 * a)
    return x, np.polyval([a, b, c], x)


# -- compute_optimal ------------------------------------------------------------------------
@wrong("ch11.compute_optimal", diagnosis="2ND-instead-of-6ND")
def optimal_2nd(C, E, A, B, alpha, beta):
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    N = G * (np.asarray(C) / 2) ** (beta / (alpha + beta))
    return N, np.asarray(C) / (2 * N)


@wrong("ch11.compute_optimal", diagnosis="exponents-swapped")
def optimal_swapped(C, E, A, B, alpha, beta):
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    N = G * (np.asarray(C) / 6) ** (alpha / (alpha + beta))
    return N, np.asarray(C) / (6 * N)


@wrong("ch11.compute_optimal", diagnosis="G-inverted")
def optimal_g_inverted(C, E, A, B, alpha, beta):
    G = ((beta * B) / (alpha * A)) ** (1 / (alpha + beta))
    N = G * (np.asarray(C) / 6) ** (beta / (alpha + beta))
    return N, np.asarray(C) / (6 * N)


@wrong("ch11.compute_optimal", diagnosis="D-without-6")
def optimal_d_over_n(C, E, A, B, alpha, beta):
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    N = G * (np.asarray(C) / 6) ** (beta / (alpha + beta))
    return N, np.asarray(C) / N


@wrong("ch11.compute_optimal", diagnosis=None)
def optimal_twenty_tokens(C, E, A, B, alpha, beta):
    # the rule of thumb D = 20 N, whatever the fit says
    N = np.sqrt(np.asarray(C) / (6 * 20))
    return N, 20 * N


# -- bootstrap_interval ---------------------------------------------------------------------
@wrong("ch11.bootstrap_interval", diagnosis="pairs-broken")
def bootstrap_separate(x, y, statistic, n_boot=1000, level=0.95, seed=0):
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        values.append(statistic(rng.choice(x, len(x)), rng.choice(y, len(y))))
    values = np.array(values)
    return np.quantile(values, (1 - level) / 2), np.quantile(values, (1 + level) / 2)


@wrong("ch11.bootstrap_interval", diagnosis="without-replacement")
def bootstrap_shuffle(x, y, statistic, n_boot=1000, level=0.95, seed=0):
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        i = rng.permutation(len(x))
        values.append(statistic(x[i], y[i]))
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return lo, hi


@wrong("ch11.bootstrap_interval", diagnosis="tails-not-halved")
def bootstrap_tails(x, y, statistic, n_boot=1000, level=0.95, seed=0):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    values = np.array([statistic(x[i], y[i]) for i in idx])
    return np.percentile(values, 100 * (1 - level)), np.percentile(values, 100 * level)


@wrong("ch11.bootstrap_interval", diagnosis="normal-approximation")
def bootstrap_normal(x, y, statistic, n_boot=1000, level=0.95, seed=0):
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    values = np.array([statistic(x[i], y[i]) for i in idx])
    z = norm.ppf(0.5 + level / 2)
    theta = statistic(x, y)
    return theta - z * values.std(), theta + z * values.std()
