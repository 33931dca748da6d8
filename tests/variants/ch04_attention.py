"""Correct answers to chapter 4, in other styles than the reference."""
import math

import torch
import torch.nn as nn

from . import right


def _causal(T_q, T_k):
    """True where query i (at position T_k - T_q + i) may see key j."""
    query_pos = torch.arange(T_q)[:, None] + (T_k - T_q)
    key_pos = torch.arange(T_k)[None, :]
    return key_pos <= query_pos


# -- scaled_dot_product_attention -----------------------------------------------------------
@right("ch04.scaled_dot_product_attention", style="einsum in float64, a large negative number instead of -inf")
def sdpa_einsum_finfo(q, k, v, mask=None, is_causal=False):
    qd, kd, vd = q.double(), k.double(), v.double()
    scores = torch.einsum("...qd,...kd->...qk", qd, kd) * q.shape[-1] ** -0.5
    allowed = torch.ones(scores.shape[-2:], dtype=torch.bool)
    if is_causal:
        allowed = _causal(*scores.shape[-2:])
    if mask is not None:
        allowed = allowed & mask
    scores = scores.masked_fill(~allowed, torch.finfo(torch.float64).min)
    weights = scores.softmax(dim=-1)
    return torch.einsum("...qk,...kd->...qd", weights, vd).to(q.dtype)


@right("ch04.scaled_dot_product_attention", style="own softmax: exp of the max-shifted scores, normalised by hand")
def sdpa_manual_softmax(q, k, v, mask=None, is_causal=False):
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(k.size(-1))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if is_causal:
        keep = keep & _causal(scores.size(-2), scores.size(-1))
    if mask is not None:
        keep = keep & mask
    blocked_out = scores.masked_fill(~keep, -float("inf"))
    w = torch.exp(blocked_out - blocked_out.amax(dim=-1, keepdim=True))  # exp(-inf) = 0 where blocked
    w = w / w.sum(dim=-1, keepdim=True)
    return torch.matmul(w, v)


@right("ch04.scaled_dot_product_attention", style="additive bias built with torch.where")
def sdpa_additive_bias(q, k, v, mask=None, is_causal=False):
    T_q, T_k = q.shape[-2], k.shape[-2]
    bias = torch.zeros(T_q, T_k, dtype=q.dtype)
    if is_causal:
        bias = torch.where(_causal(T_q, T_k), bias, torch.tensor(float("-inf"), dtype=q.dtype))
    if mask is not None:
        bias = torch.where(mask, bias, torch.tensor(float("-inf"), dtype=q.dtype))
    att = (q / math.sqrt(q.shape[-1])) @ k.mT + bias
    return att.softmax(-1) @ v


# -- MultiHeadAttention ---------------------------------------------------------------------
@right("ch04.multi_head_attention", style="a Python loop over the heads, concatenated at the end")
class MultiHeadAttentionLoop(nn.Module):
    def __init__(self, d_model, n_heads, bias=True, causal=True):
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.causal = causal
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, key_padding_mask=None):
        d = x.shape[-1]
        T = x.shape[1]
        qkv = self.qkv(x)
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
        allowed = torch.ones(T, T, dtype=torch.bool)
        if self.causal:
            allowed = torch.tril(allowed)
        allowed = allowed.unsqueeze(0)  # (1, T, T)
        if key_padding_mask is not None:
            allowed = allowed & key_padding_mask[:, None, :]  # (B, T, T)
        heads = []
        for h in range(self.n_heads):
            cols = slice(h * self.d_head, (h + 1) * self.d_head)
            scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(self.d_head)
            scores = scores.masked_fill(~allowed, float("-inf"))
            heads.append(torch.softmax(scores, dim=-1) @ v[..., cols])
        return self.proj(torch.cat(heads, dim=-1))


@right("ch04.multi_head_attention", style="one reshape to (B, T, 3, h, d_head), einsum, additive -1e9 mask in float64")
class MultiHeadAttentionEinsum(nn.Module):
    def __init__(self, d_model, n_heads, bias=True, causal=True):
        super().__init__()
        assert d_model % n_heads == 0
        self.n_heads, self.causal = n_heads, causal
        self.d_head = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias)
        self.proj = nn.Linear(d_model, d_model, bias)

    def forward(self, x, key_padding_mask=None):
        B, T, d = x.shape
        q, k, v = self.qkv(x).double().reshape(B, T, 3, self.n_heads, self.d_head).unbind(dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / self.d_head ** 0.5
        penalty = torch.zeros(B, 1, T, T, dtype=torch.float64)
        if self.causal:
            penalty = penalty - 1e9 * torch.ones(T, T, dtype=torch.float64).triu(1)
        if key_padding_mask is not None:
            penalty = penalty - 1e9 * (~key_padding_mask).double()[:, None, None, :]
        weights = torch.softmax(scores + penalty, dim=-1)
        out = torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(B, T, d)
        return self.proj(out.to(x.dtype))


# -- load_gpt2_attention --------------------------------------------------------------------
@right("ch04.load_gpt2_attention", style="load_state_dict on each Linear with the transposed Conv1D weights")
def load_gpt2_attention_state_dict(mha, gpt2_attn):
    mha.qkv.load_state_dict({"weight": gpt2_attn.c_attn.weight.t(), "bias": gpt2_attn.c_attn.bias})
    mha.proj.load_state_dict({"weight": gpt2_attn.c_proj.weight.t(), "bias": gpt2_attn.c_proj.bias})
    return mha


@right("ch04.load_gpt2_attention", style="new nn.Parameter objects in place of the old ones")
def load_gpt2_attention_new_parameters(mha, gpt2_attn):
    for mine, theirs in ((mha.qkv, gpt2_attn.c_attn), (mha.proj, gpt2_attn.c_proj)):
        mine.weight = nn.Parameter(theirs.weight.detach().permute(1, 0).contiguous().clone())
        mine.bias = nn.Parameter(theirs.bias.detach().clone())
    return mha


@right("ch04.load_gpt2_attention", style="writing into .data")
def load_gpt2_attention_data(mha, gpt2_attn):
    mha.qkv.weight.data[:] = gpt2_attn.c_attn.weight.data.T
    mha.qkv.bias.data[:] = gpt2_attn.c_attn.bias.data
    mha.proj.weight.data[:] = gpt2_attn.c_proj.weight.data.T
    mha.proj.bias.data[:] = gpt2_attn.c_proj.bias.data
    return mha


# -- grouped_query_attention ----------------------------------------------------------------
def _attend(q, k, v, mask, is_causal):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if is_causal:
        scores = scores.masked_fill(~_causal(q.shape[-2], k.shape[-2]), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


@right("ch04.grouped_query_attention", style="expand + reshape of the key/value heads (no repeat_interleave)")
def gqa_expand(q, k, v, mask=None, is_causal=False):
    B, n_kv, T_k, d = k.shape
    g = q.shape[1] // n_kv
    k = k[:, :, None].expand(B, n_kv, g, T_k, d).reshape(B, n_kv * g, T_k, d)
    v = v[:, :, None].expand(B, n_kv, g, T_k, d).reshape(B, n_kv * g, T_k, d)
    return _attend(q, k, v, mask, is_causal)


@right("ch04.grouped_query_attention", style="query heads reshaped into (kv head, group): keys broadcast, never copied")
def gqa_grouped_queries(q, k, v, mask=None, is_causal=False):
    B, H, T_q, d = q.shape
    n_kv = k.shape[1]
    g = H // n_kv
    qg = q.reshape(B, n_kv, g, T_q, d)
    kg, vg = k.unsqueeze(2), v.unsqueeze(2)
    m = None
    if mask is not None:
        m = mask
        while m.dim() < 4:
            m = m.unsqueeze(0)
        if m.shape[1] == 1:
            m = m.unsqueeze(2)  # (B?, 1, 1, T_q?, T_k)
        else:
            m = m.reshape(m.shape[0], n_kv, g, *m.shape[2:])
    out = _attend(qg, kg, vg, m, is_causal)  # (B, n_kv, g, T_q, d)
    return out.reshape(B, H, T_q, d)


@right("ch04.grouped_query_attention", style="loop over query heads, head h reads key/value head h // g")
def gqa_loop(q, k, v, mask=None, is_causal=False):
    H, n_kv = q.shape[1], k.shape[1]
    per_group = H // n_kv
    outs = []
    for h in range(H):
        kv = h // per_group
        m = None
        if mask is not None:
            m = mask[:, h] if mask.dim() == 4 and mask.shape[1] == H else (mask[:, 0] if mask.dim() == 4 else mask)
        outs.append(_attend(q[:, h], k[:, kv], v[:, kv], m, is_causal))
    return torch.stack(outs, dim=1)


@right("ch04.scaled_dot_product_attention", style="Hugging Face style: an additive float mask of finfo(dtype).min, summed over the masks")
def sdpa_hf_additive(q, k, v, mask=None, is_causal=False):
    T_q, T_k = q.shape[-2], k.shape[-2]
    neg = torch.finfo(q.dtype).min
    additive = torch.zeros(T_q, T_k, dtype=q.dtype)
    if is_causal:
        additive = additive.masked_fill(~_causal(T_q, T_k), neg)
    if mask is not None:
        additive = additive + torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, neg)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1])) + additive
    return torch.matmul(torch.softmax(scores, dim=-1), v)
