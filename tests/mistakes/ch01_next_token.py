"""Wrong answers to chapter 1, as learners write them."""
import math

import torch

from . import wrong


# -- bigram_counts --------------------------------------------------------------------------
@wrong("ch01.bigram_counts", diagnosis="transposed")
def bigram_counts_next_then_current(ids, vocab_size):
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.int64)
    for a, b in zip(ids[:-1].tolist(), ids[1:].tolist()):
        counts[b, a] += 1
    return counts


@wrong("ch01.bigram_counts", diagnosis="wrapped-around")
def bigram_counts_with_roll(ids, vocab_size):
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.int64)
    nxt = torch.roll(ids, -1)
    for a, b in zip(ids.tolist(), nxt.tolist()):
        counts[a, b] += 1
    return counts


@wrong("ch01.bigram_counts", diagnosis="self-pairs")
def bigram_counts_same_index(ids, vocab_size):
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.int64)
    for i in range(len(ids) - 1):
        counts[ids[i], ids[i]] += 1
    return counts


@wrong("ch01.bigram_counts", diagnosis=None)
def bigram_counts_without_accumulate(ids, vocab_size):
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.int64)
    if len(ids) > 1:
        counts[ids[:-1], ids[1:]] += 1  # repeated pairs are counted once: fancy indexing does not accumulate
    return counts


@wrong("ch01.bigram_counts", diagnosis=None)
def bigram_counts_crashes_on_one_token(ids, vocab_size):
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.int64)
    first = ids[1]  # IndexError on a sequence of one token
    for a, b in zip(ids[:-1].tolist(), ids[1:].tolist()):
        counts[a, b] += 1
    return counts


# -- bigram_probs ---------------------------------------------------------------------------
@wrong("ch01.bigram_probs", diagnosis="columns")
def bigram_probs_dim0(counts, alpha=1.0):
    c = counts.float() + alpha
    return c / c.sum(0)


@wrong("ch01.bigram_probs", diagnosis="no-smoothing")
def bigram_probs_forgot_alpha(counts, alpha=1.0):
    c = counts.float()
    return c / c.sum(1, keepdim=True)


@wrong("ch01.bigram_probs", diagnosis="alpha-once")
def bigram_probs_alpha_in_denominator_once(counts, alpha=1.0):
    c = counts.float()
    return (c + alpha) / (c.sum(1, keepdim=True) + alpha)


@wrong("ch01.bigram_probs", diagnosis=None)
def bigram_probs_broadcast_bug(counts, alpha=1.0):
    c = counts.float() + alpha
    return c / c.sum(1)  # (V, V) / (V,) divides each COLUMN j by the sum of ROW j


# -- cross_entropy --------------------------------------------------------------------------
@wrong("ch01.cross_entropy", diagnosis="overflow")
def cross_entropy_naive_softmax(logits, targets):
    probs = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    return -torch.log(probs[torch.arange(len(targets)), targets]).mean()


@wrong("ch01.cross_entropy", diagnosis="sum")
def cross_entropy_summed(logits, targets):
    m = logits.max(dim=1, keepdim=True).values
    logp = logits - m - torch.log(torch.exp(logits - m).sum(dim=1, keepdim=True))
    return -logp[torch.arange(len(targets)), targets].sum()


@wrong("ch01.cross_entropy", diagnosis="log2")
def cross_entropy_in_bits(logits, targets):
    m = logits.max(dim=1, keepdim=True).values
    log2p = (logits - m) / math.log(2) - torch.log2(torch.exp(logits - m).sum(dim=1, keepdim=True))
    return -log2p[torch.arange(len(targets)), targets].mean()


@wrong("ch01.cross_entropy", diagnosis="no-normalisation")
def cross_entropy_raw_logit(logits, targets):
    return -logits[torch.arange(len(targets)), targets].mean()


@wrong("ch01.cross_entropy", diagnosis=None)
def cross_entropy_uses_torch(logits, targets):
    return torch.nn.functional.cross_entropy(logits, targets)  # the function being rebuilt: refused


# -- perplexity -----------------------------------------------------------------------------
def _ce(logits, targets):
    m = logits.max(dim=1, keepdim=True).values
    logp = logits - m - torch.log(torch.exp(logits - m).sum(dim=1, keepdim=True))
    return -logp[torch.arange(len(targets)), targets]


@wrong("ch01.perplexity", diagnosis="base-2")
def perplexity_two_to_the_nats(logits, targets):
    return 2 ** float(_ce(logits, targets).mean())


@wrong("ch01.perplexity", diagnosis="no-exp")
def perplexity_is_the_loss(logits, targets):
    return float(_ce(logits, targets).mean())


@wrong("ch01.perplexity", diagnosis="exp-of-sum")
def perplexity_of_total(logits, targets):
    return math.exp(float(_ce(logits, targets).sum()))


@wrong("ch01.perplexity", diagnosis=None)
def perplexity_returns_tensor_of_wrong_shape(logits, targets):
    return torch.exp(_ce(logits, targets))  # one value per position instead of one number


# -- sample_next ----------------------------------------------------------------------------
@wrong("ch01.sample_next", diagnosis="multiplied")
def sample_times_temperature(logits, temperature, generator=None):
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits * temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@wrong("ch01.sample_next", diagnosis="after-softmax")
def sample_temperature_on_probs(logits, temperature, generator=None):
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits, dim=-1) / temperature
    return int(torch.multinomial(probs, 1, generator=generator))


@wrong("ch01.sample_next", diagnosis="greedy")
def sample_always_argmax(logits, temperature, generator=None):
    return int(torch.argmax(logits / max(temperature, 1e-6)))


@wrong("ch01.sample_next", diagnosis=None)
def sample_crashes_at_zero(logits, temperature, generator=None):
    probs = torch.softmax(logits / temperature, dim=-1)  # T=0 gives NaN probabilities
    return int(torch.multinomial(probs, 1, generator=generator))


@wrong("ch01.sample_next", diagnosis=None)
def sample_returns_tensor(logits, temperature, generator=None):
    if temperature == 0:
        return torch.argmax(logits, keepdim=True).float()
    return torch.multinomial(torch.softmax(logits / temperature, -1), 2, generator=generator)


# -- gpt2_param_count -----------------------------------------------------------------------
@wrong("ch01.gpt2_param_count", diagnosis="untied")
def count_with_separate_lm_head(vocab_size, n_positions, n_embd, n_layer):
    d = n_embd
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    return vocab_size * d + n_positions * d + n_layer * block + 2 * d + vocab_size * d


@wrong("ch01.gpt2_param_count", diagnosis="no-biases")
def count_weights_only(vocab_size, n_positions, n_embd, n_layer):
    d = n_embd
    block = 4 * d + 3 * d * d + d * d + 4 * d * d + 4 * d * d
    return vocab_size * d + n_positions * d + n_layer * block + 2 * d


@wrong("ch01.gpt2_param_count", diagnosis="no-layernorm")
def count_without_norms(vocab_size, n_positions, n_embd, n_layer):
    d = n_embd
    block = (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    return vocab_size * d + n_positions * d + n_layer * block


@wrong("ch01.gpt2_param_count", diagnosis="no-positions")
def count_without_position_embedding(vocab_size, n_positions, n_embd, n_layer):
    d = n_embd
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    return vocab_size * d + n_layer * block + 2 * d


@wrong("ch01.gpt2_param_count", diagnosis="mlp-width")
def count_with_square_mlp(vocab_size, n_positions, n_embd, n_layer):
    d = n_embd
    block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * d + d) + (d * d + d)
    return vocab_size * d + n_positions * d + n_layer * block + 2 * d
