"""Chapter 6 - GPT, generation and the KV cache.

The reference everywhere is Hugging Face ``transformers``: a tiny ``GPT2LMHeadModel`` built
from a config in code (eager attention, no dropout, weights drawn from a seed and
perturbed so that every LayerNorm and bias matters), its logits, its
``num_parameters()``, its logits warpers and its greedy ``generate``.

The learner's later exercises (cached attention, cached forward, generate) take a GPT as
input. The checks hand them a container with the documented attribute names (built by the
public drivers, ``autograder/drivers/ch06_gpt.py``, from a config and the Hugging Face
weights under our names); what they return is compared with Hugging Face's own outputs.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

from ..core import Exercise, Mistake, close_tensors, compare_equal, hidden_seed, inherit, register
from ..drivers.ch06_gpt import (GraderCache, GraderGPT, cached_attention_run, compare_converted, count_model, count_run,
                                filtered_sampling_run, forward_run, generate_run, gpt2_config, gpt_run, gpt_tied_run,
                                sampling_consistency_run, within_top_k)
from .ch05_block import case

CH = "ch06"
SOL = "solutions.ch06_gpt"


# ----------------------------------------------------------------------------------------
# Tiny Hugging Face GPT-2 models, and the same weights under our names
# ----------------------------------------------------------------------------------------
# (seed, vocab, positions, width, layers, heads); greedy decoding on these models has a
# clear winner at every step of the cases below (no near-ties for rounding to flip). "D" serves
# hidden cases only, as "D@<seed>" with a seed from hidden_seed (see _spec).
SPECS = {
    "A": (0, 120, 48, 32, 2, 4),
    "B": (1, 256, 64, 64, 3, 4),
    "C": (2, 100, 40, 48, 4, 2),
    "D": (None, 300, 32, 40, 2, 5),
}


def _spec(spec: str) -> tuple:
    """SPECS[spec]; "<name>@<seed>" is model <name> with its weights drawn from <seed>."""
    name, _, seed = spec.partition("@")
    return (int(seed), *SPECS[name][1:]) if seed else SPECS[name]


def _hidden_spec(ex: str) -> str:
    return f"D@{hidden_seed(ex, 'D')}"


def _config(spec) -> dict:
    """The fields of the chapter's GPTConfig for model ``spec`` (a case input)."""
    _, V, P, d, L, H = _spec(spec)
    return {"vocab_size": V, "block_size": P, "n_layer": L, "n_head": H, "n_embd": d, "eps": 1e-5}


_hf_config = gpt2_config


@functools.lru_cache(maxsize=None)
def hf_model(spec: str):
    """A tiny GPT2LMHeadModel in eval mode (shared: never hand it to the learner's code)."""
    from transformers import GPT2LMHeadModel

    seed, V, P, d, L, H = _spec(spec)
    with torch.random.fork_rng():  # leave the learner's global RNG alone
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(_hf_config(V, P, d, L, H)).eval()
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def hf_to_ours(hf) -> dict[str, torch.Tensor]:
    """The grader's own renaming, read straight off the Hugging Face modules."""
    t = hf.transformer
    sd = {"embed.tok.weight": t.wte.weight, "embed.pos.weight": t.wpe.weight,
          "ln_f.weight": t.ln_f.weight, "ln_f.bias": t.ln_f.bias, "lm_head.weight": hf.lm_head.weight}
    for i, h in enumerate(t.h):
        for ours, mod, conv in (("ln_1", h.ln_1, False), ("ln_2", h.ln_2, False), ("attn.qkv", h.attn.c_attn, True),
                                ("attn.proj", h.attn.c_proj, True), ("mlp.fc", h.mlp.c_fc, True),
                                ("mlp.proj", h.mlp.c_proj, True)):
            sd[f"blocks.{i}.{ours}.weight"] = mod.weight.T if conv else mod.weight  # Conv1D is [in, out]
            sd[f"blocks.{i}.{ours}.bias"] = mod.bias
    return {k: v.detach().clone().contiguous() for k, v in sd.items()}


def _prompt(seed: int, B: int, T: int, V: int) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@functools.lru_cache(maxsize=None)
def _ours(spec: str) -> dict[str, torch.Tensor]:
    """Model ``spec``'s weights under our names (a case input; the driver copies them in)."""
    return hf_to_ours(hf_model(spec))


def _model(spec: str) -> tuple[dict, dict]:
    """Model ``spec`` as case inputs: its config and its weights under our names."""
    return _config(spec), _ours(spec)


def _hf_model_data(spec: str) -> dict:
    """The reference GPT2LMHeadModel as data: its shape and its state dict (``gpt2_model``)."""
    return {"gpt2": list(_spec(spec)[1:]), "state": {k: v.detach().clone() for k, v in hf_model(spec).state_dict().items()}}


def _tensors(atol, rtol):
    return close_tensors(atol=atol, rtol=rtol)


def _hf_logits(spec, idx):
    with torch.no_grad():
        return hf_model(spec)(idx).logits


def _import_hf():
    import transformers.generation.logits_process  # noqa: F401  (imported here, not inside a timed case)
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401


# ----------------------------------------------------------------------------------------
# GPT
# ----------------------------------------------------------------------------------------
def _gpt_cases(hidden: bool):
    _import_hf()
    specs = [("vocab 120, 2 layers, width 32, 4 heads; 2 sequences of 7 tokens", "A", _prompt(0, 2, 7, 120)),
             ("vocab 256, 3 layers, width 64; one sequence of 64 tokens (the full context)", "B", _prompt(1, 1, 64, 256)),
             ("vocab 100, 4 layers, width 48, 2 heads; one token", "C", _prompt(2, 3, 1, 100))]
    if hidden:
        specs += [("vocab 300, 2 layers, width 40, 5 heads; 4 sequences of 20 tokens", _hidden_spec("ch06.gpt"),
                   _prompt(hidden_seed("ch06.gpt", 3), 4, 20, 300))]
    for name, spec, idx in specs:
        yield case(name, (*_model(spec), idx), run=gpt_run, expected=lambda s=spec, i=idx: _hf_logits(s, i),
                   compare=_tensors(2e-4, 1e-4))
    yield case("lm_head.weight is embed.tok.weight (tied, one shared Parameter)", (_config("A"),), run=gpt_tied_run,
               expected=lambda: True, names="untied")


class _GPTMistake(GraderGPT):
    def __init__(self, config, kind=""):
        super().__init__(config)
        self.kind = kind
        if kind == "untied":
            self.lm_head.weight = nn.Parameter(self.embed.tok.weight.detach().clone())

    def forward(self, idx):
        x = self.embed.tok(idx) if self.kind == "no-positions" else self.embed(idx)
        for block in self.blocks:
            x = block(x)
        if self.kind != "no-final-ln":
            x = self.ln_f(x)
        logits = self.lm_head(x)
        return torch.softmax(logits, -1) if self.kind == "probabilities" else logits


def _gpt_mistake(kind):
    return lambda config: _GPTMistake(config, kind)


def _gpt_with_blocks(block_factory):
    """compose() for inherit: a right GPT whose blocks come from ``block_factory``."""
    def make(config):
        model = GraderGPT(config)
        model.blocks = nn.ModuleList([block_factory(config.n_embd, config.n_head, config.eps)
                                      for _ in range(config.n_layer)])
        return model
    return make


register(Exercise(
    id="ch06.gpt", chapter=CH, title="The GPT model", points=2, name="GPT",
    signature="GPT(config); forward(idx: Tensor[B, T] int64) -> logits Tensor[B, T, vocab]; "
              "modules embed (tok, pos), blocks, ln_f, lm_head (tied)",
    reference="transformers GPT2LMHeadModel logits (tiny config, eager attention, the same weights)",
    solution=f"{SOL}:GPT", cases=_gpt_cases, difficulty="**",
    # One path per object: the check also catches the same class imported under another name.
    forbidden=["transformers.models.gpt2.modeling_gpt2:GPT2LMHeadModel", "transformers.models.gpt2.modeling_gpt2:GPT2Model"],
    mistakes=[
        Mistake("no-positions", "the position embedding is missing: the input is embed.tok(idx) + embed.pos(positions) "
                "(chapter 3's TokenAndPositionEmbedding does both)", _gpt_mistake("no-positions")),
        Mistake("no-final-layernorm", "the final LayerNorm is missing: logits = lm_head(ln_f(x)) after the last block",
                _gpt_mistake("no-final-ln")),
        Mistake("probabilities", "you return probabilities (softmax); forward returns the raw logits",
                _gpt_mistake("probabilities")),
        Mistake("untied", "lm_head has its own weight: tie it with self.lm_head.weight = self.embed.tok.weight, so "
                "one (V, d) Parameter serves as input and output embedding (as in GPT-2)", _gpt_mistake("untied")),
        *inherit("ch05.block", _gpt_with_blocks, where="your model's blocks"),
    ]))


# ----------------------------------------------------------------------------------------
# convert_gpt2_state_dict
# ----------------------------------------------------------------------------------------
def _convert_cases(hidden: bool):
    _import_hf()
    specs = [("2 layers, width 32", "A"), ("3 layers, width 64", "B")]
    if hidden:
        specs += [("4 layers, width 48", f"C@{hidden_seed('ch06.convert_gpt2', 'C')}")]
    for name, spec in specs:
        sd = {k: v.detach().clone() for k, v in hf_model(spec).state_dict().items()}
        yield case(f"GPT2LMHeadModel state dict, {name}", (sd,),
                   expected=lambda s=spec: ("GPT2LMHeadModel", _hf_model_data(s)["state"]), compare=compare_converted)


def _convert_mistake(kind):
    def produce(sd):
        out = {}
        for name, t in sd.items():
            if kind == "no-lm-head" and name == "lm_head.weight":
                continue
            new = name
            pairs = [("transformer.wte.", "embed.tok."), ("transformer.wpe.", "embed.pos."), ("transformer.ln_f.", "ln_f."),
                     ("attn.c_attn.", "attn.qkv."), ("attn.c_proj.", "attn.proj."), ("mlp.c_fc.", "mlp.fc."),
                     ("mlp.c_proj.", "mlp.proj.")]
            pairs.append(("transformer.h.", "h." if kind == "h-kept" else "blocks."))
            for a, b in pairs:
                new = new.replace(a, b)
            conv = name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
            if kind == "transposed-all":
                t = t.T if t.dim() == 2 else t
            elif conv and kind != "not-transposed":
                t = t.T
            out[new] = t.contiguous()
        return out
    return produce


register(Exercise(
    id="ch06.convert_gpt2", chapter=CH, title="Load GPT-2's weights: names and transposes", points=1,
    name="convert_gpt2_state_dict",
    signature="convert_gpt2_state_dict(hf_state_dict: dict[str, Tensor]) -> dict[str, Tensor]",
    reference="the Hugging Face modules themselves: each converted nn.Linear must compute what GPT-2's Conv1D computes",
    solution=f"{SOL}:convert_gpt2_state_dict", cases=_convert_cases, difficulty="*",
    mistakes=[
        Mistake("not-transposed", "GPT-2's Conv1D weights (c_attn, c_proj, c_fc) are stored [in, out]; nn.Linear wants "
                "[out, in]: transpose them (c_proj's square matrix would load silently, and be wrong)",
                _convert_mistake("not-transposed")),
        Mistake("transposed-all", "you transposed every matrix, the embeddings and lm_head too; only the four Conv1D "
                "weights per block are stored transposed", _convert_mistake("transposed-all")),
        Mistake("no-lm-head", "lm_head.weight is missing: it is tied to the token embedding, but it still has its "
                "own name in the state dict (copy it too)", _convert_mistake("no-lm-head")),
        Mistake("h-kept", "the blocks are still called 'h.<i>': rename transformer.h.<i> to blocks.<i>",
                _convert_mistake("h-kept")),
    ]))


# ----------------------------------------------------------------------------------------
# count_parameters
# ----------------------------------------------------------------------------------------
def _count_expected(kind, frozen, only_trainable, exclude_embeddings):
    return count_model(kind, frozen).num_parameters(only_trainable=only_trainable, exclude_embeddings=exclude_embeddings)


def _count_cases(hidden: bool):
    _import_hf()
    import transformers.models.llama.modeling_llama  # noqa: F401

    specs = [("tiny GPT-2 (tied lm_head)", "gpt2-tied", False, False, False),
             ("tiny GPT-2, untied lm_head", "gpt2-untied", False, False, False),
             ("tiny GPT-2, untied lm_head, exclude_embeddings=True", "gpt2-untied", False, False, True),
             ("tiny GPT-2, embeddings and block 0 frozen, only_trainable=True", "gpt2-tied", True, True, False),
             ("tiny Llama (RMSNorm, SwiGLU, no position table)", "llama", False, False, False)]
    if hidden:
        specs += [("tied GPT-2, exclude_embeddings=True", "gpt2-tied", False, False, True),
                  ("frozen GPT-2, only_trainable=False", "gpt2-tied", True, False, False),
                  ("tiny Llama, frozen, only_trainable and exclude_embeddings", "llama", True, True, True)]
    for name, kind, frozen, trainable, exclude in specs:
        yield case(name, (kind, frozen, trainable, exclude), run=count_run,
                   expected=lambda a=(kind, frozen, trainable, exclude): _count_expected(*a), compare=compare_equal)


def _count_mistake(kind):
    def produce(model, only_trainable=False, exclude_embeddings=False):
        if kind == "state-dict":
            return sum(v.numel() for v in model.state_dict().values())
        emb = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
        if kind == "token-only":
            emb = emb[:1]
        if kind == "lm-head-too" and exclude_embeddings:
            emb = emb + [model.get_output_embeddings().weight]
        total = 0
        for p in model.parameters():
            if exclude_embeddings and any(p is e for e in emb):
                continue
            if only_trainable and not p.requires_grad and kind != "ignores-trainable":
                continue
            total += p.numel()
        return total
    return produce


register(Exercise(
    id="ch06.count_parameters", chapter=CH, title="Count the parameters", points=1, name="count_parameters",
    signature="count_parameters(model: nn.Module, only_trainable=False, exclude_embeddings=False) -> int",
    reference="transformers PreTrainedModel.num_parameters(only_trainable, exclude_embeddings)",
    solution=f"{SOL}:count_parameters", cases=_count_cases, difficulty="*",
    forbidden=["transformers.modeling_utils:ModuleUtilsMixin.num_parameters"],
    mistakes=[
        Mistake("state-dict", "you counted the state dict, which lists a tied weight twice (lm_head.weight and the token "
                "embedding are ONE parameter); model.parameters() yields each parameter once", _count_mistake("state-dict")),
        Mistake("ignores-trainable", "only_trainable=True must skip parameters with requires_grad=False",
                _count_mistake("ignores-trainable")),
        Mistake("token-embedding-only", "exclude_embeddings must leave out EVERY nn.Embedding (the position table too)",
                _count_mistake("token-only")),
        Mistake("lm-head-excluded", "an untied lm_head is an nn.Linear, not an embedding: exclude_embeddings keeps it",
                _count_mistake("lm-head-too")),
    ]))


# ----------------------------------------------------------------------------------------
# top_k_filter, top_p_filter, process_logits
# ----------------------------------------------------------------------------------------
def _logits(seed, B, V, scale=2.0):
    return torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * scale


def _hidden_logits(ex, k, B, V, scale, ok):
    """Random logits for a hidden case, re-drawn (a bounded number of times) until ok(logits)."""
    for attempt in range(100):
        logits = _logits(hidden_seed(ex, k, attempt), B, V, scale)
        if ok(logits):
            return logits
    raise RuntimeError(f"no suitable logits for a hidden case of {ex}")


def _clear_filters(temperature=1.0, top_k=None, top_p=None, margin=1e-4):
    """ok() for _hidden_logits: no near-tie at the k-th largest logit and no cumulative probability
    near top_p, so that rounding cannot move the boundary of a filter."""
    def ok(logits):
        x = logits.double() / temperature
        if top_k is not None and top_k < x.shape[-1]:
            top = x.topk(top_k + 1, dim=-1).values
            if float((top[:, -2] - top[:, -1]).min()) <= margin:
                return False
            x = x.masked_fill(x < top[:, -2:-1], float("-inf"))
        if top_p is not None:
            cum = torch.softmax(x, -1).sort(-1, descending=True).values.cumsum(-1)
            if float((cum - top_p).abs().min()) <= margin:
                return False
        return True
    return ok


def _hf_top_k(logits, k):
    from transformers.generation.logits_process import TopKLogitsWarper

    return TopKLogitsWarper(top_k=k)(None, logits.clone())


def _hf_top_p(logits, p):
    from transformers.generation.logits_process import TopPLogitsWarper

    return TopPLogitsWarper(top_p=p)(None, logits.clone())


_exact = close_tensors(atol=1e-6, rtol=1e-6)


def _top_k_cases(hidden: bool):
    _import_hf()
    specs = [("B=2, V=10, k=3", _logits(0, 2, 10), 3),
             ("k=1 (greedy)", _logits(1, 3, 8), 1),
             ("k = V keeps everything", _logits(2, 1, 6), 6),
             ("k > V keeps everything", _logits(3, 2, 5), 50),
             ("ties at the k-th value are kept: [3, 2, 2, 1, 0], k=2", torch.tensor([[3.0, 2.0, 2.0, 1.0, 0.0]]), 2)]
    if hidden:
        specs += [("B=4, V=300, k=40", _hidden_logits("ch06.top_k", 4, 4, 300, 3.0, _clear_filters(top_k=40)), 40),
                  ("already filtered (-inf) entries, k=2", torch.tensor([[1.0, float("-inf"), 0.5, 2.0]]), 2)]
    for name, logits, k in specs:
        yield case(name, (logits, k), expected=lambda l=logits, k=k: _hf_top_k(l, k), compare=_exact)


def _top_k_mistake(kind):
    def produce(logits, k):
        k = min(k, logits.shape[-1])
        if kind == "sorted":
            vals = torch.sort(logits, dim=-1, descending=True).values
            return vals.masked_fill(torch.arange(logits.shape[-1]) >= k, float("-inf"))
        if kind == "zeros":
            kth = torch.topk(logits, k).values[..., -1:]
            return logits.masked_fill(logits < kth, 0.0)
        if kind == "smallest":
            kth = torch.topk(logits, k, largest=False).values[..., -1:]
            return logits.masked_fill(logits > kth, float("-inf"))
        idx = torch.topk(logits, k).indices  # "drops-ties": exactly k survivors
        return torch.full_like(logits, float("-inf")).scatter(-1, idx, logits.gather(-1, idx))
    return produce


register(Exercise(
    id="ch06.top_k", chapter=CH, title="Top-k filtering", points=1, name="top_k_filter",
    signature="top_k_filter(logits: Tensor[B, V], k: int) -> Tensor[B, V] (-inf outside the top k)",
    reference="transformers TopKLogitsWarper (generation.logits_process)",
    solution=f"{SOL}:top_k_filter", cases=_top_k_cases, difficulty="*",
    forbidden=["transformers.generation.logits_process:TopKLogitsWarper"],
    mistakes=[
        Mistake("drops-ties", "you kept exactly k tokens (by index); a token whose logit EQUALS the k-th largest is "
                "kept too (compare with the k-th value: logits < kth -> -inf)", _top_k_mistake("drops-ties")),
        Mistake("sorted-output", "you returned the logits sorted; keep every logit at its vocabulary position and only "
                "replace the filtered ones by -inf", _top_k_mistake("sorted")),
        Mistake("zeros-not-inf", "filtered logits must be -inf (probability exactly 0 after softmax), not 0",
                _top_k_mistake("zeros")),
        Mistake("smallest-k", "you kept the k SMALLEST logits; keep the largest", _top_k_mistake("smallest")),
    ]))


def _top_p_cases(hidden: bool):
    _import_hf()
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    handmade = torch.log(probs)
    specs = [("probabilities [0.5, 0.3, 0.15, 0.05], p=0.6 keeps 2", handmade, 0.6),
             ("the same, p=0.85 keeps 3", handmade, 0.85),
             ("the same, p=0.1 still keeps the top token", handmade, 0.1),
             ("B=3, V=12 random logits, p=0.9", _logits(10, 3, 12), 0.9),
             ("unsorted vocabulary order, p=0.7", torch.log(torch.tensor([[0.05, 0.4, 0.1, 0.35, 0.1]])).flip(-1), 0.7)]
    if hidden:
        specs += [("B=2, V=200 random logits, p=0.95",
                   _hidden_logits("ch06.top_p", 11, 2, 200, 3.0, _clear_filters(top_p=0.95)), 0.95),
                  ("some entries already -inf, p=0.5", torch.tensor([[2.0, float("-inf"), 1.0, 0.1, float("-inf")]]), 0.5)]
    for name, logits, p in specs:
        yield case(name, (logits, p), expected=lambda l=logits, p=p: _hf_top_p(l, p), compare=_exact)


def _top_p_mistake(kind):
    def produce(logits, p):
        probs = torch.softmax(logits, -1)
        if kind == "no-sort":
            drop = torch.cumsum(probs, -1) - probs >= p
            drop[..., 0] = False
            return logits.masked_fill(drop, float("-inf"))
        sorted_probs, order = torch.sort(probs, -1, descending=True)
        cum = torch.cumsum(sorted_probs, -1)
        drop_sorted = cum > p if kind == "crossing-dropped" else cum - sorted_probs >= p
        drop_sorted[..., 0] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        if kind == "probabilities":
            return probs.masked_fill(drop, 0.0)
        return logits.masked_fill(drop, 0.0 if kind == "zeros" else float("-inf"))
    return produce


register(Exercise(
    id="ch06.top_p", chapter=CH, title="Top-p (nucleus) filtering", points=1, name="top_p_filter",
    signature="top_p_filter(logits: Tensor[B, V], p: float) -> Tensor[B, V] (-inf outside the nucleus)",
    reference="transformers TopPLogitsWarper (generation.logits_process); no case has a tie at the nucleus boundary",
    solution=f"{SOL}:top_p_filter", cases=_top_p_cases, difficulty="**",
    forbidden=["transformers.generation.logits_process:TopPLogitsWarper"],
    mistakes=[
        Mistake("crossing-token-dropped", "you dropped the token that makes the mass reach p; the nucleus is the "
                "SMALLEST set whose mass is >= p, so it includes that token (drop a token only when the tokens BEFORE it "
                "already reach p)", _top_p_mistake("crossing-dropped")),
        Mistake("not-sorted", "you accumulated probabilities in vocabulary order; sort them in decreasing order first, "
                "then map the decision back to the vocabulary positions", _top_p_mistake("no-sort")),
        Mistake("probabilities-returned", "you returned (filtered) probabilities; return the logits with -inf at "
                "the filtered tokens", _top_p_mistake("probabilities")),
        Mistake("zeros-not-inf", "filtered logits must be -inf, not 0", _top_p_mistake("zeros")),
    ]))


def _hf_process(logits, temperature, top_k, top_p):
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    # The order in which generate() applies them.
    chain = LogitsProcessorList([TemperatureLogitsWarper(float(temperature))])
    if top_k is not None:
        chain.append(TopKLogitsWarper(top_k=top_k))
    if top_p is not None and top_p < 1.0:
        chain.append(TopPLogitsWarper(top_p=top_p))
    return chain(None, logits.clone())


def _process_cases(hidden: bool):
    _import_hf()
    specs = [("temperature 0.5 only", _logits(20, 2, 10), 0.5, None, None),
             ("temperature 0.7, top-p 0.9", _logits(21, 2, 30), 0.7, None, 0.9),
             ("temperature 1.5, top-k 5", _logits(22, 3, 20), 1.5, 5, None),
             ("temperature 2.0, top-k 8, top-p 0.6", _logits(23, 2, 40), 2.0, 8, 0.6),
             ("temperature 0.4, top-p 0.8: the temperature changes the nucleus", _logits(24, 1, 16, 1.0), 0.4, None, 0.8)]
    if hidden:
        ex = "ch06.process_logits"
        specs += [("temperature 1.0, top-k 50, top-p 0.95, V=300",
                   _hidden_logits(ex, 25, 4, 300, 3.0, _clear_filters(1.0, 50, 0.95)), 1.0, 50, 0.95),
                  ("temperature 3.0, top-k 3, top-p 0.5",
                   _hidden_logits(ex, 26, 2, 12, 2.0, _clear_filters(3.0, 3, 0.5)), 3.0, 3, 0.5)]
    for name, logits, t, k, p in specs:
        yield case(name, (logits,), {"temperature": t, "top_k": k, "top_p": p},
                   expected=lambda l=logits, t=t, k=k, p=p: _hf_process(l, t, k, p), compare=_exact)


def _process_mistake(kind):
    def produce(logits, temperature=1.0, top_k=None, top_p=None):
        def k_(x):
            return x if top_k is None else _hf_top_k(x, top_k)

        def p_(x):
            return x if top_p is None or top_p >= 1.0 else _hf_top_p(x, top_p)

        if kind == "temperature-last":
            return p_(k_(logits)) / temperature
        if kind == "multiplied":
            return p_(k_(logits * temperature))
        if kind == "p-before-k":
            return k_(p_(logits / temperature))
        return p_(k_(logits))  # "no-temperature"
    return produce


register(Exercise(
    id="ch06.process_logits", chapter=CH, title="Temperature, then top-k, then top-p", points=1, name="process_logits",
    signature="process_logits(logits: Tensor[B, V], temperature=1.0, top_k=None, top_p=None) -> Tensor[B, V]",
    reference="transformers TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper chained in generate()'s order",
    solution=f"{SOL}:process_logits", cases=_process_cases, difficulty="*",
    forbidden=["transformers.generation.logits_process:TemperatureLogitsWarper",
               "transformers.generation.logits_process:TopKLogitsWarper",
               "transformers.generation.logits_process:TopPLogitsWarper",
               "transformers.generation.logits_process:LogitsProcessorList"],
    mistakes=[
        Mistake("temperature-last", "you filtered first and divided by the temperature last; the temperature reshapes "
                "the distribution BEFORE top-p measures its mass", _process_mistake("temperature-last")),
        Mistake("multiplied", "you multiplied by the temperature; divide the logits by it", _process_mistake("multiplied")),
        Mistake("top-p-before-top-k", "you applied top-p before top-k; generate() applies temperature, then top-k, "
                "then top-p (on what top-k kept)", _process_mistake("p-before-k")),
        Mistake("no-temperature", "the temperature is not applied: divide the logits by it first",
                _process_mistake("no-temperature")),
    ]))


# ----------------------------------------------------------------------------------------
# cached_attention
# ----------------------------------------------------------------------------------------
def _attn_state(seed, d):
    g = torch.Generator().manual_seed(seed)
    return {"qkv.weight": 2.0 * torch.randn(3 * d, d, generator=g, dtype=torch.float64) / math.sqrt(d),
            "qkv.bias": 0.2 * torch.randn(3 * d, generator=g, dtype=torch.float64),
            "proj.weight": torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d),
            "proj.bias": 0.2 * torch.randn(d, generator=g, dtype=torch.float64)}


def _hf_attention(state, x, n_heads):
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    d = x.shape[-1]
    from transformers import GPT2Config

    config = GPT2Config(n_embd=d, n_head=n_heads, n_layer=1, vocab_size=8, bos_token_id=0, eos_token_id=0,
                        attn_pdrop=0.0, resid_pdrop=0.0, attn_implementation="eager")
    ref = GPT2Attention(config, layer_idx=0).to(torch.float64).eval()
    with torch.no_grad():
        ref.c_attn.weight.copy_(state["qkv.weight"].T)
        ref.c_attn.bias.copy_(state["qkv.bias"])
        ref.c_proj.weight.copy_(state["proj.weight"].T)
        ref.c_proj.bias.copy_(state["proj.bias"])
        T = x.shape[1]
        mask = torch.zeros(T, T, dtype=x.dtype).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1),
                                                          torch.finfo(x.dtype).min)
        return ref(x, attention_mask=mask[None, None])[0]


def _cached_attention_cases(hidden: bool):
    _import_hf()
    specs = [("prefill 5 positions, then 3 steps of one (d=16, 2 heads)", 16, 2, (2, 8), [5, 1, 1, 1]),
             ("one position at a time from an empty cache (d=8, 1 head)", 8, 1, (1, 6), [1, 1, 1, 1, 1, 1]),
             ("prefill 3, then a chunk of 4 new positions at once (d=24, 3 heads)", 24, 3, (2, 7), [3, 4]),
             ("everything in one call: plain causal attention (d=16, 4 heads)", 16, 4, (3, 5), [5])]
    n_visible = len(specs)
    if hidden:
        specs += [("prefill 10, chunks of 2, 1, 3 (d=32, 4 heads)", 32, 4, (2, 16), [10, 2, 1, 3])]
    for i, (name, d, h, (B, T), sizes) in enumerate(specs):
        seeds = (600 + i, 700 + i)
        if i >= n_visible:
            seeds = tuple(hidden_seed("ch06.cached_attention", s) for s in seeds)
        state = _attn_state(seeds[0], d)
        x = torch.randn(B, T, d, generator=torch.Generator().manual_seed(seeds[1]), dtype=torch.float64)
        yield case(name, (state, h, x, sizes), run=cached_attention_run,
                   expected=lambda s=state, x=x, h=h: _hf_attention(s, x, h), compare=_tensors(1e-9, 1e-8))


def _cached_attention_mistake(kind):
    def produce(attn, x, cache):
        B, T, d = x.shape
        H = attn.n_heads
        q, k, v = (t.view(B, T, H, d // H).transpose(1, 2) for t in attn.qkv(x).split(d, -1))
        if kind != "cache-unused":
            k, v = cache.update(k, v)
        else:
            cache.update(k, v)
        scale = math.sqrt(d if kind == "scale-d" else d // H)
        scores = q @ k.transpose(-2, -1) / scale
        Tk = k.shape[2]
        if kind == "top-left":
            allowed = torch.ones(T, Tk, dtype=torch.bool).tril()
        elif kind == "no-mask":
            allowed = torch.ones(T, Tk, dtype=torch.bool)
        else:
            allowed = torch.ones(T, Tk, dtype=torch.bool).tril(Tk - T)
        y = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v
        return attn.proj(y.transpose(1, 2).reshape(B, T, d))
    return produce


register(Exercise(
    id="ch06.cached_attention", chapter=CH, title="Attention with a KV cache", points=2, name="cached_attention",
    signature="cached_attention(attn: MultiHeadAttention, x: Tensor[B, T_new, d], cache: KVCache) -> Tensor[B, T_new, d]",
    reference="transformers GPT2Attention (eager, causal mask) run once on the whole sequence, same weights",
    solution=f"{SOL}:cached_attention", cases=_cached_attention_cases, difficulty="**",
    forbidden=["torch.nn.functional:scaled_dot_product_attention"],
    mistakes=[
        Mistake("top-left-mask", "your causal mask is aligned top-left (tril with diagonal 0, or SDPA's is_causal=True): "
                "with past cached positions, new query i sits at position past + i and may see keys 0 .. past + i "
                "(tril(diagonal=past), i.e. aligned bottom-right)", _cached_attention_mistake("top-left")),
        Mistake("no-mask", "there is no causal mask: fine for one new token, wrong when several new positions arrive "
                "at once (the prefill): each may not see the ones after it", _cached_attention_mistake("no-mask")),
        Mistake("cache-unused", "the new queries attend only to the new keys: attend to everything cache.update "
                "returns (the past and the new positions)", _cached_attention_mistake("cache-unused")),
        Mistake("scale-d", "you scaled the scores by 1/sqrt(d_model); scale by 1/sqrt(d_head), per head",
                _cached_attention_mistake("scale-d")),
    ]))


# ----------------------------------------------------------------------------------------
# forward_with_cache
# ----------------------------------------------------------------------------------------
def _ref_cached_attention(attn, x, cache):
    return _cached_attention_mistake("")(attn, x, cache)


def _forward_cases(hidden: bool):
    _import_hf()
    specs = [("prompt of 6, then 4 tokens one by one (2 layers)", "A", _prompt(30, 2, 10, 120), [6, 1, 1, 1, 1]),
             ("prompt of 1, then chunks of 3 and 5 (3 layers)", "B", _prompt(31, 1, 9, 256), [1, 3, 5]),
             ("the whole context: prompt 30, then 10 steps (4 layers)", "C", _prompt(32, 2, 40, 100), [30] + [1] * 10)]
    if hidden:
        specs += [("prompt 12, then 20 steps (vocab 300)", _hidden_spec("ch06.forward_with_cache"),
                   _prompt(hidden_seed("ch06.forward_with_cache", 33), 3, 32, 300), [12] + [1] * 20)]
    for name, spec, idx, sizes in specs:
        yield case(name, (*_model(spec), idx, sizes), run=forward_run,
                   expected=lambda s=spec, i=idx: _hf_logits(s, i), compare=_tensors(2e-4, 1e-4))


def _forward_mistake(kind):
    def produce(model, idx, caches):
        past = 0 if kind == "positions-from-zero" else caches[0].length
        x = model.embed.tok(idx) + model.embed.pos(torch.arange(past, past + idx.shape[1]))
        for i, block in enumerate(model.blocks):
            cache = caches[0] if kind == "shared-cache" else caches[i]
            x = x + _ref_cached_attention(block.attn, block.ln_1(x), cache)
            x = x + block.mlp(block.ln_2(x))
        return model.lm_head(x if kind == "no-final-ln" else model.ln_f(x))
    return produce


register(Exercise(
    id="ch06.forward_with_cache", chapter=CH, title="The GPT forward pass with a cache", points=1,
    name="forward_with_cache",
    signature="forward_with_cache(model: GPT, idx: Tensor[B, T_new], caches: list[KVCache]) -> Tensor[B, T_new, vocab]",
    reference="transformers GPT2LMHeadModel logits on the whole sequence (same weights)",
    solution=f"{SOL}:forward_with_cache", cases=_forward_cases, difficulty="**",
    mistakes=[
        Mistake("positions-from-zero", "the new tokens got positions 0, 1, ... again; they sit at positions "
                "past .. past + T_new - 1 with past = caches[0].length (read it BEFORE the blocks update the caches)",
                _forward_mistake("positions-from-zero")),
        Mistake("shared-cache", "every block used the same cache; each block has its own keys and values "
                "(zip(model.blocks, caches))", _forward_mistake("shared-cache")),
        Mistake("no-final-layernorm", "the final LayerNorm is missing: logits = lm_head(ln_f(x))",
                _forward_mistake("no-final-ln")),
    ]))


# ----------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _hf_generate_cached(spec, prompt_seed, B, T, n_new):
    hf = hf_model(spec)
    idx = _prompt(prompt_seed, B, T, _spec(spec)[1])
    with torch.no_grad():
        return hf.generate(idx, do_sample=False, max_new_tokens=n_new)


@functools.lru_cache(maxsize=None)
def _clear_prompt_seed(spec, first_seed, B, T, n_new, margin=1e-2):
    """The seed of a hidden prompt without the pad id (generate() would mask it out) whose greedy
    continuation has a clear winner at every step: first_seed, first_seed + 1, ... (a bounded
    number of them) until one qualifies."""
    hf = hf_model(spec)
    for attempt in range(200):
        seed = first_seed + attempt
        idx = _prompt(seed, B, T, _spec(spec)[1])
        if bool((idx == hf.config.pad_token_id).any()):
            continue
        with torch.no_grad():
            out = hf.generate(idx, do_sample=False, max_new_tokens=n_new, output_scores=True,
                              return_dict_in_generate=True)
        top2 = torch.stack(out.scores).topk(2, dim=-1).values
        if float((top2[..., 0] - top2[..., 1]).min()) > margin:
            return seed
    raise RuntimeError("no hidden prompt with a clear greedy continuation")


def _generate_cases(hidden: bool):
    _import_hf()
    specs = [("greedy with the cache, 2 prompts of 5 tokens, 12 new (2 layers)", "A", 40, 2, 5, 12, True),
             ("greedy without the cache, same model", "A", 40, 2, 5, 12, False),
             ("greedy with the cache, one prompt of 1 token, 16 new (3 layers)", "B", 41, 1, 1, 16, True)]
    if hidden:
        d_spec = _hidden_spec("ch06.generate")
        specs += [("greedy with the cache up to the full context: 28 + 12 tokens (4 layers)", "C",
                   _clear_prompt_seed("C", hidden_seed("ch06.generate", 42), 2, 28, 12), 2, 28, 12, True),
                  ("greedy without the cache, vocab 300", d_spec,
                   _clear_prompt_seed(d_spec, hidden_seed("ch06.generate", 43), 3, 6, 10), 3, 6, 10, False)]
    for name, spec, seed, B, T, n_new, use_cache in specs:
        idx = _prompt(seed, B, T, _spec(spec)[1])
        yield case(name, (*_model(spec), idx, n_new, use_cache), run=generate_run,
                   expected=lambda a=(spec, seed, B, T, n_new): _hf_generate_cached(*a), compare=_tensors(0, 0))
    yield case("sampling (T=0.9, top-k 20, top-p 0.95), seeded: the cache changes nothing",
               (*_model("A"), _prompt(44, 2, 4, 120), 10), run=sampling_consistency_run, expected=lambda: True)
    # Filters that leave one token make sampling greedy: a generate that ignores them samples freely.
    yield case("sampling with top_k=1 picks the most likely token every time (= greedy)",
               (*_model("A"), _prompt(45, 2, 4, 120), 10, 1, None), run=filtered_sampling_run,
               expected=lambda: _hf_generate_cached("A", 45, 2, 4, 10), compare=_tensors(0, 0), names="filters-ignored")
    yield case("sampling with top_p=1e-9 keeps only the most likely token (= greedy)",
               (*_model("A"), _prompt(46, 2, 4, 120), 10, None, 1e-9), run=filtered_sampling_run,
               expected=lambda: _hf_generate_cached("A", 46, 2, 4, 10), compare=_tensors(0, 0), names="filters-ignored")
    # The grader recomputes the logits of the sampled sequence with the reference model.
    yield case("top_k=5, 4 rows x 24 tokens: every sampled token is among the 5 most likely",
               (*_model("A"), _prompt(47, 4, 3, 120), 24, 5, None), run=filtered_sampling_run,
               expected=lambda: _hf_model_data("A"), compare=functools.partial(within_top_k, prompt_len=3, k=5),
               names="filters-ignored")


def _generate_mistake(kind):
    def produce(model, idx, max_new_tokens, temperature=0.0, top_k=None, top_p=None, use_cache=True, generator=None):
        caches = [GraderCache() for _ in model.blocks]
        n = max_new_tokens - 1 if kind == "one-short" else max_new_tokens
        prompt_len = idx.shape[1]
        new = idx[:, -1:] if kind == "prompt-not-cached" else idx
        with torch.no_grad():
            for _ in range(n):
                if use_cache and kind != "first-position":
                    logits = _forward_mistake("")(model, new, caches)[:, -1]
                else:
                    logits = model(idx)[:, 0 if kind == "first-position" else -1]
                if temperature == 0:
                    nxt = logits.argmax(-1, keepdim=True)
                else:
                    filtered = (_hf_process(logits, temperature, None, None) if kind == "filters-ignored"
                                else _hf_process(logits, temperature, top_k, top_p))
                    probs = torch.softmax(filtered, -1)
                    nxt = torch.multinomial(probs, 1, generator=generator)
                idx = torch.cat([idx, nxt], 1)
                new = nxt
        return idx[:, prompt_len:] if kind == "new-only" else idx
    return produce


register(Exercise(
    id="ch06.generate", chapter=CH, title="Generate, with and without the KV cache", points=2, name="generate",
    signature="generate(model, idx: Tensor[B, T], max_new_tokens, temperature=0.0, top_k=None, top_p=None, "
              "use_cache=True, generator=None) -> Tensor[B, T + max_new_tokens]",
    reference="transformers GPT2LMHeadModel.generate(idx, do_sample=False, max_new_tokens=N), token for token",
    solution=f"{SOL}:generate", cases=_generate_cases, difficulty="***",
    mistakes=[
        Mistake("first-position", "you picked the next token from the logits of the FIRST position; the prediction "
                "for the next token is in the last one: logits[:, -1]", _generate_mistake("first-position")),
        Mistake("prompt-dropped", "return the prompt followed by the new tokens, shape (B, T + max_new_tokens)",
                _generate_mistake("new-only")),
        Mistake("prompt-not-cached", "the prompt never went into the cache: start with one forward_with_cache on the "
                "WHOLE prompt (the prefill), not only its last token", _generate_mistake("prompt-not-cached")),
        Mistake("one-short", "you generated max_new_tokens - 1 tokens", _generate_mistake("one-short")),
        Mistake("filters-ignored", "when sampling, top_k and top_p must filter the logits (after the temperature) "
                "before the softmax: with top_k=1, or a tiny top_p, only the most likely token may come out",
                _generate_mistake("filters-ignored")),
    ]))
