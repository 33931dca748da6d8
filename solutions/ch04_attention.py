"""Chapter 4 reference solutions: self-attention.

Scaled dot-product attention with causal and padding masks, multi-head attention in
GPT-2's layout (one fused q|k|v projection), loading GPT-2's attention weights, and
grouped-query attention as in Llama 2/3 and Mistral.

Later chapters import ``MultiHeadAttention`` (and ``scaled_dot_product_attention``,
``load_gpt2_attention``) from here. Mask convention everywhere in this course:
a boolean mask is True where attention is ALLOWED, as in
``torch.nn.functional.scaled_dot_product_attention`` (``nn.MultiheadAttention``'s
``key_padding_mask`` and ``attn_mask`` use the opposite: True = ignore).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from solutions.ch03_embeddings import TokenAndPositionEmbedding


# --------------------------------------------------------------------------------------
# Exercises
# --------------------------------------------------------------------------------------
def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d_k) + masks) v, over the last two dimensions.

    q: (..., T_q, d_k) float; k: (..., T_k, d_k); v: (..., T_k, d_v). The leading
       dimensions (...) are batch and heads, e.g. (B, n_heads).
    mask: None, or a bool tensor broadcastable to (..., T_q, T_k); True = query i may
       attend to key j, False = it may not (e.g. a padding mask of shape (B, 1, 1,
       T_k)).
    is_causal: if True, query i may not attend to keys after it. The triangle is aligned
       bottom-right: with T_q < T_k (new queries for the last T_q positions of a longer
       sequence, as when decoding with a cache), query i sits at position T_k - T_q + i.
       With T_q == T_k this is the usual lower triangle, diagonal included.
    Returns (..., T_q, d_v). Every query row must keep at least one key.
    """
    d_k = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., T_q, T_k)
    if is_causal:
        T_q, T_k = scores.shape[-2:]
        allowed = torch.ones(T_q, T_k, dtype=torch.bool, device=q.device).tril(
            diagonal=T_k - T_q
        )
        scores = scores.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        # -inf, not 0: a score of 0 would still get weight exp(0) in the softmax.
        scores = scores.masked_fill(~mask, float("-inf"))
    # each query's weights over the keys sum to 1
    weights = torch.softmax(scores, dim=-1)
    return weights @ v


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention in GPT-2's layout.

    MultiHeadAttention(d_model, n_heads, bias=True, causal=True), d_model divisible by
    n_heads. Attributes:
        n_heads, d_head = d_model // n_heads, causal
        qkv:  nn.Linear(d_model, 3 * d_model, bias=bias), output [q | k | v] (in that
        order)
        proj: nn.Linear(d_model, d_model, bias=bias), the output projection
    Head h uses channels h * d_head : (h + 1) * d_head of q, k and v.
    forward(x: (B, T, d_model) float, key_padding_mask: (B, T) bool or None) -> (B, T,
    d_model)
        key_padding_mask[b, t] is True for a real token and False for padding (keys that
        no query may attend to). With causal=True, position t only sees positions <= t.
    """

    def __init__(
        self, d_model: int, n_heads: int, bias: bool = True, causal: bool = True
    ):
        """Store n_heads, d_head and causal; create ``self.qkv`` and ``self.proj``."""
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be a multiple of n_heads"
        self.n_heads, self.d_head, self.causal = n_heads, d_model // n_heads, causal
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, T, d_model); key_padding_mask: (B, T) bool, True = keep, or None ->
        (B, T, d_model)."""
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)  # 3 x (B, T, d)
        # (B, T, d) -> (B, T, n_heads, d_head) -> (B, n_heads, T, d_head):
        # heads become a batch dim.
        q, k, v = (
            t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v)
        )
        # (B, 1, 1, T)
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        # (B, h, T, d_head)
        y = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=self.causal)
        y = y.transpose(1, 2).reshape(B, T, d)  # heads side by side again, in order
        return self.proj(y)


def load_gpt2_attention(mha: nn.Module, gpt2_attn: nn.Module) -> nn.Module:
    """Copy the weights of a Hugging Face ``GPT2Attention`` into ``mha``, in place;
    return mha.

    mha: has ``qkv`` (nn.Linear(d, 3d)) and ``proj`` (nn.Linear(d, d)), e.g. a
    MultiHeadAttention.
    gpt2_attn: has ``c_attn`` and ``c_proj``, GPT-2's ``Conv1D`` layers. A Conv1D
    computes
       x @ weight + bias with weight stored as [in, out] (d, 3d) for c_attn, whereas
       nn.Linear computes x @ weight.T + bias with weight stored as [out, in].
    Afterwards mha.qkv(x) equals gpt2_attn.c_attn(x) and mha.proj(x) equals
    gpt2_attn.c_proj(x).
    """
    # parameters are leaves that require grad: copy without recording
    with torch.no_grad():
        mha.qkv.weight.copy_(gpt2_attn.c_attn.weight.T)  # [in, out] -> [out, in]
        mha.qkv.bias.copy_(gpt2_attn.c_attn.bias)
        mha.proj.weight.copy_(gpt2_attn.c_proj.weight.T)
        mha.proj.bias.copy_(gpt2_attn.c_proj.bias)
    return mha


def grouped_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """Attention where groups of query heads share one key/value head (Ainslie et al.
    2023).

    q: (B, n_heads, T_q, d_head); k, v: (B, n_kv_heads, T_k, d_head), n_heads a multiple
    of n_kv_heads. Query heads are grouped in order: with g = n_heads // n_kv_heads,
    query heads 0 .. g-1 use key/value head 0, heads g .. 2g-1 use head 1, and so on
    (query head h uses key/value head h // g). mask, is_causal: as in
    ``scaled_dot_product_attention``.
    Returns (B, n_heads, T_q, d_head).
    """
    group = q.shape[1] // k.shape[1]
    # Each key/value head repeated g times in place: [k0, k0, k1, k1, ...], not
    # [k0, k1, k0, k1].
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    return scaled_dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)


# --------------------------------------------------------------------------------------
# Used by the chapter's experiments (provided)
# --------------------------------------------------------------------------------------
def reversal_batch(
    batch_size: int, n_digits: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of the reversal task: ``d1 .. dn SEP dn .. d1`` with digits 0-9 and SEP =
    10.

    Returns (inputs, targets), both (batch_size, 2 * n_digits) int64: the sequence
    without its last token, and the sequence shifted by one. Targets before SEP are -100
    (ignored by cross-entropy): the first half is random and cannot be predicted.
    """
    digits = torch.randint(0, 10, (batch_size, n_digits), generator=generator)
    sep = torch.full((batch_size, 1), 10)
    seq = torch.cat([digits, sep, digits.flip(1)], dim=1)  # (B, 2n + 1)
    inputs, targets = seq[:, :-1], seq[:, 1:].clone()
    targets[:, : n_digits - 1] = -100  # predicting the next random digit is hopeless
    return inputs, targets


class AttentionOnlyModel(nn.Module):
    """The smallest model with attention in it: embeddings, one attention layer, a
    readout.

    logits = W_out (x + attention(x)) with x = token + position embedding: a single
    residual attention layer and no MLP, so whatever the model learns must be done by
    where its heads look.
    """

    def __init__(
        self,
        vocab_size: int,
        n_positions: int,
        d_model: int,
        n_heads: int,
        attention_cls=None,
    ):
        super().__init__()
        self.embed = TokenAndPositionEmbedding(vocab_size, n_positions, d_model)
        self.attn = (attention_cls or MultiHeadAttention)(d_model, n_heads, causal=True)
        self.out = nn.Linear(d_model, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)  # (B, T, d)
        return self.out(x + self.attn(x))  # (B, T, vocab)
