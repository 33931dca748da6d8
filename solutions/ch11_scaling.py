"""Chapter 11 - Scaling laws: counting, fitting, compute-optimal allocation, emergence.

Reference solutions. The exercises count the parameters and training FLOPs of the
chapter-6 GPT, fit a power law with an irreducible term, find the minimum of an IsoFLOP
profile, allocate a compute budget between parameters and tokens, and put a bootstrap
interval around a fitted exponent. The rest is PROVIDED: the results of the ladder of
tiny Shakespeare models (``benchmarks/scaling_ladder.py`` trains them with the functions
below), the published Chinchilla fits, the trainer, and the emergence probe.
"""
import math
import re
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from solutions.ch06_gpt import GPTConfig
from solutions.ch07_pretraining import GPT as TinyGPT, GPTConfig as TinyGPTConfig, lr_at


# --------------------------------------------------------------------------------------
# Exercises: counting
# --------------------------------------------------------------------------------------
def param_count(config: GPTConfig, non_embedding: bool = False) -> int:
    """The number of parameters of ``GPT(config)`` (chapter 6), from the config alone.

    The model: a token table (vocab_size, d) and a position table (block_size, d);
    n_layer blocks, each with two LayerNorms (weight and bias), attention (qkv: d -> 3d
    and proj: d -> d, with biases) and an MLP (fc: d -> 4d and proj: 4d -> d, with
    biases); a final LayerNorm; an output layer TIED to the token table (one matrix,
    counted once). non_embedding=True leaves out both tables (as Kaplan et al. 2020
    count N).
    Returns a Python int.
    """
    d, L = config.n_embd, config.n_layer
    per_block = (
        (3 * d * d + 3 * d)
        + (d * d + d)
        + (4 * d * d + 4 * d)
        + (4 * d * d + d)
        + 2 * (2 * d)
    )
    # the blocks and the final LayerNorm: 12 L d^2 + 13 L d + 2 d
    n = L * per_block + 2 * d
    if not non_embedding:
        # the tied head adds nothing of its own
        n += (config.vocab_size + config.block_size) * d
    return n


def flops_per_token(config: GPTConfig, seq_len: int) -> int:
    """Training FLOPs (forward + backward) per token of ``GPT(config)`` on sequences of
    ``seq_len`` tokens, counted as ``torch.utils.flop_counter.FlopCounterMode`` counts
    them:
    2 FLOPs per multiply-add of every matrix product, nothing for lookups, biases,
    LayerNorms, GELU or softmax; the backward pass costs twice the forward.

    The matrix products per token and layer: the four weight matrices of the block (12
    d^2 weights); the scores q k^T and the weighted sum of the values, each seq_len x d
    multiply-adds per token (the full square: the causal mask does not save work here);
    and once per token the output layer (vocab_size x d weights, shared with the token
    table but still a matrix product). Returns a Python int.
    """
    d, L, V, T = config.n_embd, config.n_layer, config.vocab_size, seq_len
    # every weight that takes part in a matrix product
    n_matmul = 12 * L * d * d + V * d
    forward = 2 * n_matmul + 2 * (2 * L * T * d)  # weights, then q k^T and weights @ v
    # backward: a gradient for the input and one for the weight, each as big
    return 3 * forward


# --------------------------------------------------------------------------------------
# Exercises: fitting
# --------------------------------------------------------------------------------------
def fit_power_law(N: np.ndarray, L: np.ndarray) -> tuple[float, float, float]:
    """Fit L(N) = E + A / N**alpha by least squares on the losses themselves.

    N: (n,) float64 model sizes (or compute), positive, n >= 4; L: (n,) float64 losses.
    Returns (E, A, alpha) as floats with E >= 0 (the irreducible loss), A >= 0 and
    0 <= alpha <= 3, minimising sum_i (L_i - E - A N_i^-alpha)^2 within those bounds.
    Graded by that sum of squares, which must be no larger than what
    ``scipy.optimize.curve_fit`` (bounded) reaches on the same data.
    """
    N, L = np.asarray(N, dtype=np.float64), np.asarray(L, dtype=np.float64)

    def solve_linear(alpha):
        # For a fixed alpha the model is linear in (E, A): least squares, then
        # the bounds.
        x = N ** -alpha
        x_c, L_c = x - x.mean(), L - L.mean()
        # the slope of L against x
        A = float(x_c @ L_c / (x_c @ x_c)) if x_c @ x_c > 0 else 0.0
        E = float(L.mean() - A * x.mean())
        if E < 0:  # the bound is active: the best fit through the origin
            E, A = 0.0, float(x @ L / (x @ x))
        if A < 0:  # no decrease at all: a constant
            E, A = float(L.mean()), 0.0
        sse = float(((L - E - A * x) ** 2).sum())
        return sse, E, A

    # Variable projection: a coarse grid over alpha, then golden-section search
    # around the best.
    grid = np.linspace(0.0, 3.0, 121)
    best = int(np.argmin([solve_linear(a)[0] for a in grid]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a1, a2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if solve_linear(a1)[0] < solve_linear(a2)[0]:
            hi = a2
        else:
            lo = a1
    alpha = (lo + hi) / 2
    _, E, A = solve_linear(alpha)
    return E, A, float(alpha)


def isoflop_minimum(N: np.ndarray, L: np.ndarray) -> tuple[float, float]:
    """The compute-optimal model size of ONE IsoFLOP profile (Chinchilla's approach 2).

    N: (n,) model sizes trained with the same compute, n >= 3; L: (n,) their final
    losses.
    Fit the parabola L = a (ln N)^2 + b ln N + c by least squares (in ln N: the profile
    is a valley on a log axis), and return (N_opt, L_opt): the size at the parabola's
    vertex and the parabola's value there, as floats. Assumes the valley opens upwards
    (a > 0).
    """
    x = np.log(np.asarray(N, dtype=np.float64))
    X = np.stack([x ** 2, x, np.ones_like(x)], axis=1)
    (a, b, c), *_ = np.linalg.lstsq(X, np.asarray(L, dtype=np.float64), rcond=None)
    x_opt = -b / (2 * a)
    return float(np.exp(x_opt)), float(a * x_opt ** 2 + b * x_opt + c)


def compute_optimal(C, E: float, A: float, B: float, alpha: float, beta: float):
    """Split a compute budget between parameters and tokens (Chinchilla's approach 3).

    With L(N, D) = E + A / N**alpha + B / D**beta and training compute C = 6 N D, return
    (N_opt, D_opt) minimising L under that budget. C: a float or a float64 array (then
    arrays of the same shape are returned). Closed form:
        N_opt = G (C/6)^(beta/(alpha+beta)),  G = (alpha A / (beta B))^(1/(alpha+beta)),
        D_opt = C / (6 N_opt).
    """
    C = np.asarray(C, dtype=np.float64)
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    N_opt = G * (C / 6.0) ** (beta / (alpha + beta))
    D_opt = C / (6.0 * N_opt)
    if N_opt.ndim == 0:
        return float(N_opt), float(D_opt)
    return N_opt, D_opt


def bootstrap_interval(
    x: np.ndarray,
    y: np.ndarray,
    statistic,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(x, y)`` over resampled (x_i, y_i)
    PAIRS.

    x, y: (n,) arrays of paired observations; statistic(x, y) -> float.
    Draw every resample at once with ``rng = np.random.default_rng(seed)`` and
    ``idx = rng.integers(0, n, size=(n_boot, n))`` (row b: the indices of resample b,
    with replacement, the same for x and y); evaluate the statistic on each; return the
    ((1 - level)/2, (1 + level)/2) quantiles of those n_boot values (``np.quantile``'s
    default, linear interpolation) as two floats.
    """
    x, y = np.asarray(x), np.asarray(y)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    stats = np.array([statistic(x[i], y[i]) for i in idx])
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------
# Provided: published parametric fits L(N, D) = E + A/N^alpha + B/D^beta (N, D in units)
# --------------------------------------------------------------------------------------
# Hoffmann et al. (2022), approach 3, as printed; Besiroglu et al. (2024) refit the same
# approach to data read off Hoffmann's figure and found the printed values inconsistent
# with Hoffmann's own approaches 1 and 2 (whose optimum is ~20 tokens per parameter).
HOFFMANN_2022 = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
BESIROGLU_2024 = dict(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)


def fit_parametric(
    N: np.ndarray, D: np.ndarray, L: np.ndarray, start: dict | None = None
) -> dict:
    """Chinchilla's approach 3: fit L(N, D) = E + A / N^alpha + B / D^beta to every run.

    Least squares on log L (Hoffmann et al. used a Huber loss on log L; with a few dozen
    clean runs plain least squares gives the same fit), A and B through their
    logarithms, from a small grid of starting points (the surface has poor valleys), or
    from ``start`` alone (a previous fit: fast, for bootstrap resamples). Returns a dict
    with E, A, B, alpha, beta."""
    from scipy.optimize import least_squares

    N, D, L = (np.asarray(v, dtype=np.float64) for v in (N, D, L))
    lnN, lnD, lnL = np.log(N), np.log(D), np.log(L)

    def residual(t):
        E, a, b, alpha, beta = t
        return np.log(E + np.exp(a - alpha * lnN) + np.exp(b - beta * lnD)) - lnL

    starts = [
        [
            0.5 * L.min(),
            math.log(L.max()) + a0 * lnN.min(),
            math.log(L.max()) + b0 * lnD.min(),
            a0,
            b0,
        ]
        for a0 in (0.2, 0.5, 0.8)
        for b0 in (0.2, 0.5, 0.8)
    ]
    if start is not None:
        starts = [[
            min(start["E"], 0.999 * L.min()),
            math.log(start["A"]),
            math.log(start["B"]),
            start["alpha"],
            start["beta"],
        ]]
    best = None
    for t0 in starts:
        r = least_squares(
            residual, t0, bounds=([0, -50, -50, 0, 0], [L.min(), 50, 50, 2, 2])
        )
        if best is None or r.cost < best.cost:
            best = r
    E, a, b, alpha, beta = best.x
    return dict(
        E=float(E),
        A=float(math.exp(a)),
        B=float(math.exp(b)),
        alpha=float(alpha),
        beta=float(beta),
    )


# --------------------------------------------------------------------------------------
# Provided: the ladder (benchmarks/scaling_ladder.py trains it with these functions)
# --------------------------------------------------------------------------------------
BLOCK = 64  # the context length of every run of the ladder
BATCH = 16  # and its batch size (sequences per step)
ANSWER_LEN = 5  # the emergence probe: 5 letters of a long word to predict ...
GIVEN = 3  # ... after its first 3;
MIN_LETTERS = 8  # the word has at least 8 letters
MIN_COUNT = 10  # and the training text uses it at least 10 times


def ladder_sizes(n_layer: int, d: int, vocab_size: int, seq_len: int = BLOCK) -> dict:
    """Sizes of the chapter-7 GPT (bias-free) used by the ladder: N (non-embedding
    parameters: the blocks' matrices and LayerNorm gains), N_total, N_matmul (the
    weights in
    matrix products: blocks + tied output layer) and its training FLOPs per token."""
    non_embedding = n_layer * (12 * d * d + 4 * d) + 2 * d
    n_matmul = 12 * n_layer * d * d + vocab_size * d
    return {
        "N": non_embedding,
        "N_total": non_embedding + (vocab_size + seq_len) * d,
        "N_matmul": n_matmul,
        "flops_per_token": 6 * n_matmul + 12 * n_layer * seq_len * d,
    }


@torch.no_grad()
def ladder_val_loss(model, data: torch.Tensor, n_batches: int = 16) -> float:
    """Mean cross-entropy on ``n_batches`` fixed validation batches of BATCH x BLOCK
    tokens."""
    model.eval()
    g = torch.Generator().manual_seed(2)
    total = 0.0
    for _ in range(n_batches):
        s = torch.randint(len(data) - BLOCK, (BATCH,), generator=g)
        w = data[s[:, None] + torch.arange(BLOCK + 1)]
        total += F.cross_entropy(
            model(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten()
        ).item()
    return total / n_batches


def train_ladder_model(
    n_layer: int,
    d: int,
    n_head: int,
    tokens: float,
    train_data: torch.Tensor,
    val_data: torch.Tensor,
    vocab_size: int,
    seed: int = 0,
    max_lr: float | None = None,
    progress: bool = False,
    threads: int = 1,
):
    """Train one rung: the chapter-7 GPT (bias-free, context BLOCK) for ``tokens``
    tokens
    (rounded to whole batches of BATCH x BLOCK, at least 20 steps) with AdamW (beta2
    0.95,
    weight decay 0.1 on matrices), warm-up then cosine decay to max_lr/100, clipping at
    1.
    The peak learning rate shrinks as 1/width (max_lr = 0.2 / d unless given): one
    learning
    rate for every size would favour some sizes over others and bend the scaling curve.
    Runs on ``threads`` CPU threads (one: these models are too small for a second thread
    to
    pay, and on a shared machine a descheduled thread stalls every product of the
    other).
    Returns (run, model): ``run`` holds the sizes, D, the compute C, val loss and
    seconds."""
    max_lr = 0.2 / d if max_lr is None else max_lr
    torch.manual_seed(seed)
    model = TinyGPT(
        TinyGPTConfig(
            vocab_size=vocab_size,
            block_size=BLOCK,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=d,
            bias=False,
        )
    )
    steps = max(20, round(tokens / (BATCH * BLOCK)))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": 0.1},
            {"params": other, "weight_decay": 0.0},
        ],
        lr=max_lr,
        betas=(0.9, 0.95),
        foreach=True,
    )
    g = torch.Generator().manual_seed(seed)
    warmup = min(50, steps // 10)
    model.train()
    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for step in tqdm(
            range(steps), desc=f"L{n_layer} d{d}", disable=not progress, mininterval=1.0
        ):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, max_lr, max_lr / 100, warmup, steps)
            s = torch.randint(len(train_data) - BLOCK, (BATCH,), generator=g)
            w = train_data[s[:, None] + torch.arange(BLOCK + 1)]
            loss = F.cross_entropy(model(w[:, :-1]).flatten(0, 1), w[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    finally:
        torch.set_num_threads(threads_before)
    seconds = time.perf_counter() - t0
    size = ladder_sizes(n_layer, d, vocab_size)
    D = steps * BATCH * BLOCK
    run = {
        "n_layer": n_layer,
        "n_embd": d,
        "n_head": n_head,
        **size,
        "max_lr": max_lr,
        "steps": steps,
        "batch": BATCH,
        "block": BLOCK,
        "tokens": D,
        "C": size["flops_per_token"] * D,
        "C_6ND": 6 * size["N"] * D,
        "val_loss": round(ladder_val_loss(model, val_data), 5),
        "final_train_loss": round(loss.item(), 5),
        "seconds": round(seconds, 2),
    }
    return run, model


def cloze_set(
    val_text: str, train_text: str, encode, n: int = 600, seed: int = 0
) -> torch.Tensor:
    """The emergence probe: (n, BLOCK) rows of validation text, each ending GIVEN +
    ANSWER_LEN
    letters into a word of at least MIN_LETTERS letters that the training text uses at
    least
    MIN_COUNT times (a word a model can know); the last ANSWER_LEN tokens are the
    answer."""
    from collections import Counter

    known = Counter(re.findall(rf"[A-Za-z]{{{MIN_LETTERS},}}", train_text))
    words = [m for m in re.finditer(rf"[A-Za-z]{{{MIN_LETTERS},}}", val_text)
             if m.start() >= BLOCK and known[m.group()] >= MIN_COUNT]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(words), generator=g)[:n].sort().values.tolist()
    rows = []
    for i in pick:
        end = words[i].start() + GIVEN + ANSWER_LEN
        rows.append(encode(val_text[end - BLOCK: end]))
    return torch.tensor(rows)


@torch.no_grad()
def cloze_scores(model, rows: torch.Tensor) -> dict:
    """Two views of the same predictions of the ANSWER_LEN answer letters (teacher
    forcing):
    exact match (every letter is the model's top choice), per-letter accuracy, and the
    mean
    log-probability per letter of the right answer."""
    model.eval()
    # the predictions of the answer letters
    logits = model(rows[:, :-1])[:, -ANSWER_LEN:]
    target = rows[:, -ANSWER_LEN:]
    # (n, ANSWER_LEN)
    logp = torch.log_softmax(logits.float(), -1).gather(-1, target[..., None])[..., 0]
    hit = logits.argmax(-1) == target
    return {
        "exact_match": hit.all(-1).float().mean().item(),
        "token_accuracy": hit.float().mean().item(),
        "logprob_per_token": logp.mean().item(),
    }


def shakespeare_char_data():
    """(vocab, train_ids, val_ids, train_text, val_text): the complete works at the
    character
    level, split 90/10 as in chapter 7."""
    from solutions.ch01_next_token import shakespeare_text
    from solutions.ch07_pretraining import char_vocab, encode_corpus, train_val_split

    text = shakespeare_text()
    vocab = char_vocab(text)
    train_ids, val_ids = train_val_split(encode_corpus(text, vocab))
    return vocab, train_ids, val_ids, text[:len(train_ids)], text[len(train_ids):]


# --------------------------------------------------------------------------------------
# Provided: the committed results of benchmarks/scaling_ladder.py (a copy of
# benchmarks/results/scaling_ladder.json, so that the chapter runs anywhere; a test
# keeps the two equal). Every run: 1 CPU thread, context BLOCK, batch BATCH, AdamW,
# cosine schedule.
# --------------------------------------------------------------------------------------
LADDER_FIELDS = (
    "n_layer",
    "n_embd",
    "N",
    "flops_per_token",
    "tokens",
    "val_loss",
    "exact_match",
    "token_accuracy",
    "logprob_per_token",
    "seconds",
)
ISOFLOP_FIELDS = (
    "budget",
    "n_layer",
    "n_embd",
    "N",
    "flops_per_token",
    "tokens",
    "val_loss",
    "seconds",
)
# BEGIN LADDER RESULTS
LADDER_RESULTS = {
    # n_layer, n_embd, N, flops_per_token, tokens, val_loss, exact_match,
    # token_accuracy, logprob_per_token, seconds
    "ladder": [
        (1, 16, 3168, 38784, 1500160, 2.23316, 0.0, 0.16933, -2.67106, 20.4),
        (1, 24, 7056, 72000, 1500160, 2.10837, 0.0, 0.21533, -2.52669, 22.63),
        (2, 32, 24896, 212736, 1500160, 2.08571, 0.0, 0.23367, -2.50953, 63.75),
        (2, 48, 55776, 429696, 1500160, 2.03203, 0.0, 0.25367, -2.43644, 72.73),
        (3, 64, 148352, 1064448, 1500160, 1.98696, 0.0, 0.27267, -2.3691, 89.44),
        (4, 96, 444096, 2997504, 1500160, 1.9351, 0.0, 0.28767, -2.25396, 346.64),
    ],
    # budget, n_layer, n_embd, N, flops_per_token, tokens, val_loss, seconds
    "isoflop": [
        (1e11, 1, 8, 816, 14784, 6764544, 2.39655, 78.13),
        (1e11, 1, 16, 3168, 38784, 2578432, 2.12701, 60.42),
        (1e11, 1, 24, 7056, 72000, 1388544, 2.13516, 39.63),
        (1e11, 2, 32, 24896, 212736, 470016, 2.51241, 34.64),
        (1e11, 2, 48, 55776, 429696, 232448, 2.83976, 20.95),
        (1e11, 3, 64, 148352, 1064448, 94208, 2.74839, 13.07),
        (2e11, 1, 16, 3168, 38784, 5156864, 2.0792, 109.05),
        (2e11, 1, 24, 7056, 72000, 2778112, 1.9948, 119.18),
        (2e11, 2, 32, 24896, 212736, 940032, 2.25919, 43.55),
        (2e11, 2, 48, 55776, 429696, 465920, 2.48872, 20.54),
        (2e11, 3, 64, 148352, 1064448, 187392, 2.5796, 9.9),
        (2e11, 4, 96, 444096, 2997504, 66560, 2.75092, 6.31),
        (4e11, 1, 16, 3168, 38784, 10313728, 2.04604, 71.88),
        (4e11, 1, 24, 7056, 72000, 5555200, 1.94174, 98.17),
        (4e11, 2, 32, 24896, 212736, 1880064, 2.01331, 182.58),
        (4e11, 2, 48, 55776, 429696, 930816, 2.21292, 156.51),
        (4e11, 3, 64, 148352, 1064448, 375808, 2.45805, 83.12),
        (4e11, 4, 96, 444096, 2997504, 133120, 2.61799, 53.61),
    ],
}
# END LADDER RESULTS


def ladder_runs(kind: str) -> list[dict]:
    """The committed runs of one kind, "ladder" or "isoflop", as dicts (plus C =
    FLOPs/token x D)."""
    fields = LADDER_FIELDS if kind == "ladder" else ISOFLOP_FIELDS
    runs = [dict(zip(fields, row)) for row in LADDER_RESULTS[kind]]
    for run in runs:
        run["C"] = run["flops_per_token"] * run["tokens"]
    return runs
