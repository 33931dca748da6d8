"""Chapter 4 - what the checks need to run and judge a learner's code (public).

Modules arrive as their constructor's arguments and a state dict; ``mha_run`` builds the
learner's ``MultiHeadAttention`` and loads the weights by name (chapter 3's
``load_by_name``). ``load_run`` builds a Hugging Face ``GPT2Attention`` from its shape and
weights, lets the learner's loader copy it into an empty holder, and returns what the
holder's two layers compute.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .ch03_embeddings import load_by_name


# -- MultiHeadAttention -------------------------------------------------------------------
def mha_run(cls, d, n_heads, bias, causal, state, x, key_padding_mask):
    """Build the learner's module, load ``state`` by name, attend over ``x``."""
    module = cls(d, n_heads, bias=bias, causal=causal)
    load_by_name(module, state)
    module.eval()
    with torch.no_grad():
        if key_padding_mask is None:
            return module(x)
        return module(x, key_padding_mask=key_padding_mask)


# -- load_gpt2_attention ------------------------------------------------------------------
def gpt2_attention(d, n_heads):
    """A Hugging Face GPT2Attention of width ``d`` (eager attention, eval mode)."""
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    config = GPT2Config(n_embd=d, n_head=n_heads, n_layer=1, n_positions=64, vocab_size=16, bos_token_id=0,
                        eos_token_id=0, attn_pdrop=0.0, resid_pdrop=0.0, attn_implementation="eager")
    return GPT2Attention(config, layer_idx=0).eval()


class _Holder(nn.Module):
    """What the loader fills: ``qkv`` and ``proj`` as nn.Linear, starting at zero."""

    def __init__(self, d):
        super().__init__()
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        with torch.no_grad():
            for p in self.parameters():
                p.zero_()


def load_run(fn, d, n_heads, gpt2_state, x):
    """Let the learner load a GPT2Attention holding ``gpt2_state`` into a holder; return
    ``cat([holder.qkv(x), holder.proj(x)], -1)``."""
    gpt2 = gpt2_attention(d, n_heads)
    with torch.no_grad():
        for name, value in gpt2_state.items():
            dict(gpt2.named_parameters())[name].copy_(value)
    holder = _Holder(d)
    fn(holder, gpt2)
    with torch.no_grad():
        return torch.cat([holder.qkv(x), holder.proj(x)], dim=-1)
