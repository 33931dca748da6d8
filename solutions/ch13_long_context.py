"""Chapter 13 - Long sequences: RoPE scaling and Mamba.

Reference solutions. Two answers to attention's quadratic cost. The first keeps
attention and stretches RoPE so that a model trained on short contexts reads longer
ones: position interpolation, NTK-aware / dynamic scaling and YaRN, each a new set of
rotation frequencies. The second replaces attention by a selective state-space layer
(Mamba): a recurrence with a fixed-size state, so that a token costs the same at
position 10 as at position 10,000. Weight names follow Hugging Face's ``MambaMixer`` so
that its weights load.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from solutions.ch07_pretraining import (
    char_vocab,
    encode_corpus,
    get_batch,
    shakespeare_text,
    train_val_split,
)

# --------------------------------------------------------------------------------------
# Provided: plain RoPE frequencies
# --------------------------------------------------------------------------------------
def rope_inv_freq(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """The (head_dim/2,) float32 inverse frequencies theta_i = base ** (-2i / head_dim)
    of chapter 3."""
    return 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


# --------------------------------------------------------------------------------------
# Exercises: stretching RoPE
# --------------------------------------------------------------------------------------
def linear_scaled_inv_freq(head_dim: int, base: float, factor: float) -> torch.Tensor:
    """Position interpolation (Chen et al., 2023): squeeze ``factor`` times more
    positions
    into the angles the model was trained on.

    Returns (head_dim/2,) float32 inverse frequencies. Rotating position m by
    m * theta_i / factor is the same as rotating position m / factor by theta_i.
    """
    return rope_inv_freq(head_dim, base) / factor


def dynamic_ntk_inv_freq(head_dim: int, base: float, factor: float, max_position: int,
                         seq_len: int) -> torch.Tensor:
    """Dynamic NTK-aware scaling: raise the base, more so the longer the sequence.

    max_position: the context length the model was trained on. seq_len: the current
    sequence length; a sequence no longer than max_position gets the original
    frequencies.
    The new base is base * (factor * s / max_position - (factor - 1)) ** (d / (d - 2))
    with s = max(seq_len, max_position) and d = head_dim. Returns (head_dim/2,) float32.
    """
    s = max(seq_len, max_position)
    new_base = base * (factor * s / max_position - (factor - 1)) ** (
        head_dim / (head_dim - 2)
    )
    return rope_inv_freq(head_dim, new_base)


def yarn_inv_freq(
    head_dim: int,
    base: float,
    factor: float,
    original_max_position: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al., 2023): interpolate the slow dimensions, keep the fast ones,
    ramp between.

    Dimension pair i turns original_max_position * theta_i / (2 pi) times over the
    trained context. Pairs that turn more than beta_fast times keep theta_i
    (extrapolation); pairs that turn fewer than beta_slow times get theta_i / factor
    (interpolation); in between, a linear ramp over the pair index. The ramp's ends are
    the (fractional) indices where a pair turns exactly beta_fast and beta_slow times, d
    * ln(L / (2 pi beta)) / (2 ln base), rounded outwards (floor for the low end, ceil
    for the high end) and clipped to [0, d - 1].
    Returns (inv_freq (head_dim/2,) float32, attention_factor = 0.1 ln(factor) + 1 (1
    when factor <= 1)).
    """
    d = head_dim

    # the pair index i whose wave turns `turns` times over the trained context
    def index_of(turns):
        return (
            d
            * math.log(original_max_position / (turns * 2 * math.pi))
            / (2 * math.log(base))
        )

    low = max(math.floor(index_of(beta_fast)), 0)
    high = min(math.ceil(index_of(beta_slow)), d - 1)
    if low == high:
        high += 0.001  # a one-point ramp would divide by zero
    # 0 = fast, 1 = slow
    ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(
        0, 1
    )
    theta = rope_inv_freq(d, base)
    inv_freq = theta * (1 - ramp) + (theta / factor) * ramp
    attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return inv_freq, attention_factor


def yarn_cos_sin(positions: torch.Tensor, head_dim: int, base: float, factor: float,
                 original_max_position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cos and sin tables a YaRN-scaled Llama multiplies its queries and keys by.

    positions: (T,) int64. Returns (cos, sin), each (T, head_dim) float32, in Llama's
    half-split layout (the d/2 angles repeated twice), both multiplied by YaRN's
    attention factor, so that q . k after rotation carries the factor squared.
    """
    inv_freq, attention_factor = yarn_inv_freq(
        head_dim, base, factor, original_max_position
    )
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (T, d/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, d)
    return angles.cos() * attention_factor, angles.sin() * attention_factor


# --------------------------------------------------------------------------------------
# Exercises: the pieces of Mamba
# --------------------------------------------------------------------------------------
def zoh_discretize(
    delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-order hold: the exact discrete-time version of h'(t) = A h(t) + B x(t) over
    a step delta.

    delta: (b, L, D) positive step sizes; A: (D, N) the diagonal of A for each channel
    (negative); B: (b, L, N). Returns (dA, dB), each (b, L, D, N):
        dA = exp(delta * A),   dB = (exp(delta * A) - 1) / A * B
    so that h_t = dA_t * h_{t-1} + dB_t * x_t holds exactly when x is constant over the
    step.
    """
    dA_log = delta[..., None] * A  # (b, L, D, N)
    dA = torch.exp(dA_log)
    # expm1: accurate when delta * A is tiny
    dB = torch.expm1(dA_log) / A * B[:, :, None, :]
    return dA, dB


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
) -> torch.Tensor:
    """Mamba's selective scan, one position at a time.

    u: (b, L, D) input; delta: (b, L, D) positive steps (after softplus); A: (D, N)
    negative;
    B, C: (b, L, N) input-dependent; D: (D,) skip weights. The state h is (b, D, N),
    zero at
    the start. For each t, with Mamba's discretisation (exp for A, Euler for B):
        h = exp(delta_t * A) * h + (delta_t * u_t)[..., None] * B_t[:, None, :]
        y_t = h @ C_t + D * u_t
    Returns y: (b, L, D), in u's dtype.
    """
    b, L, d = u.shape
    h = u.new_zeros(b, d, A.shape[-1], dtype=torch.float32)
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, t, :, None] * A)  # (b, D, N)
        dBu = (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]  # (b, D, N)
        h = dA * h + dBu
        ys.append((h @ C[:, t, :, None]).squeeze(-1))  # (b, D)
    y = torch.stack(ys, dim=1)  # (b, L, D)
    return (y + u * D).to(u.dtype)


def causal_depthwise_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """A depthwise 1-D convolution that never looks ahead.

    x: (b, D, L); weight: (D, K), one kernel per channel; bias: (D,). Output (b, D, L)
    with
        out[:, c, t] = bias[c] + sum_j weight[c, j] * x[:, c, t - (K - 1) + j]
    where positions before 0 count as zeros: the last tap, weight[:, K-1], multiplies
    x_t.
    (This is torch's Conv1d, a cross-correlation: the kernel is not flipped.)
    """
    K = weight.shape[-1]
    padded = F.pad(x, (K - 1, 0))  # zeros on the LEFT: position t sees t-K+1 .. t
    return F.conv1d(padded, weight[:, None, :], bias, groups=x.shape[1])


class MambaWeights(nn.Module):
    """The parameters of one Mamba mixer, named as in Hugging Face's ``MambaMixer``
    (provided).

    in_proj (2D, H) gives x | z; conv1d a depthwise Conv1d over D channels with kernel
    K; x_proj (R + 2N, D) gives dt | B | C; dt_proj (D, R) with bias; A_log (D, N); D
    (D,); out_proj (H, D). D = expand * H is the inner width (``intermediate_size``), N
    the state size (``ssm_state_size``), K the kernel (``conv_kernel_size``), R the rank
    of dt (``time_step_rank``).
    """

    def __init__(
        self,
        hidden_size: int,
        state_size: int = 16,
        conv_kernel: int = 4,
        expand: int = 2,
        time_step_rank: int | None = None,
    ):
        super().__init__()
        inner = expand * hidden_size
        rank = time_step_rank or math.ceil(hidden_size / 16)
        self.hidden_size, self.ssm_state_size, self.conv_kernel_size = (
            hidden_size,
            state_size,
            conv_kernel,
        )
        self.intermediate_size, self.time_step_rank = inner, rank
        self.in_proj = nn.Linear(hidden_size, 2 * inner, bias=False)
        self.conv1d = nn.Conv1d(
            inner, inner, conv_kernel, groups=inner, padding=conv_kernel - 1, bias=True
        )
        self.x_proj = nn.Linear(inner, rank + 2 * state_size, bias=False)
        self.dt_proj = nn.Linear(rank, inner, bias=True)
        # S4D-real initialisation: A_n = -(n + 1); dt between 1e-3 and 1e-1
        # after softplus.
        self.A_log = nn.Parameter(
            torch.log(torch.arange(1, state_size + 1, dtype=torch.float32)).repeat(
                inner, 1
            )
        )
        self.D = nn.Parameter(torch.ones(inner))
        self.out_proj = nn.Linear(inner, hidden_size, bias=False)
        with torch.no_grad():
            dt = torch.exp(
                torch.rand(inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)
            )
            # inverse softplus
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def mamba_mixer(w: MambaWeights, x: torch.Tensor, scan=None) -> torch.Tensor:
    """The Mamba mixer (Gu and Dao, 2023) on a whole sequence.

    w: a MambaWeights; x: (b, L, H) -> (b, L, H). scan: the scan to use, a function with
    selective_scan's signature (None: your selective_scan). Steps:
      1. xz = in_proj(x); split into x (the first D channels) and the gate z (the last
      D).
      2. x = silu(causal depthwise conv of x) with conv1d's weight (D, 1, K) and bias.
      3. dt | B | C = x_proj(x), split [R, N, N]; delta = softplus(dt_proj(dt)) (the
      bias inside).
      4. A = -exp(A_log); y = scan(x, delta, A, B, C, D).
      5. return out_proj(y * silu(z)).
    """
    D, N, R = w.intermediate_size, w.ssm_state_size, w.time_step_rank
    xs, z = w.in_proj(x).split(D, dim=-1)  # (b, L, D) each: x first, then the gate z
    xs = F.silu(
        causal_depthwise_conv(xs.transpose(1, 2), w.conv1d.weight[:, 0], w.conv1d.bias)
    ).transpose(1, 2)
    dt, B, C = w.x_proj(xs).split([R, N, N], dim=-1)
    delta = F.softplus(w.dt_proj(dt))  # (b, L, D): positive steps
    A = -torch.exp(w.A_log.float())  # (D, N): negative, so the state decays
    y = (scan or selective_scan)(xs, delta, A, B, C, w.D)
    return w.out_proj(y * F.silu(z))


def mamba_step(
    w: MambaWeights,
    x_t: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token of recurrent inference: constant time and memory, whatever the
    position.

    x_t: (b, H) the new token's input. conv_state: (b, D, K) the conv inputs (x after
    in_proj, before the conv) of the last K positions, oldest first, the newest in the
    last slot. ssm_state: (b, D, N). Shift x_t's inner x into conv_state (drop the
    oldest), take the convolution's output for this position from it, then advance the
    scan one step.
    Returns (y_t (b, H), new conv_state (b, D, K), new ssm_state (b, D, N)); the same
    layout as Hugging Face's cache (``conv_states``, ``recurrent_states``).
    """
    D, N, R = w.intermediate_size, w.ssm_state_size, w.time_step_rank
    xs, z = w.in_proj(x_t).split(D, dim=-1)  # (b, D) each
    # (b, D, K): newest last
    conv_state = torch.cat([conv_state[:, :, 1:], xs[:, :, None]], dim=-1)
    xs = F.silu((conv_state * w.conv1d.weight[:, 0]).sum(-1) + w.conv1d.bias)  # (b, D)
    dt, B, C = w.x_proj(xs).split([R, N, N], dim=-1)
    delta = F.softplus(w.dt_proj(dt))  # (b, D)
    A = -torch.exp(w.A_log.float())
    ssm_state = (
        torch.exp(delta[..., None] * A) * ssm_state
        + (delta * xs)[..., None] * B[:, None, :]
    )
    y = (ssm_state @ C[..., None]).squeeze(-1) + w.D * xs  # (b, D)
    return w.out_proj(y * F.silu(z)), conv_state, ssm_state


def chunked_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    chunk_size: int = 32,
) -> torch.Tensor:
    """The selective scan, computed chunk by chunk: equal to selective_scan, much
    faster.

    Same arguments and result as selective_scan, plus chunk_size (Q). Inside a chunk the
    recurrence is solved in closed form with cumulative sums: with S_t = A * sum_{s<=t}
    delta_s
    (the sum restarts at each chunk) and x_s = delta_s u_s B_s,
        h_t = exp(S_t) * (h_0 + sum_{s<=t} exp(-S_s) x_s),
    where h_0 is the state carried in from the end of the previous chunk. Only the chunk
    boundaries are visited one after another: L / Q steps instead of L. (exp(-S) grows
    along
    a chunk: with Mamba's step sizes, delta * |A| up to about 2, chunks of 32 stay
    finite in
    float32; use float64 inside a chunk if unsure.)
    """
    b, L, d = u.shape
    Q, N = chunk_size, A.shape[-1]
    h = u.new_zeros(b, d, N, dtype=torch.float32)  # (b, D, N), carried across chunks
    # a cumulative sum over a chunk as one matrix product (much faster than
    # cumsum)
    lower = torch.ones(Q, Q).tril()
    group = 64 * Q  # many chunks side by side: few, large tensor operations
    ys = []
    for start in range(0, L, group):
        sl = slice(start, start + group)
        n = delta[:, sl].shape[1]
        nc = -(-n // Q)
        pad = nc * Q - n  # pad the end with delta = 0: no decay, no input
        dt = F.pad(delta[:, sl], (0, 0, 0, pad)).view(b, nc, Q, d)
        du = dt * F.pad(u[:, sl], (0, 0, 0, pad)).view(b, nc, Q, d)
        # (b, nc, Q, D, N): S_t, restarting at each chunk
        S = torch.cumsum(dt, dim=2)[..., None] * A
        decay = torch.exp(S)
        x = (
            S.neg_()
            .exp_()
            .mul_(du[..., None])
            .mul_(F.pad(B[:, sl], (0, 0, 0, pad)).view(b, nc, Q, 1, N))
        )
        # sum_{s<=t} exp(-S_s) x_s
        G = (lower @ x.view(b, nc, Q, d * N)).view(b, nc, Q, d, N)
        # each chunk's end, from 0
        end_decay, end_local = decay[:, :, -1], G[:, :, -1] * decay[:, :, -1]
        starts = []
        for c in range(nc):  # the only sequential part: one step per chunk
            starts.append(h)
            h = end_decay[:, c] * h + end_local[:, c]
        # (b, nc, Q, D, N): every h_t
        states = G.add_(torch.stack(starts, dim=1)[:, :, None]).mul_(decay)
        C_chunks = F.pad(C[:, sl], (0, 0, 0, pad)).view(b, nc, Q, N)
        ys.append(
            torch.einsum("bcqdn,bcqn->bcqd", states, C_chunks).reshape(b, nc * Q, d)[
                :, :n
            ]
        )
    return (torch.cat(ys, dim=1) + u * D).to(u.dtype)


# --------------------------------------------------------------------------------------
# Provided: a small RoPE language model for the experiment
# --------------------------------------------------------------------------------------
def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Llama's rotation: x (..., T, d) with cos, sin (T, d) in the half-split layout."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class RopeAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = (
            t.view(B, T, self.n_heads, self.d_head).transpose(1, 2)
            for t in self.qkv(x).split(C, dim=2)
        )
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class RopeBlock(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.ln_1, self.attn = nn.RMSNorm(d_model), RopeAttention(d_model, n_heads)
        self.ln_2 = nn.RMSNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model, bias=False),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * d_model, d_model, bias=False),
        )

    def forward(self, x, cos, sin):
        x = x + self.attn(self.ln_1(x), cos, sin)
        return x + self.mlp(self.ln_2(x))


class RopeGPT(nn.Module):
    """A character-level GPT whose only position signal is RoPE (provided).

    ``forward(idx, inv_freq=None, attention_factor=1.0)``: idx (B, T) -> logits (B, T,
    V). The rotation frequencies are an argument, so the same weights can be read with
    any scaling.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        base: float = 10000.0,
    ):
        super().__init__()
        self.head_dim, self.base = d_model // n_heads, base
        self.wte = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            RopeBlock(d_model, n_heads) for _ in range(n_layers)
        )
        self.ln_f = nn.RMSNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, inv_freq=None, attention_factor=1.0):
        T = idx.shape[1]
        inv_freq = (
            rope_inv_freq(self.head_dim, self.base) if inv_freq is None else inv_freq
        )
        angles = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)
        cos, sin = angles.cos() * attention_factor, angles.sin() * attention_factor
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.lm_head(self.ln_f(x))


def shakespeare_chars(max_chars: int | None = None):
    """Provided: the Shakespeare text as character ids, split 90/10; returns (train,
    val, vocab)."""
    text = shakespeare_text(max_chars)
    vocab = char_vocab(text)
    train, val = train_val_split(encode_corpus(text, vocab))
    return train, val, vocab


def train_rope_gpt(
    model: RopeGPT,
    data: torch.Tensor,
    context: int,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[float]:
    """Provided: AdamW with warm-up and cosine decay on random windows of ``context``
    tokens."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1
    )
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warm)
        * 0.5
        * (1 + math.cos(math.pi * min(s, steps) / steps))
        * 0.9
        + 0.1,
    )
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc=f"training at context {context}", leave=False):
        x, y = get_batch(data, context, batch_size, generator=g)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def loss_by_position(
    model: RopeGPT,
    data: torch.Tensor,
    length: int,
    n_windows: int,
    inv_freq=None,
    attention_factor: float = 1.0,
    seed: int = 1,
    batch_size: int = 16,
) -> torch.Tensor:
    """Provided: the mean cross-entropy at each of ``length`` positions over
    ``n_windows`` random windows."""
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(length)
    done = 0
    while done < n_windows:
        n = min(batch_size, n_windows - done)
        x, y = get_batch(data, length, n, generator=g)
        logits = model(x, inv_freq, attention_factor)
        total += F.cross_entropy(logits.transpose(1, 2), y, reduction="none").sum(0)
        done += n
    return total / n_windows


# --------------------------------------------------------------------------------------
# Provided: timing helpers for the Mamba experiment
# --------------------------------------------------------------------------------------
def best_time(fn, repeats: int = 3) -> float:
    """The fastest of ``repeats`` calls of ``fn()``, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
