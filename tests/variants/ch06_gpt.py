"""Correct answers to chapter 6, in other styles than the reference.

The later exercises build on the learner's own earlier answers (this module's helpers and
the chapter 3 and 5 modules next to it), never on the course's solutions.
"""
import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import right
from .ch03_embeddings import TokenAndPositionEmbeddingBuffer
from .ch05_block import BlockLibraryParts, BlockSelfContained


# -- GPT ------------------------------------------------------------------------------------
@right("ch06.gpt", style="built from the learner's own chapter 3 and 5 modules, logits with F.linear on the tied weight")
class GPTOwnParts(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = TokenAndPositionEmbeddingBuffer(config.vocab_size, config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(BlockSelfContained(config.n_embd, config.n_head, config.eps)
                                    for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed.tok.weight

    def forward(self, idx):
        h = self.embed(idx)
        for blk in self.blocks:
            h = blk(h)
        return F.linear(self.ln_f(h), self.lm_head.weight)


@right("ch06.gpt", style="embeddings in an nn.ModuleDict, the embedding tied to lm_head (other direction), nn.Sequential of blocks")
class GPTModuleDict(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        d = config.n_embd
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.embed = nn.ModuleDict({"tok": nn.Embedding(config.vocab_size, d), "pos": nn.Embedding(config.block_size, d)})
        self.embed.tok.weight = self.lm_head.weight
        self.blocks = nn.Sequential(*[BlockLibraryParts(d, config.n_head, eps=config.eps) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(d, eps=config.eps)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.embed["tok"](idx) + self.embed["pos"].weight[:T]
        x = self.ln_f(self.blocks(x))
        return x @ self.lm_head.weight.T


# -- convert_gpt2_state_dict ----------------------------------------------------------------
_RULES = [(r"^transformer\.wte\.", "embed.tok."), (r"^transformer\.wpe\.", "embed.pos."),
          (r"^transformer\.ln_f\.", "ln_f."), (r"^transformer\.h\.(\d+)\.", r"blocks.\1."),
          (r"\.attn\.c_attn\.", ".attn.qkv."), (r"\.attn\.c_proj\.", ".attn.proj."),
          (r"\.mlp\.c_fc\.", ".mlp.fc."), (r"\.mlp\.c_proj\.", ".mlp.proj.")]


@right("ch06.convert_gpt2", style="re.sub rules; Conv1D weights found by pattern and transposed with permute")
def convert_gpt2_regex(hf_state_dict):
    converted = {}
    for key, value in hf_state_dict.items():
        name = key
        for pattern, repl in _RULES:
            name = re.sub(pattern, repl, name)
        if re.search(r"\.(c_attn|c_proj|c_fc)\.weight$", key):
            value = value.permute(1, 0)
        converted[name] = value.detach().clone().contiguous()
    return converted


@right("ch06.convert_gpt2", style="every target name written out, block by block")
def convert_gpt2_explicit(hf_state_dict):
    sd = hf_state_dict
    n_layer = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.h."))
    out = {"embed.tok.weight": sd["transformer.wte.weight"].clone(),
           "embed.pos.weight": sd["transformer.wpe.weight"].clone()}
    for i in range(n_layer):
        hf, ours = f"transformer.h.{i}.", f"blocks.{i}."
        for ln in ("ln_1", "ln_2"):
            out[ours + ln + ".weight"] = sd[hf + ln + ".weight"].clone()
            out[ours + ln + ".bias"] = sd[hf + ln + ".bias"].clone()
        for theirs, mine in (("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.proj"),
                             ("mlp.c_fc", "mlp.fc"), ("mlp.c_proj", "mlp.proj")):
            out[f"{ours}{mine}.weight"] = sd[f"{hf}{theirs}.weight"].T.clone()
            out[f"{ours}{mine}.bias"] = sd[f"{hf}{theirs}.bias"].clone()
    out["ln_f.weight"] = sd["transformer.ln_f.weight"].clone()
    out["ln_f.bias"] = sd["transformer.ln_f.bias"].clone()
    out["lm_head.weight"] = sd["lm_head.weight"].clone()
    return out


# -- count_parameters -----------------------------------------------------------------------
@right("ch06.count_parameters", style="named_parameters(remove_duplicate=False) with a set of ids seen")
def count_parameters_seen(model, only_trainable=False, exclude_embeddings=False):
    excluded = set()
    if exclude_embeddings:
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                excluded.add(id(module.weight))
    seen, n = set(), 0
    for _, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        if id(p) in excluded:
            continue
        if only_trainable and not p.requires_grad:
            continue
        n += p.numel()
    return n


@right("ch06.count_parameters", style="walk the modules' own parameters, dict keyed by id, sum at the end")
def count_parameters_walk(model, only_trainable=False, exclude_embeddings=False):
    unique = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            unique[id(p)] = p
    if exclude_embeddings:
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                unique.pop(id(module.weight), None)
    return int(sum(p.numel() for p in unique.values() if p.requires_grad or not only_trainable))


# -- top_k_filter ---------------------------------------------------------------------------
@right("ch06.top_k", style="sort descending, threshold at the k-th value, torch.where")
def top_k_sorted(logits, k):
    k = min(k, logits.size(-1))
    threshold = logits.sort(dim=-1, descending=True).values[:, k - 1:k]
    return torch.where(logits >= threshold, logits, torch.full_like(logits, -math.inf))


@right("ch06.top_k", style="kthvalue from the bottom, row by row")
def top_k_kthvalue(logits, k):
    out = logits.clone()
    V = logits.shape[-1]
    if k >= V:
        return out
    for b in range(logits.shape[0]):
        kth_largest = torch.kthvalue(logits[b], V - k + 1).values
        out[b][logits[b] < kth_largest] = float("-inf")
    return out


# -- top_p_filter ---------------------------------------------------------------------------
@right("ch06.top_p", style="ascending sort: drop the tail whose total mass is at most 1 - p")
def top_p_ascending(logits, p):
    sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= 1 - p
    drop[:, -1] = False  # the most likely token stays
    mask = torch.zeros_like(drop).scatter(1, order, drop)
    return logits.masked_fill(mask, -float("inf"))


@right("ch06.top_p", style="Python loop per row: add tokens until the mass reaches p")
def top_p_loop(logits, p):
    out = torch.full_like(logits, float("-inf"))
    probs = torch.softmax(logits.double(), dim=-1)
    for b in range(logits.shape[0]):
        ranked = sorted(range(logits.shape[1]), key=lambda j: -probs[b, j].item())
        mass = 0.0
        for j in ranked:
            out[b, j] = logits[b, j]
            mass += probs[b, j].item()
            if mass >= p:
                break
    return out


# -- process_logits -------------------------------------------------------------------------
def _my_top_k(x, k):
    k = min(k, x.shape[-1])
    kth = x.sort(-1, descending=True).values[..., k - 1].unsqueeze(-1)
    return x.masked_fill(x < kth, float("-inf"))


def _my_top_p(x, p):
    probs = x.softmax(-1)
    sp, idx = probs.sort(-1, descending=True)
    keep_sorted = (sp.cumsum(-1) - sp) < p
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, idx, keep_sorted)
    return torch.where(keep, x, torch.tensor(float("-inf")))


@right("ch06.process_logits", style="a pipeline of optional steps in a list")
def process_logits_pipeline(logits, temperature=1.0, top_k=None, top_p=None):
    steps = [lambda x: x / temperature]
    if top_k is not None:
        steps.append(lambda x: _my_top_k(x, top_k))
    if top_p is not None and top_p < 1.0:
        steps.append(lambda x: _my_top_p(x, top_p))
    out = logits
    for step in steps:
        out = step(out)
    return out


@right("ch06.process_logits", style="one boolean keep-mask built in place, -inf written once at the end")
def process_logits_one_mask(logits, temperature=1.0, top_k=None, top_p=None):
    scores = logits.div(temperature)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        keep &= scores >= kth
    if top_p is not None and top_p < 1.0:
        masked = scores.masked_fill(~keep, float("-inf"))
        probs = masked.softmax(-1)
        order = probs.argsort(dim=-1, descending=True)
        ranked = probs.gather(-1, order)
        needed = (ranked.cumsum(-1) - ranked) < top_p
        needed[:, 0] = True
        nucleus = torch.empty_like(needed)
        nucleus.scatter_(-1, order, needed)
        keep &= nucleus
    return scores.masked_fill(~keep, float("-inf"))


# -- cached_attention -----------------------------------------------------------------------
def _split_heads(t, n_heads):
    B, T, d = t.shape
    return t.reshape(B, T, n_heads, d // n_heads).permute(0, 2, 1, 3)


@right("ch06.cached_attention", style="einsum, mask from absolute positions (past read before the update)")
def cached_attention_positions(attn, x, cache):
    past = cache.length
    B, T, d = x.shape
    q, k, v = (_split_heads(t, attn.n_heads) for t in attn.qkv(x).chunk(3, dim=-1))
    keys, values = cache.update(k, v)
    q_pos = torch.arange(past, past + T)
    k_pos = torch.arange(keys.shape[2])
    scores = torch.einsum("bhqe,bhke->bhqk", q, keys) / math.sqrt(attn.d_head)
    scores = scores.masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
    y = torch.einsum("bhqk,bhke->bhqe", scores.softmax(-1), values)
    return attn.proj(y.permute(0, 2, 1, 3).reshape(B, T, d))


@right("ch06.cached_attention", style="head by head, additive -1e9 mask")
def cached_attention_per_head(attn, x, cache):
    B, T, d = x.shape
    H, dh = attn.n_heads, attn.d_head
    q, k, v = attn.qkv(x).split(d, dim=2)
    k_all, v_all = cache.update(k.view(B, T, H, dh).transpose(1, 2), v.view(B, T, H, dh).transpose(1, 2))
    S = k_all.shape[2]
    bias = torch.zeros(T, S, dtype=x.dtype)
    bias[torch.ones(T, S, dtype=torch.bool).triu(S - T + 1)] = -1e9
    heads = []
    for h in range(H):
        qh = q[..., h * dh:(h + 1) * dh]  # (B, T, dh)
        w = torch.softmax(qh @ k_all[:, h].transpose(1, 2) / dh ** 0.5 + bias, dim=-1)
        heads.append(w @ v_all[:, h])
    return attn.proj(torch.cat(heads, dim=-1))


# -- forward_with_cache ---------------------------------------------------------------------
@right("ch06.forward_with_cache", style="position rows sliced from the table, caches indexed by block number")
def forward_with_cache_slices(model, idx, caches):
    start = caches[0].length
    T = idx.shape[1]
    x = model.embed.tok(idx) + model.embed.pos.weight[start:start + T]
    for i, block in enumerate(model.blocks):
        x = x + cached_attention_positions(block.attn, block.ln_1(x), caches[i])
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.ln_f(x))


@right("ch06.forward_with_cache", style="position ids expanded over the batch, the learner's per-head cached attention")
def forward_with_cache_expanded(model, idx, caches):
    B, T = idx.shape
    offset = caches[0].length
    pos = torch.arange(T).add(offset).unsqueeze(0).expand(B, T)
    h = model.embed.tok(idx) + model.embed.pos(pos)
    for block, cache in zip(model.blocks, caches):
        a = cached_attention_per_head(block.attn, block.ln_1(h), cache)
        h = h + a
        h = h + block.mlp(block.ln_2(h))
    h = model.ln_f(h)
    return h @ model.lm_head.weight.t()


# -- generate -------------------------------------------------------------------------------
class _GrowingCache:
    """The learner's KV cache: concatenates along the time axis."""

    def __init__(self):
        self.keys = self.values = None

    @property
    def length(self):
        return 0 if self.keys is None else self.keys.shape[2]

    def update(self, k, v):
        if self.keys is None:
            self.keys, self.values = k, v
        else:
            self.keys = torch.cat((self.keys, k), dim=2)
            self.values = torch.cat((self.values, v), dim=2)
        return self.keys, self.values


@right("ch06.generate", style="while loop, the learner's own cache class and process_logits")
def generate_while(model, idx, max_new_tokens, temperature=0.0, top_k=None, top_p=None, use_cache=True,
                   generator=None):
    if use_cache and idx.shape[1] + max_new_tokens > model.config.block_size:
        raise ValueError("too long for the cache")
    out = idx.clone()
    caches = [_GrowingCache() for _ in model.blocks]
    feed = out
    with torch.no_grad():
        while out.shape[1] < idx.shape[1] + max_new_tokens:
            if use_cache:
                last = forward_with_cache_slices(model, feed, caches)[:, -1, :]
            else:
                last = model(out[:, -model.config.block_size:])[:, -1, :]
            if temperature == 0:
                nxt = torch.max(last, dim=-1).indices.unsqueeze(1)
            else:
                probs = F.softmax(process_logits_pipeline(last, temperature, top_k, top_p), dim=-1)
                nxt = torch.multinomial(probs, num_samples=1, generator=generator)
            out = torch.cat((out, nxt), dim=1)
            feed = nxt
    return out


@torch.no_grad()
def _next_logits(model, tokens, caches):
    if caches is None:
        return model(tokens[:, -model.config.block_size:])[:, -1]
    return forward_with_cache_expanded(model, tokens, caches)[:, -1]


@right("ch06.generate", style="preallocated output tensor filled column by column")
def generate_prealloc(model, idx, max_new_tokens, temperature=0.0, top_k=None, top_p=None, use_cache=True,
                      generator=None):
    B, T = idx.shape
    out = torch.empty(B, T + max_new_tokens, dtype=idx.dtype)
    out[:, :T] = idx
    caches = [_GrowingCache() for _ in range(len(model.blocks))] if use_cache else None
    for step in range(max_new_tokens):
        end = T + step
        if caches is None:
            logits = _next_logits(model, out[:, :end], None)
        elif step == 0:
            logits = _next_logits(model, out[:, :end], caches)  # the prefill
        else:
            logits = _next_logits(model, out[:, end - 1:end], caches)
        if temperature == 0:
            out[:, end] = logits.argmax(-1)
        else:
            scores = process_logits_one_mask(logits, temperature, top_k, top_p)
            out[:, end] = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
    return out
