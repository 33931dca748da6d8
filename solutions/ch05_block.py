"""Chapter 5 - The Transformer block: normalisation, the MLP and the residual stream.

Reference solutions. Each exercise class's docstrings are the specification the learner
reads; the method bodies are the reference solution. Parameter names (``weight``,
``fc``, ``ln_1``, ...) are part of the contract: the checks load reference weights by
name.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from solutions.ch04_attention import MultiHeadAttention


# --------------------------------------------------------------------------------------
# Exercises
# --------------------------------------------------------------------------------------
class LayerNorm(nn.Module):
    """Layer normalisation over the last axis, with a learned gain and bias (Ba et al.,
    2016)."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        """Call ``super().__init__()`` first, then create the parameters ``weight``
        (d_model,)
        initialised to ones and ``bias`` (d_model,) to zeros (``nn.Parameter``); keep
        ``eps``
        as ``self.eps``.
        """
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_model), each vector normalised on its own.

        y = (x - mean) / sqrt(var + eps) * weight + bias, where mean and the *biased*
        variance (divide by d, not d - 1) are taken over the last axis only.
        """
        mean = x.mean(dim=-1, keepdim=True)
        # biased: 1/d, as nn.LayerNorm
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class RMSNorm(nn.Module):
    """Root-mean-square normalisation (Zhang and Sennrich, 2019): no centring, no
    bias."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        """Parameter: ``weight`` (d_model,) initialised to ones. Keep ``eps`` as
        ``self.eps``."""
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_model): x / sqrt(mean(x**2) + eps) * weight.

        The mean of the squares is over the last axis; the mean itself is NOT
        subtracted.
        """
        rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return x / rms * self.weight


class MLP(nn.Module):
    """GPT-2's position-wise feed-forward network: Linear, tanh-approximated GELU,
    Linear."""

    def __init__(self, d_model: int, d_hidden: int):
        """Layers: ``fc`` = nn.Linear(d_model, d_hidden), ``proj`` = nn.Linear(d_hidden,
        d_model),
        both with a bias."""
        super().__init__()
        self.fc = nn.Linear(d_model, d_hidden)
        self.proj = nn.Linear(d_hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_model) = proj(gelu(fc(x))).

        GELU here is GPT-2's tanh approximation ("gelu_new"):
        gelu(h) = 0.5 * h * (1 + tanh(sqrt(2 / pi) * (h + 0.044715 * h**3))).
        """
        h = self.fc(x)
        h = (
            0.5
            * h
            * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h.pow(3))))
        )
        return self.proj(h)


class SwiGLU(nn.Module):
    """Llama's gated feed-forward network (Shazeer, 2020): down(silu(gate(x)) *
    up(x))."""

    def __init__(self, d_model: int, d_hidden: int):
        """Layers, all without bias: ``gate`` and ``up`` = nn.Linear(d_model, d_hidden),
        ``down`` = nn.Linear(d_hidden, d_model)."""
        super().__init__()
        self.gate = nn.Linear(d_model, d_hidden, bias=False)
        self.up = nn.Linear(d_model, d_hidden, bias=False)
        self.down = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_model) -> (..., d_model).

        silu(g) = g * sigmoid(g) is applied to the GATE branch only; the up branch stays
        linear and multiplies it element-wise.
        """
        g = self.gate(x)
        return self.down(g * torch.sigmoid(g) * self.up(x))


class Block(nn.Module):
    """A pre-norm Transformer block, as in GPT-2: two residual branches on the stream
    x."""

    def __init__(self, d_model: int, n_heads: int, eps: float = 1e-5):
        """Sub-modules (the names matter): ``ln_1`` = LayerNorm(d_model, eps),
        ``attn`` = MultiHeadAttention(d_model, n_heads) from chapter 4 (causal, with
        bias),
        ``ln_2`` = LayerNorm(d_model, eps), ``mlp`` = MLP(d_model, 4 * d_model)."""
        super().__init__()
        self.ln_1 = LayerNorm(d_model, eps)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.ln_2 = LayerNorm(d_model, eps)
        self.mlp = MLP(d_model, 4 * d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d_model) -> (B, T, d_model).

        x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x)): each branch reads a normalised
        copy of the stream and ADDS its result to the un-normalised stream.
        """
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


# --------------------------------------------------------------------------------------
# Used by the chapter's experiment (provided)
# --------------------------------------------------------------------------------------
def residual_stream_scale(
    make_block, depth: int, x: torch.Tensor, variant: str
) -> tuple[list[float], list[float]]:
    """Push ``x`` (B, T, d) through ``depth`` freshly initialised blocks wired as
    ``variant``.

    ``make_block()`` returns a Block (with ``ln_1``, ``attn``, ``ln_2``, ``mlp``); only
    its
    sub-modules are used, re-wired as one of:
      "plain"    x = mlp(attn(x))                              no residual, no norm
      "residual" x = x + attn(x); x = x + mlp(x)               residual, no norm
      "post-norm" x = ln_1(x + attn(x)); x = ln_2(x + mlp(x))  the 2017 Transformer
      "pre-norm" x = block(x)                                  GPT-2 and every modern
      LLM
    Returns (std of x after each layer, gradient norm at each layer's input), depth
    each.
    """
    blocks = [make_block() for _ in range(depth)]
    h = x.clone().requires_grad_(True)
    inputs, stds = [], []
    for b in blocks:
        h.retain_grad()
        inputs.append(h)
        if variant == "plain":
            h = b.mlp(b.attn(h))
        elif variant == "residual":
            h = h + b.attn(h)
            h = h + b.mlp(h)
        elif variant == "post-norm":
            h = b.ln_1(h + b.attn(h))
            h = b.ln_2(h + b.mlp(h))
        elif variant == "pre-norm":
            h = b(h)
        else:
            raise ValueError(variant)
        stds.append(float(h.detach().std()))
    # A loss that asks every output coordinate to move: the gradient that reaches
    # each layer.
    (h * torch.randn_like(h)).sum().backward()
    grads = [float(t.grad.norm()) for t in inputs]
    return stds, grads
