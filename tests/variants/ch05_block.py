"""Correct answers to chapter 5, in other styles than the reference."""
import collections
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import right


# -- LayerNorm ------------------------------------------------------------------------------
@right("ch05.layer_norm", style="torch.var_mean(unbiased=False) and rsqrt")
class LayerNormVarMean(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))
        self.eps = eps

    def forward(self, x):
        var, mean = torch.var_mean(x, dim=-1, keepdim=True, unbiased=False)
        return torch.addcmul(self.bias, (x - mean) * torch.rsqrt(var + self.eps), self.weight)


@right("ch05.layer_norm", style="float64 inside, variance as E[x^2] - E[x]^2, cast back")
class LayerNormFloat64(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.d = d_model
        self.register_parameter("weight", nn.Parameter(torch.full((d_model,), 1.0)))
        self.register_parameter("bias", nn.Parameter(torch.full((d_model,), 0.0)))

    def forward(self, x):
        h = x.double()
        mean = h.sum(-1, keepdim=True) / self.d
        var = (h * h).sum(-1, keepdim=True) / self.d - mean * mean
        y = (h - mean) / (var + self.eps).sqrt()
        return (y * self.weight.double() + self.bias.double()).to(x.dtype)


# -- RMSNorm --------------------------------------------------------------------------------
@right("ch05.rms_norm", style="x * rsqrt(mean(x*x) + eps)")
class RMSNormRsqrt(nn.Module):
    def __init__(self, d_model, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps))


@right("ch05.rms_norm", style="through the vector norm: ||x||^2 / d, in float32 at least")
class RMSNormVectorNorm(nn.Module):
    def __init__(self, d_model, eps=1e-6):
        super().__init__()
        self.d_model, self.eps = d_model, eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        h = x.to(torch.promote_types(x.dtype, torch.float32))
        mean_square = torch.linalg.vector_norm(h, dim=-1, keepdim=True) ** 2 / self.d_model
        return (h / torch.sqrt(mean_square + self.eps)).to(x.dtype) * self.weight


# -- MLP ------------------------------------------------------------------------------------
@right("ch05.mlp", style="torch.nn.functional.gelu(approximate='tanh')")
class MLPFunctionalGelu(nn.Module):
    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.fc = nn.Linear(d_model, d_hidden)
        self.proj = nn.Linear(d_hidden, d_model)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


@right("ch05.mlp", style="0.5 (1 + tanh z) written as sigmoid(2z), layers applied with einsum")
class MLPSigmoidForm(nn.Module):
    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.fc = nn.Linear(d_model, d_hidden, bias=True)
        self.proj = nn.Linear(d_hidden, d_model, bias=True)

    def forward(self, x):
        h = torch.einsum("...i,oi->...o", x, self.fc.weight) + self.fc.bias
        z = math.sqrt(2 / math.pi) * (h + 0.044715 * h * h * h)
        h = h * torch.sigmoid(2 * z)
        return torch.einsum("...i,oi->...o", h, self.proj.weight) + self.proj.bias


@right("ch05.mlp", style="an nn.GELU(approximate='tanh') module between the two layers")
class MLPWithGeluModule(nn.Module):
    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.fc = nn.Linear(d_model, d_hidden)
        self.act = nn.GELU(approximate="tanh")
        self.proj = nn.Linear(d_hidden, d_model)

    def forward(self, x):
        return self.proj(self.act(self.fc(x)))


# -- SwiGLU ---------------------------------------------------------------------------------
@right("ch05.swiglu", style="torch.nn.functional.silu")
class SwiGLUFunctional(nn.Module):
    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.gate = nn.Linear(d_model, d_hidden, bias=False)
        self.up = nn.Linear(d_model, d_hidden, bias=False)
        self.down = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


@right("ch05.swiglu", style="silu written as g / (1 + exp(-g)), weights used through F.linear")
class SwiGLUExplicit(nn.Module):
    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.up = nn.Linear(d_model, d_hidden, bias=False)
        self.gate = nn.Linear(d_model, d_hidden, bias=False)
        self.down = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x):
        g = F.linear(x, self.gate.weight)
        u = F.linear(x, self.up.weight)
        return F.linear(g / (1 + torch.exp(-g)) * u, self.down.weight)


# -- Block ----------------------------------------------------------------------------------
class _MyLayerNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.eps = eps
        self.weight, self.bias = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))

    def forward(self, x):
        c = x - x.mean(-1, keepdim=True)
        return c / (c.pow(2).mean(-1, keepdim=True) + self.eps).sqrt() * self.weight + self.bias


class _MyAttention(nn.Module):
    def __init__(self, d, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        B, T, d = x.shape
        h = self.n_heads
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, T, h, d // h) for t in (q, k, v))
        att = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(d // h)
        future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        att = att.masked_fill(future, float("-inf")).softmax(-1)
        return self.proj(torch.einsum("bhqk,bkhe->bqhe", att, v).reshape(B, T, d))


class _MyMLP(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.fc, self.proj = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


@right("ch05.block", style="self-contained: its own norm, einsum attention and MLP classes")
class BlockSelfContained(nn.Module):
    def __init__(self, d_model, n_heads, eps=1e-5):
        super().__init__()
        self.ln_1 = _MyLayerNorm(d_model, eps)
        self.attn = _MyAttention(d_model, n_heads)
        self.ln_2 = _MyLayerNorm(d_model, eps)
        self.mlp = _MyMLP(d_model, 4 * d_model)

    def forward(self, x):
        a = self.attn(self.ln_1(x))
        x = x + a
        m = self.mlp(self.ln_2(x))
        return x + m


class _LoopAttention(nn.Module):
    def __init__(self, d, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        d = x.shape[-1]
        dh = d // self.n_heads
        q, k, v = self.qkv(x).split(d, dim=-1)
        causal = torch.tril(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool))
        outs = []
        for h in range(self.n_heads):
            s = slice(h * dh, (h + 1) * dh)
            w = (q[..., s] @ k[..., s].transpose(-1, -2)) * dh ** -0.5
            w = torch.where(causal, w, torch.full_like(w, float("-inf"))).softmax(-1)
            outs.append(w @ v[..., s])
        return self.proj(torch.cat(outs, -1))


@right("ch05.block", style="torch's nn.LayerNorm, an OrderedDict nn.Sequential MLP, heads in a loop")
class BlockLibraryParts(nn.Module):
    def __init__(self, d_model, n_heads, eps=1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model, eps=eps)
        self.attn = _LoopAttention(d_model, n_heads)
        self.ln_2 = nn.LayerNorm(d_model, eps=eps)
        self.mlp = nn.Sequential(collections.OrderedDict([
            ("fc", nn.Linear(d_model, 4 * d_model)),
            ("act", nn.GELU(approximate="tanh")),
            ("proj", nn.Linear(4 * d_model, d_model)),
        ]))

    def forward(self, x):
        for norm, branch in ((self.ln_1, self.attn), (self.ln_2, self.mlp)):
            x = x + branch(norm(x))
        return x
