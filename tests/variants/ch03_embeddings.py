"""Correct answers to chapter 3, in other styles than the reference."""
import math

import torch
import torch.nn as nn

from . import right


# -- embed_onehot ---------------------------------------------------------------------------
@right("ch03.embed_onehot", style="one-hot by comparison with arange, einsum for the product")
def embed_onehot_einsum(ids, weight):
    V = weight.shape[0]
    one_hot = (ids.unsqueeze(-1) == torch.arange(V)).to(weight.dtype)
    return torch.einsum("...v,vd->...d", one_hot, weight)


@right("ch03.embed_onehot", style="scatter_ into a flat (N, V) matrix, matmul, reshape back")
def embed_onehot_scatter(ids, weight):
    V, d = weight.shape
    flat = ids.reshape(-1)
    one_hot = torch.zeros(flat.numel(), V, dtype=weight.dtype)
    one_hot.scatter_(1, flat.view(-1, 1), 1.0)
    out = torch.mm(one_hot, weight)
    return out.reshape(*ids.shape, d)


@right("ch03.embed_onehot", style="identity matrix rows as one-hot vectors")
def embed_onehot_eye(ids, weight):
    eye = torch.eye(weight.size(0), dtype=weight.dtype)
    return torch.matmul(eye[ids], weight)


# -- sinusoidal_positions -------------------------------------------------------------------
@right("ch03.sinusoidal_positions", style="Python loops with math.sin/math.cos")
def sinusoidal_loops(n_positions, d_model):
    rows = []
    for p in range(n_positions):
        row = []
        for i in range(d_model // 2):
            angle = p / (10000 ** (2 * i / d_model))
            row += [math.sin(angle), math.cos(angle)]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32).reshape(n_positions, d_model)


@right("ch03.sinusoidal_positions", style="exp(-log(10000)) frequencies, stack and reshape to interleave")
def sinusoidal_stack(n_positions, d_model):
    pos = torch.arange(n_positions, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(10000.0) / d_model))
    angle = pos * freq
    pe = torch.stack([angle.sin(), angle.cos()], dim=-1)  # (P, d/2, 2)
    return pe.reshape(n_positions, d_model).float()


@right("ch03.sinusoidal_positions", style="float32 throughout, torch.outer")
def sinusoidal_float32(n_positions, d_model):
    inv = 1.0 / (10000.0 ** (torch.arange(0, d_model, 2, dtype=torch.float32) / d_model))
    angle = torch.outer(torch.arange(n_positions, dtype=torch.float32), inv)
    pe = torch.empty(n_positions, d_model)
    pe[:, ::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    return pe


# -- TokenAndPositionEmbedding --------------------------------------------------------------
@right("ch03.token_and_position", style="a non-persistent buffer of position ids, expanded over the batch")
class TokenAndPositionEmbeddingBuffer(nn.Module):
    def __init__(self, vocab_size, n_positions, d_model):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(n_positions, d_model)
        self.register_buffer("position_ids", torch.arange(n_positions).unsqueeze(0), persistent=False)

    def forward(self, ids):
        B, T = ids.shape
        where = self.position_ids[:, :T].expand(B, T)
        return self.tok(ids) + self.pos(where)


@right("ch03.token_and_position", style="indexing the weight tables directly")
class TokenAndPositionEmbeddingIndex(nn.Module):
    def __init__(self, vocab_size, n_positions, d_model):
        nn.Module.__init__(self)
        self.tok = nn.Embedding(num_embeddings=vocab_size, embedding_dim=d_model)
        self.pos = nn.Embedding(num_embeddings=n_positions, embedding_dim=d_model)

    def forward(self, ids):
        T = ids.size(1)
        return self.tok.weight[ids] + self.pos.weight[:T].unsqueeze(0)


# -- apply_rope -----------------------------------------------------------------------------
@right("ch03.apply_rope", style="complex numbers: (x_i, x_{i+d/2}) as x_i + j x_{i+d/2}, times e^{j angle}")
def apply_rope_complex(x, positions, base=10000.0):
    d = x.shape[-1]
    h = d // 2
    xd = x.double()
    z = torch.complex(xd[..., :h], xd[..., h:])
    i = torch.arange(h, dtype=torch.float64)
    angle = positions.double()[:, None] * base ** (-2.0 * i / d)
    z = z * torch.polar(torch.ones_like(angle), angle)
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


@right("ch03.apply_rope", style="the two halves written out, inverse frequencies as 1 / base ** (2i/d)")
def apply_rope_halves(x, positions, base=10000.0):
    half = x.size(-1) // 2
    inv_freq = 1.0 / (base ** (torch.arange(half, dtype=torch.float64) * 2 / x.size(-1)))
    angles = torch.einsum("t,f->tf", positions.to(torch.float64), inv_freq)
    cos, sin = angles.cos(), angles.sin()
    a, b = x[..., :half].double(), x[..., half:].double()
    first = a * cos - b * sin
    second = b * cos + a * sin
    return torch.cat((first, second), -1).type_as(x)
