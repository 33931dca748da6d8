"""Correct answers to chapter 18, in other styles than the reference."""
import math

import numpy as np
import torch
import torch.nn.functional as F

from . import right

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]


# -- absmax_quantize ------------------------------------------------------------------------
@right("ch18.absmax_quantize", style="numpy, np.rint (half to even)")
def absmax_numpy(x):
    a = x.numpy().astype(np.float32)
    m = np.float32(np.abs(a).max())
    scale = m / np.float32(127) if m > 0 else np.float32(1)
    q = np.clip(np.rint(a / scale), -127, 127).astype(np.int8)
    return torch.from_numpy(q), torch.tensor(scale)


@right("ch18.absmax_quantize", style="multiply by 127 / absmax, round with torch.round")
def absmax_inverse(x):
    m = torch.amax(torch.abs(x))
    scale = m / 127
    q = torch.round(x * (127 / m)) if m > 0 else torch.zeros_like(x)
    return q.to(torch.int8), scale if m > 0 else torch.tensor(1.0)


# -- zeropoint_quantize ---------------------------------------------------------------------
@right("ch18.zeropoint_quantize", style="python floats for the parameters")
def zeropoint_python(x):
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = torch.tensor((hi - lo) / 255, dtype=torch.float32)
    zp = int(torch.round(-torch.tensor(lo, dtype=torch.float32) / scale).clamp(0, 255))
    q = torch.clamp(torch.round(x / scale) + zp, 0, 255).to(torch.uint8)
    return q, scale, zp


@right("ch18.zeropoint_quantize", style="numpy rint, zero point as an int tensor")
def zeropoint_numpy(x):
    a = x.numpy().astype(np.float32)
    lo, hi = np.float32(min(a.min(), 0)), np.float32(max(a.max(), 0))
    scale = (hi - lo) / np.float32(255)
    zp = int(np.clip(np.rint(-lo / scale), 0, 255))
    q = np.clip(np.rint(a / scale) + zp, 0, 255).astype(np.uint8)
    return torch.from_numpy(q), torch.tensor(scale), torch.tensor(zp)


# -- dequantize -----------------------------------------------------------------------------
@right("ch18.dequantize", style="float64 inside")
def dequantize_double(q, scale, zero_point=0):
    return ((q.double() - torch.as_tensor(zero_point).double()) * scale.double()).float()


@right("ch18.dequantize", style="int16 subtraction, torch.mul")
def dequantize_int16(q, scale, zero_point=0):
    diff = q.to(torch.int16) - torch.as_tensor(zero_point, dtype=torch.int16)
    return torch.mul(diff.float(), scale)


# -- groupwise_quantize ---------------------------------------------------------------------
@right("ch18.groupwise_quantize", style="a loop over groups with slicing")
def groupwise_loop(w, bits=4, group_size=None):
    rows, cols = w.shape
    g = group_size or cols
    qmax = 2 ** (bits - 1) - 1
    q = torch.empty(rows, cols, dtype=torch.int8)
    scales = torch.empty(rows, math.ceil(cols / g))
    for j, start in enumerate(range(0, cols, g)):
        block = w[:, start:start + g]
        s = block.abs().amax(dim=1) / qmax
        s[s == 0] = 1.0
        scales[:, j] = s
        q[:, start:start + g] = torch.round(block / s[:, None]).clamp(-qmax, qmax).to(torch.int8)
    return q, scales


@right("ch18.groupwise_quantize", style="tensor_split per row, scales expanded with repeat_interleave")
def groupwise_split(w, bits=4, group_size=None):
    rows, cols = w.shape
    g = group_size if group_size is not None else cols
    qmax = (1 << (bits - 1)) - 1
    parts = torch.split(w, g, dim=1)
    scales = torch.stack([p.abs().max(dim=1).values for p in parts], dim=1) / qmax
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)
    full = scales.repeat_interleave(g, dim=1)[:, :cols]
    return torch.clamp(torch.round(w / full), -qmax, qmax).to(torch.int8), scales


# -- nf4_quantize ---------------------------------------------------------------------------
@right("ch18.nf4_quantize", style="searchsorted on the midpoints, a loop over blocks")
def nf4_searchsorted(x, blocksize=64):
    levels = torch.tensor(NF4)
    mids = (levels[1:] + levels[:-1]) / 2
    flat = x.flatten().float()
    idx, absmax = [], []
    for start in range(0, len(flat), blocksize):
        b = flat[start:start + blocksize]
        m = b.abs().max()
        absmax.append(m)
        s = b * (1.0 / m) if m > 0 else torch.zeros_like(b)
        idx.append(torch.searchsorted(mids, s.clamp(-1, 1), right=False))
    idx = torch.cat(idx)
    if len(idx) % 2:
        idx = torch.cat([idx, torch.tensor([7])])
    idx = idx.to(torch.uint8)
    return idx[0::2] * 16 + idx[1::2], torch.stack(absmax)


@right("ch18.nf4_quantize", style="nearest code by argmin of the distance, numpy packing")
def nf4_argmin(x, blocksize=64):
    levels = torch.tensor(NF4)
    flat = x.reshape(-1).float()
    n = flat.numel()
    nb = math.ceil(n / blocksize)
    padded = torch.cat([flat, torch.zeros(nb * blocksize - n)]).view(nb, blocksize)
    absmax = padded.abs().amax(1)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    s = (padded * (1.0 / safe)[:, None]).reshape(-1)
    idx = (s[:, None] - levels[None]).abs().argmin(1)[:n].numpy().astype(np.uint8)
    if n % 2:
        idx = np.append(idx, np.uint8(7))
    packed = (idx[0::2] << 4) | idx[1::2]
    return torch.from_numpy(packed.astype(np.uint8)), absmax


# -- nf4_dequantize -------------------------------------------------------------------------
@right("ch18.nf4_dequantize", style="divmod by 16, repeat_interleave of the absmax")
def nf4_deq_divmod(packed, absmax, shape, blocksize=64):
    levels = torch.tensor(NF4)
    n = math.prod(shape)
    p = packed.flatten().long()
    idx = torch.stack([torch.div(p, 16, rounding_mode="floor"), p % 16], 1).flatten()[:n]
    scale = absmax.repeat_interleave(blocksize)[:n]
    return (levels[idx] * scale).view(*shape)


@right("ch18.nf4_dequantize", style="a Python loop over the bytes")
def nf4_deq_loop(packed, absmax, shape, blocksize=64):
    n = math.prod(shape)
    values = []
    for byte in packed.reshape(-1).tolist():
        values += [NF4[byte >> 4], NF4[byte & 15]]
    out = torch.tensor(values[:n], dtype=torch.float32)
    for b in range(len(absmax)):
        out[b * blocksize:(b + 1) * blocksize] *= absmax[b]
    return out.reshape(tuple(shape))


# -- int8_linear ----------------------------------------------------------------------------
@right("ch18.int8_linear", style="int32 matmul with @, rescale by an outer product")
def int8_linear_int32(x, w_q, w_scale):
    s_x = x.abs().amax(1) / 127
    s_x = torch.where(s_x > 0, s_x, torch.ones_like(s_x))
    x_q = torch.round(x / s_x[:, None]).clamp(-127, 127).to(torch.int32)
    acc = x_q @ w_q.to(torch.int32).T
    return acc.float() * torch.outer(s_x, w_scale.float())


@right("ch18.int8_linear", style="int64 einsum, float64 rescale")
def int8_linear_einsum(x, w_q, w_scale):
    s_x = x.abs().max(dim=1, keepdim=True).values / 127
    s_x[s_x == 0] = 1
    x_q = torch.round(x / s_x).long()
    acc = torch.einsum("nk,mk->nm", x_q, w_q.long())
    return (acc.double() * s_x.double() * w_scale.double()).float()


# -- distillation_loss ----------------------------------------------------------------------
@right("ch18.distillation_loss", style="cross-entropy minus entropy")
def kd_ce_minus_entropy(student_logits, teacher_logits, temperature=2.0):
    T = temperature
    p_t = torch.softmax(teacher_logits / T, -1)
    ce = -(p_t * torch.log_softmax(student_logits / T, -1)).sum(-1)
    h = -(p_t * torch.log_softmax(teacher_logits / T, -1)).sum(-1)
    return T * T * (ce - h).mean()


@right("ch18.distillation_loss", style="logsumexp by hand, float64")
def kd_logsumexp(student_logits, teacher_logits, temperature=2.0):
    s = student_logits.double() / temperature
    t = teacher_logits.double() / temperature
    log_s = s - torch.logsumexp(s, -1, keepdim=True)
    log_t = t - torch.logsumexp(t, -1, keepdim=True)
    kl = torch.sum(torch.exp(log_t) * (log_t - log_s)) / s.shape[0]
    return (kl * temperature ** 2).float()


# -- generate_batch -------------------------------------------------------------------------
@right("ch18.generate_batch", style="no cache: the whole padded batch at every step")
def generate_no_cache(model, prompts, max_new_tokens, pad_id):
    L = max(len(p) for p in prompts)
    idx = torch.tensor([[pad_id] * (L - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[False] * (L - len(p)) + [True] * len(p) for p in prompts])
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            pos = (mask.long().cumsum(1) - 1).clamp(min=0)
            nxt = model(idx, pos, mask)[:, -1].argmax(-1, keepdim=True)
            new.append(nxt)
            idx = torch.cat([idx, nxt], 1)
            mask = torch.cat([mask, torch.ones_like(nxt, dtype=torch.bool)], 1)
    return torch.cat(new, 1)


@right("ch18.generate_batch", style="int mask, positions counted from each row's first token")
def generate_int_mask(model, prompts, max_new_tokens, pad_id):
    B, L = len(prompts), max(map(len, prompts))
    first = torch.tensor([L - len(p) for p in prompts])
    idx = torch.full((B, L), pad_id)
    for b, p in enumerate(prompts):
        idx[b, first[b]:] = torch.tensor(p)
    cols = torch.arange(L)
    mask = (cols[None] >= first[:, None]).long()
    pos = (cols[None] - first[:, None]).clamp(min=0)
    cache = model.new_cache()
    out = torch.empty(B, max_new_tokens, dtype=torch.long)
    with torch.no_grad():
        logits = model(idx, pos, mask, cache)
        for t in range(max_new_tokens):
            out[:, t] = logits[:, -1].argmax(-1)
            if t + 1 < max_new_tokens:
                mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.long)], 1)
                logits = model(out[:, t:t + 1], (L - first + t)[:, None], mask, cache)
    return out


# -- speculative_generate -------------------------------------------------------------------
@right("ch18.speculative_generate", style="no caches: full forward passes, tensors")
def speculative_no_cache(target, draft, prompt, max_new_tokens, k=4):
    seq = torch.tensor([prompt])
    accepted = []
    with torch.no_grad():
        while seq.shape[1] < len(prompt) + max_new_tokens:
            gamma = min(k, len(prompt) + max_new_tokens - seq.shape[1] - 1)
            ext = seq
            for _ in range(gamma):
                ext = torch.cat([ext, draft(ext)[:, -1:].argmax(-1)], 1)
            props = ext[0, seq.shape[1]:]
            choice = target(ext)[0, seq.shape[1] - 1:].argmax(-1)
            ok = (props == choice[:gamma]).long().cumprod(0)
            a = int(ok.sum())
            seq = torch.cat([seq, props[None, :a], choice[None, a:a + 1]], 1)
            accepted.append(a)
    return seq[0, len(prompt):].tolist(), accepted


@right("ch18.speculative_generate", style="caches rolled back by hand, draft re-fed each round")
def speculative_manual_caches(target, draft, prompt, max_new_tokens, k=4):
    t_cache = target.new_cache()
    tokens = list(prompt)
    goal = len(prompt) + max_new_tokens
    accepted = []
    with torch.no_grad():
        while len(tokens) < goal:
            gamma = min(k, goal - len(tokens) - 1)
            d_cache = draft.new_cache()  # a fresh draft cache each round: simple, a little slower
            proposals = []
            if gamma > 0:
                logits = draft(torch.tensor([tokens]), cache=d_cache)
                for _ in range(gamma):
                    proposals.append(int(logits[0, -1].argmax()))
                    logits = draft(torch.tensor([[proposals[-1]]]), cache=d_cache)
            start = t_cache[0].length
            out = target(torch.tensor([tokens[start:] + proposals]), cache=t_cache)[0]
            preds = out[len(tokens) - start - 1:].argmax(-1).tolist()
            a = 0
            for p, c in zip(proposals, preds):
                if p != c:
                    break
                a += 1
            for layer in t_cache:
                layer.length = len(tokens) + a
            tokens += proposals[:a] + [preds[a]]
            accepted.append(a)
    return tokens[len(prompt):], accepted
