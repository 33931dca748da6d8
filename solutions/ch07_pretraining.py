"""Chapter 7 - Pretraining: batches, the loss, AdamW, the schedule, clipping,
checkpoints.

Reference solutions. The bodies of the exercise functions are what the learner writes;
their docstrings are the specification the learner reads. The rest is PROVIDED: the
character tokenizer, a compact nanoGPT-style GPT (a stand-in for the chapter-6 model),
the training loop that wires the exercises together, and the loader of the pretrained
Shakespeare model that later chapters fine-tune, align and quantize.
"""

import json
import math
import os
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from solutions.ch01_next_token import shakespeare_text


# --------------------------------------------------------------------------------------
# Data (provided): a character-level tokenizer
# --------------------------------------------------------------------------------------
def char_vocab(text: str) -> list[str]:
    """Every distinct character of ``text``, sorted: the id of a character is its
    index."""
    return sorted(set(text))


def char_codec(vocab: list[str]):
    """``(encode, decode)`` for a character vocabulary: str -> list[int] and back."""
    stoi = {c: i for i, c in enumerate(vocab)}

    def encode(text: str) -> list[int]:
        return [stoi[c] for c in text]

    def decode(ids) -> str:
        return "".join(vocab[int(i)] for i in ids)

    return encode, decode


def encode_corpus(text: str, vocab: list[str]) -> torch.Tensor:
    """A whole corpus as an int64 tensor of ids, fast (a table lookup on the code
    points)."""
    points = torch.frombuffer(
        bytearray(text.encode("utf-32-le")), dtype=torch.int32
    ).long()
    table = torch.full((int(points.max()) + 1,), -1, dtype=torch.long)
    table[torch.tensor([ord(c) for c in vocab])] = torch.arange(len(vocab))
    ids = table[points]
    if bool((ids < 0).any()):
        raise KeyError(
            f"character {chr(int(points[ids < 0][0]))!r} is not in the vocabulary"
        )
    return ids


def train_val_split(
    ids: torch.Tensor, train_fraction: float = 0.9
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``train_fraction`` of the ids for training, the rest for validation."""
    n = int(train_fraction * len(ids))
    return ids[:n], ids[n:]


# --------------------------------------------------------------------------------------
# Exercises
# --------------------------------------------------------------------------------------
def get_batch(
    data: torch.Tensor,
    block_size: int,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a batch of training windows from a long sequence of token ids.

    data: int64 tensor (N,), the whole token stream, N > block_size.
    Draw ``batch_size`` start positions ``s`` independently and uniformly from every
    start whose window fits: ``s`` in {0, 1, ..., N - block_size - 1} (that is N -
    block_size choices), using ``torch.randint(..., generator=generator)`` so a seeded
    generator reproduces the batch. Return ``(x, y)``, two int64 tensors of shape
    (batch_size, block_size): ``x[b] = data[s_b : s_b + block_size]`` and ``y`` the same
    window shifted by one, ``y[b] = data[s_b + 1 : s_b + block_size + 1]`` (``y[b, t]``
    is the token that follows ``x[b, :t + 1]``).
    """
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    # One gather for the whole batch: row b holds the T + 1 tokens data[s_b : s_b
    # + T + 1].
    windows = data[starts[:, None] + torch.arange(block_size + 1)]
    return windows[:, :-1], windows[:, 1:]


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The language-modelling loss: mean over every position of -log p(target).

    logits: float tensor (B, T, V), unnormalised scores for the next token at each of
    the T positions of B sequences; targets: int64 tensor (B, T).
    Returns a 0-dim tensor,
    ``-(1 / (B T)) sum_{b,t} log softmax(logits[b, t])[targets[b, t]]``, differentiable
    with respect to ``logits``. Must not overflow for logits in the thousands.
    """
    # log-sum-exp over the vocabulary with the maximum taken out (detached: it cancels).
    m = logits.max(dim=-1, keepdim=True).values.detach()
    log_z = torch.log(torch.exp(logits - m).sum(dim=-1)) + m.squeeze(-1)  # (B, T)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)       # (B, T)
    return (log_z - picked).mean()


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov and Hutter, 2019).

    A subclass of ``torch.optim.Optimizer``, so it has ``param_groups``, ``state``,
    ``zero_grad()``, ``state_dict()`` and ``load_state_dict()`` for free, and a
    scheduler can change ``group["lr"]`` between steps.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ):
        """params: an iterable of tensors, or of dicts (param groups) with their own
        settings.

        Call ``super().__init__(params, defaults)`` with the defaults as a dict
        ``{"lr": ..., "betas": ..., "eps": ..., "weight_decay": ...}``.
        """
        super().__init__(
            params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        )

    def step(self, closure=None):
        """One update of every parameter that has a gradient (``p.grad is not None``).

        For each group read ``lr``, ``betas = (b1, b2)``, ``eps``, ``weight_decay = wd``
        from the group dict (they may change between steps). For each parameter ``p``
        with gradient ``g``, keep in ``self.state[p]`` its own step count ``t`` (the
        number of updates it has received, starting at 1) and two running averages ``m``
        and ``v`` (zeros at first, same shape as ``p``), then:

            m = b1 m + (1 - b1) g              v = b2 v + (1 - b2) g^2
            m_hat = m / (1 - b1^t)             v_hat = v / (1 - b2^t)
            p = p - lr wd p                     (decoupled decay: not through the
            gradient)
            p = p - lr m_hat / (sqrt(v_hat) + eps)

        A parameter without a gradient (frozen, or unused this step) is left untouched:
        no decay, no update, its step count does not move. Update in place under
        ``torch.no_grad()`` (autograd must not record the update). ``closure`` is
        ignored.
        """
        with torch.no_grad():
            for group in self.param_groups:
                lr, (beta1, beta2) = group["lr"], group["betas"]
                eps, wd = group["eps"], group["weight_decay"]
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    state = self.state[p]
                    if not state:
                        state["step"] = 0
                        state["m"] = torch.zeros_like(p)
                        state["v"] = torch.zeros_like(p)
                    state["step"] += 1
                    t, g, m, v = state["step"], p.grad, state["m"], state["v"]
                    m.mul_(beta1).add_(g, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    m_hat = m / (1 - beta1 ** t)
                    v_hat = v / (1 - beta2 ** t)
                    p.mul_(1 - lr * wd)
                    p.sub_(lr * m_hat / (v_hat.sqrt() + eps))


def lr_at(step: int, max_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """The learning rate of update number ``step`` (0-based): linear warm-up, cosine
    decay.

    - warm-up, ``step < warmup``: ``max_lr * step / warmup`` (0 at step 0, rising
    linearly);
    - decay, ``warmup <= step < total``: with ``progress = (step - warmup) / (total -
    warmup)``,
      ``min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2`` (max_lr at
      ``warmup``);
    - after, ``step >= total``: ``min_lr``.
    Assumes ``0 <= warmup < total``. Returns a Python float.
    """
    if step < warmup:
        return max_lr * step / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / (total - warmup)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """Rescale all gradients together so that their global L2 norm is at most
    ``max_norm``.

    parameters: an iterable of tensors (it may be a generator such as
    ``model.parameters()``: read it only once); those whose ``.grad`` is None are
    skipped.
    The global norm is ``sqrt(sum over every gradient element of g^2)``, across all the
    parameters at once. If it exceeds ``max_norm``, multiply every gradient in place by
    ``max_norm / (norm + 1e-6)``; otherwise leave them unchanged.
    Returns the norm measured BEFORE clipping, as a 0-dim float tensor (0 without
    gradients).
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.stack([g.detach().pow(2).sum() for g in grads]).sum().sqrt()
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for g in grads:
            g.mul_(scale)
    return total


def save_checkpoint(
    path: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    generator: torch.Generator,
) -> None:
    """Write everything needed to continue training bit for bit, with ``torch.save``.

    ``step`` is the number of updates done so far (the index of the next one). The file
    holds one dict with exactly these keys, all loadable with ``torch.load(path,
    weights_only=True)`` (tensors, numbers, strings, lists and dicts only):

        "model":     model.state_dict()
        "optimizer": optimizer.state_dict()   (the moments m, v and every step count)
        "step":      step                     (the schedule is a function of it)
        "torch_rng": torch.get_rng_state()    (the global generator: dropout, init)
        "generator": generator.get_state()    (the one that draws the batches)
    """
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": int(step),
        "torch_rng": torch.get_rng_state(),
        "generator": generator.get_state(),
    }
    # Write to a temporary name, then rename: a crash mid-write never leaves a
    # torn file.
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator) -> int:
    """Restore a checkpoint written by ``save_checkpoint`` into existing objects.

    Read it with ``torch.load(path, weights_only=True)``; load the model's and the
    optimizer's state dicts into ``model`` and ``optimizer``; restore the global RNG
    with ``torch.set_rng_state`` and ``generator`` with ``generator.set_state``.
    Returns the saved ``step`` (an int): the index of the next update to run.
    """
    state = torch.load(path, weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    generator.set_state(state["generator"])
    return int(state["step"])


# --------------------------------------------------------------------------------------
# The model (PROVIDED): a compact nanoGPT-style GPT, a stand-in for the chapter-6 GPT
# --------------------------------------------------------------------------------------
class GPTConfig(NamedTuple):
    vocab_size: int = 65
    block_size: int = 64  # the longest context the model sees (learned positions)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    # biases in Linear and LayerNorm (GPT-2 has them; without is as good, and
    # faster)
    bias: bool = False
    norm: str = "layernorm"  # or "rmsnorm"
    # "gelu": GPT-2's tanh approximation; "gelu_exact": the erf form (nanoGPT's
    # nn.GELU(), about half the cost of the tanh form on a CPU); "relu2": relu(x)^2
    # (So et al., 2021), cheaper still
    activation: str = "gelu"


def _norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=1e-5)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        # fused q|k|v
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (
            t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            for t in (q, k, v)
        )
        # PyTorch's fused kernel: softmax(q k^T / sqrt(d)) v with the causal
        # mask built in.
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, T, C)))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)
        self.activation = config.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.activation == "relu2":
            h = torch.relu(h).square()
        elif self.activation == "gelu_exact":
            h = F.gelu(h)
        else:
            h = F.gelu(h, approximate="tanh")
        return self.drop(self.proj(h))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1, self.attn = _norm(config), CausalSelfAttention(config)
        self.ln_2, self.mlp = _norm(config), MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token + learned position embeddings, ``n_layer`` blocks, a final norm, and an
    output
    layer tied to the token embedding. ``forward(idx (B, T) int64) -> logits (B, T,
    V)``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = _norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # tied: one V x C matrix reads and writes tokens
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch adds to the stream, so shrink its
        # output layer by 1/sqrt(2 n_layer) to keep the stream's variance flat through
        # depth.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        # the tied matrix is counted once
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(
                f"sequence of length {T} > block_size {self.config.block_size}"
            )
        x = self.drop(self.wte(idx) + self.wpe(torch.arange(T, device=idx.device)))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T); returns (B, T +
        new)."""
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.config.block_size:])[:, -1, :]
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(
                    torch.softmax(logits, dim=-1), 1, generator=generator
                )
            idx = torch.cat([idx, nxt], dim=1)
        self.train(was_training)
        return idx


# --------------------------------------------------------------------------------------
# Training (PROVIDED): the loop that puts the exercises together
# --------------------------------------------------------------------------------------
class TrainConfig(NamedTuple):
    steps: int = 2000
    batch_size: int = 12
    max_lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    eval_every: int = 0  # 0: evaluate only at the end
    eval_batches: int = 20
    seed: int = 1337
    # > 0: the blocks' weight matrices are trained by Muon (``torch.optim.Muon``) at
    # this fraction of the schedule's learning rate, with ``muon_weight_decay``; the
    # optimizer passed to ``train`` keeps the embeddings, gains and biases. 0: it
    # trains everything.
    muon_lr_scale: float = 0.0
    muon_weight_decay: float = 0.0


def param_groups(model: nn.Module, weight_decay: float, exclude=()) -> list[dict]:
    """Decay the matrices (embeddings, Linear weights), not the gains and biases. The
    parameters in ``exclude`` are left out (another optimizer trains them)."""
    skip = {id(p) for p in exclude}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in skip]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def muon_matrices(model: GPT) -> list[nn.Parameter]:
    """The weight matrices inside the blocks (attention and MLP projections): the
    parameters Muon is meant for. Embeddings, the output layer and the gains are not."""
    return [p for name, p in model.named_parameters()
            if name.startswith("blocks.") and p.dim() == 2 and p.requires_grad]


class Optimizers:
    """Several optimizers stepped as one: ``param_groups`` lists all their groups (so a
    schedule sets every learning rate), and ``step``, ``zero_grad``, ``state_dict`` and
    ``load_state_dict`` go to each in turn."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, s in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)


def make_optimizer(model: GPT, cfg: TrainConfig, optimizer):
    """``optimizer`` (AdamW's signature) on every parameter, or, when
    ``cfg.muon_lr_scale`` > 0, on all but the blocks' matrices, which go to
    ``torch.optim.Muon``. Muon's step is scaled to the RMS of an AdamW step
    (``adjust_lr_fn="match_rms_adamw"``), so one schedule drives both; its groups carry
    ``lr_scale``, the fraction of the schedule's rate they take."""
    hidden = muon_matrices(model) if cfg.muon_lr_scale > 0 else []
    opt = optimizer(
        param_groups(model, cfg.weight_decay, exclude=hidden),
        lr=cfg.max_lr,
        betas=cfg.betas,
        weight_decay=cfg.weight_decay,
    )
    if not hidden:
        return opt
    muon = torch.optim.Muon(
        hidden,
        lr=cfg.max_lr * cfg.muon_lr_scale,
        weight_decay=cfg.muon_weight_decay,
        adjust_lr_fn="match_rms_adamw",
    )
    for group in muon.param_groups:
        group["lr_scale"] = cfg.muon_lr_scale
    return Optimizers(opt, muon)


@torch.no_grad()
def estimate_loss(
    model: nn.Module,
    data: torch.Tensor,
    block_size: int,
    batch_size: int,
    n_batches: int,
    seed: int = 0,
) -> float:
    """Mean cross-entropy over ``n_batches`` batches drawn with a fixed seed (the same
    batches every call, so two evaluations differ only because the model did)."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(n_batches):
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=g)
        w = data[starts[:, None] + torch.arange(block_size + 1)]
        logits = model(w[:, :-1])
        total += F.cross_entropy(
            logits.reshape(-1, logits.size(-1)), w[:, 1:].reshape(-1)
        ).item()
    model.train(was_training)
    return total / n_batches


def fast_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``cross_entropy`` through PyTorch's fused kernel: log-softmax and the pick of the
    target in one pass over the logits (equal to the exercise's loss within float32
    rounding)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def fast_clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm`` with one ``foreach`` kernel for the norms and one for the
    scaling, instead of a Python loop over the tensors (the same norm and factor)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if total > max_norm:
        torch._foreach_mul_(grads, max_norm / (total + 1e-6))
    return total


def fast_adamw(params, **kwargs) -> torch.optim.Optimizer:
    """PyTorch's AdamW with its fused CPU kernel: one pass over each parameter for the
    moments, the bias corrections, the decay and the update. The same algorithm as the
    exercise's ``AdamW`` (decoupled decay, per-parameter step counts, parameters without
    a gradient skipped); only the order of the float32 operations differs."""
    return torch.optim.AdamW(params, fused=True, **kwargs)


def reference_parts() -> dict:
    """The chapter's components for the training loop (the learner's own are passed in
    the notebook): the exercise references where they are already as fast as PyTorch
    (the batch sampler, the schedule), PyTorch's fused equivalents of the loss, AdamW
    and clipping where a Python loop over tensors would cost time at every step.
    The tests prove each one equal to its exercise reference within float32 rounding."""
    return dict(
        get_batch=get_batch,
        cross_entropy=fast_cross_entropy,
        optimizer=fast_adamw,
        lr_at=lr_at,
        clip_grad_norm=fast_clip_grad_norm,
    )


def train(
    model: GPT,
    train_data: torch.Tensor,
    val_data: torch.Tensor,
    cfg: TrainConfig,
    *,
    get_batch,
    cross_entropy,
    optimizer,
    lr_at,
    clip_grad_norm,
    on_eval=None,
    progress: bool = True,
    desc: str = "training",
) -> dict:
    """Train ``model`` for ``cfg.steps`` updates; returns the history.

    The components are passed in (the learner's own in the chapter). Every
    ``eval_every`` steps (and at the end) the train and validation losses are estimated
    on fixed batches and ``on_eval(step, model)`` is called (to draw a sample, say). The
    history holds the per-step loss, learning rate and gradient norm, the evaluations
    and the seconds spent training (evaluation excluded).
    """
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    T = model.config.block_size
    opt = make_optimizer(model, cfg, optimizer)
    hist = {
        "step": [],
        "loss": [],
        "lr": [],
        "grad_norm": [],
        "eval_step": [],
        "train_loss": [],
        "val_loss": [],
        "extra": [],
        "seconds": 0.0,
    }
    eval_at = (
        set(range(cfg.eval_every, cfg.steps, cfg.eval_every))
        if cfg.eval_every
        else set()
    )
    eval_at.add(cfg.steps)
    model.train()
    # The per-step loss and gradient norm stay 0-dim tensors until an evaluation (or the
    # end) turns them into floats in one go: no conversion to Python inside the step.
    losses, norms = [], []

    def flush() -> None:
        if losses:
            hist["loss"].extend(torch.stack(losses).tolist())
            hist["grad_norm"].extend(torch.stack(norms).tolist())
            losses.clear()
            norms.clear()

    no_clip = torch.tensor(0.0)
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, mininterval=1.0)
    t0 = time.perf_counter()
    for step in bar:
        lr = lr_at(step, cfg.max_lr, cfg.min_lr, cfg.warmup, cfg.steps)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        x, y = get_batch(train_data, T, cfg.batch_size, g)
        loss = cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = (
            clip_grad_norm(model.parameters(), cfg.grad_clip)
            if cfg.grad_clip
            else no_clip
        )
        opt.step()
        hist["step"].append(step)
        hist["lr"].append(lr)
        losses.append(loss.detach().reshape(()))
        norms.append(torch.as_tensor(norm, dtype=torch.float32).detach().reshape(()))
        if step + 1 in eval_at:
            hist["seconds"] += time.perf_counter() - t0
            flush()
            hist["eval_step"].append(step + 1)
            hist["train_loss"].append(
                estimate_loss(
                    model, train_data, T, cfg.batch_size, cfg.eval_batches, seed=1
                )
            )
            hist["val_loss"].append(
                estimate_loss(
                    model, val_data, T, cfg.batch_size, cfg.eval_batches, seed=2
                )
            )
            hist["extra"].append(on_eval(step + 1, model) if on_eval else None)
            bar.set_postfix(
                train=f"{hist['train_loss'][-1]:.3f}", val=f"{hist['val_loss'][-1]:.3f}"
            )
            t0 = time.perf_counter()
    hist["seconds"] += time.perf_counter() - t0
    flush()
    return hist


def sample_text(
    model: GPT,
    encode,
    decode,
    prompt: str = "\n",
    n: int = 200,
    temperature: float = 0.8,
    seed: int = 0,
) -> str:
    """``n`` characters sampled from ``model`` after ``prompt`` (seeded)."""
    idx = torch.tensor([encode(prompt)], dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    out = model.generate(idx, n, temperature=temperature, generator=g)
    return decode(out[0, len(prompt):].tolist())


# --------------------------------------------------------------------------------------
# The pretrained Shakespeare model (PROVIDED): what later chapters start from
# --------------------------------------------------------------------------------------
# The chapter's recipe for a budget of about 0.85 times the time of nanoGPT's CPU recipe
# (benchmarks/bench_pretraining.py runs both, back to back): a shallower model than
# nanoGPT's baby GPT (2 layers instead of 4, so each character costs about half and more
# text goes through it), relu(x)^2 in the MLP (cheaper than GELU on a CPU, as good),
# larger batches, a 10x higher peak learning rate with Adam's beta2 = 0.95, a short
# warm-up, a floor at 1/100 of the peak and a stronger weight decay; Muon for the
# blocks' matrices, at half the schedule's rate and with a weight decay of its own.
RECIPE_MODEL = dict(
    n_layer=2,
    n_head=4,
    n_embd=128,
    block_size=64,
    dropout=0.0,
    bias=False,
    activation="relu2",
)
RECIPE = TrainConfig(
    steps=1100,
    batch_size=32,
    max_lr=1e-2,
    min_lr=1e-4,
    warmup=50,
    weight_decay=0.3,
    betas=(0.9, 0.95),
    grad_clip=1.0,
    muon_lr_scale=0.5,
    muon_weight_decay=0.6,
)
PRETRAINED_NAME = "shakespeare_char"


def _models_dir() -> Path:
    """The course's ``models/`` folder: beside the ``solutions`` package Python imports
    (the
    repository, or a copy of it installed with ``pip install -e``), else in the working
    directory or above it (an nbgrader release folder)."""
    import importlib.util

    spec = importlib.util.find_spec("solutions")
    packages = (spec.submodule_search_locations or []) if spec else []
    roots = [Path(p).resolve().parent for p in packages] + [
        Path.cwd(),
        *Path.cwd().parents,
    ]
    for root in roots:
        if (root / "models" / f"{PRETRAINED_NAME}.json").exists():
            return root / "models"
    raise FileNotFoundError(
        f"models/{PRETRAINED_NAME}.json is neither beside the course's `solutions`"
        f" package nor in {Path.cwd()} or above it: install the course from its"
        " repository (pip install -e)"
    )


def save_pretrained(
    model: GPT,
    vocab: list[str],
    directory: Path,
    name: str = PRETRAINED_NAME,
    info: dict | None = None,
) -> Path:
    """Weights in float16 safetensors (the tied output matrix stored once) + config and
    vocabulary as JSON."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {
        k: v.detach().to(torch.float16).contiguous()
        for k, v in model.state_dict().items()
        if k != "lm_head.weight"
    }
    save_file(
        weights, str(directory / f"{name}.safetensors"), metadata={"format": "pt"}
    )
    meta = {"config": model.config._asdict(), "vocab": vocab, "info": info or {}}
    (directory / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return directory / f"{name}.safetensors"


def load_pretrained_shakespeare(
    directory: str | Path | None = None, name: str = PRETRAINED_NAME
):
    """The GPT pretrained on Shakespeare's complete works: ``(model, encode, decode)``.

    The model is in float32 and eval mode; ``encode(str) -> list[int]`` and
    ``decode(list[int]) -> str`` are its character tokenizer. No training happens here.
    """
    from safetensors.torch import load_file

    directory = Path(directory) if directory is not None else _models_dir()
    meta = json.loads((directory / f"{name}.json").read_text())
    model = GPT(GPTConfig(**meta["config"]))
    weights = {
        k: v.to(torch.float32)
        for k, v in load_file(str(directory / f"{name}.safetensors")).items()
    }
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(
            f"weights do not fit the config: missing {missing}, unexpected {unexpected}"
        )
    model.eval()
    encode, decode = char_codec(meta["vocab"])
    return model, encode, decode
