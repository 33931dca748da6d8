"""Correct answers to chapter 8, in other styles than the reference."""
import itertools
import math

import torch
import torch.nn.functional as F

from . import right


# -- mask_tokens ----------------------------------------------------------------------------
@right("ch08.mask_tokens", style="as the Hugging Face collator: rand < p, then bernoulli 0.8, then 0.5 of the rest")
def mask_tokens_collator_style(input_ids, special_ids, mask_token_id, vocab_size, mlm_probability=0.15,
                               generator=None):
    is_special = torch.zeros_like(input_ids, dtype=torch.bool)
    for s in special_ids:
        is_special |= input_ids == s
    selected = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & ~is_special
    labels = input_ids.masked_fill(~selected, -100)
    inputs = input_ids.clone()
    masked = selected & torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool()
    inputs[masked] = mask_token_id
    randomised = selected & ~masked & torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool()
    random_ids = torch.randint(0, vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    inputs = torch.where(randomised, random_ids, inputs)
    return inputs, labels


@right("ch08.mask_tokens", style="plain Python loop over positions, uniforms drawn up front")
def mask_tokens_loop(input_ids, special_ids, mask_token_id, vocab_size, mlm_probability=0.15, generator=None):
    B, T = input_ids.shape
    special = set(int(s) for s in special_ids)
    ids = input_ids.tolist()
    select_u = torch.rand(B, T, generator=generator).tolist()
    action_u = torch.rand(B, T, generator=generator).tolist()
    replacements = torch.randint(vocab_size, (B, T), generator=generator).tolist()
    inputs = [row[:] for row in ids]
    labels = [[-100] * T for _ in range(B)]
    for b in range(B):
        for t in range(T):
            if ids[b][t] in special or select_u[b][t] >= mlm_probability:
                continue
            labels[b][t] = ids[b][t]
            if action_u[b][t] < 0.8:
                inputs[b][t] = mask_token_id
            elif action_u[b][t] < 0.9:
                inputs[b][t] = replacements[b][t]
    return torch.tensor(inputs, dtype=torch.int64), torch.tensor(labels, dtype=torch.int64)


# -- mlm_loss -------------------------------------------------------------------------------
@right("ch08.mlm_loss", style="loss at every position (labels clamped), weighted by the mask, divided by the count")
def mlm_loss_weighted(logits, labels):
    valid = labels != -100
    safe = labels.clamp(min=0)
    m = logits.amax(-1, keepdim=True)
    log_z = (logits - m).exp().sum(-1).log() + m.squeeze(-1)
    nll = log_z - logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    w = valid.to(logits.dtype)
    return (nll * w).sum() / w.sum()


@right("ch08.mlm_loss", style="torch.logsumexp and log_softmax written out on the flattened rows")
def mlm_loss_flat(logits, labels):
    V = logits.size(-1)
    rows = logits.reshape(-1, V)
    targets = labels.reshape(-1)
    idx = torch.nonzero(targets != -100).squeeze(1)
    chosen = rows.index_select(0, idx)
    log_probs = chosen - torch.logsumexp(chosen, dim=-1, keepdim=True)
    return -log_probs[torch.arange(len(idx)), targets[idx]].mean()


# -- span_corruption ------------------------------------------------------------------------
def _t5_counts(n, density, mean_len):
    n_noise = min(max(round(n * density), 1), n - 1)
    n_spans = max(1, round(n_noise / mean_len))
    return n_noise, min(n_spans, n_noise, n - n_noise)


def _segments(total, parts, generator):
    """T5's random segmentation: shuffle (parts - 1) ones among zeros, cumsum, count."""
    marks = torch.tensor([1] * (parts - 1) + [0] * (total - parts), dtype=torch.long)
    marks = marks[torch.randperm(total - 1, generator=generator)] if total > 1 else marks
    first_of_segment = torch.cat([torch.zeros(1, dtype=torch.long), marks])
    segment_id = torch.cumsum(first_of_segment, 0)
    return torch.bincount(segment_id, minlength=parts).tolist()


@right("ch08.span_corruption", style="T5's own noise-mask construction (shuffled segment starts), then a mask walk")
def span_corruption_t5_mask(tokens, sentinel_ids, noise_density=0.15, mean_span_length=3.0, generator=None):
    n = len(tokens)
    n_noise, n_spans = _t5_counts(n, noise_density, mean_span_length)
    noise = _segments(n_noise, n_spans, generator)
    kept = _segments(n - n_noise, n_spans, generator)
    mask = []
    for k_len, n_len in zip(kept, noise):
        mask += [False] * k_len + [True] * n_len
    inputs, targets, span = [], [], 0
    for i, tok in enumerate(tokens):
        if mask[i]:
            if i == 0 or not mask[i - 1]:
                inputs.append(sentinel_ids[span])
                targets.append(sentinel_ids[span])
                span += 1
            targets.append(tok)
        else:
            inputs.append(tok)
    targets.append(sentinel_ids[span])
    return inputs, targets


def _composition(total, parts, generator):
    """`total` as `parts` positive lengths: parts - 1 distinct cut points drawn without replacement."""
    if parts == 1:
        return [total]
    cuts = torch.multinomial(torch.ones(total - 1), parts - 1, replacement=False, generator=generator) + 1
    edges = [0] + sorted(cuts.tolist()) + [total]
    return [b - a for a, b in zip(edges, edges[1:])]


@right("ch08.span_corruption", style="cut points by multinomial without replacement, runs grouped with itertools.groupby")
def span_corruption_groupby(tokens, sentinel_ids, noise_density=0.15, mean_span_length=3.0, generator=None):
    n = len(tokens)
    n_noise, n_spans = _t5_counts(n, noise_density, mean_span_length)
    noise_runs = _composition(n_noise, n_spans, generator)
    keep_runs = _composition(n - n_noise, n_spans, generator)
    flags = list(itertools.chain.from_iterable([0] * a + [1] * b for a, b in zip(keep_runs, noise_runs)))
    sentinels = iter(sentinel_ids)
    inputs, targets = [], []
    position = 0
    for is_noise, run in itertools.groupby(flags):
        length = len(list(run))
        piece = tokens[position:position + length]
        position += length
        if is_noise:
            s = next(sentinels)
            inputs.append(s)
            targets.extend([s, *piece])
        else:
            inputs.extend(piece)
    targets.append(next(sentinels))
    return inputs, targets


# -- shift_right ----------------------------------------------------------------------------
@right("ch08.shift_right", style="torch.cat of a start column and the labels minus their last column, torch.where")
def shift_right_cat(labels, decoder_start_token_id, pad_token_id):
    start = torch.full((labels.shape[0], 1), decoder_start_token_id, dtype=labels.dtype)
    shifted = torch.cat([start, labels[:, :-1]], dim=1)
    return torch.where(shifted == -100, torch.full_like(shifted, pad_token_id), shifted)


@right("ch08.shift_right", style="Python lists, row by row")
def shift_right_lists(labels, decoder_start_token_id, pad_token_id):
    rows = []
    for row in labels.tolist():
        moved = [decoder_start_token_id] + row[:-1]
        rows.append([pad_token_id if t == -100 else t for t in moved])
    return torch.tensor(rows, dtype=torch.long).reshape(labels.shape)


# -- relative_position_bucket ---------------------------------------------------------------
def _log_bucket(distance, n, max_distance):
    """float32 log buckets for distances >= n // 2 (others are ignored by the caller)."""
    exact = n // 2
    ratio = distance.to(torch.float32).clamp(min=1.0) / exact
    val = torch.log(ratio) / math.log(max_distance / exact) * (n - exact)
    return torch.minimum(exact + val.to(torch.int64), torch.tensor(n - 1))


@right("ch08.relative_position_bucket", style="sign handled by torch.where, torch.minimum for the cap")
def bucket_where(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    rp = relative_position
    if bidirectional:
        n = num_buckets // 2
        base = torch.where(rp > 0, torch.full_like(rp, n), torch.zeros_like(rp))
        dist = torch.where(rp < 0, -rp, rp)
    else:
        n = num_buckets
        base = torch.zeros_like(rp)
        dist = torch.where(rp < 0, -rp, torch.zeros_like(rp))
    small = dist < n // 2
    return base + torch.where(small, dist, _log_bucket(dist, n, max_distance))


@right("ch08.relative_position_bucket", style="a lookup table over distances 0..max_distance, indexed by the clamped distance")
def bucket_table(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    n = num_buckets // 2 if bidirectional else num_buckets
    exact = n // 2
    d = torch.arange(max_distance + 1)
    table = torch.where(d < exact, d, _log_bucket(d, n, max_distance))  # bucket of each distance
    if bidirectional:
        dist = relative_position.abs()
        offset = n * (relative_position > 0).to(torch.int64)
    else:
        dist = (-relative_position).clamp_min(0)
        offset = 0
    return table[dist.clamp(max=max_distance)] + offset


# -- t5_position_bias -----------------------------------------------------------------------
@right("ch08.t5_position_bias", style="double loop over query and key positions")
def t5_position_bias_loops(query_length, key_length, bias_table, bidirectional=True, num_buckets=32,
                           max_distance=128):
    H = bias_table.shape[1]
    out = torch.empty(1, H, query_length, key_length, dtype=bias_table.dtype)
    rel = torch.tensor([[j - i for j in range(key_length)] for i in range(query_length)], dtype=torch.int64)
    buckets = bucket_where(rel.reshape(query_length, key_length), bidirectional, num_buckets, max_distance)
    for i in range(query_length):
        for j in range(key_length):
            out[0, :, i, j] = bias_table[buckets[i, j]]
    return out


@right("ch08.t5_position_bias", style="torch.meshgrid and F.embedding, heads moved to the front with movedim")
def t5_position_bias_embedding(query_length, key_length, bias_table, bidirectional=True, num_buckets=32,
                               max_distance=128):
    qi, kj = torch.meshgrid(torch.arange(query_length), torch.arange(key_length), indexing="ij")
    buckets = bucket_table(kj - qi, bidirectional, num_buckets, max_distance)
    values = F.embedding(buckets, bias_table)  # (q, k, H)
    return values.movedim(-1, 0)[None]


# -- t5_cross_attention ---------------------------------------------------------------------
@right("ch08.t5_cross_attention", style="einsum with the weights, -inf where the source is padding")
def t5_cross_attention_einsum(x, memory, memory_mask, w_q, w_k, w_v, w_o, n_heads):
    B, Tq, _ = x.shape
    Tk = memory.shape[1]
    d_kv = w_q.shape[0] // n_heads
    q = torch.einsum("btd,ed->bte", x, w_q).reshape(B, Tq, n_heads, d_kv)
    k = torch.einsum("btd,ed->bte", memory, w_k).reshape(B, Tk, n_heads, d_kv)
    v = torch.einsum("btd,ed->bte", memory, w_v).reshape(B, Tk, n_heads, d_kv)
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k)
    pad = memory_mask == 0
    scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    ctx = torch.einsum("bhqk,bkhe->bqhe", scores.softmax(-1), v).reshape(B, Tq, n_heads * d_kv)
    return torch.einsum("bte,de->btd", ctx, w_o)


@right("ch08.t5_cross_attention", style="head by head with F.linear, additive (1 - mask) * finfo.min bias")
def t5_cross_attention_heads(x, memory, memory_mask, w_q, w_k, w_v, w_o, n_heads):
    Q, K, V = F.linear(x, w_q), F.linear(memory, w_k), F.linear(memory, w_v)
    d_kv = Q.shape[-1] // n_heads
    bias = (1.0 - memory_mask.to(x.dtype))[:, None, :] * torch.finfo(x.dtype).min  # (B, 1, Tk)
    outs = []
    for h in range(n_heads):
        cols = slice(h * d_kv, (h + 1) * d_kv)
        w = torch.softmax(Q[..., cols] @ K[..., cols].transpose(1, 2) + bias, dim=-1)
        outs.append(w @ V[..., cols])
    return F.linear(torch.cat(outs, dim=-1), w_o)
