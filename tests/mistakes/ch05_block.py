"""Realistic wrong answers for chapter 5, written as learners write them."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from solutions.ch05_block import MLP as _GoodMLP
from solutions.ch04_attention import MultiHeadAttention

from . import wrong


# -- LayerNorm ------------------------------------------------------------------------------
@wrong("ch05.layer_norm", diagnosis="unbiased-variance")
class LayerNormTorchVar(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True)  # torch.var is unbiased by default
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


@wrong("ch05.layer_norm", diagnosis="eps-outside-sqrt")
class LayerNormStd(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True, unbiased=False)
        return self.weight * (x - mean) / (std + self.eps) + self.bias


@wrong("ch05.layer_norm", diagnosis="batch-axis")
class LayerNormBatch(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x):
        mean = x.mean(0, keepdim=True)
        var = ((x - mean) ** 2).mean(0, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


@wrong("ch05.layer_norm", diagnosis="no-affine")
class LayerNormForgotAffine(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps)


@wrong("ch05.layer_norm", diagnosis="cancellation")
class LayerNormOnePass(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = (x ** 2).mean(-1, keepdim=True) - mean ** 2
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


# -- RMSNorm --------------------------------------------------------------------------------
@wrong("ch05.rms_norm", diagnosis="subtract-mean")
class RMSNormCentred(nn.Module):
    def __init__(self, d_model, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        x = x - x.mean(-1, keepdim=True)
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps) * self.weight


@wrong("ch05.rms_norm", diagnosis="eps-outside-sqrt")
class RMSNormEpsOutside(nn.Module):
    def __init__(self, d_model, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        rms = x.pow(2).mean(-1, keepdim=True).sqrt()
        return self.weight * x / (rms + self.eps)


@wrong("ch05.rms_norm", diagnosis="sum-not-mean")
class RMSNormL2(nn.Module):
    def __init__(self, d_model, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        return self.weight * x / torch.sqrt((x ** 2).sum(-1, keepdim=True) + self.eps)


@wrong("ch05.rms_norm", diagnosis=None)
class RMSNormSqrtD(nn.Module):
    """Uses norm / sqrt(d) with eps added to the norm: close, but not the same formula."""

    def __init__(self, d_model, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        rms = x.norm(dim=-1, keepdim=True) / math.sqrt(x.shape[-1]) + self.eps
        return self.weight * x / rms


# -- GELU MLP -------------------------------------------------------------------------------
@wrong("ch05.mlp", diagnosis="erf-gelu")
class MLPExactGelu(nn.Module):
    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.fc = nn.Linear(d_model, d_hidden)
        self.proj = nn.Linear(d_hidden, d_model)
        self.act = nn.GELU()

    def forward(self, x):
        return self.proj(self.act(self.fc(x)))


@wrong("ch05.mlp", diagnosis="relu")
class MLPRelu(nn.Module):
    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.fc = nn.Linear(d_model, d_hidden)
        self.proj = nn.Linear(d_hidden, d_model)

    def forward(self, x):
        return self.proj(torch.relu(self.fc(x)))


@wrong("ch05.mlp", diagnosis="no-cube")
class MLPNoCube(nn.Module):
    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.fc = nn.Linear(d_model, d_hidden)
        self.proj = nn.Linear(d_hidden, d_model)

    def forward(self, x):
        h = self.fc(x)
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * h))
        return self.proj(h)


@wrong("ch05.mlp", diagnosis=None)
class MLPTypoConstant(nn.Module):
    """0.044715 typed as 0.44715."""

    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.fc = nn.Linear(d_model, d_hidden)
        self.proj = nn.Linear(d_hidden, d_model)

    def forward(self, x):
        h = self.fc(x)
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.44715 * h ** 3)))
        return self.proj(h)


# -- SwiGLU ---------------------------------------------------------------------------------
@wrong("ch05.swiglu", diagnosis="gate-up-swapped")
class SwiGLUSwapped(nn.Module):
    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.gate = nn.Linear(d_model, d_hidden, bias=False)
        self.up = nn.Linear(d_model, d_hidden, bias=False)
        self.down = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x):
        return self.down(self.gate(x) * F.silu(self.up(x)))


@wrong("ch05.swiglu", diagnosis="silu-both")
class SwiGLUSiluBoth(nn.Module):
    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.gate = nn.Linear(d_model, d_hidden, bias=False)
        self.up = nn.Linear(d_model, d_hidden, bias=False)
        self.down = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * F.silu(self.up(x)))


@wrong("ch05.swiglu", diagnosis="sigmoid-gate")
class SwiGLUSigmoid(nn.Module):
    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.gate = nn.Linear(d_model, d_hidden, bias=False)
        self.up = nn.Linear(d_model, d_hidden, bias=False)
        self.down = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x):
        return self.down(torch.sigmoid(self.gate(x)) * self.up(x))


@wrong("ch05.swiglu", diagnosis="silu-on-product")
class SwiGLUSiluAfter(nn.Module):
    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.gate = nn.Linear(d_model, d_hidden, bias=False)
        self.up = nn.Linear(d_model, d_hidden, bias=False)
        self.down = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x) * self.up(x)))


# -- Block ----------------------------------------------------------------------------------
class _LN(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


@wrong("ch05.block", diagnosis="post-norm")
class BlockPostNorm(nn.Module):
    def __init__(self, d_model, n_heads, eps=1e-5):
        super().__init__()
        self.ln_1 = _LN(d_model, eps)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.ln_2 = _LN(d_model, eps)
        self.mlp = _GoodMLP(d_model, 4 * d_model)

    def forward(self, x):
        x = self.ln_1(x + self.attn(x))
        x = self.ln_2(x + self.mlp(x))
        return x


@wrong("ch05.block", diagnosis="residual-normalised")
class BlockResidualAfterNorm(nn.Module):
    def __init__(self, d_model, n_heads, eps=1e-5):
        super().__init__()
        self.ln_1 = _LN(d_model, eps)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.ln_2 = _LN(d_model, eps)
        self.mlp = _GoodMLP(d_model, 4 * d_model)

    def forward(self, x):
        x = self.ln_1(x)
        x = x + self.attn(x)
        x = self.ln_2(x)
        x = x + self.mlp(x)
        return x


@wrong("ch05.block", diagnosis="missing-second-residual")
class BlockOneResidual(nn.Module):
    def __init__(self, d_model, n_heads, eps=1e-5):
        super().__init__()
        self.ln_1 = _LN(d_model, eps)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.ln_2 = _LN(d_model, eps)
        self.mlp = _GoodMLP(d_model, 4 * d_model)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return self.mlp(self.ln_2(x))


@wrong("ch05.block", diagnosis="not-causal")
class BlockBidirectional(nn.Module):
    def __init__(self, d_model, n_heads, eps=1e-5):
        super().__init__()
        self.ln_1 = _LN(d_model, eps)
        self.attn = MultiHeadAttention(d_model, n_heads, causal=False)
        self.ln_2 = _LN(d_model, eps)
        self.mlp = _GoodMLP(d_model, 4 * d_model)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


@wrong("ch05.block", diagnosis=None)
class BlockParallel(nn.Module):
    """GPT-J style parallel branches: attention and MLP both read the same input."""

    def __init__(self, d_model, n_heads, eps=1e-5):
        super().__init__()
        self.ln_1 = _LN(d_model, eps)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.ln_2 = _LN(d_model, eps)
        self.mlp = _GoodMLP(d_model, 4 * d_model)

    def forward(self, x):
        return x + self.attn(self.ln_1(x)) + self.mlp(self.ln_2(x))


# -- blocks built on a faulty part (the part's mistake is named inside the block) ------------
class _ExactGeluMLP(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.fc, self.proj = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))  # erf GELU, nn.GELU()'s default


class _UnbiasedLN(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight, self.bias = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))

    def forward(self, x):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + self.eps) * self.weight + self.bias


@wrong("ch05.block", diagnosis="ch05.mlp:erf-gelu")
class BlockExactGelu(nn.Module):
    def __init__(self, d_model, n_heads, eps=1e-5):
        super().__init__()
        self.ln_1, self.ln_2 = _LN(d_model, eps), _LN(d_model, eps)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.mlp = _ExactGeluMLP(d_model, 4 * d_model)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


@wrong("ch05.block", diagnosis="ch05.layer_norm:unbiased-variance")
class BlockUnbiasedNorm(nn.Module):
    def __init__(self, d_model, n_heads, eps=1e-5):
        super().__init__()
        self.ln_1, self.ln_2 = _UnbiasedLN(d_model, eps), _UnbiasedLN(d_model, eps)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.mlp = _GoodMLP(d_model, 4 * d_model)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))
