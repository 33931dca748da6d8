"""Wrong answers to chapter 13, as learners write them."""
import math

import torch
import torch.nn.functional as F

from . import wrong


def _theta(head_dim, base):
    return 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))


# -- position interpolation -------------------------------------------------------------------
@wrong("ch13.linear_scaled_inv_freq", diagnosis="multiplied")
def pi_times_factor(head_dim, base, factor):
    return _theta(head_dim, base) * factor


@wrong("ch13.linear_scaled_inv_freq", diagnosis="base-scaled")
def pi_bigger_base(head_dim, base, factor):
    return 1.0 / ((base * factor) ** (torch.arange(0, head_dim, 2).float() / head_dim))


@wrong("ch13.linear_scaled_inv_freq", diagnosis="exponent")
def pi_wrong_exponent(head_dim, base, factor):
    i = torch.arange(head_dim // 2).float()
    return base ** (-i / head_dim) / factor


# -- dynamic NTK ------------------------------------------------------------------------------
@wrong("ch13.dynamic_ntk_inv_freq", diagnosis="no-clamp")
def ntk_without_max(head_dim, base, factor, max_position, seq_len):
    new_base = base * ((factor * seq_len / max_position) - (factor - 1)) ** (head_dim / (head_dim - 2))
    return _theta(head_dim, new_base)


@wrong("ch13.dynamic_ntk_inv_freq", diagnosis="no-exponent")
def ntk_no_power(head_dim, base, factor, max_position, seq_len):
    s = max(seq_len, max_position)
    return _theta(head_dim, base * (factor * s / max_position - factor + 1))


@wrong("ch13.dynamic_ntk_inv_freq", diagnosis="static")
def ntk_static(head_dim, base, factor, max_position, seq_len):
    return _theta(head_dim, base * factor ** (head_dim / (head_dim - 2)))


# -- YaRN -------------------------------------------------------------------------------------
def _yarn(head_dim, base, factor, orig, beta_fast=32.0, beta_slow=1.0, reverse=False, rounding=True, att=True):
    def dim_for(rot):
        return head_dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

    lo, hi = dim_for(beta_fast), dim_for(beta_slow)
    if rounding:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, head_dim - 1)
    ramp = torch.clamp((torch.arange(head_dim // 2).float() - lo) / max(hi - lo, 1e-3), 0, 1)
    if reverse:
        ramp = 1 - ramp
    theta = _theta(head_dim, base)
    inv = (1 - ramp) * theta + ramp * theta / factor
    return inv, (0.1 * math.log(factor) + 1 if att else 1.0)


@wrong("ch13.yarn_inv_freq", diagnosis="ramp-reversed")
def yarn_reversed(head_dim, base, factor, original_max_position, beta_fast=32, beta_slow=1):
    return _yarn(head_dim, base, factor, original_max_position, beta_fast, beta_slow, reverse=True)


@wrong("ch13.yarn_inv_freq", diagnosis="no-rounding")
def yarn_fractional_ends(head_dim, base, factor, original_max_position, beta_fast=32, beta_slow=1):
    return _yarn(head_dim, base, factor, original_max_position, beta_fast, beta_slow, rounding=False)


@wrong("ch13.yarn_inv_freq", diagnosis="no-attention-factor")
def yarn_no_temperature(head_dim, base, factor, original_max_position, beta_fast=32, beta_slow=1):
    return _yarn(head_dim, base, factor, original_max_position, beta_fast, beta_slow, att=False)


@wrong("ch13.yarn_inv_freq", diagnosis="all-interpolated")
def yarn_is_just_pi(head_dim, base, factor, original_max_position, beta_fast=32, beta_slow=1):
    return _theta(head_dim, base) / factor, 0.1 * math.log(factor) + 1


# -- YaRN cos/sin -----------------------------------------------------------------------------
def _tables(positions, head_dim, base, factor, orig, which="both", part=None):
    inv, att = (part or _yarn)(head_dim, base, factor, orig)
    ang = torch.outer(positions.float(), inv)
    emb = torch.cat((ang, ang), dim=-1)
    if which == "cos":
        return emb.cos() * att, emb.sin()
    return emb.cos() * att, emb.sin() * att


@wrong("ch13.yarn_cos_sin", diagnosis="factor-once")
def cos_sin_scale_cos_only(positions, head_dim, base, factor, original_max_position):
    return _tables(positions, head_dim, base, factor, original_max_position, which="cos")


@wrong("ch13.yarn_cos_sin", diagnosis="interleaved")
def cos_sin_interleaved(positions, head_dim, base, factor, original_max_position):
    inv, att = _yarn(head_dim, base, factor, original_max_position)
    ang = torch.outer(positions.float(), inv).repeat_interleave(2, dim=-1)
    return ang.cos() * att, ang.sin() * att


@wrong("ch13.yarn_cos_sin", diagnosis="factor-missing")
def cos_sin_plain(positions, head_dim, base, factor, original_max_position):
    inv, _ = _yarn(head_dim, base, factor, original_max_position)
    ang = torch.outer(positions.float(), inv)
    emb = torch.cat((ang, ang), dim=-1)
    return emb.cos(), emb.sin()


@wrong("ch13.yarn_cos_sin", diagnosis="ch13.yarn_inv_freq:ramp-reversed")
def cos_sin_on_a_reversed_ramp(positions, head_dim, base, factor, original_max_position):
    part = lambda d, b, f, m: _yarn(d, b, f, m, reverse=True)  # noqa: E731
    return _tables(positions, head_dim, base, factor, original_max_position, part=part)


# -- zero-order hold --------------------------------------------------------------------------
@wrong("ch13.zoh_discretize", diagnosis="euler-b")
def zoh_with_euler_b(delta, A, B):
    dA = torch.exp(delta.unsqueeze(-1) * A)
    dB = delta.unsqueeze(-1) * B.unsqueeze(2)
    return dA, dB


@wrong("ch13.zoh_discretize", diagnosis="euler")
def zoh_first_order(delta, A, B):
    dA = 1 + delta.unsqueeze(-1) * A
    dB = delta.unsqueeze(-1) * B.unsqueeze(2)
    return dA, dB


@wrong("ch13.zoh_discretize", diagnosis="no-divide")
def zoh_forgot_inverse(delta, A, B):
    dA = torch.exp(delta.unsqueeze(-1) * A)
    return dA, (dA - 1) * B.unsqueeze(2)


# -- selective scan ---------------------------------------------------------------------------
def _loop(u, delta, A, B, C, D, zoh=False, skip=True, before=False, dt_on_A=True):
    b, L, d = u.shape
    h = torch.zeros(b, d, A.shape[1])
    out = torch.empty(b, L, d)
    for t in range(L):
        a = torch.exp((delta[:, t].unsqueeze(-1) if dt_on_A else 1.0) * A)
        if zoh:
            inc = (torch.exp(delta[:, t].unsqueeze(-1) * A) - 1) / A * B[:, t].unsqueeze(1) * u[:, t].unsqueeze(-1)
        else:
            inc = delta[:, t].unsqueeze(-1) * B[:, t].unsqueeze(1) * u[:, t].unsqueeze(-1)
        if before:
            out[:, t] = torch.einsum("bdn,bn->bd", h, C[:, t])
        h = a * h + inc
        if not before:
            out[:, t] = torch.einsum("bdn,bn->bd", h, C[:, t])
    return out + D * u if skip else out


@wrong("ch13.selective_scan", diagnosis="zoh-b")
def scan_with_exact_zoh(u, delta, A, B, C, D):
    return _loop(u, delta, A, B, C, D, zoh=True)


@wrong("ch13.selective_scan", diagnosis="no-D")
def scan_without_skip(u, delta, A, B, C, D):
    return _loop(u, delta, A, B, C, D, skip=False)


@wrong("ch13.selective_scan", diagnosis="output-before-update")
def scan_reads_old_state(u, delta, A, B, C, D):
    return _loop(u, delta, A, B, C, D, before=True)


@wrong("ch13.selective_scan", diagnosis="no-delta-on-A")
def scan_constant_decay(u, delta, A, B, C, D):
    return _loop(u, delta, A, B, C, D, dt_on_A=False)


# -- causal conv ------------------------------------------------------------------------------
@wrong("ch13.causal_depthwise_conv", diagnosis="right-padding")
def conv_pad_right(x, weight, bias):
    K = weight.shape[1]
    return F.conv1d(F.pad(x, (0, K - 1)), weight.unsqueeze(1), bias, groups=x.shape[1])


@wrong("ch13.causal_depthwise_conv", diagnosis="right-padding")
def conv_keep_last(x, weight, bias):
    K, L = weight.shape[1], x.shape[2]
    return F.conv1d(x, weight.unsqueeze(1), bias, padding=K - 1, groups=x.shape[1])[:, :, -L:]


@wrong("ch13.causal_depthwise_conv", diagnosis="centered")
def conv_same(x, weight, bias):
    K = weight.shape[1]
    return F.conv1d(F.pad(x, ((K - 1) // 2, K // 2)), weight.unsqueeze(1), bias, groups=x.shape[1])


@wrong("ch13.causal_depthwise_conv", diagnosis="flipped")
def conv_loop_flipped(x, weight, bias):
    b, d, L = x.shape
    K = weight.shape[1]
    out = bias[None, :, None].repeat(b, 1, L)
    for t in range(L):
        for j in range(K):  # j steps back in time, but weight[:, j] is used as if j = 0 were x_t
            if t - j >= 0:
                out[:, :, t] += weight[:, j] * x[:, :, t - j]
    return out


@wrong("ch13.causal_depthwise_conv", diagnosis="no-bias")
def conv_no_bias(x, weight, bias):
    K = weight.shape[1]
    return F.conv1d(F.pad(x, (K - 1, 0)), weight.unsqueeze(1), groups=x.shape[1])


# -- the Mamba mixer --------------------------------------------------------------------------
def _mixer(w, x, negate=True, softplus=True, swap=False, conv_pad="left", skip=True):
    D, N, R = w.intermediate_size, w.ssm_state_size, w.time_step_rank
    xz = w.in_proj(x)
    if swap:
        z, xs = xz.chunk(2, dim=-1)
    else:
        xs, z = xz.chunk(2, dim=-1)
    K = w.conv1d.weight.shape[-1]
    pad = (K - 1, 0) if conv_pad == "left" else (0, K - 1)
    xs = F.conv1d(F.pad(xs.transpose(1, 2), pad), w.conv1d.weight, w.conv1d.bias, groups=D)
    xs = F.silu(xs).transpose(1, 2)
    dt, B, C = torch.split(w.x_proj(xs), [R, N, N], dim=-1)
    delta = w.dt_proj(dt)
    if softplus:
        delta = F.softplus(delta)
    A = -torch.exp(w.A_log) if negate else torch.exp(w.A_log)
    y = _loop(xs, delta, A, B, C, w.D, skip=skip)
    return w.out_proj(y * F.silu(z))


@wrong("ch13.mamba_mixer", diagnosis="A-not-negated")
def mixer_positive_A(w, x):
    return _mixer(w, x, negate=False)


@wrong("ch13.mamba_mixer", diagnosis="no-softplus")
def mixer_raw_dt(w, x):
    return _mixer(w, x, softplus=False)


@wrong("ch13.mamba_mixer", diagnosis="xz-swapped")
def mixer_gate_first(w, x):
    return _mixer(w, x, swap=True)


@wrong("ch13.mamba_mixer", diagnosis="ch13.selective_scan:no-D")
def mixer_without_skip(w, x):
    return _mixer(w, x, skip=False)


@wrong("ch13.mamba_mixer", diagnosis="ch13.causal_depthwise_conv:right-padding")
def mixer_conv_sees_future(w, x):
    return _mixer(w, x, conv_pad="right")


# -- recurrent step ---------------------------------------------------------------------------
def _step(w, x_t, conv_state, ssm_state, fresh=False, newest_first=False, negate=True):
    D, N, R = w.intermediate_size, w.ssm_state_size, w.time_step_rank
    xs, z = w.in_proj(x_t).chunk(2, dim=-1)
    if newest_first:
        conv_state = torch.cat([xs.unsqueeze(-1), conv_state[..., :-1]], dim=-1)
    else:
        conv_state = torch.roll(conv_state, -1, dims=-1)
        conv_state[..., -1] = xs
    xs = F.silu(torch.sum(conv_state * w.conv1d.weight.squeeze(1), dim=-1) + w.conv1d.bias)
    dt, B, C = torch.split(w.x_proj(xs), [R, N, N], dim=-1)
    delta = F.softplus(w.dt_proj(dt))
    A = -torch.exp(w.A_log) if negate else torch.exp(w.A_log)
    h = torch.zeros_like(ssm_state) if fresh else ssm_state
    h = torch.exp(delta.unsqueeze(-1) * A) * h + (delta * xs).unsqueeze(-1) * B.unsqueeze(1)
    y = torch.einsum("bdn,bn->bd", h, C) + w.D * xs
    return w.out_proj(y * F.silu(z)), conv_state, h


@wrong("ch13.mamba_step", diagnosis="state-not-carried")
def step_forgets(w, x_t, conv_state, ssm_state):
    return _step(w, x_t, conv_state, ssm_state, fresh=True)


@wrong("ch13.mamba_step", diagnosis="conv-newest-first")
def step_window_reversed(w, x_t, conv_state, ssm_state):
    return _step(w, x_t, conv_state, ssm_state, newest_first=True)


@wrong("ch13.mamba_step", diagnosis="A-not-negated")
def step_positive_A(w, x_t, conv_state, ssm_state):
    return _step(w, x_t, conv_state, ssm_state, negate=False)


@wrong("ch13.mamba_step", diagnosis=None)
def step_growing_window(w, x_t, conv_state, ssm_state):
    D, N, R = w.intermediate_size, w.ssm_state_size, w.time_step_rank
    xs, z = w.in_proj(x_t).chunk(2, dim=-1)
    conv_state = torch.cat([conv_state, xs.unsqueeze(-1)], dim=-1)  # keeps every input: memory grows
    K = w.conv1d.weight.shape[-1]
    xs = F.silu(torch.sum(conv_state[..., -K:] * w.conv1d.weight.squeeze(1), dim=-1) + w.conv1d.bias)
    dt, B, C = torch.split(w.x_proj(xs), [R, N, N], dim=-1)
    delta = F.softplus(w.dt_proj(dt))
    h = torch.exp(delta.unsqueeze(-1) * -torch.exp(w.A_log)) * ssm_state + (delta * xs).unsqueeze(-1) * B.unsqueeze(1)
    y = torch.einsum("bdn,bn->bd", h, C) + w.D * xs
    return w.out_proj(y * F.silu(z)), conv_state, h


# -- chunked scan -----------------------------------------------------------------------------
def _chunks(u, delta, A, B, C, D, chunk_size, carry=True, decay_carry=True, inclusive=True, skip=True):
    b, L, d = u.shape
    h = torch.zeros(b, d, A.shape[1])
    outs = []
    for s in range(0, L, chunk_size):
        dt = delta[:, s:s + chunk_size]
        cum = torch.cumsum(dt, dim=1)
        if not inclusive:
            cum = cum - dt
        S = cum.unsqueeze(-1) * A
        x = (dt * u[:, s:s + chunk_size]).unsqueeze(-1) * B[:, s:s + chunk_size].unsqueeze(2)
        inner = torch.exp(S) * torch.cumsum(torch.exp(-S) * x, dim=1)
        if carry:
            inner = inner + (torch.exp(S) * h.unsqueeze(1) if decay_carry else h.unsqueeze(1))
        outs.append(torch.einsum("bqdn,bqn->bqd", inner, C[:, s:s + chunk_size]))
        h = inner[:, -1]
    y = torch.cat(outs, dim=1)
    return y + u * D if skip else y


@wrong("ch13.chunked_scan", diagnosis="state-not-carried")
def chunks_independent(u, delta, A, B, C, D, chunk_size=32):
    return _chunks(u, delta, A, B, C, D, chunk_size, carry=False)


@wrong("ch13.chunked_scan", diagnosis="carry-not-decayed")
def chunks_carry_flat(u, delta, A, B, C, D, chunk_size=32):
    return _chunks(u, delta, A, B, C, D, chunk_size, decay_carry=False)


@wrong("ch13.chunked_scan", diagnosis="exclusive")
def chunks_exclusive_cumsum(u, delta, A, B, C, D, chunk_size=32):
    return _chunks(u, delta, A, B, C, D, chunk_size, inclusive=False)


@wrong("ch13.chunked_scan", diagnosis="ch13.selective_scan:no-D")
def chunks_no_skip(u, delta, A, B, C, D, chunk_size=32):
    return _chunks(u, delta, A, B, C, D, chunk_size, skip=False)
