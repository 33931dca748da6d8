"""Wrong answers to chapter 8, as learners write them."""
import math

import torch

from . import wrong


# -- mask_tokens ----------------------------------------------------------------------------
@wrong("ch08.mask_tokens", diagnosis="special-tokens")
def mask_tokens_masks_cls_and_pad(input_ids, special_ids, mask_token_id, vocab_size, mlm_probability=0.15,
                                  generator=None):
    inputs = input_ids.clone()
    labels = input_ids.clone()
    selected = torch.rand(input_ids.shape, generator=generator) < mlm_probability
    labels[~selected] = -100
    r = torch.rand(input_ids.shape, generator=generator)
    inputs[selected & (r < 0.8)] = mask_token_id
    rnd = selected & (r >= 0.8) & (r < 0.9)
    inputs[rnd] = torch.randint(0, vocab_size, input_ids.shape, generator=generator)[rnd]
    return inputs, labels


@wrong("ch08.mask_tokens", diagnosis="all-mask")
def mask_tokens_only_mask(input_ids, special_ids, mask_token_id, vocab_size, mlm_probability=0.15, generator=None):
    is_special = torch.zeros_like(input_ids, dtype=torch.bool)
    for s in special_ids:
        is_special |= input_ids == s
    selected = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & ~is_special
    inputs = input_ids.masked_fill(selected, mask_token_id)
    labels = input_ids.masked_fill(~selected, -100)
    return inputs, labels


@wrong("ch08.mask_tokens", diagnosis="unscaled-random")
def mask_tokens_ten_percent_of_the_rest(input_ids, special_ids, mask_token_id, vocab_size, mlm_probability=0.15,
                                        generator=None):
    special = torch.isin(input_ids, torch.tensor(special_ids))
    p = torch.full(input_ids.shape, mlm_probability).masked_fill(special, 0.0)
    selected = torch.bernoulli(p, generator=generator).bool()
    labels = torch.where(selected, input_ids, -100)
    inputs = input_ids.clone()
    masked = selected & torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool()
    inputs[masked] = mask_token_id
    # "10% random": but of the remaining 20%, so only 2% overall
    rand = selected & ~masked & torch.bernoulli(torch.full(input_ids.shape, 0.1), generator=generator).bool()
    inputs[rand] = torch.randint(vocab_size, input_ids.shape, generator=generator)[rand]
    return inputs, labels


@wrong("ch08.mask_tokens", diagnosis="labels-everywhere")
def mask_tokens_labels_are_the_inputs(input_ids, special_ids, mask_token_id, vocab_size, mlm_probability=0.15,
                                      generator=None):
    special = torch.isin(input_ids, torch.tensor(special_ids))
    selected = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & ~special
    u = torch.rand(input_ids.shape, generator=generator)
    inputs = input_ids.clone()
    inputs[selected & (u < 0.8)] = mask_token_id
    rnd = selected & (u >= 0.8) & (u < 0.9)
    inputs[rnd] = torch.randint(vocab_size, (int(rnd.sum()),), generator=generator)
    return inputs, input_ids.clone()


@wrong("ch08.mask_tokens", diagnosis="labels-from-inputs")
def mask_tokens_labels_after_corruption(input_ids, special_ids, mask_token_id, vocab_size, mlm_probability=0.15,
                                        generator=None):
    special = torch.isin(input_ids, torch.tensor(special_ids))
    selected = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & ~special
    u = torch.rand(input_ids.shape, generator=generator)
    inputs = input_ids.clone()
    inputs[selected & (u < 0.8)] = mask_token_id
    rnd = selected & (u >= 0.8) & (u < 0.9)
    inputs[rnd] = torch.randint(vocab_size, (int(rnd.sum()),), generator=generator)
    labels = inputs.clone()
    labels[~selected] = -100
    return inputs, labels


@wrong("ch08.mask_tokens", diagnosis=None)
def mask_tokens_in_place(input_ids, special_ids, mask_token_id, vocab_size, mlm_probability=0.15, generator=None):
    special = torch.isin(input_ids, torch.tensor(special_ids))
    selected = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & ~special
    labels = torch.where(selected, input_ids, -100)
    u = torch.rand(input_ids.shape, generator=generator)
    input_ids[selected & (u < 0.8)] = mask_token_id  # modifies the caller's tensor
    return input_ids, labels


@wrong("ch08.mask_tokens", diagnosis=None)
def mask_tokens_exactly_first_15_percent(input_ids, special_ids, mask_token_id, vocab_size, mlm_probability=0.15,
                                         generator=None):
    inputs, labels = input_ids.clone(), torch.full_like(input_ids, -100)
    n = int(input_ids.shape[1] * mlm_probability)
    labels[:, 1:1 + n] = input_ids[:, 1:1 + n]
    inputs[:, 1:1 + n] = mask_token_id
    return inputs, labels


# -- mlm_loss -------------------------------------------------------------------------------
@wrong("ch08.mlm_loss", diagnosis="all-positions")
def mlm_loss_divides_by_all(logits, labels):
    mask = labels != -100
    logp = torch.log_softmax(logits, dim=-1)
    safe = labels.clamp(min=0)
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return (nll * mask).mean()


@wrong("ch08.mlm_loss", diagnosis="per-sequence")
def mlm_loss_mean_of_row_means(logits, labels):
    losses = []
    for b in range(labels.shape[0]):
        keep = labels[b] != -100
        if keep.sum() == 0:
            continue
        logp = torch.log_softmax(logits[b][keep], dim=-1)
        losses.append(-logp[torch.arange(int(keep.sum())), labels[b][keep]].mean())
    return torch.stack(losses).mean()


@wrong("ch08.mlm_loss", diagnosis="overflow")
def mlm_loss_softmax_then_log(logits, labels):
    keep = labels != -100
    probs = torch.exp(logits[keep]) / torch.exp(logits[keep]).sum(-1, keepdim=True)
    return -torch.log(probs[torch.arange(len(probs)), labels[keep]]).mean()


@wrong("ch08.mlm_loss", diagnosis="sum")
def mlm_loss_summed(logits, labels):
    keep = labels != -100
    logp = torch.log_softmax(logits[keep], dim=-1)
    return -logp.gather(1, labels[keep][:, None]).sum()


@wrong("ch08.mlm_loss", diagnosis=None)
def mlm_loss_over_every_position(logits, labels):
    logp = torch.log_softmax(logits, dim=-1)
    return -logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).mean()


# -- span_corruption ------------------------------------------------------------------------
def _spans_t5_like(n, density, mean_len, generator):
    n_noise = min(max(round(n * density), 1), n - 1)
    n_spans = max(1, round(n_noise / mean_len))
    n_spans = min(n_spans, n_noise, n - n_noise)

    def split(total, parts):
        cuts = sorted((torch.randperm(total - 1, generator=generator)[: parts - 1] + 1).tolist())
        return [b - a for a, b in zip([0] + cuts, cuts + [total])]
    return split(n_noise, n_spans), split(n - n_noise, n_spans)


@wrong("ch08.span_corruption", diagnosis="no-final-sentinel")
def span_corruption_without_closing_sentinel(tokens, sentinel_ids, noise_density=0.15, mean_span_length=3.0,
                                             generator=None):
    noise, keep = _spans_t5_like(len(tokens), noise_density, mean_span_length, generator)
    inputs, targets, i = [], [], 0
    for k, (a, b) in enumerate(zip(keep, noise)):
        inputs += tokens[i:i + a] + [sentinel_ids[k]]
        targets += [sentinel_ids[k]] + tokens[i + a:i + a + b]
        i += a + b
    return inputs, targets


@wrong("ch08.span_corruption", diagnosis="same-sentinel")
def span_corruption_one_mask_token(tokens, sentinel_ids, noise_density=0.15, mean_span_length=3.0, generator=None):
    noise, keep = _spans_t5_like(len(tokens), noise_density, mean_span_length, generator)
    inputs, targets, i = [], [], 0
    for a, b in zip(keep, noise):
        inputs += tokens[i:i + a] + [sentinel_ids[0]]
        targets += [sentinel_ids[0]] + tokens[i + a:i + a + b]
        i += a + b
    return inputs, targets + [sentinel_ids[0]]


@wrong("ch08.span_corruption", diagnosis="iid-noise")
def span_corruption_bernoulli_per_token(tokens, sentinel_ids, noise_density=0.15, mean_span_length=3.0, generator=None):
    noisy = (torch.rand(len(tokens), generator=generator) < noise_density).tolist()
    inputs, targets, k = [], [], 0
    for i, t in enumerate(tokens):
        if noisy[i]:
            if i == 0 or not noisy[i - 1]:
                inputs.append(sentinel_ids[k])
                targets.append(sentinel_ids[k])
                k += 1
            targets.append(t)
        else:
            inputs.append(t)
    targets.append(sentinel_ids[k])
    return inputs, targets


@wrong("ch08.span_corruption", diagnosis=None)
def span_corruption_forgets_sentinels_in_targets(tokens, sentinel_ids, noise_density=0.15, mean_span_length=3.0,
                                                 generator=None):
    noise, keep = _spans_t5_like(len(tokens), noise_density, mean_span_length, generator)
    inputs, targets, i = [], [], 0
    for k, (a, b) in enumerate(zip(keep, noise)):
        inputs += tokens[i:i + a] + [sentinel_ids[k]]
        targets += tokens[i + a:i + a + b]
        i += a + b
    return inputs, targets


@wrong("ch08.span_corruption", diagnosis=None)
def span_corruption_always_at_the_start(tokens, sentinel_ids, noise_density=0.15, mean_span_length=3.0,
                                        generator=None):
    n_noise = min(max(round(len(tokens) * noise_density), 1), len(tokens) - 1)
    return [sentinel_ids[0]] + tokens[n_noise:], [sentinel_ids[0]] + tokens[:n_noise] + [sentinel_ids[1]]


@wrong("ch08.span_corruption", diagnosis=None)
def span_corruption_spans_anywhere(tokens, sentinel_ids, noise_density=0.15, mean_span_length=3.0, generator=None):
    # Right counts and format, but a single span is put anywhere (T5's layout ends with the noise run).
    noise, keep = _spans_t5_like(len(tokens), noise_density, mean_span_length, generator)
    if len(noise) == 1:
        start = int(torch.randint(0, len(tokens) - noise[0] + 1, (1,), generator=generator))
        keep = [start]
    inputs, targets, i = [], [], 0
    for k, (a, b) in enumerate(zip(keep, noise)):
        inputs += tokens[i:i + a] + [sentinel_ids[k]]
        targets += [sentinel_ids[k]] + tokens[i + a:i + a + b]
        i += a + b
    return inputs + tokens[i:], targets + [sentinel_ids[len(noise)]]


# -- shift_right ----------------------------------------------------------------------------
@wrong("ch08.shift_right", diagnosis="keep-ignore")
def shift_right_leaves_minus_100(labels, decoder_start_token_id, pad_token_id):
    start = torch.full((labels.shape[0], 1), decoder_start_token_id, dtype=labels.dtype)
    return torch.cat([start, labels[:, :-1]], dim=1)


@wrong("ch08.shift_right", diagnosis="shift-left")
def shift_right_goes_left(labels, decoder_start_token_id, pad_token_id):
    out = torch.roll(labels, -1, dims=1)
    out[:, -1] = pad_token_id
    out[out == -100] = pad_token_id
    return out


@wrong("ch08.shift_right", diagnosis="pad-start")
def shift_right_starts_with_pad(labels, decoder_start_token_id, pad_token_id):
    out = labels.new_full(labels.shape, pad_token_id)
    out[:, 1:] = labels[:, :-1]
    out[out == -100] = pad_token_id
    return out


@wrong("ch08.shift_right", diagnosis=None)
def shift_right_with_roll(labels, decoder_start_token_id, pad_token_id):
    out = torch.roll(labels, 1, dims=1)  # the last label wraps around to position 0 ...
    out[out == -100] = pad_token_id
    return out


# -- relative_position_bucket ---------------------------------------------------------------
def _log_bucket(d, n, max_distance, rounding=False, cap=True):
    exact = n // 2
    v = torch.log(d.clamp(min=1).float() / exact) / math.log(max_distance / exact) * (n - exact)
    big = exact + (torch.round(v).long() if rounding else v.long())
    if cap:
        big = big.clamp(max=n - 1)
    return torch.where(d < exact, d, big)


@wrong("ch08.relative_position_bucket", diagnosis="sign-flipped")
def bucket_query_minus_key(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    rel = -relative_position  # "distance from key to query"
    if bidirectional:
        n = num_buckets // 2
        return (rel > 0).long() * n + _log_bucket(rel.abs(), n, max_distance)
    return _log_bucket(torch.clamp(-rel, min=0), num_buckets, max_distance)


@wrong("ch08.relative_position_bucket", diagnosis="no-halving")
def bucket_full_range_each_side(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    if bidirectional:
        side = (relative_position > 0).long() * num_buckets
        return side + _log_bucket(relative_position.abs(), num_buckets, max_distance)
    return _log_bucket(torch.clamp(-relative_position, min=0), num_buckets, max_distance)


@wrong("ch08.relative_position_bucket", diagnosis="no-cap")
def bucket_without_min(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    n = num_buckets // 2 if bidirectional else num_buckets
    side = (relative_position > 0).long() * n if bidirectional else 0
    d = relative_position.abs() if bidirectional else torch.clamp(-relative_position, min=0)
    return side + _log_bucket(d, n, max_distance, cap=False)


@wrong("ch08.relative_position_bucket", diagnosis="rounded")
def bucket_rounds(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    n = num_buckets // 2 if bidirectional else num_buckets
    side = (relative_position > 0).long() * n if bidirectional else 0
    d = relative_position.abs() if bidirectional else torch.clamp(-relative_position, min=0)
    return side + _log_bucket(d, n, max_distance, rounding=True)


@wrong("ch08.relative_position_bucket", diagnosis=None)
def bucket_float_division_log2(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    n = num_buckets // 2 if bidirectional else num_buckets
    side = (relative_position > 0).long() * n if bidirectional else 0
    d = relative_position.abs() if bidirectional else torch.clamp(-relative_position, min=0)
    exact = n // 2
    big = exact + (torch.log2(d.clamp(min=1).float()) * 2).long()  # a made-up log scale
    return side + torch.where(d < exact, d, big.clamp(max=n - 1))


# -- t5_position_bias -----------------------------------------------------------------------
def _bucket(rel, bidirectional, num_buckets, max_distance):
    n = num_buckets // 2 if bidirectional else num_buckets
    side = (rel > 0).long() * n if bidirectional else 0
    d = rel.abs() if bidirectional else torch.clamp(-rel, min=0)
    return side + _log_bucket(d, n, max_distance)


@wrong("ch08.t5_position_bias", diagnosis="query-minus-key")
def position_bias_i_minus_j(query_length, key_length, bias_table, bidirectional=True, num_buckets=32, max_distance=128):
    i = torch.arange(query_length)[:, None]
    j = torch.arange(key_length)[None, :]
    b = _bucket(i - j, bidirectional, num_buckets, max_distance)
    return bias_table[b].permute(2, 0, 1)[None]


@wrong("ch08.t5_position_bias", diagnosis="not-permuted")
def position_bias_heads_last(query_length, key_length, bias_table, bidirectional=True, num_buckets=32, max_distance=128):
    rel = torch.arange(key_length)[None, :] - torch.arange(query_length)[:, None]
    b = _bucket(rel, bidirectional, num_buckets, max_distance)
    return bias_table[b].unsqueeze(0)


@wrong("ch08.t5_position_bias", diagnosis="direction")
def position_bias_always_bidirectional(query_length, key_length, bias_table, bidirectional=True, num_buckets=32,
                                       max_distance=128):
    rel = torch.arange(key_length)[None, :] - torch.arange(query_length)[:, None]
    b = _bucket(rel, not bidirectional, num_buckets, max_distance)
    return bias_table[b].permute(2, 0, 1).unsqueeze(0)


@wrong("ch08.t5_position_bias", diagnosis=None)
def position_bias_wrong_reshape(query_length, key_length, bias_table, bidirectional=True, num_buckets=32,
                                max_distance=128):
    rel = torch.arange(key_length)[None, :] - torch.arange(query_length)[:, None]
    b = _bucket(rel, bidirectional, num_buckets, max_distance)
    return bias_table[b].reshape(1, -1, query_length, key_length)  # reshape is not a transpose


# -- t5_cross_attention ---------------------------------------------------------------------
def _heads(t, h):
    B, T, _ = t.shape
    return t.view(B, T, h, -1).transpose(1, 2)


@wrong("ch08.t5_cross_attention", diagnosis="scaled")
def cross_attention_scaled(x, memory, memory_mask, w_q, w_k, w_v, w_o, n_heads):
    q, k, v = _heads(x @ w_q.T, n_heads), _heads(memory @ w_k.T, n_heads), _heads(memory @ w_v.T, n_heads)
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = s.masked_fill(memory_mask[:, None, None, :] == 0, -1e9)
    out = torch.softmax(s, -1) @ v
    return out.transpose(1, 2).flatten(2) @ w_o.T


@wrong("ch08.t5_cross_attention", diagnosis="no-mask")
def cross_attention_ignores_padding(x, memory, memory_mask, w_q, w_k, w_v, w_o, n_heads):
    q, k, v = _heads(x @ w_q.T, n_heads), _heads(memory @ w_k.T, n_heads), _heads(memory @ w_v.T, n_heads)
    out = torch.softmax(q @ k.transpose(-2, -1), -1) @ v
    return out.transpose(1, 2).flatten(2) @ w_o.T


@wrong("ch08.t5_cross_attention", diagnosis="causal")
def cross_attention_with_causal_mask(x, memory, memory_mask, w_q, w_k, w_v, w_o, n_heads):
    q, k, v = _heads(x @ w_q.T, n_heads), _heads(memory @ w_k.T, n_heads), _heads(memory @ w_v.T, n_heads)
    s = q @ k.transpose(-2, -1)
    Tq, Tk = s.shape[-2:]
    allowed = torch.tril(torch.ones(Tq, Tk, dtype=torch.bool)) & memory_mask.bool()[:, None, None, :]
    s = s.masked_fill(~allowed, float("-inf"))
    out = torch.softmax(s, -1) @ v
    return out.transpose(1, 2).flatten(2) @ w_o.T


@wrong("ch08.t5_cross_attention", diagnosis="softmax-dim")
def cross_attention_softmax_over_queries(x, memory, memory_mask, w_q, w_k, w_v, w_o, n_heads):
    q, k, v = _heads(x @ w_q.T, n_heads), _heads(memory @ w_k.T, n_heads), _heads(memory @ w_v.T, n_heads)
    s = (q @ k.transpose(-2, -1)).masked_fill(~memory_mask.bool()[:, None, None, :], float("-inf"))
    out = torch.softmax(s, dim=2) @ v
    return out.transpose(1, 2).flatten(2) @ w_o.T


@wrong("ch08.t5_cross_attention", diagnosis=None)
def cross_attention_heads_split_wrong(x, memory, memory_mask, w_q, w_k, w_v, w_o, n_heads):
    B, Tq, _ = x.shape
    Tk = memory.shape[1]
    # view(B, H, T, d) without the transpose mixes positions and heads
    q = (x @ w_q.T).view(B, n_heads, Tq, -1)
    k = (memory @ w_k.T).view(B, n_heads, Tk, -1)
    v = (memory @ w_v.T).view(B, n_heads, Tk, -1)
    s = (q @ k.transpose(-2, -1)).masked_fill(~memory_mask.bool()[:, None, None, :], float("-inf"))
    return (torch.softmax(s, -1) @ v).reshape(B, Tq, -1) @ w_o.T


@wrong("ch08.span_corruption", diagnosis=None)
def span_corruption_rarely_opens_with_noise(tokens, sentinel_ids, noise_density=0.15, mean_span_length=3.0,
                                             generator=None):
    # T5's counts and random lengths, but now and then the runs are laid out noise first:
    # right in the statistics, wrong on the calls where the first token is hidden.
    noise, keep = _spans_t5_like(len(tokens), noise_density, mean_span_length, generator)
    noise_first = float(torch.rand(1, generator=generator)) < 0.04
    runs = []
    for a, b in zip(keep, noise):
        runs += [("noise", b), ("keep", a)] if noise_first else [("keep", a), ("noise", b)]
    inputs, targets, i, k = [], [], 0, 0
    for kind, length in runs:
        if kind == "keep":
            inputs += tokens[i:i + length]
        else:
            inputs.append(sentinel_ids[k])
            targets += [sentinel_ids[k]] + tokens[i:i + length]
            k += 1
        i += length
    return inputs, targets + [sentinel_ids[k]]
