"""Chapter 4 - Self-attention.

References: ``torch.nn.functional.scaled_dot_product_attention`` (boolean mask True =
attend; ``causal_lower_right`` for fewer queries than keys), ``nn.MultiheadAttention``
(whose masks mean the opposite: True = ignore), Hugging Face ``GPT2Attention`` in eager
mode with its own ``eager_mask``, GPT-2's ``Conv1D`` layers, and for grouped-query
attention SDPA with ``enable_gqa=True`` and Llama's ``eager_attention_forward``.
Inputs are float32 and the references run in float64.
"""
from __future__ import annotations

import math
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core import Case, Exercise, Mistake, close_tensors, hidden_seed, inherit, register
from ..drivers.ch04_attention import gpt2_attention as _gpt2_attention, load_run, mha_run
from .ch03_embeddings import gen

CH = "ch04"
SOL = "solutions.ch04_attention"
NO_LIBRARY_ATTENTION = ["torch.nn.functional:scaled_dot_product_attention",
                        "torch.nn.functional:multi_head_attention_forward", "torch.nn:MultiheadAttention",
                        "transformers.models.gpt2.modeling_gpt2:eager_attention_forward",
                        "transformers.models.llama.modeling_llama:eager_attention_forward",
                        "transformers.models.llama.modeling_llama:repeat_kv"]


# ----------------------------------------------------------------------------------------
# What a typical wrong attention computes
# ----------------------------------------------------------------------------------------
def _attention(q, k, v, mask=None, is_causal=False, *, scale="sqrt", softmax_dim=-1, diagonal=0,
               invert=False, fill=float("-inf"), after_softmax=False, align="bottom-right"):
    """softmax(q k^T * scale + masks) v in float64, with switches for the usual mistakes.

    diagonal: 0 = the diagonal is allowed; -1 = excluded; +1 = one future key allowed too.
    invert: masks read as True = blocked. fill: what masked scores become.
    after_softmax: weights multiplied by the mask after the softmax (not renormalised).
    """
    q, k, v = q.double(), k.double(), v.double()
    d_k = q.shape[-1]
    factor = {"sqrt": 1 / math.sqrt(d_k), "none": 1.0, "d": 1 / d_k}[scale] if isinstance(scale, str) else scale
    scores = q @ k.transpose(-2, -1) * factor
    T_q, T_k = scores.shape[-2:]
    allowed = torch.ones(T_q, T_k, dtype=torch.bool)
    if is_causal:
        shift = T_k - T_q if align == "bottom-right" else 0
        allowed = allowed.tril(diagonal=shift + diagonal)
        if invert:
            allowed = ~allowed
    if mask is not None:
        allowed = allowed & (~mask if invert else mask)
    if after_softmax:
        return (torch.softmax(scores, dim=softmax_dim) * allowed) @ v
    weights = torch.softmax(scores.masked_fill(~allowed, fill), dim=softmax_dim)
    return weights @ v


def _attention_mistake(**switches):
    def produce(q, k, v, mask=None, is_causal=False):
        return _attention(q, k, v, mask, is_causal, **switches)
    return produce


# ----------------------------------------------------------------------------------------
# scaled_dot_product_attention
# ----------------------------------------------------------------------------------------
def _sdpa_ref(q, k, v, mask, is_causal):
    from torch.nn.attention.bias import causal_lower_right

    q, k, v = q.double(), k.double(), v.double()
    T_q, T_k = q.shape[-2], k.shape[-2]
    if is_causal and mask is None:
        # PyTorch's own bottom-right causal bias (is_causal=True would align top-left).
        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(T_q, T_k))
    if is_causal:  # SDPA refuses a mask together with is_causal: make the triangle a boolean mask
        mask = mask & torch.ones(T_q, T_k, dtype=torch.bool).tril(diagonal=T_k - T_q)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _qkv(seed, lead, T_q, T_k, d_k, d_v=None, scale=1.0):
    g = gen(seed)
    return (torch.randn(*lead, T_q, d_k, generator=g) * scale, torch.randn(*lead, T_k, d_k, generator=g) * scale,
            torch.randn(*lead, T_k, d_v or d_k, generator=g))


def _padding(lengths, T):
    """(B, 1, 1, T) bool: True for the first lengths[b] keys of row b."""
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]


def _mask_kwargs(mask, is_causal) -> dict:
    """Pass only the arguments a case uses, so the defaults are exercised too."""
    return {**({"mask": mask} if mask is not None else {}), **({"is_causal": True} if is_causal else {})}


def _sdpa_cases(hidden: bool):
    specs = [
        ("B=2, 3 heads, T=5, d_k=8, no mask", _qkv(0, (2, 3), 5, 5, 8), None, False),
        ("causal, T=6", _qkv(1, (2, 2), 6, 6, 8), None, True),
        ("padding mask (B, 1, 1, T): row 0 has 3 real tokens of 5", _qkv(2, (2, 2), 5, 5, 4), _padding([3, 5], 5),
         False),
        ("causal and padding together", _qkv(3, (2, 2), 6, 6, 8), _padding([4, 6], 6), True),
        ("T_q=3 queries, T_k=7 keys, d_v=5 (no mask)", _qkv(4, (2, 1), 3, 7, 6, d_v=5), None, False),
        ("causal with T_q=2 < T_k=6 (the last 2 positions, as when decoding with a cache)",
         _qkv(5, (1, 2), 2, 6, 8), None, True),
        ("no batch or head dimensions: q (4, 16), causal", _qkv(6, (), 4, 4, 16, scale=2.0), None, True),
    ]
    if hidden:
        ex = "ch04.scaled_dot_product_attention"
        g = gen(hidden_seed(ex, 7))
        any_mask = torch.rand(2, 1, 9, 9, generator=g) < 0.5
        any_mask |= torch.eye(9, dtype=torch.bool)  # every query keeps at least one key
        specs += [("B=4, 8 heads, T=32, d_k=64, causal", _qkv(hidden_seed(ex, 8), (4, 8), 32, 32, 64), None, True),
                  ("an arbitrary (B, 1, T, T) mask", _qkv(hidden_seed(ex, 9), (2, 3), 9, 9, 8), any_mask, False),
                  ("large scores (inputs scaled by 10), causal + padding",
                   _qkv(hidden_seed(ex, 10), (2, 2), 7, 7, 8, scale=10.0), _padding([7, 2], 7), True),
                  ("T_q=1 (one new token), T_k=9, causal + padding", _qkv(hidden_seed(ex, 11), (2, 2), 1, 9, 8),
                   _padding([9, 6], 9), True)]
    for name, (q, k, v), mask, is_causal in specs:
        yield Case(name, (q, k, v), _mask_kwargs(mask, is_causal), expected=lambda q=q, k=k, v=v, m=mask, c=is_causal: _sdpa_ref(q, k, v, m, c),
                   compare=close_tensors(1e-5, 1e-4))


register(Exercise(
    id="ch04.scaled_dot_product_attention", chapter=CH, title="Scaled dot-product attention with masks", points=3,
    name="scaled_dot_product_attention",
    signature="scaled_dot_product_attention(q: (..., Tq, dk), k: (..., Tk, dk), v: (..., Tk, dv), "
              "mask: bool (True = attend) | None = None, is_causal: bool = False) -> (..., Tq, dv)",
    reference="torch.nn.functional.scaled_dot_product_attention (causal_lower_right when Tq < Tk)",
    solution=f"{SOL}:scaled_dot_product_attention", cases=_sdpa_cases, difficulty="**",
    forbidden=NO_LIBRARY_ATTENTION,
    mistakes=[
        Mistake("no-scaling", "your weights match attention WITHOUT the 1/sqrt(d_k) scaling: divide the scores "
                "q k^T by sqrt(d_k) before the softmax", _attention_mistake(scale="none")),
        Mistake("scaled-by-d", "you divided the scores by d_k; the scaling is 1/sqrt(d_k)",
                _attention_mistake(scale="d")),
        Mistake("softmax-wrong-axis", "the softmax ran over the queries (dim=-2); each QUERY's weights over the "
                "keys must sum to 1: softmax over the last dimension", _attention_mistake(softmax_dim=-2)),
        Mistake("mask-inverted", "your mask is inverted: you blocked where the mask is True. Here (as in "
                "F.scaled_dot_product_attention) True means 'may attend'; nn.MultiheadAttention's masks mean "
                "the opposite", _attention_mistake(invert=True)),
        Mistake("diagonal-excluded", "your causal mask also hides the diagonal: a position may attend to "
                "ITSELF (torch.tril keeps the diagonal; triu(..., diagonal=1) is what to block)",
                _attention_mistake(diagonal=-1)),
        Mistake("one-future-token", "your causal mask lets each position see one token into the future: it is "
                "shifted by one (use tril with diagonal=0, or block triu(..., diagonal=1))",
                _attention_mistake(diagonal=1)),
        Mistake("masked-with-zero", "masked scores were set to 0 instead of -inf: a score of 0 still gets weight "
                "exp(0) in the softmax. Use masked_fill(~mask, float('-inf'))", _attention_mistake(fill=0.0)),
        Mistake("masked-after-softmax", "you zeroed the weights AFTER the softmax, so the rows no longer sum to 1: "
                "mask the scores with -inf before the softmax", _attention_mistake(after_softmax=True)),
        Mistake("causal-top-left", "with fewer queries than keys your causal triangle is aligned top-left (as "
                "PyTorch's is_causal=True does); query i is at position T_k - T_q + i, so use "
                "tril(diagonal=T_k - T_q)", _attention_mistake(align="top-left")),
    ]))


# ----------------------------------------------------------------------------------------
# MultiHeadAttention
# ----------------------------------------------------------------------------------------
def _mha_state(seed, d, bias=True):
    g = gen(seed)
    state = {"qkv.weight": torch.randn(3 * d, d, generator=g) / math.sqrt(d),
             "proj.weight": torch.randn(d, d, generator=g) / math.sqrt(d)}
    if bias:
        state["qkv.bias"] = 0.1 * torch.randn(3 * d, generator=g)
        state["proj.bias"] = 0.1 * torch.randn(d, generator=g)
    return state


def _ref_torch_mha(d, n_heads, bias, causal, state, x, key_padding_mask):
    ref = nn.MultiheadAttention(d, n_heads, bias=bias, batch_first=True).double().eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(state["qkv.weight"])
        ref.out_proj.weight.copy_(state["proj.weight"])
        if bias:
            ref.in_proj_bias.copy_(state["qkv.bias"])
            ref.out_proj.bias.copy_(state["proj.bias"])
        T = x.shape[1]
        # nn.MultiheadAttention's masks say where NOT to attend: the opposite of ours.
        attn_mask = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1) if causal else None
        kpm = None if key_padding_mask is None else ~key_padding_mask
        x = x.double()
        out, _ = ref(x, x, x, attn_mask=attn_mask, key_padding_mask=kpm, need_weights=False)
    return out


def _ref_gpt2(d, n_heads, bias, causal, state, x, key_padding_mask):
    from transformers.masking_utils import bidirectional_mask_function, causal_mask_function, eager_mask

    attn = _gpt2_attention(d, n_heads).double()
    with torch.no_grad():  # GPT-2's Conv1D stores weights as [in, out]
        attn.c_attn.weight.copy_(state["qkv.weight"].T)
        attn.c_attn.bias.copy_(state["qkv.bias"])
        attn.c_proj.weight.copy_(state["proj.weight"].T)
        attn.c_proj.bias.copy_(state["proj.bias"])
        B, T = x.shape[:2]
        mask = eager_mask(batch_size=B, q_length=T, kv_length=T, attention_mask=key_padding_mask,
                          mask_function=causal_mask_function if causal else bidirectional_mask_function,
                          dtype=torch.float64)
        out, _ = attn(x.double(), attention_mask=mask)
    return out


def _mha_cases(hidden: bool):
    # name, reference, d, n_heads, bias, causal, (B, T), padding lengths
    specs = [("d=16, 4 heads, causal, x (2, 5, 16) vs nn.MultiheadAttention", "torch", 16, 4, True, True, (2, 5), None),
             ("the same vs GPT2Attention (eager)", "gpt2", 16, 4, True, True, (2, 5), None),
             ("causal=False with a key padding mask vs nn.MultiheadAttention", "torch", 12, 3, True, False, (2, 6),
              [6, 4]),
             ("causal + key padding mask vs GPT2Attention", "gpt2", 16, 2, True, True, (3, 7), [7, 5, 2]),
             ("bias=False vs nn.MultiheadAttention", "torch", 8, 2, False, True, (2, 4), None),
             ("a single head (n_heads=1) vs GPT2Attention", "gpt2", 8, 1, True, True, (1, 6), None)]
    n_visible = len(specs)
    if hidden:
        specs += [("d=64, 8 heads, x (3, 20, 64) vs GPT2Attention", "gpt2", 64, 8, True, True, (3, 20), [20, 11, 1]),
                  ("d=24, 6 heads, causal=False vs nn.MultiheadAttention", "torch", 24, 6, True, False, (2, 9), [9, 3])]
    for i, (name, ref, d, h, bias, causal, (B, T), lengths) in enumerate(specs):
        seeds = (20 + i, 40 + i)
        if i >= n_visible:
            seeds = tuple(hidden_seed("ch04.multi_head_attention", s) for s in seeds)
        state = _mha_state(seeds[0], d, bias)
        x = torch.randn(B, T, d, generator=gen(seeds[1]))
        kpm = None if lengths is None else _padding(lengths, T)[:, 0, 0, :]
        reference = _ref_torch_mha if ref == "torch" else _ref_gpt2
        args = (d, h, bias, causal, state, x, kpm)
        yield Case(name, args, run=mha_run, expected=lambda a=args, r=reference: r(*a), compare=close_tensors(1e-5, 1e-4))


class _MHAMistake(nn.Module):
    """Multi-head attention with one typical mistake switched on (``kind``)."""

    kind = ""

    def __init__(self, d_model, n_heads, bias=True, causal=True):
        super().__init__()
        self.n_heads, self.d_head, self.causal = n_heads, d_model // n_heads, causal
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, key_padding_mask=None):
        B, T, d = x.shape
        h, dh, kind = self.n_heads, self.d_head, self.kind
        if kind == "qkv-per-head":  # GPT-NeoX's fused layout: (q_h, k_h, v_h) per head
            q, k, v = self.qkv(x).view(B, T, h, 3 * dh).transpose(1, 2).split(dh, dim=-1)
        else:
            q, k, v = self.qkv(x).split(d, dim=-1)
            if kind == "heads-split-wrong":
                q, k, v = (t.reshape(B, h, T, dh) for t in (q, k, v))
            else:
                q, k, v = (t.view(B, T, h, dh).transpose(1, 2) for t in (q, k, v))
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        if kind == "padding-inverted" and mask is not None:
            mask = ~mask
        scale = {"no-scaling": 1.0, "scaled-by-d-model": 1 / math.sqrt(d)}.get(kind, "sqrt")
        y = _attention(q, k, v, mask, self.causal and kind != "not-causal", scale=scale)
        if kind in ("heads-split-wrong", "heads-merged-wrong"):
            y = y.reshape(B, T, d)
        else:
            y = y.transpose(1, 2).reshape(B, T, d)
        y = y.to(x.dtype)
        return y if kind == "no-output-projection" else self.proj(y)


def _mha_mistake(kind):
    return type(f"MHA_{kind}", (_MHAMistake,), {"kind": kind})


def _mha_with(sdpa):
    """Multi-head attention, right in every way except its scaled dot-product attention."""

    class MHAWithPart(_MHAMistake):
        def forward(self, x, key_padding_mask=None):
            B, T, d = x.shape
            q, k, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2).double()
                       for t in self.qkv(x).split(d, dim=-1))
            mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
            y = sdpa(q, k, v, **_mask_kwargs(mask, self.causal))
            return self.proj(y.transpose(1, 2).reshape(B, T, d).to(x.dtype))

    return MHAWithPart


register(Exercise(
    id="ch04.multi_head_attention", chapter=CH, title="Multi-head attention (GPT-2 layout)", points=3,
    name="MultiHeadAttention",
    signature="MultiHeadAttention(d_model, n_heads, bias=True, causal=True) with .qkv (d -> 3d, q|k|v) and .proj; "
              "forward(x: (B, T, d), key_padding_mask: (B, T) bool True = keep | None) -> (B, T, d)",
    reference="torch.nn.MultiheadAttention and transformers GPT2Attention (eager), holding the same weights",
    solution=f"{SOL}:MultiHeadAttention", cases=_mha_cases, difficulty="**",
    forbidden=NO_LIBRARY_ATTENTION,
    mistakes=[
        Mistake("no-scaling", "your output matches attention WITHOUT the 1/sqrt(d_head) scaling of the scores",
                _mha_mistake("no-scaling")),
        Mistake("scaled-by-d-model", "you scaled the scores by 1/sqrt(d_model); each head's scores are scaled by "
                "1/sqrt(d_head), d_head = d_model / n_heads", _mha_mistake("scaled-by-d-model")),
        Mistake("heads-split-wrong", "the heads are split in the wrong order: reshaping (B, T, d) straight to "
                "(B, n_heads, T, d_head) mixes positions into heads. View as (B, T, n_heads, d_head), then "
                "transpose(1, 2)", _mha_mistake("heads-split-wrong")),
        Mistake("heads-merged-wrong", "the heads are merged in the wrong order: (B, n_heads, T, d_head) must be "
                "transposed back to (B, T, n_heads, d_head) before the reshape to (B, T, d)",
                _mha_mistake("heads-merged-wrong")),
        Mistake("qkv-per-head", "you split the fused projection per head (q, k, v of head 0, then of head 1, ..., "
                "GPT-NeoX's layout); GPT-2's is [all of q | all of k | all of v]: split the last dim in three first",
                _mha_mistake("qkv-per-head")),
        Mistake("no-output-projection", "the output projection self.proj is missing", _mha_mistake("no-output-projection")),
        Mistake("not-causal", "with causal=True position t must not see positions after t: pass is_causal",
                _mha_mistake("not-causal")),
        Mistake("padding-inverted", "the key padding mask is inverted: True marks a REAL token to keep (the "
                "opposite of nn.MultiheadAttention's key_padding_mask)", _mha_mistake("padding-inverted")),
        *inherit("ch04.scaled_dot_product_attention", _mha_with),
    ]))


# ----------------------------------------------------------------------------------------
# load_gpt2_attention
# ----------------------------------------------------------------------------------------
def _load_ref(d, n_heads, gpt2_state, x):
    gpt2 = _gpt2_attention(d, n_heads)
    with torch.no_grad():
        for name, value in gpt2_state.items():
            dict(gpt2.named_parameters())[name].copy_(value)
        return torch.cat([gpt2.c_attn(x), gpt2.c_proj(x)], dim=-1)


def _load_cases(hidden: bool):
    specs = [("d=8, 2 heads", 8, 2), ("d=12, 3 heads", 12, 3)]
    n_visible = len(specs)
    if hidden:
        specs += [("d=32, 4 heads", 32, 4)]
    for i, (name, d, h) in enumerate(specs):
        g = gen(60 + i if i < n_visible else hidden_seed("ch04.load_gpt2_attention", 60 + i))
        state = {"c_attn.weight": torch.randn(d, 3 * d, generator=g), "c_attn.bias": torch.randn(3 * d, generator=g),
                 "c_proj.weight": torch.randn(d, d, generator=g), "c_proj.bias": torch.randn(d, generator=g)}
        x = torch.randn(2, 3, d, generator=g)
        yield Case(name + ": qkv(x) == c_attn(x) and proj(x) == c_proj(x)", (d, h, state, x), run=load_run,
                   expected=lambda d=d, h=h, s=state, x=x: _load_ref(d, h, s, x), compare=close_tensors(1e-5, 1e-5))


def _load_mistake(kind):
    def load(mha, gpt2_attn):
        d = gpt2_attn.c_proj.weight.shape[0]
        with torch.no_grad():
            w_attn, w_proj = gpt2_attn.c_attn.weight, gpt2_attn.c_proj.weight
            if kind == "reshaped":
                mha.qkv.weight.copy_(w_attn.reshape(3 * d, d))
                mha.proj.weight.copy_(w_proj.reshape(d, d))
            else:
                mha.qkv.weight.copy_(w_attn.T)
                mha.proj.weight.copy_(w_proj if kind == "c_proj-not-transposed" else w_proj.T)
            if kind != "no-bias":
                mha.qkv.bias.copy_(gpt2_attn.c_attn.bias)
                mha.proj.bias.copy_(gpt2_attn.c_proj.bias)
        return mha
    return load


register(Exercise(
    id="ch04.load_gpt2_attention", chapter=CH, title="Load GPT-2's attention weights (Conv1D is [in, out])", points=1,
    name="load_gpt2_attention", signature="load_gpt2_attention(mha: has .qkv, .proj, gpt2_attn: GPT2Attention) -> mha",
    reference="the outputs of GPT2Attention's own c_attn and c_proj Conv1D layers",
    solution=f"{SOL}:load_gpt2_attention", cases=_load_cases, difficulty="*",
    mistakes=[
        Mistake("c_proj-not-transposed", "c_proj's weight was copied without a transpose (it is square, so no "
                "shape error warns you): Conv1D stores [in, out], nn.Linear [out, in]",
                _load_mistake("c_proj-not-transposed")),
        Mistake("reshaped", "you reshaped the [in, out] weights into [out, in] with view/reshape: that re-cuts the "
                "same row-major numbers instead of transposing them. Use .T", _load_mistake("reshaped")),
        Mistake("no-bias", "the biases were not copied (c_attn.bias and c_proj.bias)", _load_mistake("no-bias")),
    ]))


# ----------------------------------------------------------------------------------------
# grouped_query_attention
# ----------------------------------------------------------------------------------------
def _gqa_ref(q, k, v, mask, is_causal, via):
    q, k, v = q.double(), k.double(), v.double()
    T_q, T_k = q.shape[-2], k.shape[-2]
    allowed = None
    if is_causal or mask is not None:
        allowed = torch.ones(T_q, T_k, dtype=torch.bool).tril(diagonal=T_k - T_q) if is_causal else True
        allowed = allowed & mask if mask is not None else allowed
    if via == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)
    from transformers.models.llama.modeling_llama import eager_attention_forward

    module = types.SimpleNamespace(num_key_value_groups=q.shape[1] // k.shape[1], training=False)
    additive = None
    if allowed is not None:
        additive = torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, torch.finfo(torch.float64).min)
    out, _ = eager_attention_forward(module, q, k, v, additive, scaling=q.shape[-1] ** -0.5)
    return out.transpose(1, 2)  # Llama returns (B, T, heads, d_head)


def _gqa_cases(hidden: bool):
    specs = [("4 query heads share 2 key/value heads, T=5, no mask (vs SDPA enable_gqa)", (2, 4, 2, 5, 5, 8), None,
              False, "sdpa"),
             ("6 query heads, 2 key/value heads, causal (vs Llama eager attention)", (2, 6, 2, 6, 6, 8), None, True,
              "llama"),
             ("one key/value head for 4 query heads (multi-query attention)", (2, 4, 1, 5, 5, 4), None, True, "llama"),
             ("as many key/value heads as query heads (plain multi-head)", (1, 3, 3, 4, 4, 8), None, False, "sdpa"),
             ("8 query heads, 4 key/value heads, causal + padding", (2, 8, 4, 6, 6, 8), [6, 3], True, "sdpa")]
    n_visible = len(specs)
    if hidden:
        specs += [("32 query heads, 8 key/value heads, T=24, d_head=16 (Llama 3 8B's ratio)", (2, 32, 8, 24, 24, 16),
                   None, True, "llama"),
                  ("T_q=2 new tokens against T_k=7 cached keys, causal", (1, 4, 2, 2, 7, 8), None, True, "sdpa")]
    for i, (name, (B, Hq, Hkv, T_q, T_k, d), lengths, is_causal, via) in enumerate(specs):
        g = gen(80 + i if i < n_visible else hidden_seed("ch04.grouped_query_attention", 80 + i))
        q = torch.randn(B, Hq, T_q, d, generator=g)
        k, v = torch.randn(B, Hkv, T_k, d, generator=g), torch.randn(B, Hkv, T_k, d, generator=g)
        mask = None if lengths is None else _padding(lengths, T_k)
        yield Case(name, (q, k, v), _mask_kwargs(mask, is_causal),
                   expected=lambda q=q, k=k, v=v, m=mask, c=is_causal, via=via: _gqa_ref(q, k, v, m, c, via),
                   compare=close_tensors(1e-5, 1e-4))


def _gqa_mistake(kind):
    def produce(q, k, v, mask=None, is_causal=False):
        group = q.shape[1] // k.shape[1]
        if kind == "tiled":  # [k0, k1, k0, k1, ...]: query head h gets key/value head h % n_kv_heads
            k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)
        elif kind == "first-head-only":
            k, v = (t[:, :1].expand(-1, q.shape[1], -1, -1) for t in (k, v))
        else:
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        if kind == "mask-dropped":
            mask, is_causal = None, False
        return _attention(q, k, v, mask, is_causal)
    return produce


register(Exercise(
    id="ch04.grouped_query_attention", chapter=CH, title="Grouped-query attention", points=2,
    name="grouped_query_attention",
    signature="grouped_query_attention(q: (B, H, Tq, dh), k, v: (B, H_kv, Tk, dh), mask=None, is_causal=False) "
              "-> (B, H, Tq, dh)",
    reference="torch SDPA with enable_gqa=True and transformers Llama's eager_attention_forward (repeat_kv)",
    solution=f"{SOL}:grouped_query_attention", cases=_gqa_cases, difficulty="**",
    forbidden=NO_LIBRARY_ATTENTION,
    mistakes=[
        Mistake("tiled", "the key/value heads are tiled [k0, k1, k0, k1, ...] (Tensor.repeat): query head h must "
                "use key/value head h // group, i.e. [k0, k0, k1, k1, ...] (repeat_interleave)", _gqa_mistake("tiled")),
        Mistake("first-head-only", "every query head used key/value head 0 (that is multi-query attention); "
                "query head h uses key/value head h // (n_heads // n_kv_heads)", _gqa_mistake("first-head-only")),
        Mistake("mask-dropped", "the mask / is_causal arguments were not passed on to the attention",
                _gqa_mistake("mask-dropped")),
    ]))
