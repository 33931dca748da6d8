"""Chapter 12 - Mixture of Experts.

Reference solutions. The docstrings of the exercise functions are the specification the
learner reads; their bodies are the reference solution. Weight layouts follow Hugging
Face Mixtral: a router matrix ``(E, H)``, fused expert weights
``gate_up_proj (E, 2I, H)`` (the gate half first) and ``down_proj (E, H, I)``. The rest
is PROVIDED: the MoE feed-forward layer and the small character-level GPT the
experiments train, with a dense twin at equal active parameters.
"""
from __future__ import annotations

import math
import time
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from solutions.ch07_pretraining import (
    CausalSelfAttention,
    GPTConfig,
    char_vocab,
    encode_corpus,
    get_batch,
)
from solutions.ch01_next_token import shakespeare_text


# --------------------------------------------------------------------------------------
# Exercise: the top-k router (Mixtral)
# --------------------------------------------------------------------------------------
def topk_router(x: torch.Tensor, weight: torch.Tensor, k: int, normalize: bool = True):
    """Choose k experts per token and weigh them.

    x: (N, H) token states; weight: (E, H) the router matrix (no bias); k <= E.
    The router logits are ``x @ weight.T`` (N, E). Take a softmax over the E experts (in
    float32), keep the k largest probabilities per token, and, when ``normalize`` is
    True (Mixtral), divide them by their sum so that each token's k weights add up to 1;
    when False (Qwen2-MoE's default) keep the raw probabilities.
    Returns ``(weights, index)``: float32 (N, k) and int64 (N, k), largest weight first.
    """
    logits = F.linear(x, weight).float()                  # (N, E)
    # over ALL experts, before choosing
    probs = logits.softmax(dim=-1)
    weights, index = probs.topk(k, dim=-1)                 # (N, k), (N, k)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, index


# --------------------------------------------------------------------------------------
# Exercise: the sparse MoE block, a plain loop over experts
# --------------------------------------------------------------------------------------
def expert_mlp(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor
) -> torch.Tensor:
    """One SwiGLU expert: x (n, H), gate_up (2I, H) with the gate rows first, down (H,
    I) -> (n, H)."""
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, down)


def sparse_moe(x: torch.Tensor, router_weight: torch.Tensor, gate_up_proj: torch.Tensor,
               down_proj: torch.Tensor, k: int, normalize: bool = True) -> torch.Tensor:
    """The sparse MoE feed-forward layer: every token goes through its k chosen experts.

    x: (..., H); router_weight: (E, H); gate_up_proj: (E, 2I, H), rows [0, I) the gate
    and [I, 2I) the up projection; down_proj: (E, H, I).
    Route with ``topk_router(x, router_weight, k, normalize)``; expert e computes
    ``down_e (silu(gate_e x) * up_e x)``; each token's output is the weighted sum of its
    k experts' outputs. Loop over the experts (not over tokens): for each expert, gather
    the tokens that chose it, run it once on all of them, add the weighted result back.
    Returns a tensor shaped like x.
    """
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    weights, index = topk_router(x, router_weight, k, normalize)
    out = torch.zeros_like(x)
    for e in range(router_weight.shape[0]):
        # which tokens chose e, in which slot
        token, slot = torch.where(index == e)
        if token.numel() == 0:
            continue
        y = expert_mlp(x[token], gate_up_proj[e], down_proj[e])
        out.index_add_(0, token, y * weights[token, slot, None].to(x.dtype))
    return out.reshape(shape)


# --------------------------------------------------------------------------------------
# Exercises: the two auxiliary losses
# --------------------------------------------------------------------------------------
def load_balancing_loss(router_logits: torch.Tensor, k: int) -> torch.Tensor:
    """The Switch/Mixtral load-balancing loss of one layer.

    router_logits: (N, E). With p = softmax(logits) (N, E), f_i = (number of top-k slots
    that went to expert i) / N (so sum_i f_i = k) and P_i = mean over tokens of p[:, i],
    return ``E * sum_i f_i P_i`` as a 0-dim float32 tensor (differentiable through P
    only).
    A perfectly balanced router scores k.
    """
    N, E = router_logits.shape
    probs = router_logits.float().softmax(dim=-1)
    index = probs.topk(k, dim=-1).indices                                 # (N, k)
    f = torch.bincount(index.reshape(-1), minlength=E).float() / N         # sums to k
    P = probs.mean(dim=0)                                                  # sums to 1
    return E * (f * P).sum()


def router_z_loss(router_logits: torch.Tensor) -> torch.Tensor:
    """The router z-loss (Zoph et al., 2022): mean over tokens of logsumexp(logits)^2.

    router_logits: (..., E), any number of leading token dimensions. Returns a 0-dim
    tensor.
    """
    return torch.logsumexp(router_logits.float(), dim=-1).square().mean()


# --------------------------------------------------------------------------------------
# Exercise: expert capacity and token dropping (Switch Transformer)
# --------------------------------------------------------------------------------------
def switch_moe(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    wi: torch.Tensor,
    wo: torch.Tensor,
    capacity: int,
) -> torch.Tensor:
    """A Switch (top-1) MoE layer with a fixed expert capacity.

    x: (B, T, H); router_weight: (E, H); wi: (E, F, H); wo: (E, H, F); expert e computes
    ``wo_e relu(wi_e x)``. Each token goes to its most probable expert (softmax in
    float32), and its output is that probability times the expert's output. An expert
    takes at most ``capacity`` tokens from each sequence, first come first served (in
    position order); the tokens beyond that are dropped: their output here is 0 (the
    layer's residual connection, outside this function, carries them through unchanged).
    Returns (B, T, H).
    """
    E = router_weight.shape[0]
    probs = F.linear(x.float(), router_weight.float()).softmax(dim=-1)    # (B, T, E)
    top_p, expert = probs.max(dim=-1)                                     # (B, T)
    onehot = F.one_hot(expert, E)                                         # (B, T, E)
    # 1 = first to reach its expert, per sequence
    arrival = (onehot.cumsum(dim=1) * onehot).sum(-1)
    kept = arrival <= capacity
    out = torch.zeros_like(x)
    for e in range(E):
        sel = (expert == e) & kept
        if sel.any():
            y = F.linear(F.relu(F.linear(x[sel], wi[e])), wo[e])
            out[sel] = top_p[sel, None].to(x.dtype) * y
    return out


# --------------------------------------------------------------------------------------
# Exercise: a shared expert (Qwen2-MoE)
# --------------------------------------------------------------------------------------
def shared_expert_moe(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
    shared_gate_proj: torch.Tensor,
    shared_up_proj: torch.Tensor,
    shared_down_proj: torch.Tensor,
    shared_expert_gate: torch.Tensor,
    k: int,
) -> torch.Tensor:
    """Qwen2-MoE's block: routed experts (top-k, NOT renormalised) plus one always-on
    shared expert.

    x: (..., H); the routed part as in ``sparse_moe`` (router (E, H), gate_up_proj (E,
    2I, H), down_proj (E, H, I)); the shared expert is a SwiGLU MLP with
    shared_gate_proj (S, H), shared_up_proj (S, H), shared_down_proj (H, S); its output
    is scaled per token by ``sigmoid(x @ shared_expert_gate.T)`` with shared_expert_gate
    (1, H).
    Returns a tensor shaped like x.
    """
    routed = sparse_moe(x, router_weight, gate_up_proj, down_proj, k, normalize=False)
    shared = F.linear(
        F.silu(F.linear(x, shared_gate_proj)) * F.linear(x, shared_up_proj),
        shared_down_proj,
    )
    return routed + torch.sigmoid(F.linear(x, shared_expert_gate)) * shared


# --------------------------------------------------------------------------------------
# Exercises: DeepSeek-V3's router and the auxiliary-loss-free bias update
# --------------------------------------------------------------------------------------
def deepseek_router(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int,
                    scaling: float = 1.0):
    """DeepSeek-V3's sigmoid router with a selection bias (one expert group).

    x: (N, H); weight: (E, H); bias: (E,). Scores s = sigmoid(x @ weight.T) in float32
    (N, E). The k experts are CHOSEN by s + bias, but WEIGHTED by the unbiased s: gather
    s at the chosen experts, divide by their sum (plus 1e-20), multiply by ``scaling``.
    Returns ``(weights, index)``, float32 (N, k) and int64 (N, k), in any order within a
    row.
    """
    scores = F.linear(x.float(), weight.float()).sigmoid()               # (N, E)
    # the bias only picks
    index = (scores + bias).topk(k, dim=-1).indices
    # ... the scores weigh
    weights = scores.gather(1, index)
    weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * scaling, index


def bias_update(bias: torch.Tensor, index: torch.Tensor, gamma: float) -> torch.Tensor:
    """One step of auxiliary-loss-free balancing (Wang et al., 2024; DeepSeek-V3).

    bias: (E,) float; index: (N, k) the experts chosen in this step; gamma: the update
    speed.
    With load_i the number of slots expert i received, return a NEW tensor
    ``bias_i + gamma * sign(mean_load - load_i)``: an overloaded expert's bias goes down
    by gamma, an underloaded one's goes up, an expert at exactly the mean load keeps its
    bias.
    Do not modify ``bias`` in place.
    """
    load = torch.bincount(index.reshape(-1), minlength=bias.shape[0]).to(bias.dtype)
    return bias + gamma * torch.sign(load.mean() - load)


# --------------------------------------------------------------------------------------
# Exercise: efficient dispatch
# --------------------------------------------------------------------------------------
def dispatch_sorted(
    x: torch.Tensor,
    index: torch.Tensor,
    weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
) -> torch.Tensor:
    """The experts' part of the MoE layer, computed by sorting instead of masking.

    x: (N, H); index: (N, k) int64 chosen experts; weights: (N, k) their weights;
    gate_up_proj (E, 2I, H) and down_proj (E, H, I) as in ``sparse_moe``.
    Flatten the N*k (token, expert) pairs, sort them by expert (``argsort``), gather the
    tokens once in that order, run each expert on its contiguous slice (one matmul pair
    per expert, slice sizes from ``bincount``), multiply by the weights, and scatter-add
    back to the tokens' original rows. Returns (N, H), equal to the loop in
    ``sparse_moe``.
    """
    N, k = index.shape
    E = gate_up_proj.shape[0]
    flat = index.reshape(-1)                                  # (N k,)
    order = flat.argsort(stable=True)                          # pairs grouped by expert
    # the token each sorted pair came from
    token = order // k
    counts = torch.bincount(flat, minlength=E).tolist()        # slice sizes
    xs = x[token]                                              # (N k, H): one gather
    # the weights, permuted the same way
    ws = weights.reshape(-1)[order, None].to(x.dtype)
    ys = torch.empty_like(xs)
    start = 0
    for e, c in enumerate(counts):
        if c:
            ys[start : start + c] = (
                expert_mlp(xs[start : start + c], gate_up_proj[e], down_proj[e])
                * ws[start : start + c]
            )
            start += c
    return torch.zeros_like(x).index_add_(0, token, ys)       # one scatter back


# --------------------------------------------------------------------------------------
# Provided: an MoE language model and its dense twin
# --------------------------------------------------------------------------------------
class MoEConfig(NamedTuple):
    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    n_experts: int = 8
    top_k: int = 2
    # I of each expert; the dense twin's MLP has top_k * expert_size
    expert_size: int = 64
    moe: bool = True
    # "none", "aux" (load-balancing loss) or "bias" (DeepSeek-V3)
    balance: str = "aux"
    aux_coef: float = 0.01
    bias_gamma: float = 0.01


def default_parts() -> dict:
    """The functions the MoE layer is built from; the chapter passes the learner's
    own."""
    return {
        "topk_router": topk_router,
        "dispatch": dispatch_sorted,
        "load_balancing_loss": load_balancing_loss,
        "deepseek_router": deepseek_router,
        "bias_update": bias_update,
    }


class MoEFeedForward(nn.Module):
    """E SwiGLU experts behind a router. ``forward`` stores the step's load and
    auxiliary loss."""

    def __init__(self, cfg: MoEConfig, parts: dict):
        super().__init__()
        self.cfg, self.parts = cfg, parts
        E, H, I = cfg.n_experts, cfg.n_embd, cfg.expert_size
        self.router = nn.Parameter(torch.randn(E, H) * 0.02)
        self.gate_up_proj = nn.Parameter(torch.randn(E, 2 * I, H) * 0.02)
        self.down_proj = nn.Parameter(
            torch.randn(E, H, I) * 0.02 / math.sqrt(2 * cfg.n_layer)
        )
        self.register_buffer("bias", torch.zeros(E))
        self.aux_loss = torch.zeros(())
        self.last_index = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        if self.cfg.balance == "bias":
            weights, index = self.parts["deepseek_router"](
                x, self.router, self.bias, self.cfg.top_k
            )
        else:
            weights, index = self.parts["topk_router"](x, self.router, self.cfg.top_k)
        if self.cfg.balance == "aux" and self.training:
            self.aux_loss = self.parts["load_balancing_loss"](
                F.linear(x, self.router), self.cfg.top_k
            )
        else:
            self.aux_loss = torch.zeros(())
        self.last_index = index.detach()
        out = self.parts["dispatch"](
            x, index, weights, self.gate_up_proj, self.down_proj
        )
        return out.reshape(shape)

    @torch.no_grad()
    def update_bias(self) -> None:
        if self.cfg.balance == "bias" and self.last_index is not None:
            self.bias.copy_(
                self.parts["bias_update"](
                    self.bias, self.last_index, self.cfg.bias_gamma
                )
            )


class DenseFeedForward(nn.Module):
    """One SwiGLU MLP as wide as top_k experts together: the same active parameters per
    token."""

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        H, I = cfg.n_embd, cfg.top_k * cfg.expert_size
        self.gate_up = nn.Parameter(torch.randn(2 * I, H) * 0.02)
        self.down = nn.Parameter(torch.randn(H, I) * 0.02 / math.sqrt(2 * cfg.n_layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return expert_mlp(x, self.gate_up, self.down)


class MoEBlock(nn.Module):
    def __init__(self, cfg: MoEConfig, parts: dict):
        super().__init__()
        att = GPTConfig(
            vocab_size=cfg.vocab_size,
            block_size=cfg.block_size,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_embd=cfg.n_embd,
        )
        self.ln_1, self.attn = nn.RMSNorm(cfg.n_embd, eps=1e-5), CausalSelfAttention(
            att
        )
        self.ln_2 = nn.RMSNorm(cfg.n_embd, eps=1e-5)
        self.ffn = MoEFeedForward(cfg, parts) if cfg.moe else DenseFeedForward(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.ffn(self.ln_2(x))


class MoEGPT(nn.Module):
    """A small character-level GPT whose feed-forward layers are MoE (or dense)
    layers."""

    def __init__(self, cfg: MoEConfig, parts: dict | None = None):
        super().__init__()
        self.cfg = cfg
        parts = parts or default_parts()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(MoEBlock(cfg, parts) for _ in range(cfg.n_layer))
        self.ln_f = nn.RMSNorm(cfg.n_embd, eps=1e-5)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def moe_layers(self) -> list[MoEFeedForward]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoEFeedForward)]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def parameter_counts(self) -> tuple[int, int]:
        """(total, active per token): an MoE layer activates top_k of its n_experts
        experts."""
        total = sum(p.numel() for p in self.parameters())
        inactive = sum(
            layer.gate_up_proj.numel() + layer.down_proj.numel()
            for layer in self.moe_layers()
        )
        frac = self.cfg.top_k / self.cfg.n_experts
        return total, int(total - inactive * (1 - frac))


def shakespeare_chars(n_chars: int):
    """The first ``n_chars`` characters of Shakespeare as ids, the vocabulary, a 90/10
    split."""
    text = shakespeare_text(n_chars)
    vocab = char_vocab(text)
    ids = encode_corpus(text, vocab)
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:], vocab


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: torch.Tensor,
    block_size: int,
    batches: int = 8,
    batch_size: int = 32,
) -> float:
    model.eval()
    g = torch.Generator().manual_seed(1234)
    losses = []
    for _ in range(batches):
        x, y = get_batch(data, block_size, batch_size, generator=g)
        losses.append(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item())
    model.train()
    return sum(losses) / len(losses)


def train_lm(
    model: MoEGPT,
    train_data: torch.Tensor,
    val_data: torch.Tensor,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    eval_every: int = 50,
    seed: int = 0,
    desc: str = "train",
) -> dict:
    """AdamW with a cosine schedule. Returns the history: train/val losses, per-step
    expert
    loads of every MoE layer (fractions of the top-k slots, shape (steps, layers, E)),
    time.
    Runs on one CPU thread: matrices this small are slower when threads must
    synchronise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(
        model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95)
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps)),
    )
    hist = {"step": [], "train": [], "val_step": [], "val": [], "load": []}
    t0 = time.perf_counter()
    try:
        for step in tqdm(range(steps), desc=desc, leave=False):
            x, y = get_batch(train_data, model.cfg.block_size, batch_size, generator=g)
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            aux = sum((layer.aux_loss for layer in model.moe_layers()), torch.zeros(()))
            opt.zero_grad(set_to_none=True)
            (loss + model.cfg.aux_coef * aux).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loads = []
            for layer in model.moe_layers():
                counts = torch.bincount(
                    layer.last_index.reshape(-1), minlength=model.cfg.n_experts
                ).float()
                loads.append(counts / counts.sum())
                layer.update_bias()
            if loads:
                hist["load"].append(torch.stack(loads))
            hist["step"].append(step)
            hist["train"].append(loss.item())
            if (step + 1) % eval_every == 0 or step == steps - 1:
                hist["val_step"].append(step + 1)
                hist["val"].append(evaluate(model, val_data, model.cfg.block_size))
    finally:
        torch.set_num_threads(threads)
    hist["seconds"] = time.perf_counter() - t0
    hist["load"] = torch.stack(hist["load"]) if hist["load"] else None
    return hist


@torch.no_grad()
def top1_experts(model: MoEGPT, ids: torch.Tensor, layer: int = 0) -> torch.Tensor:
    """The first-choice expert of every position of ``ids`` (1-D) in MoE layer
    ``layer``."""
    model.eval()
    T = model.cfg.block_size
    n = (len(ids) // T) * T
    model(ids[:n].view(-1, T))
    model.train()
    return model.moe_layers()[layer].last_index[:, 0].clone()
