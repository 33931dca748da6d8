"""Chapter 3 - Embeddings and positions.

References: ``nn.Embedding`` (lookup and its gradient), the sinusoidal formula of Vaswani
et al. computed in numpy float64, a pair of ``nn.Embedding`` tables (GPT-2's wte + wpe),
and Hugging Face Llama's ``apply_rotary_pos_emb`` fed by ``LlamaRotaryEmbedding``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core import Case, Exercise, Mistake, close_tensors, hidden_seed, register
from ..drivers.ch03_embeddings import grad_run, tpe_run

CH = "ch03"
SOL = "solutions.ch03_embeddings"


# ----------------------------------------------------------------------------------------
# Shared helpers (chapter 4 imports these too)
# ----------------------------------------------------------------------------------------
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------
# embed_onehot
# ----------------------------------------------------------------------------------------
def _embedding_ref(ids, weight):
    return F.embedding(ids, weight.to(torch.float64))


def _grad_ref(ids, weight, upstream):
    emb = nn.Embedding.from_pretrained(weight.to(torch.float64), freeze=False)
    (emb(ids) * upstream).sum().backward()
    return emb.weight.grad


def _onehot_cases(hidden: bool):
    g = gen(0)
    specs = [("V=10, d=4, ids of shape (6,)", torch.tensor([3, 1, 4, 1, 5, 9]), torch.randn(10, 4, generator=g)),
             ("a batch of ids (2, 5)", torch.randint(0, 7, (2, 5), generator=g), torch.randn(7, 3, generator=g)),
             ("ids that never use the last rows (V=12, ids < 4)", torch.tensor([[0, 3, 2], [1, 1, 0]]),
              torch.randn(12, 5, generator=g)),
             ("a single id", torch.tensor([2]), torch.randn(3, 6, generator=g))]
    if hidden:
        gh = gen(hidden_seed("ch03.embed_onehot", 0))
        specs += [("V=1000, d=32, ids (4, 50)", torch.randint(0, 1000, (4, 50), generator=gh),
                   torch.randn(1000, 32, generator=gh)),
                  ("no ids at all (shape (0,))", torch.zeros(0, dtype=torch.int64), torch.randn(5, 2, generator=gh))]
    for name, ids, weight in specs:
        yield Case(name, (ids, weight), expected=lambda i=ids, w=weight: _embedding_ref(i, w),
                   compare=close_tensors(1e-6, 1e-6))
    # The gradient: only looked-up rows get one, and a row looked up twice gets the sum.
    ids = torch.tensor([[1, 4, 1], [0, 1, 2]])
    weight = torch.randn(6, 3, generator=g)
    upstream = torch.randn(2, 3, 3, generator=g)
    yield Case("gradient w.r.t. weight equals nn.Embedding's (row 1 is used three times)", (ids, weight, upstream),
               run=grad_run, expected=lambda: _grad_ref(ids, weight, upstream), compare=close_tensors(1e-6, 1e-6))


register(Exercise(
    id="ch03.embed_onehot", chapter=CH, title="Embedding lookup as a one-hot matrix product", points=1,
    name="embed_onehot", signature="embed_onehot(ids: Tensor[...] int64, weight: Tensor[V, d]) -> Tensor[..., d]",
    reference="torch.nn.Embedding holding the same weight (outputs and gradient)",
    solution=f"{SOL}:embed_onehot", cases=_onehot_cases, difficulty="*",
    forbidden=["torch.nn.functional:embedding", "torch:embedding"],  # nn.Embedding is the next exercise's tool
    mistakes=[
        Mistake("scaled", "you multiplied by sqrt(d): the original Transformer scales its embeddings inside the "
                "model, but the lookup itself returns the row unchanged",
                lambda ids, w: F.embedding(ids, w.double()) * math.sqrt(w.shape[1])),
        Mistake("normalised", "you normalised the rows (or the output) to unit length: the lookup returns the "
                "row of weight exactly as stored", lambda ids, w: F.normalize(F.embedding(ids, w.double()), dim=-1)),
    ]))


# ----------------------------------------------------------------------------------------
# sinusoidal_positions
# ----------------------------------------------------------------------------------------
def _vaswani(n_positions, d_model, layout="interleaved", pair_exponent=True, factor=2.0, start=0, swap=False):
    """The formula of Vaswani et al. (2017), section 3.5, in numpy float64 (and its look-alikes)."""
    pos = np.arange(start, start + n_positions, dtype=np.float64)[:, None]
    if pair_exponent:
        i = np.arange(d_model // 2, dtype=np.float64)[None, :]  # pair index
        angle = pos / 10000.0 ** (factor * i / d_model)
        first, second = (np.cos(angle), np.sin(angle)) if swap else (np.sin(angle), np.cos(angle))
        pe = np.zeros((n_positions, d_model))
        if layout == "interleaved":
            pe[:, 0::2], pe[:, 1::2] = first, second
        else:
            pe = np.concatenate([first, second], axis=1)
    else:  # a frequency per column j (not per pair): 10000 ** (j / d)
        j = np.arange(d_model, dtype=np.float64)[None, :]
        angle = pos / 10000.0 ** (j / d_model)
        pe = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
    return torch.from_numpy(pe)


def _sin_cases(hidden: bool):
    specs = [(8, 4), (50, 16), (1, 6), (1024, 64)]
    if hidden:
        specs += [(2048, 128), (3, 2), (100, 10)]
    for p, d in specs:
        # float32 angles of positions in the thousands are only good to about 1e-4.
        yield Case(f"n_positions={p}, d_model={d}", (p, d), expected=lambda p=p, d=d: _vaswani(p, d),
                   compare=close_tensors(5e-4, 0))


register(Exercise(
    id="ch03.sinusoidal_positions", chapter=CH, title="Sinusoidal position encoding", points=2,
    name="sinusoidal_positions", signature="sinusoidal_positions(n_positions: int, d_model: int) -> Tensor[P, d] float32",
    reference="the formula of Vaswani et al. (2017), section 3.5, computed in numpy float64",
    solution=f"{SOL}:sinusoidal_positions", cases=_sin_cases, difficulty="*",
    mistakes=[
        Mistake("concatenated", "all sines come first and all cosines after ([sin | cos], the tensor2tensor layout); "
                "the paper interleaves them: sin in the even columns 2i, cos in the odd columns 2i + 1",
                lambda p, d: _vaswani(p, d, layout="concatenated")),
        Mistake("swapped", "sine and cosine are swapped: PE[p, 2i] is the SINE, PE[p, 2i + 1] the cosine",
                lambda p, d: _vaswani(p, d, swap=True)),
        Mistake("frequency-per-column", "each column got its own frequency 10000 ** (j / d); a (sin, cos) pair "
                "shares one: columns 2i and 2i + 1 both use 10000 ** (2i / d)",
                lambda p, d: _vaswani(p, d, pair_exponent=False)),
        Mistake("exponent-i-over-d", "the exponent is 2i / d_model, with i the pair index; you used i / d_model, "
                "so the frequencies fall only half as far", lambda p, d: _vaswani(p, d, factor=1.0)),
        Mistake("positions-from-1", "positions start at 0 (row 0 is sin(0) = 0, cos(0) = 1), not at 1",
                lambda p, d: _vaswani(p, d, start=1)),
    ]))


# ----------------------------------------------------------------------------------------
# TokenAndPositionEmbedding
# ----------------------------------------------------------------------------------------
def _tpe_ref(tok, pos, ids):
    # GPT-2's input layer: wte(input_ids) + wpe(position_ids), two nn.Embedding tables.
    wte, wpe = nn.Embedding.from_pretrained(tok), nn.Embedding.from_pretrained(pos)
    position_ids = torch.arange(ids.shape[-1])[None, :]
    return wte(ids) + wpe(position_ids)


def _tpe_cases(hidden: bool):
    g = gen(1)
    specs = [("V=11, 8 positions, d=4, ids (2, 5)", 11, 8, 4, (2, 5), g),
             ("a sequence as long as the table allows (T = n_positions = 6)", 9, 6, 3, (3, 6), g),
             ("one token per row, ids (4, 1)", 5, 4, 2, (4, 1), g)]
    if hidden:
        gh = gen(hidden_seed("ch03.token_and_position", 1))
        specs += [("V=100, 64 positions, d=32, ids (3, 40)", 100, 64, 32, (3, 40), gh)]
    for name, v, p, d, shape, g in specs:
        tok, pos = torch.randn(v, d, generator=g), torch.randn(p, d, generator=g)
        ids = torch.randint(0, v, shape, generator=g)
        yield Case(name, (v, p, d, tok, pos, ids), run=tpe_run,
                   expected=lambda t=tok, q=pos, i=ids: _tpe_ref(t, q, i), compare=close_tensors(1e-6, 1e-6))


class _TPEMistake(nn.Module):
    kind = ""

    def __init__(self, vocab_size, n_positions, d_model):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(n_positions, d_model)

    def forward(self, ids):
        T = ids.shape[-1]
        if self.kind == "positions-from-ids":
            return self.tok(ids) + self.pos(ids.clamp(max=self.pos.num_embeddings - 1))
        if self.kind == "no-positions":
            return self.tok(ids)
        if self.kind == "positions-from-1":
            return self.tok(ids) + self.pos(torch.arange(1, T + 1).clamp(max=self.pos.num_embeddings - 1))
        raise AssertionError(self.kind)


def _tpe_mistake(kind):
    return type(f"TPE_{kind}", (_TPEMistake,), {"kind": kind})


register(Exercise(
    id="ch03.token_and_position", chapter=CH, title="Learned positions: token + position embedding", points=1,
    name="TokenAndPositionEmbedding",
    signature="TokenAndPositionEmbedding(vocab_size, n_positions, d_model) with .tok, .pos; forward(ids: (B, T)) -> (B, T, d)",
    reference="two nn.Embedding tables holding the same weights, wte(ids) + wpe(arange(T)) as in GPT-2",
    solution=f"{SOL}:TokenAndPositionEmbedding", cases=_tpe_cases, difficulty="*",
    mistakes=[
        Mistake("positions-from-ids", "you looked the TOKEN IDS up in the position table; position t's row is "
                "pos(t) for t = 0 .. T-1, whatever the token", _tpe_mistake("positions-from-ids")),
        Mistake("no-positions", "the position embedding is missing: add self.pos(torch.arange(T))",
                _tpe_mistake("no-positions")),
        Mistake("positions-from-1", "positions start at 0: the first token gets row 0 of the position table",
                _tpe_mistake("positions-from-1")),
    ]))


# ----------------------------------------------------------------------------------------
# apply_rope
# ----------------------------------------------------------------------------------------
def _llama_rope(x, positions, base):
    """Hugging Face Llama: cos/sin from LlamaRotaryEmbedding, rotation by apply_rotary_pos_emb."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    x4 = x.reshape(-1, 1, *x.shape[-2:]) if x.dim() != 4 else x  # (B, heads, T, d)
    n_heads, d = x4.shape[1], x4.shape[-1]
    config = LlamaConfig(hidden_size=n_heads * d, num_attention_heads=n_heads, num_key_value_heads=n_heads,
                         head_dim=d, vocab_size=8, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": float(base)})
    rotary = LlamaRotaryEmbedding(config)
    position_ids = positions[None, :].expand(x4.shape[0], -1)
    cos, sin = rotary(x4, position_ids)
    q, _ = apply_rotary_pos_emb(x4, x4, cos, sin)
    return q.reshape(x.shape)


def _rope_variant(x, positions, base=10000.0, kind=""):
    """What the typical wrong rotations compute (float64)."""
    x = x.double()
    d = x.shape[-1]
    if kind == "arange-positions":
        positions = torch.arange(x.shape[-2])
    i = torch.arange(d // 2, dtype=torch.float64)
    theta = base ** (-(i if kind == "exponent-i-over-d" else 2 * i) / d)
    angle = positions.double()[:, None] * theta  # (T, d/2)
    if kind == "interleaved":  # GPT-J / RoFormer: pairs (0, 1), (2, 3), ...
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = x1 * angle.cos() - x2 * angle.sin()
        out[..., 1::2] = x2 * angle.cos() + x1 * angle.sin()
        return out
    if kind == "unshared-frequencies":  # one frequency per dimension: arange(d) instead of cat(theta, theta)
        full = positions.double()[:, None] * base ** (-torch.arange(d, dtype=torch.float64) / d)
    elif kind == "gptj-angle-layout":  # [t0, t0, t1, t1, ...] with the half-split pairing
        full = angle.repeat_interleave(2, dim=-1)
    else:
        full = torch.cat([angle, angle], dim=-1)
    rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1)
    sign = -1.0 if kind == "clockwise" else 1.0
    return x * full.cos() + sign * rotated * full.sin()


def _rope_cases(hidden: bool):
    g = gen(2)
    specs = [("x (2, 3, 6, 8), positions 0..5", torch.randn(2, 3, 6, 8, generator=g), torch.arange(6), 10000.0),
             ("positions 100..109 (a later chunk of the sequence)", torch.randn(1, 2, 10, 16, generator=g),
              torch.arange(100, 110), 10000.0),
             ("positions out of order [5, 0, 17, 3]", torch.randn(2, 1, 4, 8, generator=g),
              torch.tensor([5, 0, 17, 3]), 10000.0),
             ("x (T, d) = (7, 6) with no batch or head dimension", torch.randn(7, 6, generator=g), torch.arange(7),
              10000.0),
             ("base 500000 (Llama 3), d_head 32", torch.randn(1, 4, 5, 32, generator=g), torch.arange(5) * 37,
              500000.0)]
    if hidden:
        gh = gen(hidden_seed("ch03.apply_rope", 2))
        specs += [("x (3, 8, 64, 64), positions 0..63", torch.randn(3, 8, 64, 64, generator=gh), torch.arange(64),
                   10000.0),
                  ("d_head 2 (a single pair)", torch.randn(1, 1, 5, 2, generator=gh), torch.arange(5), 10000.0),
                  ("positions 400..449, base 1000", torch.randn(2, 2, 50, 16, generator=gh), torch.arange(400, 450),
                   1000.0)]
    for name, x, positions, base in specs:
        # Llama computes cos/sin in float32: angles of a few hundred radians are good to about 1e-5.
        yield Case(name, (x, positions), {"base": base},
                   expected=lambda x=x, p=positions, b=base: _llama_rope(x, p, b), compare=close_tensors(2e-4, 1e-4))


def _rope_mistake(kind):
    return lambda x, positions, base=10000.0: _rope_variant(x, positions, base, kind)


register(Exercise(
    id="ch03.apply_rope", chapter=CH, title="Rotary position embedding (RoPE)", points=3, name="apply_rope",
    signature="apply_rope(x: Tensor[..., T, d], positions: Tensor[T] int64, base: float = 10000.0) -> Tensor[..., T, d]",
    reference="transformers Llama: apply_rotary_pos_emb with cos/sin from LlamaRotaryEmbedding (half-split pairs)",
    solution=f"{SOL}:apply_rope", cases=_rope_cases, difficulty="**",
    forbidden=["transformers.models.llama.modeling_llama:apply_rotary_pos_emb",
               "transformers.models.llama.modeling_llama:rotate_half",
               "transformers.models.llama.modeling_llama:LlamaRotaryEmbedding"],
    mistakes=[
        Mistake("interleaved", "you rotated neighbouring pairs (0, 1), (2, 3), ...: that is the INTERLEAVED "
                "convention of GPT-J and the original RoFormer code. Llama (and this exercise) pairs the two "
                "halves: dimension i with dimension i + d/2", _rope_mistake("interleaved")),
        Mistake("gptj-angle-layout", "you paired the halves (Llama) but laid the angles out as "
                "[t0, t0, t1, t1, ...] (GPT-J's interleaved layout); with half-split pairs, dimension i and "
                "i + d/2 share theta_i: the angles are cat([angles, angles])", _rope_mistake("gptj-angle-layout")),
        Mistake("clockwise", "you rotated by minus the angle: out[i] = x[i] cos - x[i + d/2] sin and "
                "out[i + d/2] = x[i + d/2] cos + x[i] sin", _rope_mistake("clockwise")),
        Mistake("exponent-i-over-d", "theta_i = base ** (-2i / d); you used base ** (-i / d), so the "
                "frequencies fall only half as far", _rope_mistake("exponent-i-over-d")),
        Mistake("unshared-frequencies", "each of the d dimensions got its own frequency; the two members of "
                "a pair (i and i + d/2) must turn by the SAME angle: cat([angles, angles])",
                _rope_mistake("unshared-frequencies")),
        Mistake("arange-positions", "you rotated by 0, 1, ..., T-1 instead of by the `positions` you were given",
                _rope_mistake("arange-positions")),
    ]))
