"""Wrong answers to chapter 3, as learners write them."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import wrong


# -- embed_onehot ---------------------------------------------------------------------------
@wrong("ch03.embed_onehot", diagnosis="scaled")
def embed_onehot_scaled_like_the_paper(ids, weight):
    one_hot = F.one_hot(ids, weight.shape[0]).float()
    return one_hot @ weight * math.sqrt(weight.shape[1])


@wrong("ch03.embed_onehot", diagnosis=None)
def embed_onehot_without_num_classes(ids, weight):
    one_hot = F.one_hot(ids).float()  # width max(ids) + 1, not V: fails when the last rows are unused
    return one_hot @ weight


@wrong("ch03.embed_onehot", diagnosis=None)
def embed_onehot_through_numpy(ids, weight):
    w = weight.detach().numpy()
    one_hot = np.eye(w.shape[0], dtype=w.dtype)[ids.numpy()]
    return torch.from_numpy(one_hot @ w)  # right values, but no gradient reaches weight


@wrong("ch03.embed_onehot", diagnosis=None)
def embed_onehot_flattened(ids, weight):
    one_hot = F.one_hot(ids.flatten(), weight.shape[0]).float()
    return one_hot @ weight  # forgot to restore the batch shape (..., d)


# -- sinusoidal_positions -------------------------------------------------------------------
@wrong("ch03.sinusoidal_positions", diagnosis="concatenated")
def sinusoidal_sin_then_cos(n_positions, d_model):
    pos = torch.arange(n_positions).float()[:, None]
    div = 10000 ** (torch.arange(0, d_model, 2).float() / d_model)
    return torch.cat([torch.sin(pos / div), torch.cos(pos / div)], dim=1)


@wrong("ch03.sinusoidal_positions", diagnosis="frequency-per-column")
def sinusoidal_column_frequency(n_positions, d_model):
    pe = torch.zeros(n_positions, d_model)
    for p in range(n_positions):
        for j in range(d_model):
            angle = p / 10000 ** (j / d_model)
            pe[p, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return pe


@wrong("ch03.sinusoidal_positions", diagnosis="exponent-i-over-d")
def sinusoidal_forgot_the_two(n_positions, d_model):
    pos = torch.arange(n_positions).float()[:, None]
    i = torch.arange(d_model // 2).float()
    angle = pos / 10000 ** (i / d_model)
    pe = torch.zeros(n_positions, d_model)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe


@wrong("ch03.sinusoidal_positions", diagnosis="swapped")
def sinusoidal_cos_first(n_positions, d_model):
    pos = torch.arange(n_positions).float()[:, None]
    angle = pos * torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2).float() / d_model)
    pe = torch.zeros(n_positions, d_model)
    pe[:, 0::2] = torch.cos(angle)
    pe[:, 1::2] = torch.sin(angle)
    return pe


@wrong("ch03.sinusoidal_positions", diagnosis="positions-from-1")
def sinusoidal_one_based(n_positions, d_model):
    pos = torch.arange(1, n_positions + 1).float()[:, None]
    angle = pos / 10000 ** (torch.arange(0, d_model, 2).float() / d_model)
    pe = torch.zeros(n_positions, d_model)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe


# -- TokenAndPositionEmbedding --------------------------------------------------------------
@wrong("ch03.token_and_position", diagnosis="positions-from-ids")
class TokenAndPositionEmbeddingIdsAsPositions(nn.Module):
    def __init__(self, vocab_size, n_positions, d_model):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(n_positions, d_model)

    def forward(self, ids):
        return self.tok(ids) + self.pos(ids.clamp(max=self.pos.num_embeddings - 1))


@wrong("ch03.token_and_position", diagnosis="no-positions")
class TokenAndPositionEmbeddingForgotPositions(nn.Module):
    def __init__(self, vocab_size, n_positions, d_model):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(n_positions, d_model)

    def forward(self, ids):
        return self.tok(ids)


@wrong("ch03.token_and_position", diagnosis=None)
class TokenAndPositionEmbeddingOtherNames(nn.Module):
    def __init__(self, vocab_size, n_positions, d_model):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, d_model)  # the checker loads weights into .tok and .pos
        self.wpe = nn.Embedding(n_positions, d_model)

    def forward(self, ids):
        return self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))


@wrong("ch03.token_and_position", diagnosis=None)
class TokenAndPositionEmbeddingBatchPositions(nn.Module):
    def __init__(self, vocab_size, n_positions, d_model):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(n_positions, d_model)

    def forward(self, ids):
        positions = torch.arange(ids.shape[0])  # B, not T
        return self.tok(ids) + self.pos(positions)[:, None, :]


# -- apply_rope -----------------------------------------------------------------------------
def _angles(positions, d, base):
    theta = 1.0 / base ** (torch.arange(0, d, 2).float() / d)
    return positions.float()[:, None] * theta  # (T, d/2)


@wrong("ch03.apply_rope", diagnosis="interleaved")
def apply_rope_gptj_pairs(x, positions, base=10000.0):
    angle = _angles(positions, x.shape[-1], base)
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    out = torch.stack([x_even * angle.cos() - x_odd * angle.sin(),
                       x_odd * angle.cos() + x_even * angle.sin()], dim=-1)
    return out.flatten(-2)


@wrong("ch03.apply_rope", diagnosis="interleaved")
def apply_rope_complex_numbers(x, positions, base=10000.0):
    # The Meta Llama reference code: complex multiplication of neighbouring pairs.
    angle = _angles(positions, x.shape[-1], base)
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * torch.polar(torch.ones_like(angle), angle)).flatten(-2)


@wrong("ch03.apply_rope", diagnosis="clockwise")
def apply_rope_minus_sin(x, positions, base=10000.0):
    d = x.shape[-1]
    angle = _angles(positions, d, base)
    angle = torch.cat([angle, angle], dim=-1)
    rotated = torch.cat([x[..., d // 2:], -x[..., : d // 2]], dim=-1)
    return x * angle.cos() + rotated * angle.sin()


@wrong("ch03.apply_rope", diagnosis="gptj-angle-layout")
def apply_rope_repeat_interleave(x, positions, base=10000.0):
    d = x.shape[-1]
    angle = _angles(positions, d, base).repeat_interleave(2, dim=-1)
    rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1)
    return x * angle.cos() + rotated * angle.sin()


@wrong("ch03.apply_rope", diagnosis="arange-positions")
def apply_rope_ignores_positions(x, positions, base=10000.0):
    d, T = x.shape[-1], x.shape[-2]
    angle = _angles(torch.arange(T), d, base)
    angle = torch.cat([angle, angle], dim=-1)
    rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1)
    return x * angle.cos() + rotated * angle.sin()


@wrong("ch03.apply_rope", diagnosis="unshared-frequencies")
def apply_rope_one_frequency_per_dim(x, positions, base=10000.0):
    d = x.shape[-1]
    angle = positions.float()[:, None] / base ** (torch.arange(d).float() / d)
    rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1)
    return x * angle.cos() + rotated * angle.sin()
