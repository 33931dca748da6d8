"""Realistic wrong answers for chapter 6, written as learners write them."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from solutions.ch03_embeddings import TokenAndPositionEmbedding
from solutions.ch05_block import Block, LayerNorm

from . import wrong


# -- GPT ------------------------------------------------------------------------------------
@wrong("ch06.gpt", diagnosis="no-positions")
class GPTNoPositions(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = TokenAndPositionEmbedding(config.vocab_size, config.block_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config.n_embd, config.n_head, config.eps) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, config.eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed.tok.weight

    def forward(self, idx):
        x = self.embed.tok(idx)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@wrong("ch06.gpt", diagnosis="no-final-layernorm")
class GPTNoFinalNorm(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = TokenAndPositionEmbedding(config.vocab_size, config.block_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config.n_embd, config.n_head, config.eps) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, config.eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed.tok.weight

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(x)


@wrong("ch06.gpt", diagnosis="untied")
class GPTUntied(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = TokenAndPositionEmbedding(config.vocab_size, config.block_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config.n_embd, config.n_head, config.eps) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, config.eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@wrong("ch06.gpt", diagnosis="probabilities")
class GPTSoftmax(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = TokenAndPositionEmbedding(config.vocab_size, config.block_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config.n_embd, config.n_head, config.eps) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, config.eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed.tok.weight

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return F.softmax(self.lm_head(self.ln_f(x)), dim=-1)


@wrong("ch06.gpt", diagnosis=None)
class GPTOneBlockReused(nn.Module):
    """Builds one Block and applies it n_layer times."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = TokenAndPositionEmbedding(config.vocab_size, config.block_size, config.n_embd)
        block = Block(config.n_embd, config.n_head, config.eps)
        self.blocks = nn.ModuleList([block] * config.n_layer)
        self.ln_f = LayerNorm(config.n_embd, config.eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed.tok.weight

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


# -- convert_gpt2_state_dict ----------------------------------------------------------------
@wrong("ch06.convert_gpt2", diagnosis="not-transposed")
def convert_no_transpose(hf_state_dict):
    out = {}
    for k, v in hf_state_dict.items():
        k = k.replace("transformer.wte", "embed.tok").replace("transformer.wpe", "embed.pos")
        k = k.replace("transformer.h.", "blocks.").replace("transformer.ln_f", "ln_f")
        k = k.replace("c_attn", "qkv").replace("attn.c_proj", "attn.proj").replace("c_fc", "fc")
        k = k.replace("mlp.c_proj", "mlp.proj")
        out[k] = v
    return out


@wrong("ch06.convert_gpt2", diagnosis="transposed-all")
def convert_transpose_every_matrix(hf_state_dict):
    out = {}
    for k, v in hf_state_dict.items():
        k = k.replace("transformer.wte", "embed.tok").replace("transformer.wpe", "embed.pos")
        k = k.replace("transformer.h.", "blocks.").replace("transformer.ln_f", "ln_f")
        k = k.replace("c_attn", "qkv").replace("attn.c_proj", "attn.proj").replace("c_fc", "fc")
        k = k.replace("mlp.c_proj", "mlp.proj")
        out[k] = v.t() if v.ndim == 2 else v
    return out


@wrong("ch06.convert_gpt2", diagnosis="no-lm-head")
def convert_skips_tied_head(hf_state_dict):
    out = {}
    for k, v in hf_state_dict.items():
        if k == "lm_head.weight":
            continue  # it's tied to wte anyway
        new = k.replace("transformer.wte", "embed.tok").replace("transformer.wpe", "embed.pos")
        new = new.replace("transformer.h.", "blocks.").replace("transformer.ln_f", "ln_f")
        new = new.replace("c_attn", "qkv").replace("attn.c_proj", "attn.proj").replace("c_fc", "fc")
        new = new.replace("mlp.c_proj", "mlp.proj")
        out[new] = v.t() if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else v
    return out


@wrong("ch06.convert_gpt2", diagnosis=None)
def convert_transposes_only_qkv(hf_state_dict):
    out = {}
    for k, v in hf_state_dict.items():
        new = k.replace("transformer.wte", "embed.tok").replace("transformer.wpe", "embed.pos")
        new = new.replace("transformer.h.", "blocks.").replace("transformer.ln_f", "ln_f")
        new = new.replace("c_attn", "qkv").replace("attn.c_proj", "attn.proj").replace("c_fc", "fc")
        new = new.replace("mlp.c_proj", "mlp.proj")
        # transpose what has a non-square shape mismatch... forgets the square attn.c_proj
        out[new] = v.t() if k.endswith(("c_attn.weight", "c_fc.weight", "mlp.c_proj.weight")) else v
    return out


# -- count_parameters -----------------------------------------------------------------------
@wrong("ch06.count_parameters", diagnosis="state-dict")
def count_from_state_dict(model, only_trainable=False, exclude_embeddings=False):
    total = 0
    for name, t in model.state_dict().items():
        total += t.numel()
    return total


@wrong("ch06.count_parameters", diagnosis="ignores-trainable")
def count_ignoring_frozen(model, only_trainable=False, exclude_embeddings=False):
    total = 0
    emb = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for p in model.parameters():
        if exclude_embeddings and id(p) in emb:
            continue
        total += p.numel()
    return total


@wrong("ch06.count_parameters", diagnosis="token-embedding-only")
def count_excluding_wte_only(model, only_trainable=False, exclude_embeddings=False):
    total = 0
    for name, p in model.named_parameters():
        if exclude_embeddings and ("wte" in name or "embed_tokens" in name):
            continue
        if only_trainable and not p.requires_grad:
            continue
        total += p.numel()
    return total


@wrong("ch06.count_parameters", diagnosis="lm-head-excluded")
def count_excluding_by_shape(model, only_trainable=False, exclude_embeddings=False):
    vocab = model.get_input_embeddings().weight.shape[0]
    emb = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    total = 0
    for p in model.parameters():
        if exclude_embeddings and (id(p) in emb or p.shape[0] == vocab):
            continue
        if only_trainable and not p.requires_grad:
            continue
        total += p.numel()
    return total


# -- top_k_filter ---------------------------------------------------------------------------
@wrong("ch06.top_k", diagnosis="drops-ties")
def top_k_by_index(logits, k):
    values, indices = torch.topk(logits, min(k, logits.shape[-1]), dim=-1)
    out = torch.full_like(logits, float("-inf"))
    return out.scatter(-1, indices, values)


@wrong("ch06.top_k", diagnosis="zeros-not-inf")
def top_k_zeroes(logits, k):
    kth = torch.topk(logits, min(k, logits.shape[-1])).values[:, -1:]
    out = logits.clone()
    out[out < kth] = 0
    return out


@wrong("ch06.top_k", diagnosis="sorted-output")
def top_k_sorted(logits, k):
    values, _ = torch.sort(logits, dim=-1, descending=True)
    values[:, k:] = float("-inf")
    return values


@wrong("ch06.top_k", diagnosis=None)
def top_k_off_by_one(logits, k):
    sorted_logits = torch.sort(logits, dim=-1, descending=True).values
    if k >= logits.shape[-1]:
        return logits.clone()
    threshold = sorted_logits[:, k:k + 1]  # the (k+1)-th value: keeps one token too many
    return logits.masked_fill(logits < threshold, float("-inf"))


# -- top_p_filter ---------------------------------------------------------------------------
@wrong("ch06.top_p", diagnosis="crossing-token-dropped")
def top_p_strict(logits, p):
    probs = F.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    cum = sorted_probs.cumsum(dim=-1)
    remove = cum > p
    remove[:, 0] = False
    mask = torch.zeros_like(remove).scatter(-1, order, remove)
    return logits.masked_fill(mask, float("-inf"))


@wrong("ch06.top_p", diagnosis="not-sorted")
def top_p_unsorted(logits, p):
    probs = F.softmax(logits, dim=-1)
    cum = probs.cumsum(dim=-1)
    remove = (cum - probs) >= p
    remove[:, 0] = False
    return logits.masked_fill(remove, float("-inf"))


@wrong("ch06.top_p", diagnosis="probabilities-returned")
def top_p_probs(logits, p):
    probs = F.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    remove = (sorted_probs.cumsum(-1) - sorted_probs) >= p
    out = sorted_probs.masked_fill(remove, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, out)


@wrong("ch06.top_p", diagnosis=None)
def top_p_forgets_unsort(logits, p):
    probs = F.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    remove = (sorted_probs.cumsum(-1) - sorted_probs) >= p
    return logits.masked_fill(remove, float("-inf"))  # mask still in sorted order


# -- process_logits -------------------------------------------------------------------------
def _k(x, k):
    kth = torch.topk(x, min(k, x.shape[-1])).values[:, -1:]
    return x.masked_fill(x < kth, float("-inf"))


def _p(x, p):
    probs = F.softmax(x, dim=-1)
    sp, order = probs.sort(dim=-1, descending=True)
    remove = (sp.cumsum(-1) - sp) >= p
    remove[:, 0] = False
    return x.masked_fill(torch.zeros_like(remove).scatter(-1, order, remove), float("-inf"))


@wrong("ch06.process_logits", diagnosis="temperature-last")
def process_temperature_last(logits, temperature=1.0, top_k=None, top_p=None):
    x = logits
    if top_k is not None:
        x = _k(x, top_k)
    if top_p is not None:
        x = _p(x, top_p)
    return x / temperature


@wrong("ch06.process_logits", diagnosis="multiplied")
def process_times_t(logits, temperature=1.0, top_k=None, top_p=None):
    x = logits * temperature
    if top_k is not None:
        x = _k(x, top_k)
    if top_p is not None:
        x = _p(x, top_p)
    return x


@wrong("ch06.process_logits", diagnosis="top-p-before-top-k")
def process_p_then_k(logits, temperature=1.0, top_k=None, top_p=None):
    x = logits / temperature
    if top_p is not None:
        x = _p(x, top_p)
    if top_k is not None:
        x = _k(x, top_k)
    return x


@wrong("ch06.process_logits", diagnosis=None)
def process_temperature_on_probs(logits, temperature=1.0, top_k=None, top_p=None):
    x = torch.log(F.softmax(logits, -1) ** (1 / temperature))  # log-probs, not logits: shifted
    if top_k is not None:
        x = _k(x, top_k)
    if top_p is not None:
        x = _p(x, top_p)
    return x


# -- cached_attention -----------------------------------------------------------------------
def _split(attn, x):
    B, T, d = x.shape
    q, k, v = attn.qkv(x).split(d, dim=-1)
    return [t.view(B, T, attn.n_heads, attn.d_head).transpose(1, 2) for t in (q, k, v)]


@wrong("ch06.cached_attention", diagnosis="top-left-mask")
def cached_attention_torch_causal(attn, x, cache):
    B, T, d = x.shape
    q, k, v = _split(attn, x)
    k, v = cache.update(k, v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(attn.d_head)
    mask = torch.tril(torch.ones(T, k.shape[2], dtype=torch.bool))  # like SDPA's is_causal=True
    y = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
    return attn.proj(y.transpose(1, 2).reshape(B, T, d))


@wrong("ch06.cached_attention", diagnosis="no-mask")
def cached_attention_no_mask(attn, x, cache):
    B, T, d = x.shape
    q, k, v = _split(attn, x)
    k, v = cache.update(k, v)
    y = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(attn.d_head), dim=-1) @ v
    return attn.proj(y.transpose(1, 2).reshape(B, T, d))


@wrong("ch06.cached_attention", diagnosis="cache-unused")
def cached_attention_forgets_past(attn, x, cache):
    B, T, d = x.shape
    q, k, v = _split(attn, x)
    cache.update(k, v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(attn.d_head)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.proj(y.transpose(1, 2).reshape(B, T, d))


@wrong("ch06.cached_attention", diagnosis="scale-d")
def cached_attention_scale_d(attn, x, cache):
    B, T, d = x.shape
    q, k, v = _split(attn, x)
    past = cache.length
    k, v = cache.update(k, v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)
    allowed = torch.ones(T, past + T, dtype=torch.bool).tril(diagonal=past)
    y = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    return attn.proj(y.transpose(1, 2).reshape(B, T, d))


@wrong("ch06.cached_attention", diagnosis=None)
def cached_attention_heads_mixed(attn, x, cache):
    B, T, d = x.shape
    q, k, v = attn.qkv(x).split(d, dim=-1)
    # reshape straight to (B, H, T, hd) without the transpose: mixes positions and heads
    q, k, v = (t.reshape(B, attn.n_heads, T, attn.d_head) for t in (q, k, v))
    past = cache.length
    k, v = cache.update(k, v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(attn.d_head)
    allowed = torch.ones(T, past + T, dtype=torch.bool).tril(diagonal=past)
    y = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    return attn.proj(y.transpose(1, 2).reshape(B, T, d))


# -- forward_with_cache ---------------------------------------------------------------------
def _good_cached_attention(attn, x, cache):
    B, T, d = x.shape
    q, k, v = _split(attn, x)
    past = cache.length
    k, v = cache.update(k, v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(attn.d_head)
    allowed = torch.ones(T, past + T, dtype=torch.bool).tril(diagonal=past)
    y = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    return attn.proj(y.transpose(1, 2).reshape(B, T, d))


@wrong("ch06.forward_with_cache", diagnosis="positions-from-zero")
def forward_cached_embed(model, idx, caches):
    x = model.embed(idx)  # positions restart at 0
    for block, cache in zip(model.blocks, caches):
        x = x + _good_cached_attention(block.attn, block.ln_1(x), cache)
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.ln_f(x))


@wrong("ch06.forward_with_cache", diagnosis="shared-cache")
def forward_cached_one_cache(model, idx, caches):
    past = caches[0].length
    x = model.embed.tok(idx) + model.embed.pos(torch.arange(past, past + idx.shape[1]))
    for block in model.blocks:
        x = x + _good_cached_attention(block.attn, block.ln_1(x), caches[0])
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.ln_f(x))


@wrong("ch06.forward_with_cache", diagnosis="no-final-layernorm")
def forward_cached_no_ln_f(model, idx, caches):
    past = caches[0].length
    x = model.embed.tok(idx) + model.embed.pos(torch.arange(past, past + idx.shape[1]))
    for block, cache in zip(model.blocks, caches):
        x = x + _good_cached_attention(block.attn, block.ln_1(x), cache)
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(x)


@wrong("ch06.forward_with_cache", diagnosis=None)
def forward_cached_offset_read_late(model, idx, caches):
    x = model.embed.tok(idx)
    for i, (block, cache) in enumerate(zip(model.blocks, caches)):
        if i == 0:
            h = block.ln_1(x)
        x = x + _good_cached_attention(block.attn, block.ln_1(x), cache)
        if i == 0:  # positions added after the first block has updated its cache: off by T_new
            past = caches[0].length
            x = x + model.embed.pos(torch.arange(past, past + idx.shape[1]))
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.ln_f(x))


# -- generate -------------------------------------------------------------------------------
def _sample(logits, temperature, top_k, top_p, generator):
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    x = logits / temperature
    if top_k is not None:
        x = _k(x, top_k)
    if top_p is not None:
        x = _p(x, top_p)
    return torch.multinomial(F.softmax(x, -1), 1, generator=generator)


class _Cache:
    def __init__(self):
        self.k = self.v = None
        self.length = 0

    def update(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], 2)
        self.v = v if self.v is None else torch.cat([self.v, v], 2)
        self.length = self.k.shape[2]
        return self.k, self.v


def _fwd(model, idx, caches):
    past = caches[0].length
    x = model.embed.tok(idx) + model.embed.pos(torch.arange(past, past + idx.shape[1]))
    for block, cache in zip(model.blocks, caches):
        x = x + _good_cached_attention(block.attn, block.ln_1(x), cache)
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.ln_f(x))


@wrong("ch06.generate", diagnosis="first-position")
def generate_reads_first_logits(model, idx, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
                                use_cache=True, generator=None):
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(idx)[:, 0, :]
            idx = torch.cat([idx, _sample(logits, temperature, top_k, top_p, generator)], dim=1)
    return idx


@wrong("ch06.generate", diagnosis=None)
def generate_refeeds_everything(model, idx, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
                                use_cache=True, generator=None):
    """Feeds the whole sequence into the cache at every step (positions soon run past the table)."""
    caches = [_Cache() for _ in model.blocks]
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if use_cache:
                logits = _fwd(model, idx, caches)[:, -1]
            else:
                logits = model(idx)[:, -1]
            idx = torch.cat([idx, _sample(logits, temperature, top_k, top_p, generator)], dim=1)
    return idx


@wrong("ch06.generate", diagnosis="prompt-not-cached")
def generate_last_token_only(model, idx, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
                             use_cache=True, generator=None):
    caches = [_Cache() for _ in model.blocks]
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = _fwd(model, idx[:, -1:], caches)[:, -1] if use_cache else model(idx)[:, -1]
            idx = torch.cat([idx, _sample(logits, temperature, top_k, top_p, generator)], dim=1)
    return idx


@wrong("ch06.generate", diagnosis="prompt-dropped")
def generate_returns_new(model, idx, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
                         use_cache=True, generator=None):
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = _sample(model(idx)[:, -1], temperature, top_k, top_p, generator)
            out.append(nxt)
            idx = torch.cat([idx, nxt], dim=1)
    return torch.cat(out, dim=1)


@wrong("ch06.generate", diagnosis=None)
def generate_global_rng(model, idx, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
                        use_cache=True, generator=None):
    """Right tokens when greedy, but samples ignore the generator (not reproducible)."""
    caches = [_Cache() for _ in model.blocks]
    new = idx
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = _fwd(model, new, caches)[:, -1] if use_cache else model(idx)[:, -1]
            nxt = _sample(logits, temperature, top_k, top_p, None)
            idx = torch.cat([idx, nxt], dim=1)
            new = nxt
    return idx


# -- GPTs built on faulty blocks (the block's mistakes, and its parts', named in the model) ---
def _gpt_with(block_cls):
    class GPTWithBlocks(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.embed = TokenAndPositionEmbedding(config.vocab_size, config.block_size, config.n_embd)
            self.blocks = nn.ModuleList([block_cls(config.n_embd, config.n_head, config.eps)
                                         for _ in range(config.n_layer)])
            self.ln_f = LayerNorm(config.n_embd, config.eps)
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            self.lm_head.weight = self.embed.tok.weight

        def forward(self, idx):
            x = self.embed(idx)
            for block in self.blocks:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    GPTWithBlocks.__name__ = f"GPTWith{block_cls.__name__}"
    return GPTWithBlocks


from .ch05_block import BlockBidirectional, BlockExactGelu, BlockPostNorm  # noqa: E402

wrong("ch06.gpt", diagnosis="ch05.block:post-norm")(_gpt_with(BlockPostNorm))
wrong("ch06.gpt", diagnosis="ch05.block:ch05.mlp:erf-gelu")(_gpt_with(BlockExactGelu))
wrong("ch06.gpt", diagnosis="ch05.block:not-causal")(_gpt_with(BlockBidirectional))


@wrong("ch06.generate", diagnosis="filters-ignored")
def generate_temperature_only(model, idx, max_new_tokens, temperature=0.0, top_k=None, top_p=None,
                              use_cache=True, generator=None):
    """Samples from softmax(logits / T), but never applies top_k or top_p."""
    caches = [_Cache() for _ in model.blocks]
    new = idx
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = _fwd(model, new, caches)[:, -1] if use_cache else model(idx)[:, -1]
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
            new = nxt
    return idx
