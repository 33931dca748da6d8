"""Chapter 13 - Long sequences: RoPE scaling and Mamba.

References, all independent of the course's solutions:
- RoPE scaling: ``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`` ("linear",
  "dynamic", "yarn") on a ``LlamaConfig``, and ``LlamaRotaryEmbedding`` for YaRN's cos/sin;
- zero-order hold: ``torch.linalg.matrix_exp`` of the augmented matrix [[dt a, dt], [0, 0]]
  (the textbook construction, exact for any a);
- the selective scan and the chunked scan: Hugging Face's ``mamba_selective_scan`` (its
  sequential PyTorch path); the causal convolution: its ``causal_conv1d_fn``;
- the Mamba mixer and its one-token step: ``MambaMixer`` (PyTorch path, weights copied) and its
  cached forward with a ``DynamicCache`` (``conv_states``/``recurrent_states``).
Hugging Face's Mamba fallbacks log a warning on first use: every reference call silences it.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..core import Case, Exercise, Mistake, close_tensors, hidden_seed, inherit, register
from ..drivers.ch13_long_context import compare_cos_sin as _compare_cos_sin, compare_named_pair
from ..drivers.ch13_long_context import compare_step as _compare_step, compare_yarn as _compare_yarn
from ..drivers.ch13_long_context import run_mixer as _run_mixer, run_step as _run_step

CH = "ch13"
SOL = "solutions.ch13_long_context"
MAMBA = "transformers.models.mamba.modeling_mamba"
ROPE = "transformers.modeling_rope_utils"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _silence():
    from transformers.utils import logging

    logging.set_verbosity_error()


def _pick(g: torch.Generator, options):
    return options[int(torch.randint(len(options), (1,), generator=g))]


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand(1, generator=g))


def _theta(d, base):
    return 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)


@functools.lru_cache(maxsize=None)
def _llama_config(rope_type, head_dim, base, factor, max_position, original=None, beta_fast=None, beta_slow=None):
    from transformers import LlamaConfig

    _silence()
    params = {"rope_type": rope_type, "rope_theta": float(base), "factor": float(factor)}
    if original is not None:
        params["original_max_position_embeddings"] = original
    if beta_fast is not None:
        params.update(beta_fast=float(beta_fast), beta_slow=float(beta_slow))
    return LlamaConfig(hidden_size=4 * head_dim, num_attention_heads=4, head_dim=head_dim, num_key_value_heads=4,
                       max_position_embeddings=max_position, rope_parameters=params, vocab_size=32)


def _rope_ref(rope_type, head_dim, base, factor, max_position, seq_len=None, original=None, beta_fast=None,
              beta_slow=None):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = _llama_config(rope_type, head_dim, base, factor, max_position, original, beta_fast, beta_slow)
    return ROPE_INIT_FUNCTIONS[rope_type](cfg, None, seq_len=seq_len)


def _compare_pair(n1, n2, atol=1e-5, rtol=1e-4):
    return functools.partial(compare_named_pair, names=(n1, n2), atol=atol, rtol=rtol)


# ========================================================================================
# Position interpolation
# ========================================================================================
def _linear_cases(hidden: bool):
    specs = [("head_dim 16, base 10000, factor 4", 16, 10000.0, 4.0),
             ("head_dim 64, base 10000, factor 2", 64, 10000.0, 2.0),
             ("head_dim 128, base 500000 (Llama 3), factor 8", 128, 500000.0, 8.0),
             ("factor 1 changes nothing", 32, 10000.0, 1.0)]
    if hidden:
        for k in range(2):
            g = _gen(hidden_seed("ch13.linear_scaled_inv_freq", k))
            d, base, f = _pick(g, [8, 32, 64, 96]), _pick(g, [10000.0, 1e6]), round(_uniform(g, 1.5, 16.0), 3)
            specs.append((f"hidden case {k + 1}", d, base, f))
    for name, d, base, f in specs:
        yield Case(name, (d, base, f), expected=lambda d=d, b=base, f=f: _rope_ref("linear", d, b, f, 64)[0],
                   compare=close_tensors(1e-6, 1e-5))


register(Exercise(
    id="ch13.linear_scaled_inv_freq", chapter=CH, title="Position interpolation", points=1,
    name="linear_scaled_inv_freq",
    signature="linear_scaled_inv_freq(head_dim: int, base: float, factor: float) -> Tensor[head_dim/2]",
    reference="transformers ROPE_INIT_FUNCTIONS['linear'] on a LlamaConfig",
    solution=f"{SOL}:linear_scaled_inv_freq", cases=_linear_cases,
    forbidden=[f"{ROPE}:_compute_linear_scaling_rope_parameters"],
    mistakes=[
        Mistake("multiplied", "you multiplied the frequencies by the factor: interpolation DIVIDES them (position m "
                "turns like position m / factor did in training)", lambda d, b, f: _theta(d, b) * f),
        Mistake("base-scaled", "you scaled the base instead: that is NTK-style scaling, which leaves the fast "
                "dimensions nearly as they were; position interpolation divides every frequency by the factor",
                lambda d, b, f: _theta(d, b * f)),
        Mistake("exponent", "your exponents run over i / d instead of 2i / d (i = 0 .. d/2 - 1): theta_i = "
                "base^(-2i/d)", lambda d, b, f: 1.0 / b ** (torch.arange(d // 2, dtype=torch.float32) / d) / f),
    ]))


# ========================================================================================
# Dynamic NTK
# ========================================================================================
def _dyn_cases(hidden: bool):
    specs = [("head_dim 16, trained on 64, factor 2, sequence of 256", 16, 10000.0, 2.0, 64, 256),
             ("head_dim 64, trained on 128, factor 4, sequence of 1000", 64, 10000.0, 4.0, 128, 1000),
             ("a sequence shorter than the trained context keeps the original frequencies", 32, 10000.0, 2.0, 128, 100),
             ("a sequence exactly as long as the trained context", 32, 10000.0, 4.0, 128, 128)]
    if hidden:
        for k in range(2):
            g = _gen(hidden_seed("ch13.dynamic_ntk_inv_freq", k))
            d, m = _pick(g, [16, 32, 64, 128]), _pick(g, [64, 256, 2048])
            f, s = round(_uniform(g, 1.5, 8.0), 3), int(m * _uniform(g, 1.2, 6.0))
            specs.append((f"hidden case {k + 1}", d, 10000.0, f, m, s))
    for name, d, base, f, m, s in specs:
        yield Case(name, (d, base, f, m, s),
                   expected=lambda d=d, b=base, f=f, m=m, s=s: _rope_ref("dynamic", d, b, f, m, seq_len=s)[0],
                   compare=close_tensors(1e-6, 1e-5))


def _dyn_variant(d, b, f, m, s, kind):
    if kind != "no-clamp":
        s = max(s, m)
    ratio = f * s / m - (f - 1)
    if kind == "static":
        ratio = f
    exponent = 1.0 if kind == "no-exponent" else d / (d - 2)
    return _theta(d, b * ratio ** exponent)


register(Exercise(
    id="ch13.dynamic_ntk_inv_freq", chapter=CH, title="Dynamic NTK-aware scaling", points=1,
    name="dynamic_ntk_inv_freq",
    signature="dynamic_ntk_inv_freq(head_dim: int, base: float, factor: float, max_position: int, seq_len: int) "
              "-> Tensor[head_dim/2]",
    reference="transformers ROPE_INIT_FUNCTIONS['dynamic'](config, None, seq_len=...) on a LlamaConfig",
    solution=f"{SOL}:dynamic_ntk_inv_freq", cases=_dyn_cases,
    forbidden=[f"{ROPE}:_compute_dynamic_ntk_parameters"],
    mistakes=[
        Mistake("no-clamp", "a sequence shorter than the trained context changed the frequencies: use "
                "max(seq_len, max_position), so short sequences keep the original RoPE",
                lambda d, b, f, m, s: _dyn_variant(d, b, f, m, s, "no-clamp")),
        Mistake("no-exponent", "the base is multiplied by the ratio itself: raise it to the power d / (d - 2), which "
                "makes the slowest dimension exactly interpolated", lambda d, b, f, m, s: _dyn_variant(d, b, f, m, s,
                                                                                                 "no-exponent")),
        Mistake("static", "you used base * factor^(d/(d-2)) whatever the length: dynamic scaling grows the base with "
                "the sequence, (factor * seq_len / max_position - (factor - 1))",
                lambda d, b, f, m, s: _dyn_variant(d, b, f, m, s, "static")),
    ]))


# ========================================================================================
# YaRN frequencies
# ========================================================================================
def _yarn_cases(hidden: bool):
    specs = [("head_dim 64, base 10000, factor 4, trained on 256", 64, 10000.0, 4.0, 256, 32.0, 1.0),
             ("head_dim 128, base 10000, factor 8, trained on 4096", 128, 10000.0, 8.0, 4096, 32.0, 1.0),
             ("head_dim 16, trained on 64 (a short ramp), factor 2", 16, 10000.0, 2.0, 64, 32.0, 1.0),
             ("beta_fast 16, beta_slow 2, base 500000", 64, 500000.0, 4.0, 2048, 16.0, 2.0)]
    if hidden:
        for k in range(2):
            g = _gen(hidden_seed("ch13.yarn_inv_freq", k))
            d, m = _pick(g, [32, 64, 128]), _pick(g, [512, 2048, 8192])
            f = round(_uniform(g, 1.5, 16.0), 3)
            specs.append((f"hidden case {k + 1}", d, 10000.0, f, m, 32.0, 1.0))
    for name, d, base, f, m, bf, bs in specs:
        yield Case(name, (d, base, f, m, bf, bs),
                   expected=lambda d=d, b=base, f=f, m=m, bf=bf, bs=bs: _rope_ref("yarn", d, b, f, int(m * f),
                                                                                  original=m, beta_fast=bf,
                                                                                  beta_slow=bs),
                   compare=_compare_yarn)


def _yarn_variant(d, b, f, m, bf=32.0, bs=1.0, kind=""):
    def index_of(turns):
        return d * math.log(m / (turns * 2 * math.pi)) / (2 * math.log(b))

    lo, hi = index_of(bf), index_of(bs)
    if kind != "no-rounding":
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, d - 1)
    if lo == hi:
        hi += 0.001
    ramp = ((torch.arange(d // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
    if kind == "ramp-reversed":
        ramp = 1 - ramp
    if kind == "all-interpolated":
        ramp = torch.ones(d // 2)
    theta = _theta(d, b)
    inv = theta * (1 - ramp) + theta / f * ramp
    att = 1.0 if kind == "no-attention-factor" else 0.1 * math.log(f) + 1.0
    return inv, att


register(Exercise(
    id="ch13.yarn_inv_freq", chapter=CH, title="YaRN: a frequency ramp and an attention factor", points=2,
    name="yarn_inv_freq", difficulty="**",
    signature="yarn_inv_freq(head_dim, base, factor, original_max_position, beta_fast=32, beta_slow=1) -> "
              "(Tensor[head_dim/2], float)",
    reference="transformers ROPE_INIT_FUNCTIONS['yarn'] on a LlamaConfig with original_max_position_embeddings",
    solution=f"{SOL}:yarn_inv_freq", cases=_yarn_cases,
    forbidden=[f"{ROPE}:_compute_yarn_parameters"],
    mistakes=[
        Mistake("ramp-reversed", "your ramp runs the wrong way: the FAST dimensions (small i, many turns over the "
                "context) keep their frequency and the SLOW ones (large i) are interpolated",
                lambda *a: _yarn_variant(*a, kind="ramp-reversed")),
        Mistake("no-rounding", "the ramp's ends were not rounded outwards: floor the low end and ceil the high end "
                "(as the YaRN code and transformers do)", lambda *a: _yarn_variant(*a, kind="no-rounding")),
        Mistake("no-attention-factor", "the frequencies are right, but the attention factor must be 0.1 ln(factor) "
                "+ 1, not 1", lambda *a: _yarn_variant(*a, kind="no-attention-factor")),
        Mistake("all-interpolated", "every dimension was interpolated (that is plain position interpolation): YaRN "
                "keeps the fast dimensions and ramps between beta_fast and beta_slow turns",
                lambda *a: _yarn_variant(*a, kind="all-interpolated")),
    ]))


# ========================================================================================
# YaRN cos/sin tables
# ========================================================================================
def _cos_sin_from(inv_freq, att, positions, kind=""):
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    angles = angles.repeat_interleave(2, dim=-1) if kind == "interleaved" else torch.cat([angles, angles], dim=-1)
    c, s = angles.cos(), angles.sin()
    if kind == "factor-once":
        return c * att, s
    if kind == "factor-squared":
        return c * att ** 2, s * att ** 2
    if kind == "factor-missing":
        return c, s
    return c * att, s * att


def _yarn_cos_sin_variant(kind):
    def fn(positions, d, b, f, m):
        inv, att = _yarn_variant(d, b, f, m)
        return _cos_sin_from(inv, att, positions, kind)
    return fn


def _yarn_cos_sin_compose(part):
    def fn(positions, d, b, f, m):
        inv, att = part(d, b, f, m)
        return _cos_sin_from(inv, att, positions)
    return fn


def _cos_sin_expected(positions, d, b, f, m):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = _llama_config("yarn", d, b, f, int(m * f), m)
    emb = LlamaRotaryEmbedding(cfg)
    cos, sin = emb(torch.zeros(1, len(positions), d), positions[None])
    return cos[0], sin[0]


def _cos_sin_cases(hidden: bool):
    specs = [("positions 0..99, head_dim 16, factor 4, trained on 64", torch.arange(100), 16, 10000.0, 4.0, 64),
             ("positions 0..511, head_dim 64, factor 8, trained on 128", torch.arange(512), 64, 10000.0, 8.0, 128),
             ("scattered positions, head_dim 32, factor 2", torch.tensor([0, 5, 63, 64, 200, 255]), 32, 10000.0, 2.0,
              128)]
    if hidden:
        g = _gen(hidden_seed("ch13.yarn_cos_sin", 0))
        d, m, f = _pick(g, [32, 64, 128]), _pick(g, [256, 1024]), round(_uniform(g, 1.5, 8.0), 3)
        pos = torch.randint(0, int(m * f), (int(torch.randint(20, 200, (1,), generator=g)),), generator=g)
        specs.append(("hidden case 1", pos, d, 10000.0, f, m))
    for name, pos, d, b, f, m in specs:
        yield Case(name, (pos, d, b, f, m), expected=lambda p=pos, d=d, b=b, f=f, m=m: _cos_sin_expected(p, d, b, f, m),
                   compare=_compare_cos_sin)


register(Exercise(
    id="ch13.yarn_cos_sin", chapter=CH, title="YaRN's cos and sin tables", points=1,
    name="yarn_cos_sin",
    signature="yarn_cos_sin(positions: Tensor[T], head_dim, base, factor, original_max_position) -> "
              "(Tensor[T, head_dim], Tensor[T, head_dim])",
    reference="transformers LlamaRotaryEmbedding(config with rope_type 'yarn')(x, position_ids)",
    solution=f"{SOL}:yarn_cos_sin", cases=_cos_sin_cases,
    forbidden=["transformers.models.llama.modeling_llama:LlamaRotaryEmbedding", f"{ROPE}:_compute_yarn_parameters"],
    mistakes=[
        Mistake("factor-once", "YaRN's attention factor was applied to cos only: it multiplies BOTH cos and sin (so "
                "q . k carries its square)", _yarn_cos_sin_variant("factor-once")),
        Mistake("factor-squared", "you multiplied cos and sin by the factor squared: each gets the factor once; q . k "
                "then carries the square", _yarn_cos_sin_variant("factor-squared")),
        Mistake("factor-missing", "cos and sin are not multiplied by YaRN's attention factor",
                _yarn_cos_sin_variant("factor-missing")),
        Mistake("interleaved", "you repeated each angle twice in a row (GPT-J's interleaved layout): Llama's tables are "
                "the d/2 angles, then the same d/2 angles again (torch.cat)", _yarn_cos_sin_variant("interleaved")),
        *inherit("ch13.yarn_inv_freq", _yarn_cos_sin_compose),
    ]))


# ========================================================================================
# Zero-order hold
# ========================================================================================
def _zoh_expected(delta, A, B):
    """exp([[dt a, dt], [0, 0]]) = [[e^(dt a), (e^(dt a) - 1) / a], [0, 1]]: the input column gives dB / B."""
    dt = delta.double()[..., None].expand(*delta.shape, A.shape[-1])  # (b, L, D, N)
    a = A.double().expand_as(dt)
    M = torch.zeros(*dt.shape, 2, 2, dtype=torch.float64)
    M[..., 0, 0] = dt * a
    M[..., 0, 1] = dt
    E = torch.linalg.matrix_exp(M)
    return E[..., 0, 0], E[..., 0, 1] * B.double()[:, :, None, :]


def _mamba_like_inputs(g, b, L, d, N, scale_dt=1.0):
    """Inputs in the range of a real Mamba layer: A = -(1..N) jittered, delta in about [1e-3, 0.3]."""
    A = -(torch.arange(1, N + 1, dtype=torch.float32) * torch.exp(0.3 * torch.randn(d, N, generator=g)))
    delta = F.softplus(torch.randn(b, L, d, generator=g) * 0.7 - 3.0) * scale_dt
    u = torch.randn(b, L, d, generator=g)
    B = torch.randn(b, L, N, generator=g)
    C = torch.randn(b, L, N, generator=g)
    D = torch.randn(d, generator=g)
    return u, delta, A, B, C, D


def _zoh_cases(hidden: bool):
    specs = [("b=2, L=5, D=4, N=3", 0, 2, 5, 4, 3, 1.0), ("one position, one channel", 1, 1, 1, 1, 2, 1.0),
             ("large steps (delta up to about 5)", 2, 2, 6, 3, 4, 20.0)]
    if hidden:
        g = _gen(hidden_seed("ch13.zoh_discretize", 0))
        b, L, d, N = (int(torch.randint(1, 9, (1,), generator=g)) for _ in range(4))
        specs.append(("hidden case 1", hidden_seed("ch13.zoh_discretize", 1), b, L, d, N, 5.0))
    for name, seed, b, L, d, N, scale in specs:
        _, delta, A, B, _, _ = _mamba_like_inputs(_gen(seed), b, L, d, N, scale)
        yield Case(name, (delta, A, B), expected=lambda dl=delta, A=A, B=B: _zoh_expected(dl, A, B),
                   compare=_compare_pair("dA", "dB"))


def _zoh_variant(delta, A, B, kind):
    x = delta[..., None] * A
    dA = 1 + x if kind == "euler" else torch.exp(x)
    if kind in ("euler", "euler-b"):
        dB = delta[..., None] * B[:, :, None, :]
    elif kind == "no-divide":
        dB = torch.expm1(x) * B[:, :, None, :]
    else:
        dB = torch.expm1(x) / A * B[:, :, None, :]
    return dA, dB


register(Exercise(
    id="ch13.zoh_discretize", chapter=CH, title="Zero-order-hold discretisation", points=1, name="zoh_discretize",
    signature="zoh_discretize(delta: Tensor[b, L, D], A: Tensor[D, N], B: Tensor[b, L, N]) -> "
              "(Tensor[b, L, D, N], Tensor[b, L, D, N])",
    reference="torch.linalg.matrix_exp of the augmented matrix [[delta a, delta], [0, 0]] per channel and state",
    solution=f"{SOL}:zoh_discretize", cases=_zoh_cases,
    mistakes=[
        Mistake("euler-b", "dA is right but dB = delta * B is Euler's rule (what Mamba's code uses); zero-order hold "
                "is exact: dB = (exp(delta A) - 1) / A * B", lambda d, A, B: _zoh_variant(d, A, B, "euler-b")),
        Mistake("euler", "you used Euler's rule for both: dA = 1 + delta A is only the first term of exp(delta A)",
                lambda d, A, B: _zoh_variant(d, A, B, "euler")),
        Mistake("no-divide", "dB = (exp(delta A) - 1) * B is missing the division by A (the integral of exp(a s) "
                "over the step is (exp(a delta) - 1) / a)", lambda d, A, B: _zoh_variant(d, A, B, "no-divide")),
    ]))


# ========================================================================================
# Selective scan (sequential)
# ========================================================================================
def _hf_scan(u, delta, A, B, C, D):
    from transformers.models.mamba.modeling_mamba import mamba_selective_scan

    _silence()
    with torch.no_grad():
        y = mamba_selective_scan(u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2),
                                 D=D)
    return y.transpose(1, 2)


def _scan_variant(u, delta, A, B, C, D, kind=""):
    b, L, d = u.shape
    h = torch.zeros(b, d, A.shape[-1])
    ys = []
    for t in range(L):
        x = delta[:, t, :, None] * A
        dA = torch.exp(A) if kind == "no-delta-on-A" else torch.exp(x)
        if kind == "zoh-b":
            dBu = torch.expm1(x) / A * (u[:, t, :, None] * B[:, t, None, :])
        else:
            dBu = (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        if kind == "output-before-update":
            ys.append((h @ C[:, t, :, None]).squeeze(-1))
            h = dA * h + dBu
        else:
            h = dA * h + dBu
            ys.append((h @ C[:, t, :, None]).squeeze(-1))
    y = torch.stack(ys, dim=1)
    return y if kind == "no-D" else y + u * D


def _scan_specs(eid, hidden, extra=()):
    specs = [("b=2, L=12, D=8, N=4", 0, 2, 12, 8, 4), ("one position (L=1)", 1, 1, 1, 4, 2),
             ("b=3, L=40, D=16, N=8", 2, 3, 40, 16, 8), *extra]
    if hidden:
        g = _gen(hidden_seed(eid, 0))
        b, L = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(20, 90, (1,), generator=g))
        d, N = _pick(g, [8, 16, 24]), _pick(g, [4, 8, 16])
        specs.append(("hidden case 1", hidden_seed(eid, 1), b, L, d, N))
    return specs


def _scan_cases(hidden: bool):
    for name, seed, b, L, d, N in _scan_specs("ch13.selective_scan", hidden):
        args = _mamba_like_inputs(_gen(seed), b, L, d, N)
        yield Case(name, args, expected=lambda a=args: _hf_scan(*a), compare=close_tensors(2e-5, 1e-4))


register(Exercise(
    id="ch13.selective_scan", chapter=CH, title="The selective scan, one step at a time", points=2,
    name="selective_scan", difficulty="**",
    signature="selective_scan(u: Tensor[b, L, D], delta: Tensor[b, L, D], A: Tensor[D, N], B: Tensor[b, L, N], "
              "C: Tensor[b, L, N], D: Tensor[D]) -> Tensor[b, L, D]",
    reference="transformers' mamba_selective_scan (the sequential PyTorch path of MambaMixer)",
    solution=f"{SOL}:selective_scan", cases=_scan_cases,
    forbidden=[f"{MAMBA}:mamba_selective_scan", f"{MAMBA}:mamba_selective_state_update"],
    mistakes=[
        Mistake("zoh-b", "you discretised B with zero-order hold ((exp(delta A) - 1) / A * B); Mamba's scan uses "
                "Euler's rule for B: delta * B * u", lambda *a: _scan_variant(*a, kind="zoh-b")),
        Mistake("no-D", "the skip term D * u is missing from y", lambda *a: _scan_variant(*a, kind="no-D")),
        Mistake("output-before-update", "y_t was read from the state BEFORE the update: update h with position t "
                "first, then y_t = h . C_t", lambda *a: _scan_variant(*a, kind="output-before-update")),
        Mistake("no-delta-on-A", "the decay is exp(A): it must be exp(delta_t * A), the step size sets how much of "
                "the state survives", lambda *a: _scan_variant(*a, kind="no-delta-on-A")),
    ]))


# ========================================================================================
# Causal depthwise convolution
# ========================================================================================
def _hf_conv(x, weight, bias):
    from transformers.models.mamba.modeling_mamba import causal_conv1d_fn

    _silence()
    with torch.no_grad():
        return causal_conv1d_fn(x, weight, bias)


def _conv_variant(x, weight, bias, kind):
    K, L = weight.shape[-1], x.shape[-1]
    w = weight.flip(-1) if kind == "flipped" else weight
    b = None if kind == "no-bias" else bias
    if kind == "right-padding":
        return F.conv1d(F.pad(x, (0, K - 1)), w[:, None], b, groups=x.shape[1])
    if kind == "centered":
        return F.conv1d(F.pad(x, ((K - 1) // 2, K - 1 - (K - 1) // 2)), w[:, None], b, groups=x.shape[1])
    return F.conv1d(F.pad(x, (K - 1, 0)), w[:, None], b, groups=x.shape[1])[..., :L]


def _conv_cases(hidden: bool):
    specs = [("b=2, D=6, L=10, K=4", 0, 2, 6, 10, 4), ("a sequence shorter than the kernel (L=2, K=4)", 1, 1, 3, 2, 4),
             ("K=3, b=3, D=8, L=16", 2, 3, 8, 16, 3), ("one channel, L=7, K=2", 3, 1, 1, 7, 2)]
    if hidden:
        g = _gen(hidden_seed("ch13.causal_depthwise_conv", 0))
        b, d = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(2, 20, (1,), generator=g))
        L, K = int(torch.randint(5, 60, (1,), generator=g)), _pick(g, [2, 3, 4, 5])
        specs.append(("hidden case 1", hidden_seed("ch13.causal_depthwise_conv", 1), b, d, L, K))
    for name, seed, b, d, L, K in specs:
        g = _gen(seed)
        x, w, bias = torch.randn(b, d, L, generator=g), torch.randn(d, K, generator=g), torch.randn(d, generator=g)
        yield Case(name, (x, w, bias), expected=lambda x=x, w=w, bias=bias: _hf_conv(x, w, bias), compare=close_tensors(1e-5, 1e-5))


register(Exercise(
    id="ch13.causal_depthwise_conv", chapter=CH, title="A causal depthwise convolution", points=1,
    name="causal_depthwise_conv",
    signature="causal_depthwise_conv(x: Tensor[b, D, L], weight: Tensor[D, K], bias: Tensor[D]) -> Tensor[b, D, L]",
    reference="transformers' causal_conv1d_fn (Conv1d with groups=D, padding K-1, first L outputs)",
    solution=f"{SOL}:causal_depthwise_conv", cases=_conv_cases,
    forbidden=[f"{MAMBA}:causal_conv1d_fn", f"{MAMBA}:causal_conv1d_update"],
    mistakes=[
        Mistake("right-padding", "the zeros went on the RIGHT: output t then reads x_t .. x_(t+K-1), the future. Pad "
                "K-1 zeros on the left (or keep the FIRST L outputs of a both-sides padding)",
                lambda x, w, b: _conv_variant(x, w, b, "right-padding")),
        Mistake("centered", "'same' padding centres the kernel on t, so it reads future positions: a causal "
                "convolution pads K-1 zeros on the left only", lambda x, w, b: _conv_variant(x, w, b, "centered")),
        Mistake("flipped", "your kernel is flipped: Conv1d is a cross-correlation, the LAST tap weight[:, K-1] "
                "multiplies x_t", lambda x, w, b: _conv_variant(x, w, b, "flipped")),
        Mistake("no-bias", "the bias is missing", lambda x, w, b: _conv_variant(x, w, b, "no-bias")),
    ]))


# ========================================================================================
# The Mamba mixer
# ========================================================================================
@functools.lru_cache(maxsize=None)
def _mixer(seed, H, N, K, expand):
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    _silence()
    cfg = MambaConfig(hidden_size=H, state_size=N, conv_kernel=K, expand=expand, num_hidden_layers=1, vocab_size=32,
                      use_associative_scan=False)
    torch.manual_seed(seed)
    mixer = MambaMixer(cfg, layer_idx=0).eval()
    with torch.no_grad():  # spread the weights a little beyond the initialisation, so that mistakes show
        mixer.dt_proj.bias.add_(torch.randn(mixer.intermediate_size, generator=_gen(seed)) * 0.5)
        mixer.conv1d.bias.normal_(0, 0.3, generator=_gen(seed + 1))
        mixer.D.normal_(1, 0.5, generator=_gen(seed + 2))
    return cfg, mixer


def _mixer_expected(spec, x):
    _, mixer = _mixer(*spec)
    with torch.no_grad():
        return mixer(x)


def _state(spec):
    return {k: v.detach().clone() for k, v in _mixer(*spec)[1].state_dict().items()}


def _mixer_variant(w, x, kind="", scan=None, conv=None):
    D, N, R = w.intermediate_size, w.ssm_state_size, w.time_step_rank
    a, z = w.in_proj(x).split(D, dim=-1)
    if kind == "xz-swapped":
        a, z = z, a
    c = (conv or (lambda x_, w_, b_: _conv_variant(x_, w_, b_, "")))(a.transpose(1, 2), w.conv1d.weight[:, 0],
                                                                     w.conv1d.bias).transpose(1, 2)
    a = c if kind == "no-conv-silu" else F.silu(c)
    dt, B, C = w.x_proj(a).split([R, N, N], dim=-1)
    delta = w.dt_proj(dt) if kind == "no-softplus" else F.softplus(w.dt_proj(dt))
    A = torch.exp(w.A_log) if kind == "A-not-negated" else -torch.exp(w.A_log)
    y = (scan or _scan_variant)(a, delta, A, B, C, w.D)
    return w.out_proj(y if kind == "no-gate" else y * F.silu(z))


def _mixer_specs(eid, hidden):
    # (name, (seed, H, N, K, expand), batch, L)
    specs = [("H=16, N=4, K=4, b=2, L=10", (0, 16, 4, 4, 2), 2, 10), ("one position (L=1)", (1, 8, 4, 4, 2), 1, 1),
             ("H=24, N=8, K=3, expand 1, b=1, L=33", (2, 24, 8, 3, 1), 1, 33)]
    if hidden:
        g = _gen(hidden_seed(eid, 0))
        H, N = _pick(g, [8, 16, 32]), _pick(g, [4, 8])
        K, L = _pick(g, [2, 3, 4]), int(torch.randint(5, 40, (1,), generator=g))
        specs.append(("hidden case 1", (hidden_seed(eid, 1) % 1000, H, N, K, 2), 2, L))
    return specs


def _mixer_cases(hidden: bool):
    for name, spec, b, L in _mixer_specs("ch13.mamba_mixer", hidden):
        x = torch.randn(b, L, spec[1], generator=_gen(spec[0] + 7))
        yield Case(name, (_state(spec), x), run=_run_mixer, expected=lambda s=spec, x=x: _mixer_expected(s, x),
                   compare=close_tensors(1e-5, 1e-4), check_mutation=False)


def _mixer_compose_scan(part):
    return lambda w, x: _mixer_variant(w, x, scan=part)


def _mixer_compose_conv(part):
    return lambda w, x: _mixer_variant(w, x, conv=part)


register(Exercise(
    id="ch13.mamba_mixer", chapter=CH, title="The Mamba block", points=3, name="mamba_mixer", difficulty="**",
    signature="mamba_mixer(w: MambaWeights, x: Tensor[b, L, H], scan=None) -> Tensor[b, L, H]",
    reference="transformers MambaMixer (PyTorch path, use_associative_scan=False), the same weights",
    solution=f"{SOL}:mamba_mixer", cases=_mixer_cases,
    forbidden=[f"{MAMBA}:MambaMixer", f"{MAMBA}:mamba_selective_scan", f"{MAMBA}:causal_conv1d_fn",
               f"{MAMBA}:mamba_inner_fn"],
    mistakes=[
        Mistake("A-not-negated", "A = exp(A_log) grows the state at every step: Mamba stores log(-A), so A = "
                "-exp(A_log) and the state decays", lambda w, x: _mixer_variant(w, x, "A-not-negated")),
        Mistake("no-softplus", "delta = dt_proj(dt) can be negative: Mamba takes softplus(dt_proj(dt)) (the bias "
                "inside), a positive step", lambda w, x: _mixer_variant(w, x, "no-softplus")),
        Mistake("xz-swapped", "x and z are swapped: in_proj's output is x (the first D channels, which go through "
                "the conv and the scan) then z (the gate)", lambda w, x: _mixer_variant(w, x, "xz-swapped")),
        Mistake("no-conv-silu", "the conv's output goes through SiLU before x_proj and the scan",
                lambda w, x: _mixer_variant(w, x, "no-conv-silu")),
        Mistake("no-gate", "y must be gated: out_proj(y * silu(z))", lambda w, x: _mixer_variant(w, x, "no-gate")),
        *inherit("ch13.selective_scan", _mixer_compose_scan),
        *inherit("ch13.causal_depthwise_conv", _mixer_compose_conv),
    ]))


# ========================================================================================
# Recurrent one-token inference
# ========================================================================================
def _new_cache(cfg):
    from transformers import DynamicCache

    return DynamicCache(config=cfg)


@functools.lru_cache(maxsize=None)
def _step_case(spec, b, prefill, steps):
    """HF's cached forward: prefill, then one token at a time. Returns inputs, states after
    the prefill, and the per-token outputs and final states."""
    cfg, mixer = _mixer(*spec)
    x = torch.randn(b, prefill + steps, spec[1], generator=_gen(spec[0] + 11))
    cache = _new_cache(cfg)
    with torch.no_grad():
        if prefill:
            mixer(x[:, :prefill], cache_params=cache)
            conv0 = cache.get_conv_state(0, state_idx=0).clone()
            ssm0 = cache.get_recurrent_state(0, state_idx=0).clone()
        else:  # an empty cache: zero states
            conv0 = torch.zeros(b, mixer.intermediate_size, mixer.conv_kernel_size)
            ssm0 = torch.zeros(b, mixer.intermediate_size, mixer.ssm_state_size)
            mixer(x[:, :1], cache_params=cache)  # HF starts a cache with a (one-token) prefill
        outs = [] if prefill else [None]
        for t in range(prefill if prefill else 1, prefill + steps):
            outs.append(mixer(x[:, t:t + 1], cache_params=cache)[:, 0])
        conv = cache.get_conv_state(0, state_idx=0).clone()
        ssm = cache.get_recurrent_state(0, state_idx=0).clone()
    if not prefill:  # the first token's output from the full forward (identical to a step from zeros)
        with torch.no_grad():
            outs[0] = mixer(x[:, :1])[:, 0]
    return x[:, prefill:], conv0, ssm0, {"y": torch.stack(outs, 1), "conv_state": conv, "ssm_state": ssm}


def _step_variant(kind):
    def step(w, x_t, conv_state, ssm_state):
        D, N, R = w.intermediate_size, w.ssm_state_size, w.time_step_rank
        a, z = w.in_proj(x_t).split(D, dim=-1)
        if kind == "conv-newest-first":
            conv_state = torch.cat([a[:, :, None], conv_state[:, :, :-1]], dim=-1)
        else:
            conv_state = torch.cat([conv_state[:, :, 1:], a[:, :, None]], dim=-1)
        a = F.silu((conv_state * w.conv1d.weight[:, 0]).sum(-1) + w.conv1d.bias)
        dt, B, C = w.x_proj(a).split([R, N, N], dim=-1)
        delta = w.dt_proj(dt) if kind == "no-softplus" else F.softplus(w.dt_proj(dt))
        A = torch.exp(w.A_log) if kind == "A-not-negated" else -torch.exp(w.A_log)
        h = torch.zeros_like(ssm_state) if kind == "state-not-carried" else ssm_state
        ssm_state = torch.exp(delta[..., None] * A) * h + (delta * a)[..., None] * B[:, None, :]
        y = (ssm_state @ C[..., None]).squeeze(-1) + w.D * a
        return w.out_proj(y * F.silu(z)), conv_state, ssm_state
    return step


def _step_cases(hidden: bool):
    specs = [("H=16, N=4, K=4, b=2: 6 tokens after a prefill of 9", (0, 16, 4, 4, 2), 2, 9, 6),
             ("from empty states (no prefill), 5 tokens", (1, 8, 4, 4, 2), 1, 0, 5),
             ("a prefill shorter than the kernel (2 tokens, K=4), then 4", (0, 16, 4, 4, 2), 1, 2, 4),
             ("H=24, N=8, K=3, 12 tokens after 20", (2, 24, 8, 3, 1), 1, 20, 12)]
    if hidden:
        g = _gen(hidden_seed("ch13.mamba_step", 0))
        H, N, K = _pick(g, [8, 16, 32]), _pick(g, [4, 8]), _pick(g, [2, 3, 4])
        P, S = int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(3, 15, (1,), generator=g))
        specs.append(("hidden case 1", (hidden_seed("ch13.mamba_step", 1) % 1000, H, N, K, 2), 2, P, S))
    for name, spec, b, P, S in specs:
        xs, conv0, ssm0, expected = _step_case(spec, b, P, S)
        yield Case(name, (_state(spec), xs, conv0, ssm0), run=_run_step, expected=lambda e=expected: e, compare=_compare_step,
                   check_mutation=False)


register(Exercise(
    id="ch13.mamba_step", chapter=CH, title="Recurrent inference: one token, constant memory", points=2,
    name="mamba_step", difficulty="**",
    signature="mamba_step(w: MambaWeights, x_t: Tensor[b, H], conv_state: Tensor[b, D, K], ssm_state: Tensor[b, D, N])"
              " -> (Tensor[b, H], Tensor[b, D, K], Tensor[b, D, N])",
    reference="transformers MambaMixer's cached forward (DynamicCache conv_states / recurrent_states), one token "
              "at a time after a prefill",
    solution=f"{SOL}:mamba_step", cases=_step_cases,
    forbidden=[f"{MAMBA}:MambaMixer", f"{MAMBA}:mamba_selective_state_update", f"{MAMBA}:causal_conv1d_update",
               f"{MAMBA}:mamba_selective_scan", f"{MAMBA}:causal_conv1d_fn"],
    mistakes=[
        Mistake("state-not-carried", "each step started from a zero SSM state: the new state is exp(delta A) * "
                "ssm_state + delta * x * B, with the state you were given", _step_variant("state-not-carried")),
        Mistake("conv-newest-first", "your conv window is in the wrong order: the oldest input comes first and the "
                "newest goes in the LAST slot (drop conv_state[:, :, 0])", _step_variant("conv-newest-first")),
        Mistake("A-not-negated", "A = exp(A_log) grows the state: A = -exp(A_log)", _step_variant("A-not-negated")),
        Mistake("no-softplus", "delta needs softplus(dt_proj(dt))", _step_variant("no-softplus")),
    ]))


# ========================================================================================
# Chunked scan
# ========================================================================================
def _chunked_variant(u, delta, A, B, C, D, chunk_size=32, kind=""):
    b, L, d = u.shape
    h = torch.zeros(b, d, A.shape[-1])
    ys = []
    for s in range(0, L, chunk_size):
        dt, uc = delta[:, s:s + chunk_size], u[:, s:s + chunk_size]
        S = torch.cumsum(dt, 1)[..., None] * A
        if kind == "exclusive":
            S = S - dt[..., None] * A
        decay = torch.exp(S)
        x = (dt * uc)[..., None] * B[:, s:s + chunk_size, None, :]
        G = torch.cumsum(x / decay, 1)
        if kind == "state-not-carried":
            states = decay * G
        elif kind == "carry-not-decayed":
            states = decay * G + h[:, None]
        else:
            states = decay * (G + h[:, None])
        ys.append((states @ C[:, s:s + chunk_size, :, None]).squeeze(-1))
        h = states[:, -1]
    return torch.cat(ys, 1) + u * D


def _chunked_cases(hidden: bool):
    extra = [("L=100 not a multiple of the chunk (32)", 3, 2, 100, 8, 4)]
    chunk_for = {0: 4, 1: 32, 2: 16, 3: 32}
    for i, (name, seed, b, L, d, N) in enumerate(_scan_specs("ch13.chunked_scan", hidden, extra)):
        args = _mamba_like_inputs(_gen(seed), b, L, d, N)
        Q = chunk_for.get(seed, 8) if i < 4 else 8
        yield Case(f"{name}, chunks of {Q}", args, kwargs={"chunk_size": Q}, expected=lambda a=args: _hf_scan(*a),
                   compare=close_tensors(5e-5, 2e-4))
    args = _mamba_like_inputs(_gen(5), 1, 20, 4, 2)
    yield Case("chunks of 1 (the plain recurrence)", args, kwargs={"chunk_size": 1},
               expected=lambda a=args: _hf_scan(*a), compare=close_tensors(5e-5, 2e-4))


def _chunked_compose(part):
    return lambda u, delta, A, B, C, D, chunk_size=32: part(u, delta, A, B, C, D)


register(Exercise(
    id="ch13.chunked_scan", chapter=CH, title="A chunked scan, equal to the sequential one", points=3,
    name="chunked_scan", difficulty="***",
    signature="chunked_scan(u, delta, A, B, C, D, chunk_size: int = 32) -> Tensor[b, L, D] (shapes as selective_scan)",
    reference="transformers' mamba_selective_scan (sequential), on inputs in a Mamba layer's range",
    solution=f"{SOL}:chunked_scan", cases=_chunked_cases,
    forbidden=[f"{MAMBA}:mamba_selective_scan", f"{MAMBA}:mamba_selective_state_update"],
    mistakes=[
        Mistake("state-not-carried", "each chunk restarted from a zero state: carry the state at the end of one chunk "
                "into the next, decayed by exp(S_t) inside it", lambda *a, **k: _chunked_variant(*a, **k,
                                                                                                  kind="state-not-carried")),
        Mistake("carry-not-decayed", "the carried-in state was added to every position as it is: inside the chunk it "
                "decays too, h_t = exp(S_t) * (h_0 + ...)", lambda *a, **k: _chunked_variant(*a, **k,
                                                                                              kind="carry-not-decayed")),
        Mistake("exclusive", "your cumulative sum of delta stops before t (exclusive): the decay up to and including "
                "step t is exp(A * sum_{s<=t} delta_s)", lambda *a, **k: _chunked_variant(*a, **k, kind="exclusive")),
        *inherit("ch13.selective_scan", _chunked_compose),
    ]))
