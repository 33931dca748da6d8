"""Chapter 6 - what the checks need to run and judge a learner's code (public).

A GPT travels as data: its config (a dict with the fields of the chapter's GPTConfig) and
a state dict under the chapter's names (``our_names``). ``build_gpt`` turns them into the
model the learner's later exercises receive: a container with the documented attribute
names (``embed.tok``, ``embed.pos``, ``blocks[i].ln_1 / attn / ln_2 / mlp``, ``ln_f``,
``lm_head`` tied to ``embed.tok``), whose modules compute with PyTorch's own functions
(``nn.LayerNorm``, tanh GELU, ``F.multi_head_attention_forward``). A Hugging Face GPT-2
used to judge an answer travels as its shape and its state dict (``gpt2_model``).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core import compare_tensors
from .ch05_block import one_thread


# ----------------------------------------------------------------------------------------
# The model the learner's code receives
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class GraderConfig:
    """The same fields as the chapter's GPTConfig."""

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    eps: float = 1e-5


class ContractError(Exception):
    """The learner's model does not have the structure the docstring names."""


def our_names(n_layer: int) -> list[str]:
    """The parameter names of the chapter's GPT, in order."""
    names = ["embed.tok.weight", "embed.pos.weight"]
    for i in range(n_layer):
        for part in ("ln_1", "attn.qkv", "attn.proj", "ln_2", "mlp.fc", "mlp.proj"):
            names += [f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"]
    return names + ["ln_f.weight", "ln_f.bias", "lm_head.weight"]


def load_ours(model, state: dict[str, torch.Tensor]):
    """Copy ``state`` into ``model``'s parameters by name, after checking names and shapes."""
    if not isinstance(model, nn.Module):
        raise ContractError(f"expected an nn.Module, got {type(model).__name__} (subclass nn.Module and call "
                            "super().__init__() first)")
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = [k for k in state if k not in params]
    if missing:
        have = ", ".join(list(params)[:6]) + (", ..." if len(params) > 6 else "") or "none"
        raise ContractError(f"your model has no parameter named {missing[0]!r} ({len(missing)} of the "
                            f"{len(state)} expected names are missing; yours start: {have}); use the names of "
                            "the docstring (embed, blocks, ln_f, lm_head)")
    for k, v in state.items():
        if tuple(params[k].shape) != tuple(v.shape):
            raise ContractError(f"parameter {k!r} has shape {tuple(params[k].shape)}, expected {tuple(v.shape)}")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)
    return model


class TokenAndPositionEmbedding(nn.Module):
    """Chapter 3's input layer: ``tok`` and ``pos`` (nn.Embedding)."""

    def __init__(self, vocab_size, n_positions, d_model):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(n_positions, d_model)

    def forward(self, ids):
        return self.tok(ids) + self.pos(torch.arange(ids.shape[-1], device=ids.device))


class MultiHeadAttention(nn.Module):
    """Chapter 4's attention: ``n_heads``, ``d_head``, ``causal``, ``qkv`` (d -> [q | k | v])
    and ``proj``; its forward is PyTorch's ``multi_head_attention_forward``."""

    def __init__(self, d_model, n_heads, bias=True, causal=True):
        super().__init__()
        self.n_heads, self.d_head, self.causal = n_heads, d_model // n_heads, causal
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x, key_padding_mask=None):
        T, d = x.shape[-2], x.shape[-1]
        blocked = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1) if self.causal else None
        ignored = None if key_padding_mask is None else ~key_padding_mask
        xt = x.transpose(0, 1) if x.dim() == 3 else x  # (T, B, d): the library's layout
        y, _ = F.multi_head_attention_forward(
            xt, xt, xt, d, self.n_heads, self.qkv.weight, self.qkv.bias, None, None, False, 0.0,
            self.proj.weight, self.proj.bias, training=False, key_padding_mask=ignored, need_weights=False,
            attn_mask=blocked)
        return y.transpose(0, 1) if x.dim() == 3 else y


class MLP(nn.Module):
    """Chapter 5's MLP: ``fc``, tanh GELU, ``proj``."""

    def __init__(self, d_model, d_hidden):
        super().__init__()
        self.fc = nn.Linear(d_model, d_hidden)
        self.proj = nn.Linear(d_hidden, d_model)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    """Chapter 5's pre-norm block: ``ln_1``, ``attn``, ``ln_2``, ``mlp``."""

    def __init__(self, d_model, n_heads, eps=1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model, eps=eps)
        self.attn = MultiHeadAttention(d_model, n_heads)
        self.ln_2 = nn.LayerNorm(d_model, eps=eps)
        self.mlp = MLP(d_model, 4 * d_model)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GraderGPT(nn.Module):
    """A container with the documented names: embed (tok, pos), blocks, ln_f, lm_head (tied)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed = TokenAndPositionEmbedding(config.vocab_size, config.block_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config.n_embd, config.n_head, config.eps) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.embed.tok.weight

    def forward(self, idx):
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def build_gpt(config: dict, state: dict) -> GraderGPT:
    """The GPT a case describes (its config and its weights under our names), in eval mode."""
    return load_ours(GraderGPT(GraderConfig(**config)), state).eval()


class GraderCache:
    """Behaves like the chapter's KVCache: ``length`` and ``update(k, v)``."""

    def __init__(self):
        self.k = self.v = None
        self.length = 0

    def update(self, k, v):
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        self.length = self.k.shape[2]
        return self.k, self.v


def chunks(sizes) -> list[tuple[int, int]]:
    """[5, 1, 1] -> [(0, 5), (5, 6), (6, 7)]."""
    out, start = [], 0
    for n in sizes:
        out.append((start, start + n))
        start += n
    return out


def gpt2_config(V, P, d, L, H, **kw):
    """The Hugging Face GPT2Config of the chapter's tiny models (eager attention, no dropout)."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=V, n_positions=P, n_embd=d, n_layer=L, n_head=H, bos_token_id=None,
                      eos_token_id=None, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      attn_implementation="eager", initializer_range=0.3, **kw)


def gpt2_model(data: dict):
    """``{"gpt2": [V, P, d, L, H], "state": its state dict}`` -> a GPT2LMHeadModel in eval mode."""
    from transformers import GPT2LMHeadModel

    with torch.random.fork_rng():  # leave the learner's global RNG alone
        model = GPT2LMHeadModel(gpt2_config(*data["gpt2"]))
    model.load_state_dict(data["state"])
    return model.eval()


# ----------------------------------------------------------------------------------------
# GPT
# ----------------------------------------------------------------------------------------
@one_thread
def gpt_run(cls, config, state, idx):
    """Build the learner's GPT from the config, load the weights by name, return its logits."""
    model = cls(GraderConfig(**config))
    load_ours(model, state)
    model.eval()
    with torch.no_grad():
        return model(idx)


@one_thread
def gpt_tied_run(cls, config):
    """Whether the learner's GPT ties lm_head to the token embedding (one Parameter)."""
    model = cls(GraderConfig(**config))
    if not isinstance(model, nn.Module):
        raise ContractError(f"expected an nn.Module, got {type(model).__name__}")
    return model.lm_head.weight is model.embed.tok.weight


# ----------------------------------------------------------------------------------------
# convert_gpt2_state_dict
# ----------------------------------------------------------------------------------------
def _conv1d(x, weight, bias):
    """What GPT-2's Conv1D computes: x @ weight + bias, its weight stored [in, out]."""
    return torch.addmm(bias, x.view(-1, x.size(-1)), weight).view(*x.shape[:-1], weight.shape[1])


def compare_converted(expected, got):
    """``expected`` is ``("GPT2LMHeadModel", its state dict)``: every converted nn.Linear must
    compute what GPT-2's Conv1D computes, every other tensor must be copied as it is. (When
    diagnosing, ``expected`` is what a typical mistake returns: a dict under our names.)"""
    if not isinstance(got, dict):
        return f"expected a dict from names to tensors, got {type(got).__name__}"
    if isinstance(expected, dict):  # diagnosing: the output of a typical mistake
        if set(expected) != set(got):
            return "different names"
        for k in expected:
            if compare_tensors(expected[k], got[k], atol=0, rtol=0):
                return f"{k} differs"
        return None
    _, hf = expected
    n_layer = sum(1 for k in hf if k.startswith("transformer.h.") and k.endswith(".ln_1.weight"))
    want = our_names(n_layer)
    missing = [k for k in want if k not in got]
    if missing:
        sample = ", ".join(repr(k) for k in list(got)[:3])
        return (f"{len(missing)} of the {len(want)} names are missing, e.g. {missing[0]!r} (your names start "
                f"with {sample})")
    extra = [k for k in got if k not in want]
    if extra:
        return f"{len(extra)} unexpected names, e.g. {extra[0]!r}"
    for k in want:
        if not isinstance(got[k], torch.Tensor):
            return f"{k}: expected a tensor, got {type(got[k]).__name__}"
    g = torch.Generator().manual_seed(0)
    for i in range(n_layer):
        h = f"transformer.h.{i}."
        for ours, conv in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"),
                           ("mlp.proj", "mlp.c_proj")):
            w, b = got[f"blocks.{i}.{ours}.weight"], got[f"blocks.{i}.{ours}.bias"]
            conv_w, conv_b = hf[h + conv + ".weight"], hf[h + conv + ".bias"]
            d_in, d_out = conv_w.shape  # Conv1D: [in, out]
            if tuple(w.shape) != (d_out, d_in):
                return (f"blocks.{i}.{ours}.weight has shape {tuple(w.shape)}; an nn.Linear({d_in}, {d_out}) weight is "
                        f"[out, in] = {(d_out, d_in)}")
            x = torch.randn(3, d_in, generator=g)
            with torch.no_grad():
                problem = compare_tensors(_conv1d(x, conv_w, conv_b), F.linear(x, w.to(x.dtype), b.to(x.dtype)),
                                          atol=1e-5, rtol=1e-5)
            if problem:
                return f"nn.Linear with your blocks.{i}.{ours} weights does not compute what GPT-2's Conv1D does: {problem}"
        for ln in ("ln_1", "ln_2"):
            for p in ("weight", "bias"):
                problem = compare_tensors(hf[f"{h}{ln}.{p}"], got[f"blocks.{i}.{ln}.{p}"], atol=0, rtol=0)
                if problem:
                    return f"blocks.{i}.{ln}.{p}: {problem}"
    for k, ref in (("embed.tok.weight", "transformer.wte.weight"), ("embed.pos.weight", "transformer.wpe.weight"),
                   ("ln_f.weight", "transformer.ln_f.weight"), ("ln_f.bias", "transformer.ln_f.bias"),
                   ("lm_head.weight", "lm_head.weight")):
        problem = compare_tensors(hf[ref], got[k], atol=0, rtol=0)
        if problem:
            return f"{k}: {problem}"
    return None


# ----------------------------------------------------------------------------------------
# count_parameters
# ----------------------------------------------------------------------------------------
COUNT_MODELS = {
    "gpt2-tied": ("gpt2", {}),
    "gpt2-untied": ("gpt2", {"tie_word_embeddings": False}),
    "llama": ("llama", {}),
}


def count_model(kind: str, frozen: bool):
    """A tiny Hugging Face model of ``kind`` (COUNT_MODELS), with the embeddings and block 0
    frozen if ``frozen`` (its weights do not matter: only its parameters are counted)."""
    from transformers import GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    family, extra = COUNT_MODELS[kind]
    with torch.random.fork_rng():
        if family == "gpt2":
            model = GPT2LMHeadModel(gpt2_config(150, 24, 16, 2, 2, **extra))
        else:
            model = LlamaForCausalLM(LlamaConfig(vocab_size=90, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                                 bos_token_id=0, eos_token_id=0, pad_token_id=0))
    if frozen:  # e.g. fine-tuning with the embeddings and the first block frozen
        for name, p in model.named_parameters():
            if "wte" in name or "wpe" in name or ".0." in name or "embed_tokens" in name:
                p.requires_grad_(False)
    return model


@one_thread
def count_run(fn, kind, frozen, only_trainable, exclude_embeddings):
    return fn(count_model(kind, frozen), only_trainable=only_trainable, exclude_embeddings=exclude_embeddings)


# ----------------------------------------------------------------------------------------
# cached_attention
# ----------------------------------------------------------------------------------------
def attention_module(state, d, n_heads):
    """Chapter 4's MultiHeadAttention (float64) holding ``state``."""
    attn = MultiHeadAttention(d, n_heads).to(torch.float64).eval()
    with torch.no_grad():
        for k, v in state.items():
            attn.get_parameter(k).copy_(v)
    return attn


@one_thread
def cached_attention_run(fn, state, n_heads, x, sizes):
    """Feed x to the learner's cached_attention in chunks of ``sizes``, one cache throughout."""
    attn = attention_module(state, x.shape[-1], n_heads)
    cache = GraderCache()
    outs = []
    for a, b in chunks(sizes):
        y = fn(attn, x[:, a:b], cache)
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != (x.shape[0], b - a, x.shape[2]):
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ContractError(f"for {b - a} new positions after {a} cached ones, expected a tensor of shape "
                                f"{(x.shape[0], b - a, x.shape[2])}, got {shape}")
        outs.append(y)
    return torch.cat(outs, dim=1)


# ----------------------------------------------------------------------------------------
# forward_with_cache
# ----------------------------------------------------------------------------------------
@one_thread
def forward_run(fn, config, state, idx, sizes):
    """Feed idx to the learner's forward_with_cache in chunks of ``sizes``; all the logits."""
    model = build_gpt(config, state)
    caches = [GraderCache() for _ in model.blocks]
    outs = []
    with torch.no_grad():
        for a, b in chunks(sizes):
            y = fn(model, idx[:, a:b], caches)
            if not isinstance(y, torch.Tensor) or tuple(y.shape) != (idx.shape[0], b - a, model.config.vocab_size):
                shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
                raise ContractError(f"for {b - a} new tokens, expected logits of shape "
                                    f"{(idx.shape[0], b - a, model.config.vocab_size)}, got {shape}")
            outs.append(y)
    return torch.cat(outs, dim=1)


# ----------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------
@one_thread
def generate_run(fn, config, state, idx, n_new, use_cache):
    return fn(build_gpt(config, state), idx, n_new, use_cache=use_cache)


@one_thread
def sampling_consistency_run(fn, config, state, idx, n_new):
    """Sample twice with the same seed, with and without the cache: the same tokens?"""
    model = build_gpt(config, state)
    outs = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(1234)
        out = fn(model, idx, n_new, temperature=0.9, top_k=20, top_p=0.95, use_cache=use_cache, generator=g)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (idx.shape[0], idx.shape[1] + n_new):
            raise ContractError("expected a tensor of shape (B, T + max_new_tokens) when sampling")
        outs.append(out)
    return bool(torch.equal(outs[0], outs[1]) and torch.equal(outs[0][:, :idx.shape[1]], idx))


@one_thread
def filtered_sampling_run(fn, config, state, idx, n_new, top_k, top_p):
    g = torch.Generator().manual_seed(4321)
    return fn(build_gpt(config, state), idx, n_new, temperature=1.0, top_k=top_k, top_p=top_p, use_cache=True,
              generator=g)


_JUDGE: list = [None, None]  # the last reference model built by within_top_k, and the data it came from


def within_top_k(expected, got, prompt_len, k):
    """compare() for a sampled sequence: every new token is among the k most likely ones
    given the tokens before it, by the GPT-2 that ``expected`` describes (``gpt2_model``)."""
    if not (isinstance(expected, dict) and "gpt2" in expected):
        return "nothing to compare with: expected the reference model's description"
    if not isinstance(got, torch.Tensor) or got.dim() != 2 or got.shape[1] <= prompt_len:
        return f"expected a (B, T + max_new_tokens) tensor of token ids, got {_fmt_obj(got)}"
    if _JUDGE[0] is not expected:
        _JUDGE[:] = [expected, gpt2_model(expected)]
    got = got.long()
    with torch.no_grad():
        logits = _JUDGE[1](got[:, :-1]).logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    ranks_ok = logits.gather(-1, got[:, 1:, None]) >= kth
    bad = (~ranks_ok[:, prompt_len - 1:, 0]).nonzero()
    if bad.numel():
        b, t = (int(v) for v in bad[0])
        return (f"{bad.shape[0]} sampled token(s) are outside the top {k}; first in row {b} at new position {t} "
                f"(token {int(got[b, prompt_len + t])}): top_k must remove every other token before sampling")
    return None


def _fmt_obj(x):
    return f"{type(x).__name__} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
