"""Chapter 3 reference solutions: embeddings and positions.

A token embedding is a table lookup, which is the same thing as multiplying a one-hot
vector by the table. Attention itself cannot see order, so position is added to the
token vectors (sinusoidal or learned, as in the original Transformer and GPT-2) or
rotated into the queries and keys (RoPE, as in Llama).

Later chapters import ``apply_rope`` and ``TokenAndPositionEmbedding`` from here.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------------------
# Exercises
# --------------------------------------------------------------------------------------
def embed_onehot(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Look up the rows of ``weight`` for ``ids``, written as a one-hot matrix product.

    ids: int64 tensor of any shape (...), every id in [0, V).
    weight: float tensor (V, d), one row per token.
    Returns a tensor (..., d) with ``out[..., :] = weight[ids[...], :]``, in weight's
    dtype, computed as ``one_hot(ids, V) @ weight`` so that the gradient flows to
    ``weight`` exactly as it does through ``nn.Embedding``.
    """
    one_hot = F.one_hot(ids, num_classes=weight.shape[0]).to(weight.dtype)  # (..., V)
    return one_hot @ weight  # (..., V) @ (V, d) -> (..., d)


def sinusoidal_positions(n_positions: int, d_model: int) -> torch.Tensor:
    """The fixed position encoding of Vaswani et al. (2017), section 3.5.

    Returns a float32 tensor PE of shape (n_positions, d_model), d_model even, with
        PE[p, 2i]     = sin(p / 10000 ** (2i / d_model))
        PE[p, 2i + 1] = cos(p / 10000 ** (2i / d_model))
    for p in [0, n_positions) and i in [0, d_model / 2): sines in the even columns,
    cosines in the odd ones, each (sin, cos) pair sharing one frequency.
    """
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (d/2,)
    # Angles in float64: for positions in the thousands, float32 loses the 4th decimal.
    angle = position / 10000.0 ** (two_i / d_model)  # (P, d/2)
    pe = torch.zeros(n_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe.to(torch.float32)


class TokenAndPositionEmbedding(nn.Module):
    """GPT-2's input layer: a learned token embedding plus a learned position embedding.

    TokenAndPositionEmbedding(vocab_size, n_positions, d_model) has two attributes,
        tok: nn.Embedding(vocab_size, d_model)   one row per token id
        pos: nn.Embedding(n_positions, d_model)  one row per position 0 .. n_positions -
        1
    forward(ids: (B, T) int64, T <= n_positions) -> (B, T, d_model): the embedding of
    the
    token at position t plus the embedding of position t.
    """

    def __init__(self, vocab_size: int, n_positions: int, d_model: int):
        """Create the two tables ``self.tok`` and ``self.pos`` (nn.Embedding)."""
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(n_positions, d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, T) int64 -> (B, T, d_model)."""
        positions = torch.arange(ids.shape[-1], device=ids.device)  # (T,)
        # (B, T, d) + (T, d) broadcasts over B
        return self.tok(ids) + self.pos(positions)


def apply_rope(
    x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0
) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) in the half-split convention of Llama.

    x: (..., T, d) float, d even: queries or keys, e.g. (B, n_heads, T, d_head).
    positions: (T,) int64, the position of each of the T rows (e.g. torch.arange(T)).
    Returns a tensor of x's shape and dtype. Dimension i (for i < d/2) is paired with
    dimension i + d/2, and each pair is rotated by the angle position * theta_i with
    theta_i = base ** (-2i / d):
        out[..., i]       = x[..., i] * cos - x[..., i + d/2] * sin
        out[..., i + d/2] = x[..., i + d/2] * cos + x[..., i] * sin
    (GPT-J and the original RoFormer code pair neighbours (0, 1), (2, 3), ... instead.)
    """
    d = x.shape[-1]
    dtype = torch.promote_types(x.dtype, torch.float32)
    # (d/2,): from 1 down to about 1/base
    theta = base ** (-torch.arange(0, d, 2, dtype=dtype) / d)
    angle = positions.to(dtype)[:, None] * theta  # (T, d/2)
    # (T, d): dims i and i + d/2 share an angle
    angle = torch.cat([angle, angle], dim=-1)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    rotated_half = torch.cat([-x2, x1], dim=-1)  # the 90-degree turn of every pair
    return (x * angle.cos() + rotated_half * angle.sin()).to(x.dtype)


# --------------------------------------------------------------------------------------
# Used by the chapter's experiments (provided)
# --------------------------------------------------------------------------------------
def rope_interleaved_to_half(x: torch.Tensor) -> torch.Tensor:
    """Reorder the last dimension from GPT-J's pairs (0, 1), (2, 3), ... to Llama's
    halves.

    Channel 2i goes to position i and channel 2i + 1 to position i + d/2, so that
    ``apply_rope`` on the reordered vector equals the interleaved rotation, reordered.
    This is the permutation Hugging Face applies to the rows of W_q and W_k when it
    converts Meta's Llama checkpoints.
    """
    return torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)


def pca_2d(points: torch.Tensor) -> torch.Tensor:
    """Project (N, d) points on their two main directions of variation -> (N, 2)."""
    centred = points - points.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T


def character_data(max_chars: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """Shakespeare as character ids: (ids (N,) int64, vocabulary sorted by code
    point)."""
    from solutions.ch01_next_token import shakespeare_text

    text = shakespeare_text(max_chars)
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    return torch.tensor([index[ch] for ch in text], dtype=torch.int64), vocab
