"""Wrong answers to chapter 18, as learners write them."""
import math

import torch
import torch.nn.functional as F

from . import wrong

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]


# -- absmax_quantize ------------------------------------------------------------------------
@wrong("ch18.absmax_quantize", diagnosis="round-half-up")
def absmax_round_half_up(x):
    scale = x.abs().max() / 127
    q = torch.floor(x / scale + 0.5)
    return q.clamp(-127, 127).to(torch.int8), scale


@wrong("ch18.absmax_quantize", diagnosis="scale-from-max")
def absmax_from_max(x):
    scale = x.max() / 127
    return torch.round(x / scale).clamp(-127, 127).to(torch.int8), scale


@wrong("ch18.absmax_quantize", diagnosis="truncate")
def absmax_cast_only(x):
    scale = x.abs().max() / 127
    return (x / scale).to(torch.int8), scale


# -- zeropoint_quantize ---------------------------------------------------------------------
@wrong("ch18.zeropoint_quantize", diagnosis="zero-point-not-rounded")
def zeropoint_float_zero_point(x):
    lo, hi = min(x.min(), 0), max(x.max(), 0)
    scale = (hi - lo) / 255
    zero_point = -lo / scale
    q = torch.round(x / scale + zero_point).clamp(0, 255).to(torch.uint8)
    return q, scale, zero_point


@wrong("ch18.zeropoint_quantize", diagnosis="zero-point-not-clamped")
def zeropoint_min_max_only(x):
    scale = (x.max() - x.min()) / 255
    zero_point = torch.round(-x.min() / scale).long()
    q = (torch.round(x / scale) + zero_point).clamp(0, 255).to(torch.uint8)
    return q, scale, zero_point


@wrong("ch18.zeropoint_quantize", diagnosis="round-half-up")
def zeropoint_round_half_up(x):
    lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
    scale = (hi - lo) / 255
    zero_point = torch.floor(-lo / scale + 0.5).long().clamp(0, 255)
    q = (torch.floor(x / scale + 0.5) + zero_point).clamp(0, 255).to(torch.uint8)
    return q, scale, zero_point


@wrong("ch18.zeropoint_quantize", diagnosis="range-without-zero")
def zeropoint_clamped_but_range_without_zero(x):
    lo, hi = x.min(), x.max()
    scale = (hi - lo) / 255
    zero_point = torch.round(-lo / scale).clamp(0, 255).long()
    q = (torch.round(x / scale) + zero_point).clamp(0, 255).to(torch.uint8)
    return q, scale, zero_point


# -- dequantize -----------------------------------------------------------------------------
@wrong("ch18.dequantize", diagnosis="uint8-wraparound")
def dequantize_in_uint8(q, scale, zero_point=0):
    return (q - zero_point) * scale


@wrong("ch18.dequantize", diagnosis="zero-point-ignored")
def dequantize_no_zero_point(q, scale, zero_point=0):
    return q.float() * scale


@wrong("ch18.dequantize", diagnosis="zero-point-added")
def dequantize_plus_zero_point(q, scale, zero_point=0):
    return (q.float() + torch.as_tensor(zero_point).float()) * scale


# -- groupwise_quantize ---------------------------------------------------------------------
@wrong("ch18.groupwise_quantize", diagnosis="groups-across-rows")
def groupwise_flattened(w, bits=4, group_size=None):
    rows, cols = w.shape
    g = cols if group_size is None else group_size
    qmax = 2 ** (bits - 1) - 1
    flat = w.reshape(-1)
    pad = (-flat.numel()) % g
    groups = F.pad(flat, (0, pad)).view(-1, g)
    scales = groups.abs().amax(dim=1, keepdim=True) / qmax
    scales[scales == 0] = 1
    q = torch.round(groups / scales).clamp(-qmax, qmax).reshape(-1)[:flat.numel()]
    n_groups = math.ceil(cols / g)
    s = scales.reshape(-1)
    s = F.pad(s, (0, max(0, rows * n_groups - s.numel())), value=1.0)[:rows * n_groups]
    return q.view(rows, cols).to(torch.int8), s.view(rows, n_groups)


@wrong("ch18.groupwise_quantize", diagnosis="qmax-off-by-one")
def groupwise_qmax_8(w, bits=4, group_size=None):
    rows, cols = w.shape
    g = group_size or cols
    qmax = 2 ** (bits - 1)
    qs, scales = [], []
    for start in range(0, cols, g):
        block = w[:, start:start + g]
        s = block.abs().max(dim=1, keepdim=True).values / qmax
        s = torch.where(s == 0, torch.ones_like(s), s)
        qs.append(torch.round(block / s).clamp(-qmax, qmax - 1))
        scales.append(s)
    return torch.cat(qs, 1).to(torch.int8), torch.cat(scales, 1)


@wrong("ch18.groupwise_quantize", diagnosis="per-tensor")
def groupwise_one_scale(w, bits=4, group_size=None):
    rows, cols = w.shape
    g = group_size or cols
    qmax = 2 ** (bits - 1) - 1
    s = w.abs().max() / qmax
    q = torch.round(w / s).clamp(-qmax, qmax).to(torch.int8)
    return q, torch.full((rows, math.ceil(cols / g)), float(s))


@wrong("ch18.groupwise_quantize", diagnosis="scale-from-max")
def groupwise_signed_max(w, bits=4, group_size=None):
    rows, cols = w.shape
    g = group_size or cols
    qmax = 2 ** (bits - 1) - 1
    qs, scales = [], []
    for start in range(0, cols, g):
        block = w[:, start:start + g]
        s = block.max(dim=1, keepdim=True).values / qmax
        s = torch.where(s == 0, torch.ones_like(s), s)
        qs.append(torch.round(block / s).clamp(-qmax, qmax))
        scales.append(s)
    return torch.cat(qs, 1).to(torch.int8), torch.cat(scales, 1)


# -- nf4_quantize ---------------------------------------------------------------------------
def _nf4_indices(x, blocksize, per_row=False):
    levels = torch.tensor(NF4)
    rows = [x.reshape(-1)] if not per_row else list(x.reshape(-1, x.shape[-1]))
    idx, absmax = [], []
    for r in rows:
        for start in range(0, r.numel(), blocksize):
            b = r[start:start + blocksize]
            m = b.abs().max()
            absmax.append(m)
            s = b / m if m > 0 else torch.zeros_like(b)
            idx.append((s[:, None] - levels).abs().argmin(dim=1))
    idx = torch.cat(idx)
    if idx.numel() % 2:
        idx = torch.cat([idx, torch.tensor([7])])
    return idx.to(torch.uint8), torch.stack(absmax)


@wrong("ch18.nf4_quantize", diagnosis="low-nibble-first")
def nf4_low_nibble_first(x, blocksize=64):
    idx, absmax = _nf4_indices(x, blocksize)
    return idx[0::2] | (idx[1::2] << 4), absmax


@wrong("ch18.nf4_quantize", diagnosis="blocks-per-row")
def nf4_blocks_per_row(x, blocksize=64):
    idx, absmax = _nf4_indices(x, blocksize, per_row=True)
    return (idx[0::2] << 4) | idx[1::2], absmax


@wrong("ch18.nf4_quantize", diagnosis="uniform-code")
def nf4_uniform_levels(x, blocksize=64):
    flat = x.reshape(-1)
    levels = torch.linspace(-1, 1, 16)
    idx, absmax = [], []
    for start in range(0, flat.numel(), blocksize):
        b = flat[start:start + blocksize]
        m = b.abs().max()
        absmax.append(m)
        idx.append(((b / m if m > 0 else b)[:, None] - levels).abs().argmin(1))
    idx = torch.cat(idx)
    if idx.numel() % 2:
        idx = torch.cat([idx, torch.tensor([7])])
    idx = idx.to(torch.uint8)
    return (idx[0::2] << 4) | idx[1::2], torch.stack(absmax)


# -- nf4_dequantize -------------------------------------------------------------------------
@wrong("ch18.nf4_dequantize", diagnosis="low-nibble-first")
def nf4_deq_low_first(packed, absmax, shape, blocksize=64):
    levels = torch.tensor(NF4)
    n = math.prod(shape)
    idx = torch.stack([packed & 0xF, packed >> 4], dim=1).reshape(-1)[:n].long()
    return (levels[idx] * absmax.repeat_interleave(blocksize)[:n]).reshape(shape)


@wrong("ch18.nf4_dequantize", diagnosis="no-absmax")
def nf4_deq_forgot_absmax(packed, absmax, shape, blocksize=64):
    levels = torch.tensor(NF4)
    n = math.prod(shape)
    idx = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[:n].long()
    return levels[idx].reshape(shape)


@wrong("ch18.nf4_dequantize", diagnosis="blocks-per-row")
def nf4_deq_blocks_per_row(packed, absmax, shape, blocksize=64):
    levels = torch.tensor(NF4)
    n = math.prod(shape)
    cols = shape[-1]
    idx = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)[:n].long()
    vals = levels[idx].reshape(-1, cols)
    per_row = math.ceil(cols / blocksize)
    out = torch.empty_like(vals)
    for r in range(vals.shape[0]):
        for j in range(per_row):
            b = min(r * per_row + j, len(absmax) - 1)
            out[r, j * blocksize:(j + 1) * blocksize] = vals[r, j * blocksize:(j + 1) * blocksize] * absmax[b]
    return out.reshape(shape)


# -- int8_linear ----------------------------------------------------------------------------
@wrong("ch18.int8_linear", diagnosis="int8-accumulate")
def int8_linear_int8_sums(x, w_q, w_scale):
    s_x = x.abs().amax(dim=1, keepdim=True) / 127
    s_x[s_x == 0] = 1
    x_q = torch.round(x / s_x).to(torch.int8)
    return (x_q @ w_q.T).float() * s_x * w_scale


@wrong("ch18.int8_linear", diagnosis="per-tensor-activation")
def int8_linear_one_scale(x, w_q, w_scale):
    s_x = x.abs().max() / 127
    x_q = torch.round(x / s_x).to(torch.int8)
    return torch._int_mm(x_q, w_q.t()).float() * s_x * w_scale


@wrong("ch18.int8_linear", diagnosis="float-activations")
def int8_linear_weight_only(x, w_q, w_scale):
    return x @ (w_q.float() * w_scale[:, None]).T


# -- distillation_loss ----------------------------------------------------------------------
@wrong("ch18.distillation_loss", diagnosis="no-t-squared")
def kd_without_t_squared(student_logits, teacher_logits, temperature=2.0):
    p_t = F.softmax(teacher_logits / temperature, dim=-1)
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    return (p_t * (p_t.log() - log_p_s)).sum(-1).mean()


@wrong("ch18.distillation_loss", diagnosis="kl-swapped")
def kd_kl_student_first(student_logits, teacher_logits, temperature=2.0):
    T = temperature
    log_s = F.log_softmax(student_logits / T, -1)
    log_t = F.log_softmax(teacher_logits / T, -1)
    return (log_s.exp() * (log_s - log_t)).sum(-1).mean() * T * T


@wrong("ch18.distillation_loss", diagnosis="mean-reduction")
def kd_mean_over_everything(student_logits, teacher_logits, temperature=2.0):
    T = temperature
    log_s = F.log_softmax(student_logits / T, -1)
    log_t = F.log_softmax(teacher_logits / T, -1)
    return (log_t.exp() * (log_t - log_s)).mean() * T ** 2


@wrong("ch18.distillation_loss", diagnosis="teacher-not-softened")
def kd_raw_teacher(student_logits, teacher_logits, temperature=2.0):
    T = temperature
    log_s = F.log_softmax(student_logits / T, -1)
    log_t = F.log_softmax(teacher_logits, -1)
    return (log_t.exp() * (log_t - log_s)).sum(-1).mean() * T ** 2


# -- generate_batch -------------------------------------------------------------------------
def _batch_generate(model, prompts, n, pad_id, side="left", shift=True, mask_pads=True):
    B, L = len(prompts), max(map(len, prompts))
    rows, masks = [], []
    for p in prompts:
        pad = [pad_id] * (L - len(p))
        rows.append(pad + p if side == "left" else p + pad)
        m = [0] * len(pad) + [1] * len(p) if side == "left" else [1] * len(p) + [0] * len(pad)
        masks.append(m if mask_pads else [1] * L)
    idx, mask = torch.tensor(rows), torch.tensor(masks)
    pos = (mask.cumsum(-1) - 1).clamp(min=0) if shift else torch.arange(L).repeat(B, 1)
    cache = model.new_cache()
    out = []
    logits = model(idx, pos, mask, cache)
    for _ in range(n):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        pos = pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], 1)
        logits = model(nxt, pos, mask, cache)
    return torch.cat(out, 1)


@wrong("ch18.generate_batch", diagnosis="right-padding")
def generate_right_padded(model, prompts, max_new_tokens, pad_id):
    return _batch_generate(model, prompts, max_new_tokens, pad_id, side="right", shift=False)


@wrong("ch18.generate_batch", diagnosis="positions-not-shifted")
def generate_column_positions(model, prompts, max_new_tokens, pad_id):
    return _batch_generate(model, prompts, max_new_tokens, pad_id, shift=False)


@wrong("ch18.generate_batch", diagnosis="no-padding-mask")
def generate_pads_attended(model, prompts, max_new_tokens, pad_id):
    B, L = len(prompts), max(map(len, prompts))
    idx = torch.tensor([[pad_id] * (L - len(p)) + p for p in prompts])
    pos = torch.tensor([[0] * (L - len(p)) + list(range(len(p))) for p in prompts])
    cache = model.new_cache()
    logits = model(idx, pos, None, cache)  # no mask: every position counts as real
    out = []
    for _ in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        pos = pos[:, -1:] + 1
        logits = model(nxt, pos, None, cache)
    return torch.cat(out, 1)


@wrong("ch18.generate_batch", diagnosis="padding-ignored")
def generate_left_padded_plain(model, prompts, max_new_tokens, pad_id):
    L = max(map(len, prompts))
    idx = torch.tensor([[pad_id] * (L - len(p)) + p for p in prompts])
    cache = model.new_cache()
    logits = model(idx, cache=cache)
    out = []
    for _ in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        logits = model(nxt, cache=cache)
    return torch.cat(out, 1)


# -- speculative_generate -------------------------------------------------------------------
def _spec(target, draft, prompt, n, k, check=True, fix_mismatch=True, bonus=True, shift=0):
    seq, accepted = list(prompt), []
    while len(seq) < len(prompt) + n:
        gamma = min(k, len(prompt) + n - len(seq) - 1)
        props = []
        for _ in range(gamma):
            props.append(draft(torch.tensor([seq + props]))[0, -1].argmax().item())
        preds = target(torch.tensor([seq + props]))[0].argmax(-1).tolist()[len(seq) - 1 + shift:]
        preds = preds + preds[-1:] * shift
        a = 0
        while a < gamma and (not check or props[a] == preds[a]):
            a += 1
        if a < gamma:
            seq += props[:a] + ([preds[a]] if fix_mismatch else [props[a]])
        else:
            seq += props + ([preds[a]] if bonus or gamma == 0 else [])
        accepted.append(a)
    return seq[len(prompt):len(prompt) + n], accepted


@wrong("ch18.speculative_generate", diagnosis="accept-unchecked")
def speculative_trusts_the_draft(target, draft, prompt, max_new_tokens, k=4):
    return _spec(target, draft, prompt, max_new_tokens, k, check=False)


@wrong("ch18.speculative_generate", diagnosis="kept-rejected-token")
def speculative_keeps_draft_token(target, draft, prompt, max_new_tokens, k=4):
    return _spec(target, draft, prompt, max_new_tokens, k, fix_mismatch=False)


@wrong("ch18.speculative_generate", diagnosis="no-bonus-token")
def speculative_without_bonus(target, draft, prompt, max_new_tokens, k=4):
    return _spec(target, draft, prompt, max_new_tokens, k, bonus=False)


@wrong("ch18.speculative_generate", diagnosis="verify-shifted")
def speculative_off_by_one(target, draft, prompt, max_new_tokens, k=4):
    return _spec(target, draft, prompt, max_new_tokens, k, shift=1)
