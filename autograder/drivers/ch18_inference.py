"""Chapter 18 - public drivers: run a learner's answer on a case's inputs and compare.

Cases send plain data; the functions here turn it into what the learner's code expects
(a small GPT with a KV cache, built from a config dict and a state dict) and compare the
results with the expected values. Nothing here computes an expected value.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core import compare_tensors, single_thread


# ----------------------------------------------------------------------------------------
# A GPT with the interface of the chapter's CachedGPT, built from plain data
# ----------------------------------------------------------------------------------------
class LayerCache:
    """Keys and values of one attention layer; ``length`` positions are valid."""

    def __init__(self):
        self.k = self.v = None
        self.length = 0

    def update(self, k, v):
        end = self.length + k.shape[2]
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat([self.k[:, :, : self.length], k], dim=2)
            self.v = torch.cat([self.v[:, :, : self.length], v], dim=2)
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class _Attention(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)


class _MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class _Block(nn.Module):
    def __init__(self, d, n_head):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(d, bias=False), _Attention(d, n_head)
        self.ln_2, self.mlp = nn.LayerNorm(d, bias=False), _MLP(d)


class GraderGPT(nn.Module):
    """Same parameters and forward as the chapter's ``CachedGPT`` (chapter 7's GPT, no biases,
    LayerNorm, tanh GELU, tied output layer)."""

    def __init__(self, config: dict):
        super().__init__()
        d, V = config["n_embd"], config["vocab_size"]
        self.config = dict(config)
        self.wte = nn.Embedding(V, d)
        self.wpe = nn.Embedding(config["block_size"], d)
        self.blocks = nn.ModuleList(_Block(d, config["n_head"]) for _ in range(config["n_layer"]))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.lm_head = nn.Linear(d, V, bias=False)
        self.lm_head.weight = self.wte.weight

    def new_cache(self):
        return [LayerCache() for _ in self.blocks]

    def forward(self, idx, position_ids=None, attention_mask=None, cache=None):
        B, T = idx.shape
        past = cache[0].length if cache is not None else 0
        S = past + T
        if position_ids is None:
            position_ids = torch.arange(past, S).expand(B, T)
        keys = torch.ones(B, S, dtype=torch.bool) if attention_mask is None else torch.as_tensor(attention_mask).bool()
        qpos, kpos = torch.arange(past, S)[:, None], torch.arange(S)[None, :]
        allowed = ((kpos <= qpos)[None] & keys[:, None, :]) | (kpos == qpos)[None]
        x = self.wte(idx) + self.wpe(position_ids)
        C = x.shape[-1]
        for i, block in enumerate(self.blocks):
            H = block.attn.n_head
            q, k, v = block.attn.qkv(block.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            if cache is not None:
                k, v = cache[i].update(k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
            x = x + block.attn.proj(y.transpose(1, 2).reshape(B, T, C))
            x = x + block.mlp(block.ln_2(x))
        return self.lm_head(self.ln_f(x))


def build_gpt(spec: dict) -> GraderGPT:
    """``spec = {"config": {...}, "state": {name: tensor}}`` -> a GraderGPT in eval mode."""
    model = GraderGPT(spec["config"])
    state = dict(spec["state"])
    state.setdefault("lm_head.weight", state["wte.weight"])
    model.load_state_dict(state)
    return model.eval()


# ----------------------------------------------------------------------------------------
# Runners
# ----------------------------------------------------------------------------------------
def run_generate_batch(fn, spec, prompts, max_new_tokens, pad_id):
    with torch.no_grad(), single_thread():
        return fn(build_gpt(spec), prompts, max_new_tokens, pad_id)


def run_speculative(fn, target_spec, draft_spec, prompt, max_new_tokens, k):
    # Both models in float64, as the case's prompt was chosen in (clear greedy margins). A
    # wrong answer walks off that path, where two logits can be close: in float32 the
    # thread count could flip them, and then the wrong answer would no longer match the
    # mistake it makes.
    with torch.no_grad(), single_thread():
        target, draft = build_gpt(target_spec).double(), build_gpt(draft_spec).double()
        return fn(target, draft, prompt, max_new_tokens, k)


def run_distill_grad(fn, student_logits, teacher_logits, temperature):
    """The loss and its gradient with respect to the student's logits."""
    s = student_logits.clone().requires_grad_(True)
    loss = fn(s, teacher_logits, temperature)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
        return ("no-grad", loss if not isinstance(loss, torch.Tensor) else tuple(loss.shape))
    loss.backward()
    return s.grad if s.grad is not None else ("no-grad", None)


# ----------------------------------------------------------------------------------------
# Comparisons
# ----------------------------------------------------------------------------------------
def _is_pair(got, n):
    return isinstance(got, (tuple, list)) and len(got) == n


def _compare_codes(expected, got, dtype, what="q"):
    if not isinstance(got, torch.Tensor):
        return f"{what} must be a torch.Tensor of {dtype}, got {type(got).__name__}"
    if got.dtype != dtype:
        return f"{what} must have dtype {dtype} (the stored codes), got {got.dtype}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"{what} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    diff = got.long() != expected.long()
    if bool(diff.any()):
        i = tuple(int(v) for v in diff.nonzero()[0])
        return (f"{what} differs at {int(diff.sum())} of {diff.numel()} positions; first at index {i}: "
                f"expected {int(expected[i])}, got {int(got[i])}")
    return None


def _compare_scale(expected, got, what="scale"):
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        got = torch.tensor(float(got))
    problem = compare_tensors(expected.reshape(-1), got.reshape(-1) if isinstance(got, torch.Tensor) else got,
                              atol=0, rtol=1e-6)
    return None if problem is None else f"{what}: {problem}"


def compare_absmax(expected, got):
    """(q int8, scale) against the expected pair."""
    if not _is_pair(got, 2):
        return f"return a pair (q, scale), got {type(got).__name__}"
    return _compare_scale(expected[1], got[1]) or _compare_codes(expected[0], got[0], torch.int8)


def compare_zeropoint(expected, got):
    """(q uint8, scale, zero_point) against the expected triple."""
    if not _is_pair(got, 3):
        return f"return a triple (q, scale, zero_point), got {type(got).__name__}"
    q, scale, zp = got
    ezp = expected[2]
    if isinstance(ezp, torch.Tensor) and ezp.is_floating_point():  # the value to match is itself a float
        if not isinstance(zp, (torch.Tensor, int, float)) or isinstance(zp, bool):
            return f"zero_point must be a number, got {type(zp).__name__}"
        if abs(float(zp) - float(ezp)) > 1e-5 * max(1.0, abs(float(ezp))):
            return f"zero_point: expected {float(ezp):.6g}, got {float(zp):.6g}"
        return _compare_scale(expected[1], scale) or _compare_codes(expected[0], q, torch.uint8)
    if isinstance(zp, torch.Tensor) and zp.numel() == 1:
        if zp.is_floating_point() or zp.dtype == torch.bool:
            return f"zero_point must be an integer (a code between 0 and 255), got {float(zp):.6g} ({zp.dtype})"
        zp = int(zp)
    elif isinstance(zp, float):
        return f"zero_point must be an integer (a code between 0 and 255), got the float {zp:.6g}"
    if not isinstance(zp, int) or isinstance(zp, bool):
        return f"zero_point must be an integer (a 0-dim int tensor or an int), got {type(zp).__name__}"
    problem = _compare_scale(expected[1], scale)
    if problem:
        return problem
    if zp != int(ezp):
        return f"zero_point: expected {int(ezp)}, got {zp}"
    return _compare_codes(expected[0], q, torch.uint8)


def compare_groupwise(expected, got):
    """(q int8 (rows, cols), scales (rows, n_groups)); a group of zeros may have any positive scale."""
    if not _is_pair(got, 2):
        return f"return a pair (q, scales), got {type(got).__name__}"
    eq, es = expected
    q, s = got
    if not isinstance(s, torch.Tensor) or tuple(s.shape) != tuple(es.shape):
        shape = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        return f"scales must have shape {tuple(es.shape)} (rows, number of groups per row), got {shape}"
    zero = es == 1.0
    s = torch.where(zero & torch.isfinite(s) & (s > 0), es, s.float())
    problem = _compare_scale(es, s, "scales")
    return problem or _compare_codes(eq, q, torch.int8)


def compare_nf4(expected, got):
    """(packed uint8, absmax float32), bit for bit; packed may be (n/2,) or (n/2, 1)."""
    if not _is_pair(got, 2):
        return f"return a pair (packed, absmax), got {type(got).__name__}"
    packed, absmax = got
    problem = compare_tensors(expected[1], absmax, atol=0, rtol=0)
    if problem:
        return f"absmax: {problem}"
    if isinstance(packed, torch.Tensor) and packed.numel() == expected[0].numel():
        packed = packed.reshape(-1)
    return _compare_codes(expected[0], packed, torch.uint8, "packed")


def compare_exact(expected, got):
    """Token ids, exactly: a tensor (or nested lists) equal to the expected tensor."""
    if isinstance(got, (list, tuple)):
        try:
            got = torch.tensor(got)
        except Exception:
            return f"expected a tensor of token ids, got {type(got).__name__}"
    if not isinstance(got, torch.Tensor):
        return f"expected a tensor of token ids, got {type(got).__name__}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"shape differs: expected {tuple(expected.shape)}, got {tuple(got.shape)}"
    diff = got.long() != expected.long()
    if bool(diff.any()):
        if expected.dim() == 2:
            b, t = (int(v) for v in diff.nonzero()[0])
            return (f"{int(diff.any(1).sum())} of {expected.shape[0]} rows differ; row {b} first differs at new "
                    f"token {t}: expected {expected[b, t:t + 5].tolist()}..., got {got[b, t:t + 5].tolist()}...")
        t = int(diff.nonzero()[0, 0])
        return f"first difference at new token {t}: expected {expected[t:t + 5].tolist()}..., got {got[t:t + 5].tolist()}..."
    return None


def compare_speculative(expected, got):
    """(new_tokens, accepted per round): the tokens exactly, then the rounds."""
    if not _is_pair(got, 2):
        return f"return a pair (new_tokens, accepted), got {type(got).__name__}"
    tokens, accepted = got
    e_tokens, e_accepted = expected
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.reshape(-1).tolist()
    if not isinstance(tokens, (list, tuple)):
        return f"new_tokens must be a list of ids, got {type(tokens).__name__}"
    problem = compare_exact(torch.tensor(list(e_tokens)), [int(t) for t in tokens])
    if problem:
        return f"the tokens are not the target's greedy continuation: {problem}"
    if isinstance(accepted, torch.Tensor):
        accepted = accepted.reshape(-1).tolist()
    accepted = [int(a) for a in accepted] if isinstance(accepted, (list, tuple)) else accepted
    if accepted != list(e_accepted):
        return (f"right tokens, but the rounds differ: expected {len(e_accepted)} rounds accepting "
                f"{list(e_accepted)}, got {accepted}")
    return None


def compare_grad(expected, got):
    if isinstance(got, tuple) and got and got[0] == "no-grad":
        return ("the loss must be a 0-dim tensor that carries the gradient back to the student's logits "
                "(no .item(), no torch.no_grad, no detach of the student)")
    problem = compare_tensors(expected, got, atol=1e-7, rtol=1e-4)
    return None if problem is None else f"gradient with respect to the student's logits: {problem}"
