"""Chapter 5 - The Transformer block.

Every exercise here is a module (an ``nn.Module`` subclass). A case builds the learner's
module, loads reference weights into it BY NAME (the names are part of the contract, as in
a real checkpoint), runs it, and compares with the PyTorch or Hugging Face module that
holds the same weights. Most cases run in float64 so that look-alike formulas (erf vs tanh
GELU, eps inside vs outside the square root) are told apart sharply.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core import Case, Exercise, Mistake, close_tensors, hidden_seed, inherit, register
from ..drivers.ch05_block import module_run, one_thread

CH = "ch05"
SOL = "solutions.ch05_block"


# ----------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------
def case(name, args=(), kwargs=None, run=None, expected=None, **rest) -> Case:
    """A Case whose run and reference both execute on one thread (the drivers of chapters 5
    and 6 are decorated with ``one_thread`` themselves)."""
    return Case(name, args, kwargs or {}, expected=one_thread(expected), run=run, **rest)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _x(seed: int, shape, scale: float = 1.0, shift: float = 0.0, dtype=torch.float64) -> torch.Tensor:
    return (torch.randn(*shape, generator=_gen(seed), dtype=torch.float64) * scale + shift).to(dtype)


def _norm_state(seed: int, d: int, bias: bool = True) -> dict[str, torch.Tensor]:
    g = _gen(seed)
    state = {"weight": 1.0 + 0.3 * torch.randn(d, generator=g, dtype=torch.float64)}
    if bias:
        state["bias"] = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    return state


def _linear(g, d_in: int, d_out: int, bias: bool = True, prefix: str = "") -> dict[str, torch.Tensor]:
    # Weights of scale 1/sqrt(d_in): activations stay O(1), so every non-linearity is exercised.
    state = {f"{prefix}weight": torch.randn(d_out, d_in, generator=g, dtype=torch.float64) / math.sqrt(d_in)}
    if bias:
        state[f"{prefix}bias"] = 0.2 * torch.randn(d_out, generator=g, dtype=torch.float64)
    return state


def _module_run(*init_args, **init_kwargs):
    """Case.run for a module exercise: the driver with the constructor's arguments bound."""
    return functools.partial(module_run, init_args=init_args, init_kwargs=init_kwargs)


def _tensors(atol, rtol):
    return close_tensors(atol=atol, rtol=rtol)


# ----------------------------------------------------------------------------------------
# LayerNorm
# ----------------------------------------------------------------------------------------
def _ref_layer_norm(state, x, d, eps):
    ref = nn.LayerNorm(d, eps=eps).to(x.dtype)
    with torch.no_grad():
        ref.weight.copy_(state["weight"])
        ref.bias.copy_(state["bias"])
        return ref(x)


def _ln_cases(hidden: bool):
    specs = [
        ("x (2, 5, 16), eps=1e-5", 16, 1e-5, _x(0, (2, 5, 16))),
        ("a batch of one, x (1, 1, 8)", 8, 1e-5, _x(1, (1, 1, 8))),
        ("tiny activations (scale 1e-3): eps matters", 32, 1e-5, _x(2, (3, 4, 32), scale=1e-3)),
        ("eps=0.1, x (4, 12)", 12, 0.1, _x(3, (4, 12))),
        ("float32, mean 1000 and std 1 (a naive E[x^2] - E[x]^2 cancels)", 64, 1e-5,
         _x(4, (2, 3, 64), shift=1000.0, dtype=torch.float32)),
    ]
    n_visible = len(specs)
    if hidden:
        specs += [("x (3, 7, 48), eps=1e-6", 48, 1e-6, _x(hidden_seed("ch05.layer_norm", 5), (3, 7, 48), scale=2.0, shift=-1.0)),
                  ("x (1, 9, 24) float32", 24, 1e-5, _x(hidden_seed("ch05.layer_norm", 6), (1, 9, 24), dtype=torch.float32))]
    for i, (name, d, eps, x) in enumerate(specs):
        state = {k: v.to(x.dtype) for k, v in _norm_state(100 + i if i < n_visible else hidden_seed("ch05.layer_norm", 100 + i), d).items()}
        tol = _tensors(1e-9, 1e-9) if x.dtype == torch.float64 else _tensors(2e-4, 1e-4)
        yield case(name, (state, x), run=_module_run(d, eps=eps),
                   expected=lambda s=state, x=x, d=d, eps=eps: _ref_layer_norm(s, x, d, eps), compare=tol)


class _LNMistake(nn.Module):
    def __init__(self, d, eps=1e-5, kind=""):
        super().__init__()
        self.eps, self.kind = eps, kind
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        dims = 0 if self.kind == "batch-axis" else -1
        mean = x.mean(dims, keepdim=True)
        if self.kind == "unbiased":
            var = x.var(dims, keepdim=True, unbiased=True)
        elif self.kind == "cancellation":
            var = (x ** 2).mean(-1, keepdim=True) - mean ** 2
        else:
            var = ((x - mean) ** 2).mean(dims, keepdim=True)
        if self.kind == "eps-outside":
            y = (x - mean) / (torch.sqrt(var) + self.eps)
        else:
            y = (x - mean) / torch.sqrt(var + self.eps)
        if self.kind == "no-affine":
            return y
        return y * self.weight + self.bias


def _ln_mistake(kind):
    return lambda d, eps=1e-5: _LNMistake(d, eps, kind)


register(Exercise(
    id="ch05.layer_norm", chapter=CH, title="LayerNorm", points=1, name="LayerNorm",
    signature="LayerNorm(d_model, eps=1e-5); forward(x: Tensor[..., d]) -> Tensor[..., d]; parameters weight, bias",
    reference="torch.nn.LayerNorm with the same weight and bias", solution=f"{SOL}:LayerNorm", cases=_ln_cases,
    difficulty="*",
    forbidden=["torch.nn.functional:layer_norm", "torch:layer_norm", "torch.nn:LayerNorm",
               "torch.nn.functional:group_norm", "torch.nn.functional:instance_norm", "torch.nn.functional:batch_norm"],
    mistakes=[
        Mistake("unbiased-variance", "you used the unbiased variance (divide by d - 1, the default of torch.var/std); "
                "LayerNorm divides by d: use unbiased=False or mean((x - mean)**2)", _ln_mistake("unbiased")),
        Mistake("eps-outside-sqrt", "eps is outside the square root: LayerNorm divides by sqrt(var + eps), not "
                "sqrt(var) + eps", _ln_mistake("eps-outside")),
        Mistake("batch-axis", "you normalised over the batch axis (dim 0, like BatchNorm); LayerNorm normalises each "
                "vector over its LAST axis (the d features) on its own", _ln_mistake("batch-axis")),
        Mistake("no-affine", "the learned gain and bias are not applied: multiply by weight and add bias at the end",
                _ln_mistake("no-affine")),
        Mistake("cancellation", "you computed the variance as mean(x**2) - mean(x)**2, which cancels catastrophically in "
                "float32 when the mean is large; use mean((x - mean)**2)", _ln_mistake("cancellation")),
    ]))


# ----------------------------------------------------------------------------------------
# RMSNorm
# ----------------------------------------------------------------------------------------
def _ref_rms_norm(state, x, d, eps, which):
    if which == "llama":
        from transformers.models.llama.modeling_llama import LlamaRMSNorm

        ref = LlamaRMSNorm(d, eps=eps)
    else:
        ref = nn.RMSNorm(d, eps=eps)
    ref = ref.to(x.dtype)
    with torch.no_grad():
        ref.weight.copy_(state["weight"])
        return ref(x)


def _rms_cases(hidden: bool):
    import transformers.models.llama.modeling_llama  # noqa: F401  (imported here, not inside a timed case)

    specs = [
        ("x (2, 5, 16), eps=1e-6 (torch.nn.RMSNorm)", 16, 1e-6, _x(10, (2, 5, 16)), "torch"),
        ("inputs with mean 3 (centring would change them)", 24, 1e-6, _x(11, (3, 4, 24), shift=3.0), "torch"),
        # LlamaRMSNorm computes in float32 whatever the input: its cases are float32.
        ("tiny activations (scale 1e-3): eps matters (LlamaRMSNorm)", 32, 1e-6,
         _x(12, (2, 3, 32), scale=1e-3, dtype=torch.float32), "llama"),
        ("eps=0.5, x (4, 12) (LlamaRMSNorm)", 12, 0.5, _x(13, (4, 12), dtype=torch.float32), "llama"),
        ("float32, a batch of one", 8, 1e-6, _x(14, (1, 1, 8), dtype=torch.float32), "torch"),
    ]
    n_visible = len(specs)
    if hidden:
        specs += [("x (2, 9, 64), eps=1e-5 (LlamaRMSNorm)", 64, 1e-5, _x(hidden_seed("ch05.rms_norm", 15), (2, 9, 64), scale=4.0, dtype=torch.float32),
                   "llama"),
                  ("x (5, 40) float32 (torch.nn.RMSNorm)", 40, 1e-6, _x(hidden_seed("ch05.rms_norm", 16), (5, 40), dtype=torch.float32), "torch")]
    for i, (name, d, eps, x, which) in enumerate(specs):
        state = {"weight": _norm_state(200 + i if i < n_visible else hidden_seed("ch05.rms_norm", 200 + i), d, bias=False)["weight"].to(x.dtype)}
        tol = _tensors(1e-9, 1e-9) if x.dtype == torch.float64 else _tensors(2e-5, 1e-4)
        yield case(name, (state, x), run=_module_run(d, eps=eps),
                   expected=lambda s=state, x=x, d=d, eps=eps, w=which: _ref_rms_norm(s, x, d, eps, w), compare=tol)


class _RMSMistake(nn.Module):
    def __init__(self, d, eps=1e-6, kind=""):
        super().__init__()
        self.eps, self.kind = eps, kind
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        if self.kind == "centred":
            x = x - x.mean(-1, keepdim=True)
        ms = x.pow(2).mean(-1, keepdim=True)
        if self.kind == "eps-outside":
            y = x / (ms.sqrt() + self.eps)
        elif self.kind == "no-sqrt":
            y = x / (ms + self.eps)
        elif self.kind == "l2-norm":
            y = x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + self.eps)
        else:
            y = x / torch.sqrt(ms + self.eps)
        return y if self.kind == "no-weight" else y * self.weight


def _rms_mistake(kind):
    return lambda d, eps=1e-6: _RMSMistake(d, eps, kind)


register(Exercise(
    id="ch05.rms_norm", chapter=CH, title="RMSNorm", points=1, name="RMSNorm",
    signature="RMSNorm(d_model, eps=1e-6); forward(x: Tensor[..., d]) -> Tensor[..., d]; parameter weight",
    reference="torch.nn.RMSNorm and transformers LlamaRMSNorm with the same weight",
    solution=f"{SOL}:RMSNorm", cases=_rms_cases, difficulty="*",
    forbidden=["torch.nn.functional:rms_norm", "torch:rms_norm", "torch.nn:RMSNorm",
               "transformers.models.llama.modeling_llama:LlamaRMSNorm"],
    mistakes=[
        Mistake("subtract-mean", "you subtracted the mean: that is LayerNorm without a bias. RMSNorm only divides by "
                "the root mean square sqrt(mean(x**2) + eps), without centring", _rms_mistake("centred")),
        Mistake("eps-outside-sqrt", "eps is outside the square root: divide by sqrt(mean(x**2) + eps)",
                _rms_mistake("eps-outside")),
        Mistake("no-sqrt", "you divided by the mean square itself; take its square root (the ROOT mean square)",
                _rms_mistake("no-sqrt")),
        Mistake("sum-not-mean", "you divided by the L2 norm (square root of the SUM of squares); RMSNorm uses the MEAN "
                "of the squares, so the output has RMS 1, not norm 1", _rms_mistake("l2-norm")),
        Mistake("no-weight", "the learned gain is not applied: multiply by weight at the end", _rms_mistake("no-weight")),
    ]))


# ----------------------------------------------------------------------------------------
# GELU MLP (GPT-2)
# ----------------------------------------------------------------------------------------
def _gpt2_config(d, n_head=1, **kw):
    from transformers import GPT2Config

    return GPT2Config(n_embd=d, n_head=n_head, n_layer=1, vocab_size=8, n_positions=64, bos_token_id=0,
                      eos_token_id=0, resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0,
                      attn_implementation="eager", **kw)


def _ref_gpt2_mlp(state, x, d, h):
    from transformers.models.gpt2.modeling_gpt2 import GPT2MLP

    ref = GPT2MLP(h, _gpt2_config(d)).to(x.dtype).eval()
    with torch.no_grad():
        # GPT-2's Conv1D stores its weight as [in, out]: the transpose of nn.Linear's [out, in].
        ref.c_fc.weight.copy_(state["fc.weight"].T)
        ref.c_fc.bias.copy_(state["fc.bias"])
        ref.c_proj.weight.copy_(state["proj.weight"].T)
        ref.c_proj.bias.copy_(state["proj.bias"])
        return ref(x)


def _mlp_state(seed, d, h, dtype):
    g = _gen(seed)
    # fc weights scaled up so the pre-activations reach |h| ~ 3, where the GELU variants differ most.
    state = {k: v * 2.5 if k.endswith("weight") else v for k, v in _linear(g, d, h, prefix="fc.").items()}
    state.update(_linear(g, h, d, prefix="proj."))
    return {k: v.to(dtype) for k, v in state.items()}


def _mlp_cases(hidden: bool):
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401  (imported here, not inside a timed case)

    specs = [("d=16, hidden 64, x (2, 5, 16)", 16, 64, _x(20, (2, 5, 16))),
             ("d=8, hidden 8 (square weights), x (1, 1, 8)", 8, 8, _x(21, (1, 1, 8))),
             ("d=12, hidden 48, x (3, 12) float32", 12, 48, _x(22, (3, 12), dtype=torch.float32))]
    n_visible = len(specs)
    if hidden:
        specs += [("d=32, hidden 128, x (2, 7, 32)", 32, 128, _x(hidden_seed("ch05.mlp", 23), (2, 7, 32), scale=2.0)),
                  ("d=20, hidden 30, x (4, 3, 20)", 20, 30, _x(hidden_seed("ch05.mlp", 24), (4, 3, 20)))]
    for i, (name, d, h, x) in enumerate(specs):
        state = _mlp_state(300 + i if i < n_visible else hidden_seed("ch05.mlp", 300 + i), d, h, x.dtype)
        tol = _tensors(1e-9, 1e-9) if x.dtype == torch.float64 else _tensors(2e-5, 1e-4)
        yield case(name, (state, x), run=_module_run(d, h),
                   expected=lambda s=state, x=x, d=d, h=h: _ref_gpt2_mlp(s, x, d, h), compare=tol)


_ACTS = {
    "erf": lambda h: F.gelu(h),
    "relu": F.relu,
    "sigmoid": lambda h: h * torch.sigmoid(1.702 * h),
    "no-cube": lambda h: 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * h)),
    "none": lambda h: h,
}


class _MLPMistake(nn.Module):
    def __init__(self, d, h, act="erf"):
        super().__init__()
        self.fc, self.proj, self.act = nn.Linear(d, h), nn.Linear(h, d), _ACTS[act]

    def forward(self, x):
        return self.proj(self.act(self.fc(x)))


def _mlp_mistake(act):
    return lambda d, h: _MLPMistake(d, h, act)


register(Exercise(
    id="ch05.mlp", chapter=CH, title="The GELU MLP of GPT-2", points=1, name="MLP",
    signature="MLP(d_model, d_hidden); forward(x: Tensor[..., d]) -> Tensor[..., d]; layers fc, proj",
    reference="transformers GPT2MLP (activation gelu_new) with the same weights (Conv1D stores them transposed)",
    solution=f"{SOL}:MLP", cases=_mlp_cases, difficulty="*",
    forbidden=["transformers.models.gpt2.modeling_gpt2:GPT2MLP"],
    mistakes=[
        Mistake("erf-gelu", "you used the exact (erf) GELU, the default of F.gelu / nn.GELU(); GPT-2 uses the tanh "
                "approximation 0.5*h*(1 + tanh(sqrt(2/pi)*(h + 0.044715*h**3))) (F.gelu(h, approximate='tanh'))",
                _mlp_mistake("erf")),
        Mistake("relu", "you used ReLU; GPT-2's MLP uses the (tanh-approximated) GELU", _mlp_mistake("relu")),
        Mistake("sigmoid-gelu", "you used the sigmoid approximation h*sigmoid(1.702*h); GPT-2 uses the tanh one",
                _mlp_mistake("sigmoid")),
        Mistake("no-cube", "the 0.044715 * h**3 term inside the tanh is missing", _mlp_mistake("no-cube")),
        Mistake("no-activation", "there is no non-linearity between fc and proj: the MLP collapses to one linear map",
                _mlp_mistake("none")),
    ]))


# ----------------------------------------------------------------------------------------
# SwiGLU (Llama)
# ----------------------------------------------------------------------------------------
def _ref_llama_mlp(state, x, d, h):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    config = LlamaConfig(hidden_size=d, intermediate_size=h, hidden_act="silu", mlp_bias=False, vocab_size=8,
                         num_attention_heads=1, num_key_value_heads=1, num_hidden_layers=1)
    ref = LlamaMLP(config).to(x.dtype).eval()
    with torch.no_grad():
        ref.gate_proj.weight.copy_(state["gate.weight"])
        ref.up_proj.weight.copy_(state["up.weight"])
        ref.down_proj.weight.copy_(state["down.weight"])
        return ref(x)


def _swiglu_state(seed, d, h, dtype):
    g = _gen(seed)
    state = {}
    for name, (a, b) in (("gate.", (d, h)), ("up.", (d, h)), ("down.", (h, d))):
        state.update(_linear(g, a, b, bias=False, prefix=name))
    state["gate.weight"] = state["gate.weight"] * 2.0  # gate pre-activations ~ 2: silu is far from linear there
    return {k: v.to(dtype) for k, v in state.items()}


def _swiglu_cases(hidden: bool):
    import transformers.models.llama.modeling_llama  # noqa: F401  (imported here, not inside a timed case)

    specs = [("d=16, hidden 40, x (2, 5, 16)", 16, 40, _x(30, (2, 5, 16))),
             ("d=8, hidden 8, x (1, 1, 8)", 8, 8, _x(31, (1, 1, 8))),
             ("d=12, hidden 32, x (3, 12) float32", 12, 32, _x(32, (3, 12), dtype=torch.float32))]
    n_visible = len(specs)
    if hidden:
        specs += [("d=32, hidden 86, x (2, 6, 32)", 32, 86, _x(hidden_seed("ch05.swiglu", 33), (2, 6, 32), scale=1.5))]
    for i, (name, d, h, x) in enumerate(specs):
        state = _swiglu_state(400 + i if i < n_visible else hidden_seed("ch05.swiglu", 400 + i), d, h, x.dtype)
        tol = _tensors(1e-9, 1e-9) if x.dtype == torch.float64 else _tensors(2e-5, 1e-4)
        yield case(name, (state, x), run=_module_run(d, h),
                   expected=lambda s=state, x=x, d=d, h=h: _ref_llama_mlp(s, x, d, h), compare=tol)


class _SwiGLUMistake(nn.Module):
    def __init__(self, d, h, kind=""):
        super().__init__()
        self.kind = kind
        self.gate, self.up = nn.Linear(d, h, bias=False), nn.Linear(d, h, bias=False)
        self.down = nn.Linear(h, d, bias=False)

    def forward(self, x):
        g, u = self.gate(x), self.up(x)
        if self.kind == "swapped":
            return self.down(F.silu(u) * g)
        if self.kind == "silu-both":
            return self.down(F.silu(g) * F.silu(u))
        if self.kind == "sigmoid":
            return self.down(torch.sigmoid(g) * u)
        if self.kind == "no-gate":
            return self.down(F.silu(g))
        return self.down(F.silu(g * u))  # "silu-after-product"


def _swiglu_mistake(kind):
    return lambda d, h: _SwiGLUMistake(d, h, kind)


register(Exercise(
    id="ch05.swiglu", chapter=CH, title="The SwiGLU MLP of Llama", points=1, name="SwiGLU",
    signature="SwiGLU(d_model, d_hidden); forward(x: Tensor[..., d]) -> Tensor[..., d]; layers gate, up, down (no bias)",
    reference="transformers LlamaMLP (hidden_act silu, no bias) with the same weights",
    solution=f"{SOL}:SwiGLU", cases=_swiglu_cases, difficulty="*",
    forbidden=["transformers.models.llama.modeling_llama:LlamaMLP"],
    mistakes=[
        Mistake("gate-up-swapped", "gate and up are swapped: SiLU goes on gate(x), and up(x) stays linear: "
                "down(silu(gate(x)) * up(x))", _swiglu_mistake("swapped")),
        Mistake("silu-both", "you applied SiLU to both branches; only the gate branch goes through SiLU",
                _swiglu_mistake("silu-both")),
        Mistake("sigmoid-gate", "you gated with sigmoid(gate(x)) (that is GLU); SwiGLU uses silu(g) = g * sigmoid(g)",
                _swiglu_mistake("sigmoid")),
        Mistake("no-gating", "the up branch is missing: the gate must multiply up(x) element-wise",
                _swiglu_mistake("no-gate")),
        Mistake("silu-on-product", "you applied SiLU after multiplying the branches (silu(gate * up)); apply it to the "
                "gate branch first, then multiply", _swiglu_mistake("silu-after-product")),
    ]))


# ----------------------------------------------------------------------------------------
# The pre-norm block (GPT-2)
# ----------------------------------------------------------------------------------------
def _block_state(seed, d, dtype):
    g = _gen(seed)
    state = {}
    for ln in ("ln_1.", "ln_2."):
        state[ln + "weight"] = 1.0 + 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
        state[ln + "bias"] = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)
    state.update(_linear(g, d, 3 * d, prefix="attn.qkv."))
    state["attn.qkv.weight"] = state["attn.qkv.weight"] * 2.0  # sharper attention: masks and order matter more
    state.update(_linear(g, d, d, prefix="attn.proj."))
    state.update(_linear(g, d, 4 * d, prefix="mlp.fc."))
    state.update(_linear(g, 4 * d, d, prefix="mlp.proj."))
    return {k: v.to(dtype) for k, v in state.items()}


def _ref_gpt2_block(state, x, d, n_heads):
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    ref = GPT2Block(_gpt2_config(d, n_head=n_heads), layer_idx=0).to(x.dtype).eval()
    with torch.no_grad():
        for ln in ("ln_1", "ln_2"):
            getattr(ref, ln).weight.copy_(state[f"{ln}.weight"])
            getattr(ref, ln).bias.copy_(state[f"{ln}.bias"])
        for hf, ours in ((ref.attn.c_attn, "attn.qkv"), (ref.attn.c_proj, "attn.proj"),
                         (ref.mlp.c_fc, "mlp.fc"), (ref.mlp.c_proj, "mlp.proj")):
            hf.weight.copy_(state[f"{ours}.weight"].T)  # Conv1D: [in, out]
            hf.bias.copy_(state[f"{ours}.bias"])
        T = x.shape[1]
        # Called on its own, GPT2Block attends everywhere: the causal mask is an additive input.
        future = torch.ones(T, T, dtype=torch.bool).triu(1)
        mask = torch.zeros(T, T, dtype=x.dtype).masked_fill(future, torch.finfo(x.dtype).min)[None, None]
        return ref(x, attention_mask=mask)


def _block_cases(hidden: bool):
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401  (imported here, not inside a timed case)

    specs = [("d=16, 2 heads, x (2, 5, 16)", 16, 2, _x(40, (2, 5, 16))),
             ("d=32, 4 heads, x (1, 9, 32)", 32, 4, _x(41, (1, 9, 32))),
             ("one token, x (3, 1, 8), 1 head", 8, 1, _x(42, (3, 1, 8))),
             ("d=24, 3 heads, x (2, 6, 24) float32", 24, 3, _x(43, (2, 6, 24), dtype=torch.float32))]
    n_visible = len(specs)
    if hidden:
        specs += [("d=48, 6 heads, x (2, 12, 48)", 48, 6, _x(hidden_seed("ch05.block", 44), (2, 12, 48), scale=2.0, shift=0.5))]
    for i, (name, d, h, x) in enumerate(specs):
        state = _block_state(500 + i if i < n_visible else hidden_seed("ch05.block", 500 + i), d, x.dtype)
        tol = _tensors(1e-9, 1e-8) if x.dtype == torch.float64 else _tensors(5e-5, 1e-4)
        yield case(name, (state, x), run=_module_run(d, h),
                   expected=lambda s=state, x=x, d=d, h=h: _ref_gpt2_block(s, x, d, h), compare=tol)


class _Attn(nn.Module):
    def __init__(self, d, n_heads, causal=True):
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = (t.reshape(B, T, self.n_heads, -1).transpose(1, 2) for t in self.qkv(x).split(d, -1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


class _BlockMistake(nn.Module):
    def __init__(self, d, n_heads, eps=1e-5, kind=""):
        super().__init__()
        self.kind = kind
        self.ln_1, self.ln_2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.attn = _Attn(d, n_heads, causal=kind != "not-causal")
        self.mlp = _MLPMistake(d, 4 * d, "none")
        self.mlp.act = lambda h: F.gelu(h, approximate="tanh")

    def forward(self, x):
        k = self.kind
        if k == "post-norm":
            x = self.ln_1(x + self.attn(x))
            return self.ln_2(x + self.mlp(x))
        if k == "residual-normalised":
            h = self.ln_1(x)
            x = h + self.attn(h)
            h = self.ln_2(x)
            return h + self.mlp(h)
        if k == "shared-ln":
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_1(x))
        x = x + self.attn(self.ln_1(x))
        if k == "no-second-residual":
            return self.mlp(self.ln_2(x))
        return x + self.mlp(self.ln_2(x))  # "not-causal"


def _block_mistake(kind):
    return lambda d, n_heads, eps=1e-5: _BlockMistake(d, n_heads, eps, kind)


def _block_with(part: str):
    """compose() for inherit: a right block whose LayerNorms, MLP or attention is ``part_factory``."""
    def compose(part_factory):
        def make(d, n_heads, eps=1e-5):
            block = _BlockMistake(d, n_heads, eps, "")
            if part == "ln":
                block.ln_1, block.ln_2 = part_factory(d, eps), part_factory(d, eps)
            elif part == "mlp":
                block.mlp = part_factory(d, 4 * d)
            else:
                block.attn = part_factory(d, n_heads, causal=True)
            return block
        return make
    return compose


register(Exercise(
    id="ch05.block", chapter=CH, title="The pre-norm Transformer block", points=2, name="Block",
    signature="Block(d_model, n_heads, eps=1e-5); forward(x: Tensor[B, T, d]) -> Tensor[B, T, d]; "
              "sub-modules ln_1, attn (qkv, proj), ln_2, mlp (fc, proj)",
    reference="transformers GPT2Block (eager attention, causal mask, weights copied and Conv1D transposed)",
    solution=f"{SOL}:Block", cases=_block_cases, difficulty="**",
    forbidden=["transformers.models.gpt2.modeling_gpt2:GPT2Block"],
    mistakes=[
        Mistake("post-norm", "this is a POST-norm block (x = ln(x + f(x)), the 2017 Transformer); GPT-2 is pre-norm: "
                "x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x))", _block_mistake("post-norm")),
        Mistake("residual-normalised", "the residual carries the NORMALISED stream (ln_1(x) + attn(ln_1(x))); add each "
                "branch to the raw stream x: x = x + attn(ln_1(x))", _block_mistake("residual-normalised")),
        Mistake("missing-second-residual", "the second residual is missing: x = x + mlp(ln_2(x)), not mlp(ln_2(x))",
                _block_mistake("no-second-residual")),
        Mistake("shared-layernorm", "you used ln_1 before the MLP too; each branch has its own LayerNorm (ln_2 before the "
                "MLP)", _block_mistake("shared-ln")),
        Mistake("not-causal", "your attention is not causal: each position may only attend to itself and the past "
                "(MultiHeadAttention(d_model, n_heads) with causal=True)", _block_mistake("not-causal")),
        *inherit("ch05.layer_norm", _block_with("ln"), where="the block's LayerNorm"),
        *inherit("ch05.mlp", _block_with("mlp"), where="the block's MLP"),
        *inherit("ch04.multi_head_attention", _block_with("attn"), where="the block's attention"),
    ]))
