"""Chapter 6 - GPT, generation and the KV cache.

Reference solutions. A GPT is chapter 3's embeddings, a stack of chapter 5's blocks, a
final LayerNorm and an output layer tied to the token embedding. It loads GPT-2's
weights, counts its parameters, decodes greedily or by sampling (temperature, top-k,
top-p), and decodes fast with a cache of past keys and values.
"""
import math
import time
from typing import NamedTuple

import torch
import torch.nn as nn

from solutions.ch03_embeddings import TokenAndPositionEmbedding
from solutions.ch04_attention import scaled_dot_product_attention
from solutions.ch05_block import Block, LayerNorm


# --------------------------------------------------------------------------------------
# Provided: the configuration
# --------------------------------------------------------------------------------------
class GPTConfig(NamedTuple):
    """The shape of a GPT (an immutable record). GPT-2 small is GPTConfig(50257, 1024,
    12, 12, 768)."""

    vocab_size: int = 50257
    # the longest sequence the model can read (number of positions)
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    eps: float = 1e-5  # the LayerNorms' epsilon


# --------------------------------------------------------------------------------------
# Exercises: the model
# --------------------------------------------------------------------------------------
class GPT(nn.Module):
    """GPT-2: embeddings, n_layer pre-norm blocks, a final LayerNorm, tied output
    layer."""

    def __init__(self, config: GPTConfig):
        """Keep ``self.config`` and create, with exactly these names:
            embed:   TokenAndPositionEmbedding(vocab_size, block_size, n_embd) (chapter
            3,
                     with ``embed.tok`` and ``embed.pos``)
            blocks:  nn.ModuleList of n_layer Block(n_embd, n_head, eps) (chapter 5)
            ln_f:    LayerNorm(n_embd, eps)
            lm_head: nn.Linear(n_embd, vocab_size, bias=False) whose weight IS the token
                     embedding's weight (one shared Parameter: tied weights)
        """
        super().__init__()
        self.config = config
        self.embed = TokenAndPositionEmbedding(
            config.vocab_size, config.block_size, config.n_embd
        )
        self.blocks = nn.ModuleList([
            Block(config.n_embd, config.n_head, config.eps)
            for _ in range(config.n_layer)
        ])
        self.ln_f = LayerNorm(config.n_embd, config.eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # tied: one (V, d) matrix reads tokens in and out
        self.lm_head.weight = self.embed.tok.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: (B, T) int64 token ids, T <= block_size -> logits (B, T, vocab_size).

        Logits, not probabilities: position t's row scores every candidate for token t +
        1.
        """
        x = self.embed(idx)  # (B, T, d)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, V)


def convert_gpt2_state_dict(
    hf_state_dict: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Rename (and reshape) a Hugging Face ``GPT2LMHeadModel`` state dict for our GPT.

    Hugging Face names -> ours (i = block index):
        transformer.wte.weight                 -> embed.tok.weight
        transformer.wpe.weight                 -> embed.pos.weight
        transformer.h.i.ln_1.{weight,bias}     -> blocks.i.ln_1.{weight,bias}  (ln_2 the
        same)
        transformer.h.i.attn.c_attn.{w,b}      -> blocks.i.attn.qkv.{weight,bias}
        transformer.h.i.attn.c_proj.{w,b}      -> blocks.i.attn.proj.{weight,bias}
        transformer.h.i.mlp.c_fc.{w,b}         -> blocks.i.mlp.fc.{weight,bias}
        transformer.h.i.mlp.c_proj.{w,b}       -> blocks.i.mlp.proj.{weight,bias}
        transformer.ln_f.{weight,bias}         -> ln_f.{weight,bias}
        lm_head.weight                         -> lm_head.weight
    GPT-2's c_attn, c_proj and c_fc are ``Conv1D`` layers that store their weight as
    [in, out]; our nn.Linear stores [out, in], so those four weights are transposed.
    Returns a new dict; the input is left untouched.
    """
    conv1d = (
        "attn.c_attn.weight",
        "attn.c_proj.weight",
        "mlp.c_fc.weight",
        "mlp.c_proj.weight",
    )
    renames = [
        ("transformer.wte.", "embed.tok."),
        ("transformer.wpe.", "embed.pos."),
        ("transformer.h.", "blocks."),
        ("transformer.ln_f.", "ln_f."),
        ("attn.c_attn.", "attn.qkv."),
        ("attn.c_proj.", "attn.proj."),
        ("mlp.c_fc.", "mlp.fc."),
        ("mlp.c_proj.", "mlp.proj."),
    ]
    out = {}
    for name, tensor in hf_state_dict.items():
        new = name
        for old, ours in renames:
            new = new.replace(old, ours)
        out[new] = tensor.t().contiguous() if name.endswith(conv1d) else tensor.clone()
    return out


def count_parameters(
    model: nn.Module, only_trainable: bool = False, exclude_embeddings: bool = False
) -> int:
    """Number of parameters of ``model``, counting a shared (tied) parameter once.

    only_trainable: count only parameters with requires_grad=True.
    exclude_embeddings: leave out the weights of every nn.Embedding module (token and
        position tables), as Hugging Face's ``num_parameters(exclude_embeddings=True)``
        does.
    """
    skip = set()
    if exclude_embeddings:
        skip = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    total = 0
    for p in model.parameters():  # parameters() yields a shared parameter only once
        if id(p) in skip or (only_trainable and not p.requires_grad):
            continue
        total += p.numel()
    return total


# --------------------------------------------------------------------------------------
# Exercises: choosing the next token
# --------------------------------------------------------------------------------------
def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row; set the others to -inf.

    logits: (B, V) float; k >= 1 (k > V keeps everything). A logit equal to the k-th
    largest is kept too, so ties at the boundary may keep more than k tokens.
    Returns a new (B, V) tensor.
    """
    k = min(k, logits.shape[-1])
    # (B, 1): the k-th largest value
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probability
    (softmax of the row) adds up to at least p; set the others to -inf.

    logits: (B, V) float; 0 < p <= 1. The most likely token is always kept.
    Returns a new (B, V) tensor.
    """
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    # Probability mass strictly before each token in the sorted order: a token is needed
    # while the tokens ahead of it have not reached p yet.
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def process_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """The scores a sampler draws from: divide by the temperature, then top-k, then
    top-p.

    logits: (B, V); temperature > 0; top_k None (off) or >= 1; top_p None (off) or in
    (0, 1].
    The order matters: top-p is computed on the probabilities AFTER the temperature.
    Returns (B, V) with -inf at filtered tokens.
    """
    scores = logits / temperature
    if top_k is not None:
        scores = top_k_filter(scores, top_k)
    if top_p is not None and top_p < 1.0:
        scores = top_p_filter(scores, top_p)
    return scores


# --------------------------------------------------------------------------------------
# Provided: a cache of keys and values for one attention layer
# --------------------------------------------------------------------------------------
class KVCache:
    """The keys and values of every token seen so far, for ONE attention layer.

    ``length`` is the number of cached positions. ``update(k, v)`` appends the keys and
    values of new positions, each (B, n_heads, T_new, d_head), and returns all of them
    so far, (B, n_heads, length, d_head). Storage grows by doubling, so appending one
    position costs O(1) on average instead of copying the whole cache every step.
    """

    def __init__(self):
        self.k = self.v = None
        self.length = 0

    def update(
        self, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, H, T_new, D = k.shape
        end = self.length + T_new
        if self.k is None or end > self.k.shape[2]:
            capacity = max(end, 2 * (self.k.shape[2] if self.k is not None else 16))
            grown_k = k.new_empty(B, H, capacity, D)
            grown_v = v.new_empty(B, H, capacity, D)
            if self.k is not None:
                grown_k[:, :, : self.length] = self.k[:, :, : self.length]
                grown_v[:, :, : self.length] = self.v[:, :, : self.length]
            self.k, self.v = grown_k, grown_v
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


# --------------------------------------------------------------------------------------
# Exercises: decoding with a cache
# --------------------------------------------------------------------------------------
def cached_attention(attn: nn.Module, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Causal self-attention for the NEW positions x, reading the cached past.

    attn: a chapter-4 MultiHeadAttention (its ``qkv``, ``proj``, ``n_heads``,
    ``d_head``).
    x: (B, T_new, d), the normalised stream at the positions that follow the
       ``cache.length`` positions already in the cache.
    cache: a KVCache; append this call's keys and values to it with ``cache.update``.
    Returns (B, T_new, d): the same rows that ``attn`` would give for these positions if
    run on the whole sequence. New position i (absolute position cache.length + i)
    attends
    to every cached position and to new positions 0..i.
    """
    B, T, d = x.shape
    q, k, v = attn.qkv(x).split(d, dim=-1)
    # (B, H, T, hd)
    q, k, v = (
        t.view(B, T, attn.n_heads, attn.d_head).transpose(1, 2) for t in (q, k, v)
    )
    k, v = cache.update(k, v)  # (B, H, past + T, hd)
    # Chapter 4's causal mask is aligned bottom-right: the T queries are the LAST T of
    # the past + T keys. (PyTorch's SDPA with is_causal=True aligns top-left:
    # wrong here.)
    y = scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
    return attn.proj(y.transpose(1, 2).reshape(B, T, d))


def forward_with_cache(
    model: nn.Module, idx: torch.Tensor, caches: list[KVCache]
) -> torch.Tensor:
    """Run ``model`` (a GPT) on the NEW tokens idx, reading and extending the caches.

    idx: (B, T_new) ids of the positions that follow the caches[0].length cached ones.
    caches: one KVCache per block, in order (all of the same length).
    Returns logits (B, T_new, vocab_size), equal to the last T_new rows of
    ``model(full_sequence)``.
    """
    past = caches[0].length
    positions = torch.arange(past, past + idx.shape[1], device=idx.device)
    x = model.embed.tok(idx) + model.embed.pos(positions)  # (B, T_new, d)
    for block, cache in zip(model.blocks, caches):
        x = x + cached_attention(block.attn, block.ln_1(x), cache)
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.ln_f(x))


def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Append ``max_new_tokens`` tokens to each prompt in idx, one at a time.

    model: a GPT (``model(idx)`` gives logits; ``model.blocks``;
    ``model.config.block_size``). idx: (B, T) int64 prompts. temperature == 0 means
    greedy (argmax of the last position's logits); otherwise sample from
    softmax(process_logits(...)) with ``torch.multinomial(..., generator=generator)``.
    use_cache=False: run the model on the whole sequence (its last block_size tokens) at
    every step. use_cache=True: one forward_with_cache on the prompt (the "prefill"),
    then one per new token, feeding only that token; prompt + new tokens must fit in
    block_size.
    Returns (B, T + max_new_tokens).
    """
    if use_cache and idx.shape[1] + max_new_tokens > model.config.block_size:
        raise ValueError(
            "prompt + new tokens exceed block_size: decode without the cache (or a"
            " sliding window)"
        )
    caches = [KVCache() for _ in model.blocks] if use_cache else None
    new = idx  # the tokens the model has not read yet: the whole prompt first
    with torch.no_grad():  # inference: no graph to keep for a backward pass
        for _ in range(max_new_tokens):
            if use_cache:
                logits = forward_with_cache(model, new, caches)[:, -1]  # (B, V)
            else:
                logits = model(idx[:, -model.config.block_size:])[:, -1]
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                probs = torch.softmax(
                    process_logits(logits, temperature, top_k, top_p), dim=-1
                )
                next_id = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat([idx, next_id], dim=1)
            new = next_id
    return idx


# --------------------------------------------------------------------------------------
# Provided: initialisation, training and timing for the chapter's experiments
# --------------------------------------------------------------------------------------
def init_gpt2_weights(model: nn.Module) -> nn.Module:
    """GPT-2's initialisation, in place: N(0, 0.02) weights, zero biases, unit
    LayerNorms,
    and the projections that write into the residual stream scaled by 1/sqrt(2
    n_layer)."""
    n_layer = len(model.blocks)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(p)
        elif ".ln_" in name or name.startswith("ln_f"):
            nn.init.ones_(p)
        elif name.endswith(("attn.proj.weight", "mlp.proj.weight")):
            nn.init.normal_(p, std=0.02 / math.sqrt(2 * n_layer))
        else:
            nn.init.normal_(p, std=0.02)
    return model


def train_char_gpt(
    model: nn.Module,
    ids: torch.Tensor,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    time_budget_s: float | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` on random windows of ``ids`` (1-D int64) with AdamW; return the
    losses.

    A minimal loop (chapter 7 builds a proper one): windows of block_size + 1 tokens,
    next-token cross-entropy, AdamW with a short linear warm-up and cosine decay over
    ``steps``.
    Stops early once ``time_budget_s`` seconds have passed (the schedule is not
    stretched).
    """
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    T = model.config.block_size
    opt = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1
    )
    warmup = max(1, min(30, steps // 20))
    schedule = (
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    losses = []
    model.train()
    t0 = time.perf_counter()
    for _ in tqdm(range(steps), desc="training", disable=not progress):
        if time_budget_s is not None and time.perf_counter() - t0 > time_budget_s:
            break
        starts = torch.randint(0, len(ids) - T - 1, (batch_size,), generator=g)
        window = torch.stack([ids[s:s + T + 1] for s in starts.tolist()])
        logits = model(window[:, :-1])
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def tokens_per_second(
    generate_fn,
    model: nn.Module,
    prompt: torch.Tensor,
    n_new: int,
    use_cache: bool,
    repeats: int = 1,
) -> float:
    """New tokens per second of ``generate_fn(model, prompt, n_new, use_cache=...)``
    (greedy), best of repeats."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t0 = time.perf_counter()
            generate_fn(model, prompt, n_new, use_cache=use_cache)
            best = min(best, time.perf_counter() - t0)
    return n_new / best
