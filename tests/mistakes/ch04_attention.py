"""Wrong answers to chapter 4, as learners write them."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import wrong


# -- scaled_dot_product_attention -----------------------------------------------------------
def _causal_allowed(T_q, T_k, diagonal=0):
    return torch.tril(torch.ones(T_q, T_k, dtype=torch.bool), diagonal=T_k - T_q + diagonal)


@wrong("ch04.scaled_dot_product_attention", diagnosis="no-scaling")
def sdpa_without_scaling(q, k, v, mask=None, is_causal=False):
    scores = q @ k.transpose(-2, -1)
    if is_causal:
        scores = scores.masked_fill(~_causal_allowed(q.shape[-2], k.shape[-2]), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@wrong("ch04.scaled_dot_product_attention", diagnosis="softmax-wrong-axis")
def sdpa_softmax_over_queries(q, k, v, mask=None, is_causal=False):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if is_causal:
        scores = scores.masked_fill(~_causal_allowed(q.shape[-2], k.shape[-2]), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return F.softmax(scores, dim=-2) @ v


@wrong("ch04.scaled_dot_product_attention", diagnosis="mask-inverted")
def sdpa_mask_means_blocked(q, k, v, mask=None, is_causal=False):
    # Written with nn.MultiheadAttention's convention in mind: True = do not attend.
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if is_causal:
        scores = scores.masked_fill(_causal_allowed(q.shape[-2], k.shape[-2]), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@wrong("ch04.scaled_dot_product_attention", diagnosis="diagonal-excluded")
def sdpa_causal_triu_diagonal_zero(q, k, v, mask=None, is_causal=False):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if is_causal:
        T_q, T_k = scores.shape[-2:]
        blocked = torch.triu(torch.ones(T_q, T_k, dtype=torch.bool), diagonal=T_k - T_q)  # blocks the diagonal too
        scores = scores.masked_fill(blocked, -1e9)
    if mask is not None:
        scores = scores.masked_fill(~mask, -1e9)
    return torch.softmax(scores, dim=-1) @ v


@wrong("ch04.scaled_dot_product_attention", diagnosis="one-future-token")
def sdpa_causal_shifted(q, k, v, mask=None, is_causal=False):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if is_causal:
        scores = scores.masked_fill(~_causal_allowed(q.shape[-2], k.shape[-2], diagonal=1), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@wrong("ch04.scaled_dot_product_attention", diagnosis="masked-with-zero")
def sdpa_masks_by_multiplying(q, k, v, mask=None, is_causal=False):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if is_causal:
        scores = scores * _causal_allowed(q.shape[-2], k.shape[-2])
    if mask is not None:
        scores = scores * mask
    return torch.softmax(scores, dim=-1) @ v


@wrong("ch04.scaled_dot_product_attention", diagnosis="masked-after-softmax")
def sdpa_zeroes_weights(q, k, v, mask=None, is_causal=False):
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    if is_causal:
        weights = weights * _causal_allowed(q.shape[-2], k.shape[-2])
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ v


@wrong("ch04.scaled_dot_product_attention", diagnosis="causal-top-left")
def sdpa_square_causal_mask(q, k, v, mask=None, is_causal=False):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if is_causal:
        T_q, T_k = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(T_q, T_k, dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@wrong("ch04.scaled_dot_product_attention", diagnosis="scaled-by-d")
def sdpa_divides_by_d(q, k, v, mask=None, is_causal=False):
    scores = q @ k.transpose(-2, -1) / q.shape[-1]
    if is_causal:
        scores = scores.masked_fill(~_causal_allowed(q.shape[-2], k.shape[-2]), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@wrong("ch04.scaled_dot_product_attention", diagnosis=None)
def sdpa_ignores_padding(q, k, v, mask=None, is_causal=False):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if is_causal:
        scores = scores.masked_fill(~_causal_allowed(q.shape[-2], k.shape[-2]), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


# -- MultiHeadAttention ---------------------------------------------------------------------
def _attend(q, k, v, key_padding_mask, causal, scale):
    scores = q @ k.transpose(-2, -1) * scale
    T = q.shape[-2]
    if causal:
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


class _Base(nn.Module):
    def __init__(self, d_model, n_heads, bias=True, causal=True):
        super().__init__()
        self.n_heads, self.d_head, self.causal = n_heads, d_model // n_heads, causal
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)


@wrong("ch04.multi_head_attention", diagnosis="heads-split-wrong")
class MHAReshapeInsteadOfTranspose(_Base):
    def forward(self, x, key_padding_mask=None):
        B, T, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = q.reshape(B, self.n_heads, T, self.d_head)
        k = k.reshape(B, self.n_heads, T, self.d_head)
        v = v.reshape(B, self.n_heads, T, self.d_head)
        y = _attend(q, k, v, key_padding_mask, self.causal, 1 / math.sqrt(self.d_head))
        return self.proj(y.reshape(B, T, d))


@wrong("ch04.multi_head_attention", diagnosis="heads-merged-wrong")
class MHAForgetsTransposeBack(_Base):
    def forward(self, x, key_padding_mask=None):
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v))
        y = _attend(q, k, v, key_padding_mask, self.causal, 1 / math.sqrt(self.d_head))
        return self.proj(y.contiguous().view(B, T, d))


@wrong("ch04.multi_head_attention", diagnosis="scaled-by-d-model")
class MHAScalesByModelWidth(_Base):
    def forward(self, x, key_padding_mask=None):
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v))
        y = _attend(q, k, v, key_padding_mask, self.causal, 1 / math.sqrt(d))
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


@wrong("ch04.multi_head_attention", diagnosis="no-scaling")
class MHANoScaling(_Base):
    def forward(self, x, key_padding_mask=None):
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v))
        y = _attend(q, k, v, key_padding_mask, self.causal, 1.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


@wrong("ch04.multi_head_attention", diagnosis="qkv-per-head")
class MHANeoXSplit(_Base):
    def forward(self, x, key_padding_mask=None):
        B, T, d = x.shape
        qkv = self.qkv(x).view(B, T, self.n_heads, 3 * self.d_head).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        y = _attend(q, k, v, key_padding_mask, self.causal, 1 / math.sqrt(self.d_head))
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


@wrong("ch04.multi_head_attention", diagnosis="padding-inverted")
class MHATorchPaddingConvention(_Base):
    def forward(self, x, key_padding_mask=None):
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v))
        inverted = None if key_padding_mask is None else ~key_padding_mask
        y = _attend(q, k, v, inverted, self.causal, 1 / math.sqrt(self.d_head))
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


@wrong("ch04.multi_head_attention", diagnosis="not-causal")
class MHAAlwaysBidirectional(_Base):
    def forward(self, x, key_padding_mask=None):
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v))
        y = _attend(q, k, v, key_padding_mask, False, 1 / math.sqrt(self.d_head))
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


@wrong("ch04.multi_head_attention", diagnosis=None)
class MHASeparateProjections(nn.Module):
    # Three Linear layers instead of the fused qkv the docstring asks for.
    def __init__(self, d_model, n_heads, bias=True, causal=True):
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.q, self.k, self.v = (nn.Linear(d_model, d_model, bias=bias) for _ in range(3))
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, key_padding_mask=None):
        B, T, d = x.shape
        dh = d // self.n_heads
        q, k, v = (f(x).view(B, T, self.n_heads, dh).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = _attend(q, k, v, key_padding_mask, self.causal, 1 / math.sqrt(dh))
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


# -- load_gpt2_attention --------------------------------------------------------------------
@wrong("ch04.load_gpt2_attention", diagnosis="c_proj-not-transposed")
def load_gpt2_attention_square_left_alone(mha, gpt2_attn):
    with torch.no_grad():
        mha.qkv.weight.copy_(gpt2_attn.c_attn.weight.t())  # the shape error reminded me here...
        mha.qkv.bias.copy_(gpt2_attn.c_attn.bias)
        mha.proj.weight.copy_(gpt2_attn.c_proj.weight)  # ...but not here
        mha.proj.bias.copy_(gpt2_attn.c_proj.bias)
    return mha


@wrong("ch04.load_gpt2_attention", diagnosis="reshaped")
def load_gpt2_attention_with_view(mha, gpt2_attn):
    with torch.no_grad():
        mha.qkv.weight.copy_(gpt2_attn.c_attn.weight.view_as(mha.qkv.weight))
        mha.qkv.bias.copy_(gpt2_attn.c_attn.bias)
        mha.proj.weight.copy_(gpt2_attn.c_proj.weight.view_as(mha.proj.weight))
        mha.proj.bias.copy_(gpt2_attn.c_proj.bias)
    return mha


@wrong("ch04.load_gpt2_attention", diagnosis="no-bias")
def load_gpt2_attention_weights_only(mha, gpt2_attn):
    mha.qkv.weight = nn.Parameter(gpt2_attn.c_attn.weight.T.clone())
    mha.proj.weight = nn.Parameter(gpt2_attn.c_proj.weight.T.clone())
    return mha


@wrong("ch04.load_gpt2_attention", diagnosis=None)
def load_gpt2_attention_without_no_grad(mha, gpt2_attn):
    mha.qkv.weight.copy_(gpt2_attn.c_attn.weight.T)  # in-place on a leaf that requires grad: RuntimeError
    mha.qkv.bias.copy_(gpt2_attn.c_attn.bias)
    mha.proj.weight.copy_(gpt2_attn.c_proj.weight.T)
    mha.proj.bias.copy_(gpt2_attn.c_proj.bias)
    return mha


# -- grouped_query_attention ----------------------------------------------------------------
def _sdpa(q, k, v, mask=None, is_causal=False):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if is_causal:
        scores = scores.masked_fill(~_causal_allowed(q.shape[-2], k.shape[-2]), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


@wrong("ch04.grouped_query_attention", diagnosis="tiled")
def gqa_with_repeat(q, k, v, mask=None, is_causal=False):
    group = q.shape[1] // k.shape[1]
    return _sdpa(q, k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1), mask, is_causal)


@wrong("ch04.grouped_query_attention", diagnosis="tiled")
def gqa_grouping_queries_the_wrong_way(q, k, v, mask=None, is_causal=False):
    B, H, T, d = q.shape
    H_kv = k.shape[1]
    qg = q.view(B, H // H_kv, H_kv, T, d)  # groups of queries cut as (group, kv head): the wrong axis order
    out = _sdpa(qg, k[:, None], v[:, None], None if mask is None else mask[:, None], is_causal)
    return out.reshape(B, H, T, -1)


@wrong("ch04.grouped_query_attention", diagnosis="first-head-only")
def gqa_one_kv_head(q, k, v, mask=None, is_causal=False):
    return _sdpa(q, k[:, :1], v[:, :1], mask, is_causal)


@wrong("ch04.grouped_query_attention", diagnosis="mask-dropped")
def gqa_forgets_the_mask(q, k, v, mask=None, is_causal=False):
    group = q.shape[1] // k.shape[1]
    return _sdpa(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1))


# -- multi-head attention built on a faulty scaled dot-product attention ---------------------
# (the part's mistakes, named inside the composite)
def _my_attention(q, k, v, key_padding_mask, causal, *, softmax_dim=-1, fill=float("-inf")):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    T = q.shape[-2]
    if causal:
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), fill)
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], fill)
    return torch.softmax(scores, dim=softmax_dim) @ v


@wrong("ch04.multi_head_attention", diagnosis="ch04.scaled_dot_product_attention:softmax-wrong-axis")
class MHASoftmaxOverQueries(_Base):
    def forward(self, x, key_padding_mask=None):
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v))
        y = _my_attention(q, k, v, key_padding_mask, self.causal, softmax_dim=-2)
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


@wrong("ch04.multi_head_attention", diagnosis="ch04.scaled_dot_product_attention:masked-with-zero")
class MHAMaskedWithZero(_Base):
    def forward(self, x, key_padding_mask=None):
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v))
        y = _my_attention(q, k, v, key_padding_mask, self.causal, fill=0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, d))
