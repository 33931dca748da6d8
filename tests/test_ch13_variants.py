"""Chapter 13: correct answers written in other styles get full marks (hidden cases too)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import autograder


# -- RoPE scaling -----------------------------------------------------------------------------
def pi_positions(head_dim, base, factor):
    # interpolate the positions: angle(m) = (m / factor) * theta; read the frequency off angle(1)
    theta = torch.tensor([base ** (-2 * i / head_dim) for i in range(head_dim // 2)], dtype=torch.float64)
    return (theta * (1 / factor)).float()


def pi_exp_log(head_dim, base, factor):
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    return torch.exp(-2 * i / head_dim * math.log(base) - math.log(factor)).float()


def ntk_float64(head_dim, base, factor, max_position, seq_len):
    s = seq_len if seq_len > max_position else max_position
    d = head_dim
    new_base = base * ((factor * s / max_position) - (factor - 1)) ** (d / (d - 2))
    return (1.0 / torch.tensor(new_base, dtype=torch.float64) ** (torch.arange(0, d, 2, dtype=torch.float64) / d)).float()


def ntk_log_space(head_dim, base, factor, max_position, seq_len):
    s = max(seq_len, max_position)
    log_base = math.log(base) + head_dim / (head_dim - 2) * math.log(factor * s / max_position - factor + 1)
    return torch.exp(-torch.arange(0, head_dim, 2).double() / head_dim * log_base).float()


def yarn_loop(head_dim, base, factor, original_max_position, beta_fast=32, beta_slow=1):
    d = head_dim
    lo = math.floor(d * math.log(original_max_position / (beta_fast * 2 * math.pi)) / (2 * math.log(base)))
    hi = math.ceil(d * math.log(original_max_position / (beta_slow * 2 * math.pi)) / (2 * math.log(base)))
    lo, hi = max(lo, 0), min(hi, d - 1)
    out = []
    for i in range(d // 2):
        theta = base ** (-2 * i / d)
        r = min(max((i - lo) / ((hi - lo) if hi != lo else 0.001), 0.0), 1.0)
        out.append(theta * (1 - r) + theta / factor * r)
    return torch.tensor(out, dtype=torch.float32), (1 + 0.1 * math.log(factor)) if factor > 1 else 1.0


def yarn_by_wavelength(head_dim, base, factor, original_max_position, beta_fast=32, beta_slow=1):
    # the same ramp, phrased as the number of turns each pair makes over the trained context
    d = head_dim
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)

    def index(turns):
        return d * math.log(original_max_position / (2 * math.pi * turns)) / (2 * math.log(base))

    lo, hi = max(math.floor(index(beta_fast)), 0), min(math.ceil(index(beta_slow)), d - 1)
    keep = 1 - torch.clamp((torch.arange(d // 2, dtype=torch.float64) - lo) / (hi - lo or 0.001), 0, 1)
    inv = theta / factor + (theta - theta / factor) * keep
    return inv.float(), float(0.1 * torch.log(torch.tensor(float(factor))) + 1)


def cos_sin_complex(positions, head_dim, base, factor, original_max_position):
    inv, att = yarn_loop(head_dim, base, factor, original_max_position)
    rot = torch.polar(torch.ones(len(positions), head_dim // 2), positions.float()[:, None] * inv)
    rot = torch.cat([rot, rot], dim=-1) * att
    return rot.real, rot.imag


def cos_sin_float64(positions, head_dim, base, factor, original_max_position):
    inv, att = yarn_by_wavelength(head_dim, base, factor, original_max_position)
    ang = positions.double()[:, None] * inv.double()[None]
    ang = ang.repeat(1, 2)
    return (ang.cos() * att).float(), (ang.sin() * att).float()


# -- zero-order hold --------------------------------------------------------------------------
def zoh_float64(delta, A, B):
    x = delta.double()[..., None] * A.double()
    dA = x.exp()
    return dA.float(), ((dA - 1) / A.double() * B.double()[:, :, None, :]).float()


def zoh_einsum(delta, A, B):
    dA = torch.exp(torch.einsum("bld,dn->bldn", delta, A))
    dB = torch.einsum("bldn,bln->bldn", torch.expm1(torch.einsum("bld,dn->bldn", delta, A)) / A, B)
    return dA, dB


# -- scans ------------------------------------------------------------------------------------
def scan_precomputed(u, delta, A, B, C, D):
    dA = torch.exp(torch.einsum("bld,dn->bldn", delta, A))
    dBu = torch.einsum("bld,bln->bldn", delta * u, B)
    h = torch.zeros_like(dA[:, 0])
    ys = []
    for t in range(u.shape[1]):
        h = dA[:, t] * h + dBu[:, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, t]))
    return torch.stack(ys, 1) + D * u


def scan_float64_loops(u, delta, A, B, C, D):
    b, L, d = u.shape
    u64, dl, A64, B64, C64 = u.double(), delta.double(), A.double(), B.double(), C.double()
    h = torch.zeros(b, d, A.shape[1], dtype=torch.float64)
    y = torch.empty(b, L, d, dtype=torch.float64)
    for t in range(L):
        h = torch.exp(dl[:, t, :, None] * A64) * h + dl[:, t, :, None] * u64[:, t, :, None] * B64[:, t, None, :]
        y[:, t] = (h * C64[:, t, None, :]).sum(-1)
    return (y + D.double() * u64).float()


def chunked_float64(u, delta, A, B, C, D, chunk_size=32):
    b, L, d = u.shape
    h = torch.zeros(b, d, A.shape[1], dtype=torch.float64)
    out = []
    for s in range(0, L, chunk_size):
        dt = delta[:, s:s + chunk_size].double()
        S = dt.cumsum(1)[..., None] * A.double()
        x = (dt * u[:, s:s + chunk_size].double())[..., None] * B[:, s:s + chunk_size, None, :].double()
        states = S.exp() * (h[:, None] + (x * (-S).exp()).cumsum(1))
        out.append(torch.einsum("bqdn,bqn->bqd", states, C[:, s:s + chunk_size].double()))
        h = states[:, -1]
    return (torch.cat(out, 1) + u.double() * D.double()).float()


def chunked_segsum(u, delta, A, B, C, D, chunk_size=32):
    # inside a chunk, h_t = sum_{s<=t} exp(S_t - S_s) x_s + exp(S_t) h0: a masked (Q x Q) decay matrix
    b, L, d = u.shape
    h = torch.zeros(b, d, A.shape[1])
    out = []
    for s in range(0, L, chunk_size):
        dt = delta[:, s:s + chunk_size]
        Q = dt.shape[1]
        S = dt.cumsum(1)[..., None] * A  # (b, Q, d, N)
        diff = S[:, :, None] - S[:, None, :]  # (b, t, s, d, N)
        mask = torch.ones(Q, Q, dtype=torch.bool).tril()[None, :, :, None, None]
        W = torch.where(mask, diff, torch.tensor(float("-inf"))).exp()
        x = (dt * u[:, s:s + chunk_size])[..., None] * B[:, s:s + chunk_size, None, :]
        states = torch.einsum("btsdn,bsdn->btdn", W, x) + S.exp() * h[:, None]
        out.append(torch.einsum("btdn,btn->btd", states, C[:, s:s + chunk_size]))
        h = states[:, -1]
    return torch.cat(out, 1) + u * D


# -- conv -------------------------------------------------------------------------------------
def conv_loop(x, weight, bias):
    b, d, L = x.shape
    K = weight.shape[1]
    out = bias[None, :, None].expand(b, d, L).clone()
    for t in range(L):
        for j in range(K):
            src = t - (K - 1) + j
            if src >= 0:
                out[:, :, t] += weight[:, j] * x[:, :, src]
    return out


def conv_unfold(x, weight, bias):
    K = weight.shape[1]
    windows = F.pad(x, (K - 1, 0)).unfold(-1, K, 1)  # (b, d, L, K)
    return torch.einsum("bdlk,dk->bdl", windows, weight) + bias[:, None]


# -- mixer and step ---------------------------------------------------------------------------
def _mixer(w, x, scan, conv):
    D, N, R = w.intermediate_size, w.ssm_state_size, w.time_step_rank
    xz = w.in_proj(x)
    xs, z = xz[..., :D], xz[..., D:]
    xs = F.silu(conv(xs.transpose(1, 2), w.conv1d.weight[:, 0], w.conv1d.bias)).transpose(1, 2)
    proj = w.x_proj(xs)
    dt, B, C = proj[..., :R], proj[..., R:R + N], proj[..., R + N:]
    delta = F.softplus(dt @ w.dt_proj.weight.T + w.dt_proj.bias)
    return w.out_proj(scan(xs, delta, -w.A_log.exp(), B, C, w.D) * z * torch.sigmoid(z))


def mixer_loops(w, x):
    return _mixer(w, x, scan_float64_loops, conv_loop)


def mixer_vectorised(w, x):
    return _mixer(w, x, lambda *a: chunked_float64(*a, chunk_size=8), conv_unfold)


def step_roll(w, x_t, conv_state, ssm_state):
    D, N, R = w.intermediate_size, w.ssm_state_size, w.time_step_rank
    xs, z = w.in_proj(x_t).chunk(2, dim=-1)
    conv_state = conv_state.roll(-1, dims=-1)
    conv_state[:, :, -1] = xs
    xs = F.silu(torch.einsum("bdk,dk->bd", conv_state, w.conv1d.weight[:, 0]) + w.conv1d.bias)
    dt, B, C = w.x_proj(xs).split([R, N, N], dim=-1)
    delta = F.softplus(w.dt_proj(dt))
    ssm_state = (delta[..., None] * -w.A_log.exp()).exp() * ssm_state + delta[..., None] * xs[..., None] * B[:, None]
    y = torch.einsum("bdn,bn->bd", ssm_state, C) + w.D * xs
    return w.out_proj(y * F.silu(z)), conv_state, ssm_state


def step_inplace(w, x_t, conv_state, ssm_state):
    # updates the state tensors in place (as the CUDA kernels do) and returns them
    D, N, R = w.intermediate_size, w.ssm_state_size, w.time_step_rank
    xz = w.in_proj(x_t)
    xs, z = xz[:, :D], xz[:, D:]
    conv_state.copy_(torch.cat([conv_state[:, :, 1:], xs[:, :, None]], dim=-1))
    xs = F.conv1d(conv_state, w.conv1d.weight, w.conv1d.bias, groups=D)[:, :, 0]
    xs = xs * torch.sigmoid(xs)
    proj = w.x_proj(xs)
    delta = F.softplus(w.dt_proj(proj[:, :R]))
    B, C = proj[:, R:R + N], proj[:, R + N:]
    ssm_state.mul_(torch.exp(delta[..., None] * -torch.exp(w.A_log))).add_(delta[..., None] * xs[..., None] * B[:, None])
    y = (ssm_state * C[:, None]).sum(-1) + w.D * xs
    return w.out_proj(y * F.silu(z)), conv_state, ssm_state


RIGHT = [
    ("ch13.linear_scaled_inv_freq", pi_positions), ("ch13.linear_scaled_inv_freq", pi_exp_log),
    ("ch13.dynamic_ntk_inv_freq", ntk_float64), ("ch13.dynamic_ntk_inv_freq", ntk_log_space),
    ("ch13.yarn_inv_freq", yarn_loop), ("ch13.yarn_inv_freq", yarn_by_wavelength),
    ("ch13.yarn_cos_sin", cos_sin_complex), ("ch13.yarn_cos_sin", cos_sin_float64),
    ("ch13.zoh_discretize", zoh_float64), ("ch13.zoh_discretize", zoh_einsum),
    ("ch13.selective_scan", scan_precomputed), ("ch13.selective_scan", scan_float64_loops),
    ("ch13.causal_depthwise_conv", conv_loop), ("ch13.causal_depthwise_conv", conv_unfold),
    ("ch13.mamba_mixer", mixer_loops), ("ch13.mamba_mixer", mixer_vectorised),
    ("ch13.mamba_step", step_roll), ("ch13.mamba_step", step_inplace),
    ("ch13.chunked_scan", chunked_float64), ("ch13.chunked_scan", chunked_segsum),
]


@pytest.mark.parametrize("exercise_id, fn", RIGHT, ids=[f"{e}:{f.__name__}" for e, f in RIGHT])
def test_correct_variant_gets_full_marks(exercise_id, fn):
    result = autograder.grade(exercise_id, fn, hidden=True)
    assert result.passed, result.feedback
    assert result.score == result.max_score


def test_every_exercise_has_two_variants():
    ids = {r["id"] for r in autograder.catalogue("ch13")}
    for eid in ids:
        assert sum(e == eid for e, _ in RIGHT) >= 2, eid
