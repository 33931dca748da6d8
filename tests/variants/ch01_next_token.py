"""Correct answers to chapter 1, in other styles than the reference."""
import math
from collections import Counter

import numpy as np
import torch

from . import right


# -- bigram_counts --------------------------------------------------------------------------
@right("ch01.bigram_counts", style="Python loop over the pairs")
def bigram_counts_loop(ids, vocab_size):
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.int64)
    ids = ids.tolist()
    for i in range(len(ids) - 1):
        counts[ids[i], ids[i + 1]] += 1
    return counts


@right("ch01.bigram_counts", style="collections.Counter over zipped pairs")
def bigram_counts_counter(ids, vocab_size):
    seq = ids.tolist()
    pairs = Counter(zip(seq, seq[1:]))
    counts = torch.zeros((vocab_size, vocab_size), dtype=torch.long)
    for (a, b), n in pairs.items():
        counts[a][b] = n
    return counts


@right("ch01.bigram_counts", style="one-hot outer products summed with a matmul")
def bigram_counts_onehot(ids, vocab_size):
    if len(ids) < 2:
        return torch.zeros(vocab_size, vocab_size, dtype=torch.int64)
    eye = torch.eye(vocab_size, dtype=torch.float64)
    current, following = eye[ids[:-1]], eye[ids[1:]]
    return (current.T @ following).round().to(torch.int64)


@right("ch01.bigram_counts", style="numpy.add.at")
def bigram_counts_numpy(ids, vocab_size):
    arr = ids.numpy()
    out = np.zeros((vocab_size, vocab_size), dtype=np.int64)
    np.add.at(out, (arr[:-1], arr[1:]), 1)
    return torch.from_numpy(out)


# -- bigram_probs ---------------------------------------------------------------------------
@right("ch01.bigram_probs", style="row by row in Python")
def bigram_probs_rows(counts, alpha=1.0):
    V = counts.shape[0]
    P = torch.empty(counts.shape, dtype=torch.float32)
    for a in range(V):
        row = [float(c) + alpha for c in counts[a].tolist()]
        total = sum(row)
        P[a] = torch.tensor([x / total for x in row])
    return P


@right("ch01.bigram_probs", style="float64 with the denominator written as row sum + V*alpha")
def bigram_probs_float64(counts, alpha=1.0):
    c = counts.double()
    denom = c.sum(-1, keepdim=True) + alpha * c.shape[-1]
    return ((c + alpha) / denom).float()


@right("ch01.bigram_probs", style="normalisation through torch.nn.functional.normalize with p=1")
def bigram_probs_l1(counts, alpha=1.0):
    return torch.nn.functional.normalize(counts.float() + alpha, p=1, dim=1)


# -- cross_entropy --------------------------------------------------------------------------
@right("ch01.cross_entropy", style="explicit loops over rows with math.exp")
def cross_entropy_loops(logits, targets):
    total = 0.0
    rows = logits.tolist()
    for row, t in zip(rows, targets.tolist()):
        m = max(row)
        log_z = m + math.log(sum(math.exp(x - m) for x in row))
        total += log_z - row[t]
    return torch.tensor(total / len(rows))


@right("ch01.cross_entropy", style="float64 softmax with the max subtracted, indexing by arange")
def cross_entropy_float64(logits, targets):
    x = logits.double()
    x = x - x.amax(dim=-1, keepdim=True)
    log_probs = x - x.exp().sum(-1, keepdim=True).log()
    n = torch.arange(x.shape[0])
    return (-log_probs[n, targets]).mean().to(logits.dtype)


@right("ch01.cross_entropy", style="one-hot mask instead of gather")
def cross_entropy_onehot(logits, targets):
    shifted = logits - logits.max(1, keepdim=True).values
    log_z = torch.log(torch.sum(torch.exp(shifted), 1))
    onehot = torch.zeros_like(logits).scatter_(1, targets.unsqueeze(1), 1.0)
    picked = (shifted * onehot).sum(1)
    return torch.mean(log_z - picked)


# -- perplexity -----------------------------------------------------------------------------
@right("ch01.perplexity", style="geometric mean of 1/p computed with numpy in float64")
def perplexity_numpy(logits, targets):
    x = logits.double().numpy()
    x = x - x.max(axis=1, keepdims=True)
    logp = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    nll = -logp[np.arange(len(x)), targets.numpy()]
    return float(np.exp(nll.mean()))


@right("ch01.perplexity", style="own stable log-softmax, 2 ** (loss in bits)")
def perplexity_bits(logits, targets):
    m = logits.max(dim=1, keepdim=True).values
    logp = logits - m - torch.log(torch.exp(logits - m).sum(dim=1, keepdim=True))
    nll_nats = -logp.gather(1, targets.view(-1, 1)).mean()
    bits = nll_nats.item() / math.log(2)
    return 2.0 ** bits


# -- sample_next ----------------------------------------------------------------------------
@right("ch01.sample_next", style="inverse-CDF sampling with torch.rand")
def sample_next_inverse_cdf(logits, temperature, generator=None):
    if temperature == 0:
        return int(logits.argmax().item())
    z = logits.double() / temperature
    p = torch.exp(z - z.max())
    p = p / p.sum()
    cdf = torch.cumsum(p, 0)
    u = torch.rand((), generator=generator, dtype=torch.float64) * cdf[-1]
    return min(int(torch.searchsorted(cdf, u, right=True)), logits.numel() - 1)


@right("ch01.sample_next", style="Gumbel-max trick")
def sample_next_gumbel(logits, temperature, generator=None):
    if temperature == 0:
        return int(torch.argmax(logits))
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    gumbel = -torch.log(-torch.log(u))
    return int(torch.argmax(logits.double() / temperature + gumbel))


@right("ch01.sample_next", style="numpy probabilities, torch.multinomial for the draw")
def sample_next_numpy_probs(logits, temperature, generator=None):
    values = logits.numpy().astype(np.float64)
    if temperature == 0:
        return int(np.argmax(values))
    w = np.exp((values - values.max()) / temperature)
    probs = torch.from_numpy(w / w.sum())
    return torch.multinomial(probs, num_samples=1, generator=generator).item()


# -- gpt2_param_count -----------------------------------------------------------------------
@right("ch01.gpt2_param_count", style="summing a table of parameter shapes")
def gpt2_param_count_shapes(vocab_size, n_positions, n_embd, n_layer):
    d = n_embd
    shapes = [(vocab_size, d), (n_positions, d)]
    for _ in range(n_layer):
        shapes += [(d,), (d,),              # ln_1
                   (d, 3 * d), (3 * d,),    # c_attn
                   (d, d), (d,),            # attn c_proj
                   (d,), (d,),              # ln_2
                   (d, 4 * d), (4 * d,),    # c_fc
                   (4 * d, d), (d,)]        # mlp c_proj
    shapes += [(d,), (d,)]                  # ln_f
    return sum(math.prod(s) for s in shapes)


@right("ch01.gpt2_param_count", style="closed form 12 d^2 + 13 d per layer")
def gpt2_param_count_closed_form(vocab_size, n_positions, n_embd, n_layer):
    d = n_embd
    return (vocab_size + n_positions) * d + n_layer * (12 * d * d + 13 * d) + 2 * d


@right("ch01.gpt2_param_count", style="torch modules on the meta device")
def gpt2_param_count_modules(vocab_size, n_positions, n_embd, n_layer):
    from torch import nn
    d = n_embd
    with torch.device("meta"):
        parts = [nn.Embedding(vocab_size, d), nn.Embedding(n_positions, d), nn.LayerNorm(d)]
        for _ in range(n_layer):
            parts += [nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d),
                      nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)]
        model = nn.ModuleList(parts)
    return sum(p.numel() for p in model.parameters())
