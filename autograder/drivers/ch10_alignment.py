"""Chapter 10 - what the checks need to run and judge a learner's code (public).

The SFT exercise gets the character tokenizer built here (with its chat template); the DPO
batch exercise gets two tiny causal language models built here from a seed.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from ..core import compare_tensors


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def silence():
    from transformers.utils import logging

    logging.set_verbosity_error()


# -- sft_tokenize -------------------------------------------------------------------------
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|end|>' }}{% endif %}"
    "{{ '\n' }}"
    "{% endfor %}"
)
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]


@functools.lru_cache(maxsize=None)
def tokenizer():
    """A character tokenizer (BPE without merges over printable ASCII) with the chat template."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    silence()
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(CHARS)}, merges=[]))
    tok.decoder = decoders.Fuse()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="\n", pad_token="\n")
    hf.add_special_tokens({"additional_special_tokens": ROLE_TOKENS})
    hf.chat_template = TEMPLATE
    return hf


def sft_run(fn, messages):
    """The learner's sft_tokenize on the conversation, with the course's tokenizer."""
    return fn(messages, tokenizer())


def compare_sft(expected, got):
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"return a tuple (input_ids, labels), got {type(got).__name__}"
    for name, e, g in zip(("input_ids", "labels"), expected, got):
        if not isinstance(g, torch.Tensor):
            return f"{name} must be a torch.Tensor, got {type(g).__name__}"
        if tuple(g.shape) != tuple(e.shape):
            return f"{name} has shape {tuple(g.shape)}, apply_chat_template gives {tuple(e.shape)}"
        if not torch.equal(g.long(), e):
            t = int((g.long() != e).nonzero()[0, 0])
            return (f"{name} differs from apply_chat_template's at token {t}: expected {int(e[t])}, got {int(g[t])}"
                    + (f" ({int((g.long() != e).sum())} tokens differ)" if name == "labels" else ""))
    return None


# -- dpo_batch_loss -----------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def tiny_weights(V, d, seed):
    g = gen(seed)
    shapes = [(V, d), (d, d), (d,), (V, d), (V,)]
    return [torch.randn(*s, generator=g) * (1.0 if i == 0 else d ** -0.5) for i, s in enumerate(shapes)]


class TinyLM(nn.Module):
    """A tiny causal language model: embedding, causal running mean, one tanh layer, readout."""

    def __init__(self, V, d, seed):
        super().__init__()
        self.emb, self.hid, self.out = nn.Embedding(V, d), nn.Linear(d, d), nn.Linear(d, V)
        with torch.no_grad():
            for p, w in zip(self.parameters(), tiny_weights(V, d, seed)):
                p.copy_(w)

    def forward(self, ids):
        x = self.emb(ids)
        x = x.cumsum(1) / torch.arange(1, ids.shape[1] + 1).view(1, -1, 1)
        return self.out(torch.tanh(self.hid(x)))


class OneThread:
    """Tiny tensors: one thread avoids waiting on a busy machine's second core."""

    def __enter__(self):
        self.previous = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.previous)
        return False


def dpo_batch_run(fn, ids, mask, beta, V, seed):
    """The learner's loss on a policy and a reference built from ``seed``, whether the
    reference got gradients, and the policy's readout gradient."""
    with OneThread():
        return _dpo_batch_run(fn, ids, mask, beta, V, seed)


def _dpo_batch_run(fn, ids, mask, beta, V, seed):
    policy, reference = TinyLM(V, 16, seed), TinyLM(V, 16, seed + 1)
    loss = fn(policy, reference, ids, mask, beta)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        return loss
    ref_grad = any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in reference.parameters())
    if loss.requires_grad:
        loss.backward()
    grad = policy.out.weight.grad
    ref_grad = ref_grad or any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in reference.parameters())
    return {"loss": loss.detach().reshape(()), "ref_grad": ref_grad,
            "grad": grad.clone() if grad is not None else None}


def compare_dpo_batch(expected, got):
    if isinstance(got, torch.Tensor):
        return f"return the loss as a single number (a 0-dim tensor), got shape {tuple(got.shape)}"
    if not isinstance(got, dict):
        return f"return the loss as a tensor, got {type(got).__name__}"
    if got["ref_grad"] != expected["ref_grad"]:
        return ("the reference model received gradients: compute its log-probs under torch.no_grad() (it is frozen; "
                "only the policy learns)")
    problem = compare_tensors(expected["loss"], got["loss"], atol=1e-5, rtol=1e-4)
    if problem:
        return f"the loss differs: {problem}"
    if got["grad"] is None:
        return "the policy received no gradient: do not detach the policy's log-probs"
    problem = compare_tensors(expected["grad"], got["grad"], atol=1e-6, rtol=1e-3)
    return None if problem is None else f"the loss is right but the policy's gradient differs: {problem}"


# -- reinforce_loss -----------------------------------------------------------------------
def pg_run(fn, logps, rewards):
    """The learner's loss and its gradient with respect to the sequence log-probs."""
    lp = logps.clone().requires_grad_(True)
    loss = fn(lp, rewards)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        return loss
    grad = torch.autograd.grad(loss, lp, allow_unused=True)[0] if loss.requires_grad else None
    return {"loss": loss.detach().reshape(()), "grad": grad if grad is not None else torch.zeros_like(lp)}


def compare_loss_grad(expected, got):
    if isinstance(got, torch.Tensor):
        return f"return the loss as a single number (a 0-dim tensor), got shape {tuple(got.shape)}"
    if not isinstance(got, dict):
        return f"return the loss as a tensor, got {type(got).__name__}"
    problem = compare_tensors(expected["loss"], got["loss"], atol=1e-5, rtol=1e-4)
    if problem:
        return f"the loss differs: {problem}"
    problem = compare_tensors(expected["grad"], got["grad"], atol=1e-6, rtol=1e-4)
    return None if problem is None else f"the loss is right but its gradient differs: {problem}"
