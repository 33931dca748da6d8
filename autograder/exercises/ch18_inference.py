"""Chapter 18 - Efficient inference.

References, all independent of the course's solutions:
- absmax int8 and zero-point uint8: ``torch.quantize_per_tensor`` (rounding half to even),
  with the zero-point recipe's scale and zero point from ``MinMaxObserver`` (quint8,
  per-tensor affine: the range extended to contain 0). Torch 2.13 deprecates quantized
  tensors: when they are gone, the plain formula clamp(round_half_even(x / s) + z) is used
  (the project's tests prove the two equal);
- dequantization: ``torch._make_per_tensor_quantized_tensor`` / ``_make_per_channel_...``
  and ``.dequantize()``;
- per-channel and group-wise int4: ``torch.quantize_per_channel`` on the groups as rows;
- NF4: bitsandbytes' CPU ``quantize_4bit`` / ``dequantize_4bit`` re-derived here (its import
  takes seconds, too slow for a check); ``tests/test_ch18_inference.py`` proves the
  re-derivation equal to bitsandbytes bit for bit;
- int8 matmul: activations quantized by ``torch.quantize_per_channel``, ``torch._int_mm``;
- distillation: ``F.kl_div(log_softmax(s / T), softmax(t / T), reduction="batchmean") * T**2``;
- batched generation: Hugging Face ``GPT2LMHeadModel.generate`` on the left-padded batch
  with its attention mask (weights copied), equal to generating each prompt alone;
- speculative decoding: HF assisted generation (``generate(assistant_model=...)``), equal
  to the target's greedy output; the rounds re-derived from HF's greedy continuations of
  the target and the draft.
"""
from __future__ import annotations

import contextlib
import functools
import io
import math
import warnings

import torch
import torch.nn.functional as F

from ..core import Case, Exercise, Mistake, compare_tensors, hidden_seed, register, single_thread
from ..drivers.ch18_inference import (build_gpt, compare_absmax, compare_exact, compare_grad, compare_groupwise,
                                      compare_nf4, compare_speculative, compare_zeropoint, run_distill_grad,
                                      run_generate_batch, run_speculative)

CH = "ch18"
SOL = "solutions.ch18_inference"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def _quiet():
    """Library deprecation notices and logs must not reach a check cell's stderr."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ========================================================================================
# torch's quantized tensors (deprecated in 2.13) with the plain formula as fallback
# ========================================================================================
def torch_quantize(x, scale: float, zero_point: int, dtype) -> torch.Tensor:
    """Integer codes of ``torch.quantize_per_tensor(x, scale, zero_point, dtype)``."""
    try:
        with _no_warnings():
            return torch.quantize_per_tensor(x.float(), float(scale), int(zero_point), dtype).int_repr()
    except (AttributeError, RuntimeError, NotImplementedError):
        lo, hi, out = (-128, 127, torch.int8) if dtype == torch.qint8 else (0, 255, torch.uint8)
        return (torch.round(x.double() / float(scale)) + int(zero_point)).clamp(lo, hi).to(out)


def torch_quantize_rows(x, scales, dtype=torch.qint8) -> torch.Tensor:
    """Integer codes of ``torch.quantize_per_channel(x, scales, 0, axis=0, dtype)`` (x 2-D)."""
    try:
        with _no_warnings():
            return torch.quantize_per_channel(x.float(), scales.double(), torch.zeros(len(scales), dtype=torch.long),
                                              0, dtype).int_repr()
    except (AttributeError, RuntimeError, NotImplementedError):
        return torch.round(x.double() / scales.double()[:, None]).clamp(-128, 127).to(torch.int8)


def _minmax_qparams(x) -> tuple[torch.Tensor, int]:
    """Scale and zero point of ``MinMaxObserver(quint8, per_tensor_affine)``."""
    try:
        from torch.ao.quantization import MinMaxObserver

        with _no_warnings():
            obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)
            obs(x.float())
            scale, zp = obs.calculate_qparams()
        return scale.reshape(()).float(), int(zp)
    except (ImportError, AttributeError, RuntimeError):
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        scale = torch.tensor((hi - lo) / 255, dtype=torch.float32)
        return scale, int(min(max(-round(lo / float(scale)), 0), 255))


def _away_from_halves(x: torch.Tensor, scale, margin=1e-4) -> torch.Tensor:
    """Move any value whose x / scale lies within ``margin`` of a half-integer by 3 margins:
    there, x / s and x * (1 / s) may round differently, a coin toss between correct answers."""
    r = x / scale
    frac = r - torch.floor(r)
    near = (frac - 0.5).abs() < margin
    return torch.where(near, x + 3 * margin * scale, x)


# ========================================================================================
# absmax_quantize
# ========================================================================================
def _absmax_expected(x):
    absmax = x.abs().max().float()
    scale = absmax / 127 if float(absmax) > 0 else torch.tensor(1.0)
    return torch_quantize(x, float(scale), 0, torch.qint8), scale


def _absmax_inputs(seed, shape, kind):
    g = _gen(seed)
    if kind == "halves":  # absmax 127 * 0.25: scale 0.25 exactly, every x / scale ends in .5
        k = torch.randint(-126, 126, shape, generator=g).float() + 0.5
        x = k * 0.25
        x.view(-1)[0] = -127 * 0.25
        return x
    x = torch.randn(*shape, generator=g) * 0.7
    if kind == "negative":  # the largest magnitude is negative: max(x) < max|x|
        x.view(-1)[int(torch.randint(x.numel(), (1,), generator=g))] = -4 * float(x.abs().max())
    scale = x.abs().max() / 127
    return _away_from_halves(x, scale)


def _absmax_cases(hidden: bool):
    specs = [("x (6, 10), normal values", 0, (6, 10), "normal"),
             ("values whose x / scale end in .5: halves round to even", 1, (40,), "halves"),
             ("the largest magnitude is negative", 2, (5, 7), "negative"),
             ("a 3-D tensor (2, 3, 16)", 3, (2, 3, 16), "normal"),
             ("a single value", 4, (1,), "normal")]
    if hidden:
        specs += [(f"hidden case {i + 1}", hidden_seed("ch18.absmax_quantize", i), shape, kind)
                  for i, (shape, kind) in enumerate([((9, 33), "negative"), ((64,), "halves"), ((4, 4, 4), "normal")])]
    for name, seed, shape, kind in specs:
        x = _absmax_inputs(seed, shape, kind)
        yield Case(name, (x,), expected=lambda x=x: _absmax_expected(x), compare=compare_absmax)


def _absmax_wrong(kind):
    def fn(x):
        if kind == "scale-from-max":
            scale = x.max() / 127
        elif kind == "scale-128":
            scale = x.abs().max() / 128
        else:
            scale = x.abs().max() / 127
        r = x / scale
        q = torch.floor(r + 0.5) if kind == "round-half-up" else (torch.trunc(r) if kind == "truncate" else torch.round(r))
        return q.clamp(-127, 127).to(torch.int8), scale
    return fn


register(Exercise(
    id="ch18.absmax_quantize", chapter=CH, title="Absmax int8 quantization", points=1, name="absmax_quantize",
    signature="absmax_quantize(x: Tensor) -> (q: Tensor int8, scale: Tensor[] float32)",
    reference="torch.quantize_per_tensor(x, max|x| / 127, 0, torch.qint8).int_repr() (half to even)",
    solution=f"{SOL}:absmax_quantize", cases=_absmax_cases,
    forbidden=["torch:quantize_per_tensor"],
    mistakes=[
        Mistake("round-half-up", "you round halves up (floor(x + 0.5)): torch.round, like quantize_per_tensor, rounds "
                "halves to the nearest EVEN integer (2.5 -> 2, 3.5 -> 4), which does not bias the codes upward",
                _absmax_wrong("round-half-up")),
        Mistake("scale-from-max", "your scale comes from max(x), not max|x|: when the largest magnitude is negative "
                "the codes overflow the range. Use x.abs().max()", _absmax_wrong("scale-from-max")),
        Mistake("truncate", "you truncate x / scale toward zero (.int() or .to(torch.int8) without rounding): round to "
                "the nearest integer first", _absmax_wrong("truncate")),
        Mistake("scale-128", "you divided max|x| by 128: the symmetric int8 range used here is [-127, 127], so the "
                "scale is max|x| / 127 and max|x| maps to 127", _absmax_wrong("scale-128")),
    ]))


# ========================================================================================
# zeropoint_quantize
# ========================================================================================
def _zeropoint_expected(x):
    scale, zp = _minmax_qparams(x)
    return torch_quantize(x, float(scale), zp, torch.quint8), scale, torch.tensor(zp)


def _zeropoint_inputs(seed, shape, kind):
    g = _gen(seed)
    if kind == "halves":  # lo = -100 * 2^-3, hi = 155 * 2^-3: scale 2^-3, zero point 100, x / scale = k + .5
        k = torch.randint(-99, 154, shape, generator=g).float() + 0.5
        x = k * 0.125
        x.view(-1)[0], x.view(-1)[1] = -100 * 0.125, 155 * 0.125
        return x
    if kind == "positive":  # after a ReLU: the range [0, max]
        x = torch.rand(*shape, generator=g) * 3 + 0.5
    elif kind == "negative":
        x = -torch.rand(*shape, generator=g) * 2 - 0.25
    else:  # skewed: more room above 0 than below
        x = torch.randn(*shape, generator=g) * 0.5 + 0.8
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    return _away_from_halves(x, (hi - lo) / 255)


def _zeropoint_cases(hidden: bool):
    specs = [("skewed values (8, 12)", 0, (8, 12), "skewed"),
             ("x / scale ends in .5: halves round to even", 1, (50,), "halves"),
             ("all positive (after a ReLU): the range must still contain 0", 2, (30,), "positive"),
             ("all negative", 3, (4, 9), "negative")]
    if hidden:
        specs += [(f"hidden case {i + 1}", hidden_seed("ch18.zeropoint_quantize", i), shape, kind)
                  for i, (shape, kind) in enumerate([((7, 21), "skewed"), ((80,), "halves"), ((3, 17), "positive")])]
    for name, seed, shape, kind in specs:
        x = _zeropoint_inputs(seed, shape, kind)
        yield Case(name, (x,), expected=lambda x=x: _zeropoint_expected(x), compare=compare_zeropoint)


def _zeropoint_wrong(kind):
    def fn(x):
        lo, hi = x.min(), x.max()
        if kind not in ("range-without-zero", "zero-point-not-clamped"):
            lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = (hi - lo) / 255
        zp = -lo / scale
        if kind == "zero-point-not-rounded":
            q = torch.round(x / scale + zp).clamp(0, 255).to(torch.uint8)
            return q, scale, zp
        zp = torch.round(zp)
        if kind != "zero-point-not-clamped":
            zp = zp.clamp(0, 255)
        zp = zp.long()
        r = x / scale
        q = torch.floor(r + 0.5) if kind == "round-half-up" else torch.round(r)
        return (q + zp).clamp(0, 255).to(torch.uint8), scale, zp
    return fn


register(Exercise(
    id="ch18.zeropoint_quantize", chapter=CH, title="Zero-point uint8 quantization", points=1,
    name="zeropoint_quantize",
    signature="zeropoint_quantize(x: Tensor) -> (q: Tensor uint8, scale: Tensor[] float32, zero_point: Tensor[] int64)",
    reference="MinMaxObserver(torch.quint8, per_tensor_affine) for scale and zero point, then "
              "torch.quantize_per_tensor(x, scale, zero_point, torch.quint8).int_repr()",
    solution=f"{SOL}:zeropoint_quantize", cases=_zeropoint_cases, difficulty="**",
    forbidden=["torch:quantize_per_tensor", "torch.ao.quantization:MinMaxObserver"],
    mistakes=[
        Mistake("round-half-up", "you round halves up (floor(x + 0.5)): torch.round rounds halves to even",
                _zeropoint_wrong("round-half-up")),
        Mistake("zero-point-not-rounded", "your zero point is not an integer: round -lo / scale to the nearest "
                "integer, so that 0.0 is stored exactly as one code", _zeropoint_wrong("zero-point-not-rounded")),
        Mistake("zero-point-not-clamped", "your zero point falls outside [0, 255] (the range did not contain 0): a "
                "uint8 cannot store it. Extend the range to contain 0 (lo = min(min x, 0), hi = max(max x, 0)) and "
                "clamp the zero point to [0, 255]", _zeropoint_wrong("zero-point-not-clamped")),
        Mistake("range-without-zero", "your range [min x, max x] does not contain 0: extend it (lo = min(min x, 0), "
                "hi = max(max x, 0)) so that 0.0, the most common weight and activation, is exact",
                _zeropoint_wrong("range-without-zero")),
    ]))


# ========================================================================================
# dequantize
# ========================================================================================
def _dequantize_expected(q, scale, zero_point):
    zp = torch.as_tensor(zero_point)
    if scale.dim() == 0:
        try:
            with _no_warnings():
                return torch._make_per_tensor_quantized_tensor(q, float(scale), int(zp)).dequantize()
        except (AttributeError, RuntimeError):
            pass
    else:
        try:
            zps = zp.reshape(-1).long().expand(q.shape[0]).contiguous()
            with _no_warnings():
                return torch._make_per_channel_quantized_tensor(q, scale.reshape(-1).double(), zps, 0).dequantize()
        except (AttributeError, RuntimeError):
            pass
    return ((q.double() - zp.double()) * scale.double()).float()


def _dequantize_cases(hidden: bool):
    specs = [("int8 codes, one scale", 0, (5, 8), "int8", "tensor"),
             ("uint8 codes, zero point 131 (codes below it are negative)", 1, (6, 6), "uint8", "tensor"),
             ("int8 codes, one scale per row (rows, 1)", 2, (4, 9), "int8", "rows"),
             ("uint8 codes, a zero point and a scale per row", 3, (3, 10), "uint8", "rows")]
    if hidden:
        specs += [(f"hidden case {i + 1}", hidden_seed("ch18.dequantize", i), shape, dt, per)
                  for i, (shape, dt, per) in enumerate([((7, 5), "uint8", "tensor"), ((6, 11), "uint8", "rows")])]
    for name, seed, shape, dt, per in specs:
        g = _gen(seed)
        rows = shape[0]
        if dt == "int8":
            q = torch.randint(-127, 128, shape, generator=g).to(torch.int8)
            zp = 0
        else:
            q = torch.randint(0, 256, shape, generator=g).to(torch.uint8)
            zp = (torch.tensor(131) if per == "tensor" and seed == 1 else
                  torch.randint(60, 200, (rows, 1) if per == "rows" else (), generator=g))
        scale = torch.rand((rows, 1) if per == "rows" else (), generator=g) * 0.05 + 0.01
        yield Case(name, (q, scale, zp), expected=lambda a=(q, scale, zp): _dequantize_expected(*a),
                   compare=functools.partial(compare_tensors, atol=1e-6, rtol=1e-5))


def _dequantize_wrong(kind):
    def fn(q, scale, zero_point=0):
        if kind == "uint8-wraparound":
            return ((q - zero_point) * scale).float()
        zp = torch.as_tensor(zero_point).long()
        if kind == "zero-point-ignored":
            return q.long().float() * scale
        if kind == "zero-point-added":
            return (q.long() + zp).float() * scale
        return (q.long() - zp).float() / scale  # scale-divided
    return fn


register(Exercise(
    id="ch18.dequantize", chapter=CH, title="Dequantize", points=1, name="dequantize",
    signature="dequantize(q: Tensor int8|uint8, scale: Tensor, zero_point=0) -> Tensor float32",
    reference="torch._make_per_tensor_quantized_tensor / _make_per_channel_quantized_tensor(...).dequantize()",
    solution=f"{SOL}:dequantize", cases=_dequantize_cases,
    forbidden=["torch:_make_per_tensor_quantized_tensor", "torch:_make_per_channel_quantized_tensor",
               "torch:dequantize"],
    mistakes=[
        Mistake("uint8-wraparound", "q - zero_point was computed in uint8 and wrapped around (3 - 131 = 128 in "
                "uint8): convert q to a wider integer (or float) type BEFORE subtracting the zero point",
                _dequantize_wrong("uint8-wraparound")),
        Mistake("zero-point-ignored", "you ignored the zero point: x = (q - zero_point) * scale",
                _dequantize_wrong("zero-point-ignored")),
        Mistake("zero-point-added", "you added the zero point: the code zero_point stands for 0.0, so SUBTRACT it",
                _dequantize_wrong("zero-point-added")),
        Mistake("scale-divided", "you divided by the scale: quantizing divides by it, dequantizing multiplies",
                _dequantize_wrong("scale-divided")),
    ]))


# ========================================================================================
# groupwise_quantize
# ========================================================================================
def _groupwise_expected(w, bits, group_size):
    rows, cols = w.shape
    g = cols if group_size is None else group_size
    qmax = 2 ** (bits - 1) - 1
    starts = list(range(0, cols, g))
    scales = torch.ones(rows, len(starts))
    for r in range(rows):
        for j, s in enumerate(starts):
            m = float(w[r, s:s + g].abs().max())
            if m > 0:
                scales[r, j] = torch.tensor(m, dtype=torch.float32) / qmax
    padded = torch.zeros(rows, len(starts) * g)
    padded[:, :cols] = w
    codes = torch_quantize_rows(padded.reshape(rows * len(starts), g), scales.reshape(-1))
    return codes.reshape(rows, -1)[:, :cols].clone(), scales


def _groupwise_inputs(seed, rows, cols, bits, group_size, zero_row=False):
    g = _gen(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[:, ::7] *= 4  # a few large weights per row, as in trained matrices
    if zero_row:
        w[1] = 0
    gs = cols if group_size is None else group_size
    qmax = 2 ** (bits - 1) - 1
    for s in range(0, cols, gs):
        block = w[:, s:s + gs]
        scale = (block.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-12)
        w[:, s:s + gs] = _away_from_halves(block, scale)
    return w


def _groupwise_cases(hidden: bool):
    specs = [("int4 per channel (group_size=None), w (6, 32)", 0, 6, 32, 4, None, False),
             ("int4 groups of 8, w (4, 32)", 1, 4, 32, 4, 8, False),
             ("int4 groups of 8, rows of 30 columns: the last group of each row has 6", 2, 5, 30, 4, 8, False),
             ("int3 groups of 16, w (3, 48)", 3, 3, 48, 3, 16, False),
             ("int8 groups of 32, with a row of zeros", 4, 4, 64, 8, 32, True)]
    if hidden:
        for i, (rows, cols, bits, gs) in enumerate([(7, 50, 4, 16), (5, 36, 4, None), (6, 27, 2, 4)]):
            specs.append((f"hidden case {i + 1} ({bits} bits)", hidden_seed("ch18.groupwise_quantize", i),
                          rows, cols, bits, gs, False))
    for name, seed, rows, cols, bits, gs, zero_row in specs:
        w = _groupwise_inputs(seed, rows, cols, bits, gs, zero_row)
        yield Case(name, (w, bits, gs), expected=lambda a=(w, bits, gs): _groupwise_expected(*a),
                   compare=compare_groupwise)


def _groupwise_wrong(kind):
    def fn(w, bits=4, group_size=None):
        rows, cols = w.shape
        g = cols if group_size is None else group_size
        n = -(-cols // g)
        qmax = 2 ** (bits - 1) if kind == "qmax-off-by-one" else 2 ** (bits - 1) - 1
        if kind == "groups-across-rows":
            flat = w.reshape(-1)
            chunks = flat.split(g)
            q = torch.cat([torch.round(c / (c.abs().max() / qmax)).clamp(-qmax, qmax) for c in chunks])
            scales = torch.stack([c.abs().max() / qmax for c in chunks])
            return q.view(rows, cols).to(torch.int8), scales[: rows * n].reshape(rows, n) if scales.numel() >= rows * n \
                else torch.nn.functional.pad(scales, (0, rows * n - scales.numel()), value=1.0).reshape(rows, n)
        if kind == "per-tensor":
            s = w.abs().max() / qmax
            scales = torch.full((rows, n), float(s))
        else:
            padded = torch.nn.functional.pad(w, (0, n * g - cols)).view(rows, n, g)
            red = padded.amax(-1) if kind == "scale-from-max" else padded.abs().amax(-1)
            scales = torch.where(red > 0, red / qmax, torch.ones_like(red))
        full = scales.repeat_interleave(g, dim=1)[:, :cols]
        r = w / full
        q = torch.floor(r + 0.5) if kind == "round-half-up" else torch.round(r)
        top = qmax - 1 if kind == "qmax-off-by-one" else qmax  # "int4 is -8..7, so divide by 8"
        return q.clamp(-qmax, top).to(torch.int8), scales
    return fn


register(Exercise(
    id="ch18.groupwise_quantize", chapter=CH, title="Per-channel and group-wise int4", points=2,
    name="groupwise_quantize",
    signature="groupwise_quantize(w: Tensor[rows, cols], bits=4, group_size=None) -> "
              "(q: Tensor[rows, cols] int8, scales: Tensor[rows, n_groups] float32)",
    reference="torch.quantize_per_channel(groups as rows, max|group| / qmax, 0, axis=0, torch.qint8).int_repr()",
    solution=f"{SOL}:groupwise_quantize", cases=_groupwise_cases, difficulty="**",
    forbidden=["torch:quantize_per_channel", "torch:quantize_per_tensor"],
    mistakes=[
        Mistake("groups-across-rows", "your groups run across the end of a row into the next one (you grouped the "
                "flattened matrix): each row is cut into its own groups, and when group_size does not divide the "
                "row length the LAST group of each row is shorter", _groupwise_wrong("groups-across-rows")),
        Mistake("scale-from-max", "your scales come from the max, not the max of |w|: negative weights overflow",
                _groupwise_wrong("scale-from-max")),
        Mistake("qmax-off-by-one", "you divided by 2 ** (bits - 1) (8 for 4 bits) and used the range [-8, 7]: the "
                "symmetric range is [-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1], [-7, 7] for int4, with scale "
                "max|group| / 7", _groupwise_wrong("qmax-off-by-one")),
        Mistake("per-tensor", "you used one scale for the whole matrix: every group (or row) gets its own",
                _groupwise_wrong("per-tensor")),
        Mistake("round-half-up", "you round halves up: torch.round rounds halves to even",
                _groupwise_wrong("round-half-up")),
    ]))


# ========================================================================================
# NF4: bitsandbytes' CPU path, re-derived (proved equal to bitsandbytes in the tests)
# ========================================================================================
BNB_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
           -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
           0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
           0.7229568362236023, 1.0]


def bnb_quantize_nf4(x: torch.Tensor, blocksize: int = 64):
    """bitsandbytes.functional.quantize_4bit(x, blocksize, quant_type="nf4") on the CPU:
    (packed uint8 (ceil(n/2),), absmax float32). Full blocks are scaled by x * (1 / absmax),
    the last partial block by x / absmax; values above a midpoint take the upper code."""
    code = torch.tensor(BNB_NF4)
    bounds = (code[:-1] + code[1:]) / 2
    flat = x.reshape(-1).float()
    n = flat.numel()
    full = n - n % blocksize
    absmax, scaled = [], []
    for start in range(0, full, blocksize):
        block = flat[start:start + blocksize]
        m = block.abs().max()
        absmax.append(m)
        scaled.append((block * (1.0 / m.clamp(min=1e-38))).clamp(-1, 1))
    if full < n:
        m = flat[full:].abs().max().clamp(min=1e-38)
        absmax.append(m)
        scaled.append((flat[full:] / m).clamp(-1, 1))
    s = torch.cat(scaled)
    if n % 2:
        s = torch.cat([s, torch.zeros(1)])
    idx = (s[:, None] > bounds[None, :]).sum(dim=1).to(torch.uint8)
    packed = idx[0::2] * 16 + idx[1::2]
    return packed.to(torch.uint8), torch.stack(absmax)


def bnb_dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int = 64):
    """bitsandbytes.functional.dequantize_4bit on the CPU, float32."""
    code = torch.tensor(BNB_NF4)
    n = math.prod(shape)
    p = packed.reshape(-1).long()
    idx = torch.empty(2 * len(p), dtype=torch.long)
    idx[0::2], idx[1::2] = p // 16, p % 16
    values = code[idx[:n]]
    out = torch.empty(n)
    for b, start in enumerate(range(0, n, blocksize)):
        out[start:start + blocksize] = values[start:start + blocksize] * absmax[b]
    return out.reshape(shape)


def _nf4_inputs(seed, shape, blocksize, zero_block=False):
    """Normal weights with a few outliers, kept away from the 15 decision boundaries (where
    x * (1 / m) and x / m may fall on different sides: a coin toss, not a mistake)."""
    g = _gen(seed)
    x = torch.randn(*shape, generator=g) * 0.02
    flat = x.view(-1)
    flat[torch.randint(flat.numel(), (max(1, flat.numel() // 50),), generator=g)] *= 5
    if zero_block:
        flat[:blocksize] = 0
    code = torch.tensor(BNB_NF4)
    bounds = (code[:-1] + code[1:]) / 2
    for _ in range(3):
        n = flat.numel()
        block = torch.arange(n) // blocksize
        m = torch.zeros(block.max() + 1).scatter_reduce(0, block, flat.abs(), "amax")[block]
        s = torch.where(m > 0, flat / m.clamp(min=1e-38), torch.zeros_like(flat))
        near = ((s[:, None] - bounds).abs() < 1e-5).any(dim=1) & (flat.abs() < m)
        if not bool(near.any()):
            break
        flat[near] *= 0.999
    return x


def _nf4_cases(hidden: bool):
    specs = [("a (4, 64) weight, blocks of 64", 0, (4, 64), 64, False),
             ("a (3, 50) weight: blocks run across rows, the last block has 22 values", 1, (3, 50), 64, False),
             ("an odd number of values (75): the last byte is padded", 2, (75,), 64, False),
             ("blocks of 32 with a block of zeros", 3, (2, 96), 32, True)]
    if hidden:
        for i, (shape, bs) in enumerate([((5, 40), 64), ((2, 3, 37), 32), ((129,), 64)]):
            specs.append((f"hidden case {i + 1}", hidden_seed("ch18.nf4_quantize", i), shape, bs, False))
    for name, seed, shape, bs, zero in specs:
        x = _nf4_inputs(seed, shape, bs, zero)
        yield Case(name, (x, bs), expected=lambda a=(x, bs): bnb_quantize_nf4(*a), compare=compare_nf4)


def _nf4_wrong(kind):
    def fn(x, blocksize=64):
        code = torch.tensor(BNB_NF4)
        if kind == "blocks-per-row":
            rows = x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x.reshape(1, -1)
            parts = [bnb_quantize_nf4(r, blocksize) for r in rows]
            idx = torch.cat([torch.stack([p >> 4, p & 15], -1).reshape(-1)[:len(r)] for p, r in zip((p[0] for p in parts), rows)])
            absmax = torch.cat([p[1] for p in parts])
        else:
            flat = x.reshape(-1).float()
            n = flat.numel()
            nb = -(-n // blocksize)
            blocks = F.pad(flat, (0, nb * blocksize - n)).view(nb, blocksize)
            absmax = blocks.abs().amax(-1)
            if kind == "one-absmax":
                absmax = absmax.max().expand(nb).clone()
            scaled = (blocks / absmax.clamp(min=1e-38)[:, None]).reshape(-1)[:n]
            if kind == "uniform-code":
                code = torch.linspace(-1, 1, 16)
            idx = (scaled[:, None] - code).abs().argmin(-1)
        if idx.numel() % 2:
            idx = torch.cat([idx, torch.tensor([7])])
        idx = idx.to(torch.uint8)
        if kind == "low-nibble-first":
            return (idx[1::2] << 4) | idx[0::2], absmax
        return (idx[0::2] << 4) | idx[1::2], absmax
    return fn


register(Exercise(
    id="ch18.nf4_quantize", chapter=CH, title="NF4 quantization, bit for bit", points=2, name="nf4_quantize",
    signature="nf4_quantize(x: Tensor, blocksize=64) -> (packed: Tensor[ceil(n/2)] uint8, absmax: Tensor[n_blocks])",
    reference="bitsandbytes.functional.quantize_4bit(x, blocksize, quant_type='nf4') on the CPU (re-derived; "
              "the project's tests prove it bit for bit equal)",
    solution=f"{SOL}:nf4_quantize", cases=_nf4_cases, difficulty="**",
    forbidden=["bitsandbytes.functional:quantize_4bit", "bitsandbytes.functional:quantize_nf4"],
    mistakes=[
        Mistake("low-nibble-first", "your bytes hold the first value in the LOW nibble: bitsandbytes packs "
                "(first << 4) | second, the first value in the high four bits", _nf4_wrong("low-nibble-first")),
        Mistake("blocks-per-row", "your blocks restart at every row: bitsandbytes cuts the FLATTENED tensor into "
                "blocks of blocksize values, so a block may run from one row into the next", _nf4_wrong("blocks-per-row")),
        Mistake("one-absmax", "you used one absmax for the whole tensor: every block of blocksize values has its own",
                _nf4_wrong("one-absmax")),
        Mistake("uniform-code", "your 16 levels are evenly spaced: NF4's levels are the NF4_CODE table (normal "
                "quantiles, denser near 0)", _nf4_wrong("uniform-code")),
    ]))


def _nf4_deq_cases(hidden: bool):
    specs = [("a (4, 64) weight, blocks of 64", 10, (4, 64), 64),
             ("(3, 50): the last block is short", 11, (3, 50), 64),
             ("75 values: the padding nibble is dropped", 12, (75,), 64),
             ("blocks of 16, (2, 2, 24)", 13, (2, 2, 24), 16)]
    if hidden:
        for i, (shape, bs) in enumerate([((6, 30), 64), ((101,), 32)]):
            specs.append((f"hidden case {i + 1}", hidden_seed("ch18.nf4_dequantize", i), shape, bs))
    for name, seed, shape, bs in specs:
        packed, absmax = bnb_quantize_nf4(_nf4_inputs(seed, shape, bs), bs)
        yield Case(name, (packed, absmax, list(shape), bs),
                   expected=lambda a=(packed, absmax, tuple(shape), bs): bnb_dequantize_nf4(*a),
                   compare=functools.partial(compare_tensors, atol=0, rtol=1e-6))


def _nf4_deq_wrong(kind):
    def fn(packed, absmax, shape, blocksize=64):
        code = torch.tensor(BNB_NF4)
        n = math.prod(shape)
        p = packed.reshape(-1)
        pair = [p & 15, p >> 4] if kind == "low-nibble-first" else [p >> 4, p & 15]
        idx = torch.stack(pair, -1).reshape(-1)[:n].long()
        if kind == "no-absmax":
            return code[idx].reshape(shape)
        if kind == "blocks-per-row":
            cols = shape[-1]
            block = torch.arange(n) % cols // blocksize + (torch.arange(n) // cols) * (-(-cols // blocksize))
            block = block.clamp(max=len(absmax) - 1)
        else:
            block = torch.arange(n) // blocksize
        return (code[idx] * absmax[block]).reshape(shape)
    return fn


register(Exercise(
    id="ch18.nf4_dequantize", chapter=CH, title="NF4 dequantization", points=1, name="nf4_dequantize",
    signature="nf4_dequantize(packed: Tensor uint8, absmax: Tensor, shape, blocksize=64) -> Tensor[shape] float32",
    reference="bitsandbytes.functional.dequantize_4bit(..., quant_type='nf4') on the CPU (re-derived; the project's "
              "tests prove it equal)",
    solution=f"{SOL}:nf4_dequantize", cases=_nf4_deq_cases,
    forbidden=["bitsandbytes.functional:dequantize_4bit", "bitsandbytes.functional:dequantize_nf4"],
    mistakes=[
        Mistake("low-nibble-first", "you read the low nibble first: the first value is in the HIGH four bits "
                "(byte >> 4), the second in the low ones (byte & 15)", _nf4_deq_wrong("low-nibble-first")),
        Mistake("no-absmax", "you forgot to multiply by the absmax of each block", _nf4_deq_wrong("no-absmax")),
        Mistake("blocks-per-row", "your blocks restart at every row: value i belongs to block i // blocksize of the "
                "FLATTENED tensor", _nf4_deq_wrong("blocks-per-row")),
    ]))


# ========================================================================================
# int8_linear
# ========================================================================================
def _int8_linear_expected(x, w_q, w_scale):
    absmax = x.abs().amax(dim=1)
    s_x = torch.where(absmax > 0, absmax / 127, torch.ones_like(absmax))
    x_q = torch_quantize_rows(x, s_x)
    acc = torch._int_mm(x_q, w_q.t().contiguous())
    return (acc.double() * s_x.double()[:, None] * w_scale.double()[None, :]).float()


def _int8_linear_inputs(seed, N, K, M, zero_row=False):
    g = _gen(seed)
    x = torch.randn(N, K, generator=g)
    x[:, ::5] *= 3
    if zero_row:
        x[0] = 0
    absmax = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    x = _away_from_halves(x, absmax / 127)
    w = torch.randn(M, K, generator=g) * 0.05
    w_scale = w.abs().amax(dim=1) / 127
    w_q = torch.round(w / w_scale[:, None]).to(torch.int8)
    return x, w_q, w_scale


def _int8_linear_cases(hidden: bool):
    specs = [("x (4, 32), w (16, 32)", 0, 4, 32, 16, False),
             ("x (17, 256), w (64, 256): int8 sums overflow int8", 1, 17, 256, 64, False),
             ("one token, x (1, 40), w (8, 40)", 2, 1, 40, 8, False),
             ("a row of zeros in x", 3, 3, 24, 12, True)]
    if hidden:
        for i, (N, K, M) in enumerate([(9, 128, 33), (2, 64, 7)]):
            specs.append((f"hidden case {i + 1}", hidden_seed("ch18.int8_linear", i), N, K, M, False))
    for name, seed, N, K, M, zero in specs:
        x, w_q, w_scale = _int8_linear_inputs(seed, N, K, M, zero)
        yield Case(name, (x, w_q, w_scale), expected=lambda a=(x, w_q, w_scale): _int8_linear_expected(*a),
                   compare=functools.partial(compare_tensors, atol=1e-5, rtol=1e-5))


def _int8_linear_wrong(kind):
    def fn(x, w_q, w_scale):
        if kind == "float-activations":
            return x @ (w_q.float() * w_scale[:, None]).T
        if kind == "per-tensor-activation":
            s = x.abs().max() / 127
            s_x = s.expand(x.shape[0], 1)
        else:
            s_x = x.abs().amax(dim=1, keepdim=True) / 127
        s_x = torch.where(s_x > 0, s_x, torch.ones_like(s_x))
        x_q = torch.round(x / s_x).clamp(-127, 127).to(torch.int8)
        if kind == "int8-accumulate":
            acc = (x_q @ w_q.T).float()
        else:
            acc = (x_q.int() @ w_q.int().T).float()
        if kind == "no-activation-scale":
            return acc * w_scale[None, :]
        return acc * s_x * w_scale[None, :]
    return fn


register(Exercise(
    id="ch18.int8_linear", chapter=CH, title="The int8 matmul", points=2, name="int8_linear",
    signature="int8_linear(x: Tensor[N, K] float32, w_q: Tensor[M, K] int8, w_scale: Tensor[M]) -> Tensor[N, M]",
    reference="x quantized per row by torch.quantize_per_channel(axis=0, qint8), torch._int_mm, rescaled in float64",
    solution=f"{SOL}:int8_linear", cases=_int8_linear_cases, difficulty="**",
    forbidden=["torch:quantize_per_channel"],
    mistakes=[
        Mistake("int8-accumulate", "your integer products were summed in int8 and overflowed (int8 @ int8 gives "
                "int8 in PyTorch): accumulate in int32 (torch._int_mm, or convert to int32 first)",
                _int8_linear_wrong("int8-accumulate")),
        Mistake("per-tensor-activation", "you used one scale for all of x: quantize each ROW (token) with its own "
                "absmax, so that one loud token does not flatten the others", _int8_linear_wrong("per-tensor-activation")),
        Mistake("float-activations", "you multiplied the float activations by the dequantized weights: quantize x "
                "to int8 too, and multiply integers", _int8_linear_wrong("float-activations")),
        Mistake("no-activation-scale", "you forgot the activations' scale: y = acc * s_x[n] * w_scale[m]",
                _int8_linear_wrong("no-activation-scale")),
    ]))


# ========================================================================================
# distillation_loss
# ========================================================================================
def _kd_expected(s, t, T):
    with _no_warnings():
        return F.kl_div(F.log_softmax(s.double() / T, -1), F.softmax(t.double() / T, -1), reduction="batchmean") * T ** 2


def _kd_grad_expected(s, t, T):
    s = s.double().clone().requires_grad_(True)
    F.kl_div(F.log_softmax(s / T, -1), F.softmax(t.double() / T, -1), reduction="batchmean").mul(T ** 2).backward()
    return s.grad.float()


def _kd_cases(hidden: bool):
    specs = [("N=6 tokens, V=10, T=2", 0, 6, 10, 2.0, 1.0, "loss"),
             ("T=1 (no softening)", 1, 5, 12, 1.0, 1.0, "loss"),
             ("T=4, V=50", 2, 8, 50, 4.0, 2.0, "loss"),
             ("one token", 3, 1, 7, 3.0, 1.0, "loss"),
             ("logits in the hundreds", 4, 4, 9, 2.0, 300.0, "loss"),
             ("the gradient reaches the student's logits (T=2)", 5, 5, 11, 2.0, 1.0, "grad")]
    if hidden:
        for i, (N, V, T) in enumerate([(7, 20, 2.5), (3, 84, 5.0)]):
            specs.append((f"hidden case {i + 1}", hidden_seed("ch18.distillation_loss", i), N, V, T, 1.5, "loss"))
    for name, seed, N, V, T, size, what in specs:
        g = _gen(seed)
        s, t = torch.randn(N, V, generator=g) * size, torch.randn(N, V, generator=g) * size * 1.3
        if what == "grad":
            yield Case(name, (s, t, T), run=run_distill_grad, expected=lambda a=(s, t, T): _kd_grad_expected(*a),
                       compare=compare_grad)
        else:
            yield Case(name, (s, t, T), expected=lambda a=(s, t, T): _kd_expected(*a).float(),
                       compare=functools.partial(compare_tensors, atol=1e-6, rtol=1e-5))


def _kd_wrong(kind):
    def fn(student_logits, teacher_logits, temperature=2.0):
        T = temperature
        ls = F.log_softmax(student_logits / T, -1)
        lt = F.log_softmax(teacher_logits / (1.0 if kind == "teacher-not-softened" else T), -1)
        if kind == "kl-swapped":
            kl = (ls.exp() * (ls - lt)).sum(-1)
        else:
            kl = (lt.exp() * (lt - ls)).sum(-1)
        loss = kl.mean() / student_logits.shape[-1] if kind == "mean-reduction" else kl.mean()
        return loss if kind == "no-t-squared" else loss * T ** 2
    return fn


register(Exercise(
    id="ch18.distillation_loss", chapter=CH, title="The distillation loss", points=1, name="distillation_loss",
    signature="distillation_loss(student_logits: Tensor[N, V], teacher_logits: Tensor[N, V], temperature) -> Tensor[]",
    reference="F.kl_div(F.log_softmax(s / T), F.softmax(t / T), reduction='batchmean') * T**2",
    solution=f"{SOL}:distillation_loss", cases=_kd_cases,
    forbidden=["torch.nn.functional:kl_div", "torch.nn:KLDivLoss"],
    mistakes=[
        Mistake("no-t-squared", "you forgot the factor T**2: softening by T shrinks the gradients by 1/T**2, and "
                "Hinton et al. multiply the loss by T**2 to keep its size when T changes", _kd_wrong("no-t-squared")),
        Mistake("kl-swapped", "you computed KL(student || teacher): the loss is KL(teacher || student) = "
                "sum p_teacher * (log p_teacher - log p_student), the teacher's probabilities as the weights",
                _kd_wrong("kl-swapped")),
        Mistake("mean-reduction", "you averaged over the vocabulary too (reduction='mean'): sum over the V classes, "
                "average over the N rows ('batchmean')", _kd_wrong("mean-reduction")),
        Mistake("teacher-not-softened", "the teacher's logits must be divided by T as well as the student's",
                _kd_wrong("teacher-not-softened")),
    ]))


# ========================================================================================
# Small GPTs as plain data, and their Hugging Face twins
# ========================================================================================
def _random_spec(seed: int, V=48, block=64, n_layer=2, n_head=2, d=32) -> dict:
    """A GPT (chapter 7's architecture) with random weights large enough for clear greedy
    choices, as {"config", "state"}."""
    g = _gen(seed)
    cfg = {"vocab_size": V, "block_size": block, "n_layer": n_layer, "n_head": n_head, "n_embd": d}
    state = {"wte.weight": torch.randn(V, d, generator=g) * 0.6, "wpe.weight": torch.randn(block, d, generator=g) * 0.5,
             "ln_f.weight": 1 + 0.1 * torch.randn(d, generator=g)}
    for i in range(n_layer):
        b = f"blocks.{i}."
        state[b + "ln_1.weight"] = 1 + 0.1 * torch.randn(d, generator=g)
        state[b + "ln_2.weight"] = 1 + 0.1 * torch.randn(d, generator=g)
        state[b + "attn.qkv.weight"] = torch.randn(3 * d, d, generator=g) * 0.35
        state[b + "attn.proj.weight"] = torch.randn(d, d, generator=g) * 0.2
        state[b + "mlp.fc.weight"] = torch.randn(4 * d, d, generator=g) * 0.2
        state[b + "mlp.proj.weight"] = torch.randn(d, 4 * d, generator=g) * 0.1
    return {"config": cfg, "state": state}


def _noisy_spec(spec: dict, seed: int, size: float) -> dict:
    g = _gen(seed)
    return {"config": dict(spec["config"]),
            "state": {k: v + size * v.std() * torch.randn(v.shape, generator=g) for k, v in spec["state"].items()}}


def hf_from_spec(spec: dict):
    """GPT2LMHeadModel with the weights of a spec (Conv1D weights transposed, zero biases)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c, s = spec["config"], spec["state"]
    with _quiet():
        cfg = GPT2Config(vocab_size=c["vocab_size"], n_positions=c["block_size"], n_embd=c["n_embd"],
                         n_layer=c["n_layer"], n_head=c["n_head"], activation_function="gelu_new", resid_pdrop=0.0,
                         embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5, bos_token_id=0, eos_token_id=None,
                         pad_token_id=0, attn_implementation="eager")
        hf = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.zero_()
        t = hf.transformer
        t.wte.weight.copy_(s["wte.weight"])
        t.wpe.weight.copy_(s["wpe.weight"])
        t.ln_f.weight.copy_(s["ln_f.weight"])
        for i, h in enumerate(t.h):
            b = f"blocks.{i}."
            h.ln_1.weight.copy_(s[b + "ln_1.weight"])
            h.ln_2.weight.copy_(s[b + "ln_2.weight"])
            h.attn.c_attn.weight.copy_(s[b + "attn.qkv.weight"].T)
            h.attn.c_proj.weight.copy_(s[b + "attn.proj.weight"].T)
            h.mlp.c_fc.weight.copy_(s[b + "mlp.fc.weight"].T)
            h.mlp.c_proj.weight.copy_(s[b + "mlp.proj.weight"].T)
    hf.generation_config.pad_token_id, hf.generation_config.bos_token_id = 0, 0
    hf.generation_config.eos_token_id = None
    return hf


def _greedy(spec_model, prompt: list[int], n: int):
    """Greedy continuation of one prompt (the grader's model, full forward passes in float64)
    and the smallest top-1 / top-2 logit gap on the way: a check may only rely on choices
    that float32 rounding cannot flip."""
    seq, gap = list(prompt), float("inf")
    with torch.no_grad(), single_thread():  # tiny matrices: a second thread only waits
        for _ in range(n):
            top2, best = spec_model(torch.tensor([seq]))[0, -1].topk(2)
            gap = min(gap, float(top2[0] - top2[1]))
            seq.append(int(best[0]))
    return seq[len(prompt):], gap


@functools.lru_cache(maxsize=None)
def _model64(key, draft=False):
    model = build_gpt(_draft_cached(key) if draft else _spec_cached(key)).double()
    return model


# ========================================================================================
# generate_batch
# ========================================================================================
@functools.lru_cache(maxsize=None)
def _spec_cached(key):
    kind, seed = key[0], key[1]
    if kind == "random":
        return _random_spec(seed, **dict(key[2:]))
    raise KeyError(key)


@functools.lru_cache(maxsize=None)
def _hf_cached(key):
    return hf_from_spec(_spec_cached(key))


@functools.lru_cache(maxsize=None)
def _hf_batch(key, prompts, n, pad_id):
    """HF generate on the left-padded batch, with its attention mask: the new tokens."""
    hf = _hf_cached(key)
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (L - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    with _quiet(), torch.no_grad(), single_thread():
        out = hf.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n, pad_token_id=pad_id)
    return out[:, L:].clone()


@functools.lru_cache(maxsize=None)
def _clear_prompts(key, seed, lengths, n, margin=1e-2):
    """Prompts (drawn from seed, seed + 1, ...) whose greedy continuations, alone, have a
    clear winner at every step."""
    model = _model64(key)
    V = _spec_cached(key)["config"]["vocab_size"]
    for attempt in range(200):
        g = _gen(seed + attempt)
        prompts = tuple(tuple(torch.randint(1, V, (L,), generator=g).tolist()) for L in lengths)
        if all(_greedy(model, list(p), n)[1] > margin for p in prompts):
            return prompts
    raise RuntimeError("no prompts with clear greedy continuations")


def _generate_batch_cases(hidden: bool):
    A = ("random", 100, ("n_layer", 2))
    B = ("random", 101, ("n_layer", 1), ("n_head", 4))
    specs = [("3 prompts of lengths 5, 2 and 7, 10 new tokens each", A, 1000, (5, 2, 7), 10, 0),
             ("a batch of one (no padding at all), 8 new tokens", A, 1001, (6,), 8, 0),
             ("4 prompts of the same length, 6 new tokens", B, 1002, (4, 4, 4, 4), 6, 0),
             ("5 prompts of lengths 1 to 9, pad id 7, 12 new tokens", B, 1003, (9, 1, 4, 6, 2), 12, 7)]
    if hidden:
        g = _gen(hidden_seed("ch18.generate_batch", "shape"))
        lengths = tuple(int(v) for v in torch.randint(1, 12, (4,), generator=g))
        C = ("random", hidden_seed("ch18.generate_batch", 0), ("n_layer", 2), ("n_head", 4))
        specs += [("hidden case 1: 4 prompts", C, hidden_seed("ch18.generate_batch", 1), lengths, 9, 3),
                  ("hidden case 2: 2 prompts", A, hidden_seed("ch18.generate_batch", 2), (3, lengths[0] + 3), 7, 0)]
    for name, key, seed, lengths, n, pad in specs:
        prompts = _clear_prompts(key, seed, lengths, n)
        yield Case(name, (_spec_cached(key), [list(p) for p in prompts], n, pad), run=run_generate_batch,
                   expected=lambda a=(key, prompts, n, pad): _hf_batch(*a).clone(), compare=compare_exact)


def _generate_wrong(kind):
    def fn(model, prompts, max_new_tokens, pad_id):
        B, L = len(prompts), max(len(p) for p in prompts)
        idx = torch.full((B, L), pad_id, dtype=torch.long)
        mask = torch.zeros(B, L, dtype=torch.bool)
        for b, p in enumerate(prompts):
            if kind == "right-padding":
                idx[b, :len(p)], mask[b, :len(p)] = torch.tensor(p), True
            else:
                idx[b, L - len(p):], mask[b, L - len(p):] = torch.tensor(p), True
        if kind in ("positions-not-shifted", "right-padding", "padding-ignored"):
            pos = torch.arange(L).expand(B, L)
        else:
            pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        if kind in ("no-padding-mask", "padding-ignored"):
            mask = torch.ones_like(mask)
        cache = model.new_cache()
        logits = model(idx, pos, mask, cache)[:, -1]
        out = []
        for step in range(max_new_tokens):
            tok = logits.argmax(-1)
            out.append(tok)
            pos = pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool)], 1)
            logits = model(tok[:, None], pos, mask, cache)[:, -1]
        return torch.stack(out, 1)
    return fn


register(Exercise(
    id="ch18.generate_batch", chapter=CH, title="Batched generation with left padding", points=3,
    name="generate_batch",
    signature="generate_batch(model: CachedGPT, prompts: list[list[int]], max_new_tokens, pad_id) "
              "-> Tensor[B, max_new_tokens] int64",
    reference="transformers GPT2LMHeadModel.generate on the left-padded batch with its attention mask (weights "
              "copied), which equals generating each prompt alone",
    solution=f"{SOL}:generate_batch", cases=_generate_batch_cases, difficulty="***",
    forbidden=["transformers:GPT2LMHeadModel"],
    mistakes=[
        Mistake("right-padding", "you padded on the RIGHT: a decoder reads its next token from the last column, "
                "which is a pad for the shorter prompts. Pad on the left, so every row ends at the same column",
                _generate_wrong("right-padding")),
        Mistake("positions-not-shifted", "your position ids count the padding: with left padding, a prompt's first "
                "real token must get position 0. Use (mask.cumsum(-1) - 1).clamp(min=0), then +1 per new token",
                _generate_wrong("positions-not-shifted")),
        Mistake("no-padding-mask", "the real tokens attend to the padding: pass an attention mask that is False on "
                "the pads (and extend it with True for every new token)", _generate_wrong("no-padding-mask")),
        Mistake("padding-ignored", "you left-padded but gave the model neither a padding mask nor position ids: the "
                "real tokens attend to the pads, and a prompt's first token gets the position of its column instead "
                "of 0. Pass the mask, and positions (mask.cumsum(-1) - 1).clamp(min=0)",
                _generate_wrong("padding-ignored")),
    ]))


# ========================================================================================
# speculative_generate
# ========================================================================================
def _rounds(target_tokens, draft_greedy, prompt, n, k):
    """The rounds of greedy speculative decoding, from the target's greedy continuation and
    the draft's greedy proposals, and the smallest greedy gap of the draft on the way."""
    seq, produced, accepted, gap = list(prompt), 0, [], float("inf")
    while produced < n:
        gamma = min(k, n - produced - 1)
        props = []
        if gamma:
            props, m = draft_greedy(seq, gamma)
            gap = min(gap, m)
        a = 0
        while a < gamma and props[a] == target_tokens[produced + a]:
            a += 1
        seq += target_tokens[produced:produced + a + 1]
        produced += a + 1
        accepted.append(a)
    return accepted, gap


def _hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    """Greedy continuation with the HF model's forward (generate's per-call set-up is slow)."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(hf(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def _draft_spec(key):
    kind, tkey, seed, extra = key
    if kind == "same":
        return _spec_cached(tkey)
    if kind == "noisy":
        return _noisy_spec(_spec_cached(tkey), seed, extra)
    return _random_spec(seed, n_layer=1, n_head=2, d=16)  # "small": an unrelated small model


@functools.lru_cache(maxsize=None)
def _draft_cached(key):
    return _draft_spec(key)


@functools.lru_cache(maxsize=None)
def _draft_hf(key):
    return hf_from_spec(_draft_cached(key))


@functools.lru_cache(maxsize=None)
def _speculative_case(tkey, dkey, seed, length, n, k, margin=1e-2):
    """A prompt with clear greedy choices for the target and the draft (float64 models)."""
    target, draft = _model64(tkey), _model64(dkey, draft=True)
    V = _spec_cached(tkey)["config"]["vocab_size"]
    for attempt in range(200):
        prompt = torch.randint(1, V, (length,), generator=_gen(seed + attempt)).tolist()
        tokens, m = _greedy(target, prompt, n)
        if m > margin and _rounds(tokens, lambda s, g: _greedy(draft, s, g), prompt, n, k)[1] > margin:
            return tuple(prompt)
    raise RuntimeError("no prompt with clear greedy choices")


@functools.lru_cache(maxsize=None)
def _speculative_expected(tkey, dkey, seed, length, n, k):
    """HF assisted generation (the target's output, the draft as assistant), and the rounds
    from HF's greedy continuations of the target and of the draft."""
    prompt = list(_speculative_case(tkey, dkey, seed, length, n, k))
    with _quiet(), torch.no_grad(), single_thread():
        out = _hf_cached(tkey).generate(torch.tensor([prompt]), attention_mask=torch.ones(1, length, dtype=torch.long),
                                        do_sample=False, max_new_tokens=n, assistant_model=_draft_hf(dkey))
    tokens = out[0, length:].tolist()
    with single_thread():
        accepted, _ = _rounds(_hf_greedy(_hf_cached(tkey), prompt, n),
                              lambda s, g: (_hf_greedy(_draft_hf(dkey), s, g), 1.0), prompt, n, k)
    return tokens, accepted


def _speculative_cases(hidden: bool):
    T = ("random", 200, ("n_layer", 2), ("n_head", 2))
    specs = [("draft = the target: every proposal accepted, k=4, 20 tokens", T, ("same", T, 0, 0.0), 2000, 5, 20, 4),
             ("draft = the target with noisy weights, k=3, 24 tokens", T, ("noisy", T, 7, 0.25), 2001, 6, 24, 3),
             ("an unrelated 1-layer draft (most proposals rejected), k=4, 16 tokens", T, ("small", T, 8, 0.0),
              2002, 4, 16, 4),
             ("k=1, noisy draft, 12 tokens", T, ("noisy", T, 9, 0.4), 2003, 3, 12, 1)]
    if hidden:
        H = ("random", hidden_seed("ch18.speculative_generate", 0), ("n_layer", 2), ("n_head", 4))
        specs += [("hidden case 1: noisy draft, k=5", H, ("noisy", H, hidden_seed("ch18.speculative_generate", 1), 0.3),
                   hidden_seed("ch18.speculative_generate", 2), 7, 26, 5),
                  ("hidden case 2: noisy draft, k=2", T, ("noisy", T, hidden_seed("ch18.speculative_generate", 3), 0.2),
                   hidden_seed("ch18.speculative_generate", 4), 5, 15, 2)]
    for name, tkey, dkey, seed, length, n, k in specs:
        prompt = _speculative_case(tkey, dkey, seed, length, n, k)
        yield Case(name, (_spec_cached(tkey), _draft_cached(dkey), list(prompt), n, k), run=run_speculative,
                   expected=lambda a=(tkey, dkey, seed, length, n, k): tuple(list(v) for v in _speculative_expected(*a)),
                   compare=compare_speculative)


def _speculative_wrong(kind):
    def fn(target, draft, prompt, max_new_tokens, k=4):
        seq, end, accepted = list(prompt), len(prompt) + max_new_tokens, []
        while len(seq) < end:
            gamma = min(k, end - len(seq) - 1)
            props = []
            for _ in range(gamma):
                props.append(int(draft(torch.tensor([seq + props]))[0, -1].argmax()))
            logits = target(torch.tensor([seq + props]))[0]
            choice = logits[-(gamma + 1):].argmax(-1).tolist()
            if kind == "verify-shifted":
                choice = choice[1:] + choice[-1:]
            a = 0
            if kind == "accept-unchecked":
                a = gamma
            else:
                while a < gamma and props[a] == choice[a]:
                    a += 1
            if kind == "kept-rejected-token" and a < gamma:
                seq += props[:a + 1]
            elif kind == "no-bonus-token" and a == gamma and gamma > 0:
                seq += props
            else:
                seq += props[:a] + [choice[a]]
            accepted.append(a)
        return seq[len(prompt):end], accepted
    return fn


register(Exercise(
    id="ch18.speculative_generate", chapter=CH, title="Speculative decoding", points=3, name="speculative_generate",
    signature="speculative_generate(target, draft, prompt: list[int], max_new_tokens, k=4) "
              "-> (new_tokens: list[int], accepted: list[int])",
    reference="transformers assisted generation, target.generate(ids, do_sample=False, assistant_model=draft): the "
              "target's greedy output; the rounds from HF's greedy continuations of the target and the draft",
    solution=f"{SOL}:speculative_generate", cases=_speculative_cases, difficulty="***",
    forbidden=["transformers:GPT2LMHeadModel"],
    mistakes=[
        Mistake("accept-unchecked", "you kept the draft's proposals without the target's check: the output must be "
                "the TARGET's greedy text. Accept proposals only up to the first one that differs from the target's "
                "own choice", _speculative_wrong("accept-unchecked")),
        Mistake("kept-rejected-token", "at the first mismatch you kept the draft's token: replace it by the target's "
                "choice (the correction), which the verification pass has already computed",
                _speculative_wrong("kept-rejected-token")),
        Mistake("verify-shifted", "you compared proposal j with the target's prediction AFTER proposal j: the "
                "logits at the position of the token before proposal j predict proposal j",
                _speculative_wrong("verify-shifted")),
        Mistake("no-bonus-token", "when every proposal is accepted, the verification pass also gives the target's "
                "next token for free: append it (k + 1 tokens in that round)", _speculative_wrong("no-bonus-token")),
    ]))
