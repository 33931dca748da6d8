"""Chapter 9 - Fine-tuning and in-context learning.

References, all independent of the course's solutions:
- the classification head: sentence-transformers' ``models.Pooling`` (mean mode) followed by
  ``torch.nn.functional.linear`` with the same weights;
- LoRA: ``peft`` (``LoraConfig`` + ``get_peft_model`` on the same module, A and B copied;
  ``merge_and_unload`` for the merged weight; ``get_nb_trainable_parameters`` for the count);
- token losses: ``torch.nn.functional.cross_entropy(reduction="none")`` on the shifted pairs;
- induction score: the (period - 1)-th sub-diagonal read with ``torch.diagonal``.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core import Case, Exercise, Mistake, close_tensors, hidden_seed, register
from ..drivers.ch09_finetuning import (Branchy, add_lora_run, compare_add_lora, compare_dropout, compare_lora,
                                       dropout_run, head_run, lora_forward, lora_run, lora_setup, lora_values)
from ..drivers.ch09_finetuning import gen as _gen
from ..drivers.ch09_finetuning import silence as _silence

CH = "ch09"
SOL = "solutions.ch09_finetuning"


# ========================================================================================
# ClassifierHead
# ========================================================================================
def _head_inputs(seed, B, T, d, C):
    g = _gen(seed)
    hidden = torch.randn(B, T, d, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    if B > 1:
        lengths[-1] = 1
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    hidden = hidden + 5.0 * (1 - mask)[..., None]  # padding states far from the real ones: pooling them shows
    weight = torch.randn(C, d, generator=g) / math.sqrt(d)
    bias = torch.randn(C, generator=g) * 0.1
    return hidden, mask, weight, bias


def _head_expected(d, hidden, mask, weight, bias):
    from sentence_transformers.sentence_transformer.modules import Pooling

    pool = Pooling(d, pooling_mode="mean")
    feats = pool({"token_embeddings": hidden, "attention_mask": mask})
    return F.linear(feats["sentence_embedding"], weight, bias)


def _head_cases(hidden: bool):
    specs = [("B=3, T=7, d=16, 2 labels, different lengths", 0, 3, 7, 16, 2),
             ("a batch of one without padding", 1, 1, 5, 8, 3),
             ("B=4, T=12, d=32, 5 labels", 2, 4, 12, 32, 5)]
    if hidden:
        specs += [("B=8, T=20, d=24, 2 labels", hidden_seed("ch09.classifier_head", 3), 8, 20, 24, 2)]
    for name, seed, B, T, d, C in specs:
        h, m, w, b = _head_inputs(seed, B, T, d, C)
        yield Case(name, (d, C, h, m, w, b), run=head_run,
                   expected=lambda d=d, h=h, m=m, w=w, b=b: _head_expected(d, h, m, w, b),
                   compare=close_tensors(atol=1e-5, rtol=1e-4))
    h, m, w, b = _head_inputs(9, 4, 6, 16, 2)
    yield Case("dropout: random in train mode, off in eval mode", (16, 2, h, m, w, b), run=dropout_run,
               expected=lambda: {"train_random": True, "eval_fixed": True}, compare=compare_dropout)


def _pool_variant(kind):
    def run(d, C, hidden, mask, weight, bias):
        m = mask.float()[..., None]
        if kind == "cls":
            pooled = hidden[:, 0]
        elif kind == "all":
            pooled = hidden.mean(1)
        elif kind == "sum":
            pooled = (hidden * m).sum(1)
        else:  # max over real tokens
            pooled = hidden.masked_fill(m == 0, -1e9).max(1).values
        return F.linear(pooled, weight, bias)
    return run


class _PoolMistake:
    """A Mistake for a head exercise: Case.run(produce, ...) must build a module, so wrap one."""

    def __init__(self, kind):
        self.kind = kind

    def __call__(self, d, C, dropout=0.1):
        kind = self.kind

        class Head(nn.Module):
            def __init__(self):
                super().__init__()
                self.dropout = nn.Dropout(dropout)
                self.classifier = nn.Linear(d, C)

            def forward(self, hidden, mask):
                return _pool_variant(kind)(d, C, hidden, mask, self.classifier.weight, self.classifier.bias)
        return Head()


register(Exercise(
    id="ch09.classifier_head", chapter=CH, title="A classification head: masked mean pooling + linear", points=1,
    name="ClassifierHead",
    signature="ClassifierHead(hidden_size, num_labels, dropout=0.1); forward(hidden: Tensor[B, T, d], "
              "attention_mask: Tensor[B, T]) -> Tensor[B, num_labels]",
    reference="sentence-transformers models.Pooling(pooling_mode='mean') + F.linear with the same weights",
    solution=f"{SOL}:ClassifierHead", cases=_head_cases,
    forbidden=["sentence_transformers.sentence_transformer.modules:Pooling"],
    mistakes=[
        Mistake("cls-token", "you used the first token's state: this encoder was trained with MEAN pooling over the "
                "real tokens", _PoolMistake("cls")),
        Mistake("padding-included", "you averaged over all T positions, padding included: weight by the attention "
                "mask and divide by the number of real tokens", _PoolMistake("all")),
        Mistake("sum", "you summed the token states: divide by the number of real tokens (a mean)", _PoolMistake("sum")),
        Mistake("max", "you max-pooled: this exercise (and all-MiniLM-L6-v2) uses the mean", _PoolMistake("max")),
    ]))


# ========================================================================================
# LoRA: the shared reference built with peft
# ========================================================================================
class _OneLinear(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.fc(x)


def _peft_one_linear(base_w, base_b, r, alpha):
    from peft import LoraConfig, get_peft_model

    _silence()
    plain = _OneLinear(base_w.shape[1], base_w.shape[0])
    with torch.no_grad():
        plain.fc.weight.copy_(base_w)
        plain.fc.bias.copy_(base_b)
    return get_peft_model(plain, LoraConfig(r=r, lora_alpha=alpha, target_modules=["fc"], lora_dropout=0.0))


@functools.lru_cache(maxsize=None)
def _lora_expected(seed, d_in, d_out, r, alpha):
    base_w, base_b, A, B, x, up = lora_setup(seed, d_in, d_out, r)
    model = _peft_one_linear(base_w, base_b, r, alpha)
    layer = model.base_model.model.fc
    with torch.no_grad():
        init_equal = torch.allclose(model(x), F.linear(x, base_w, base_b), atol=1e-6)
        layer.lora_A["default"].weight.copy_(A)
        layer.lora_B["default"].weight.copy_(B)
    out = model(x)
    (out * up).sum().backward()
    return {"init_equal": init_equal, "base_frozen": True, "trainable": ("lora_A", "lora_B"),
            "out": out.detach(), "grad_A": layer.lora_A["default"].weight.grad.clone(),
            "grad_B": layer.lora_B["default"].weight.grad.clone()}


def _lora_cases(hidden: bool):
    specs = [("8 -> 6, r=2, alpha=4", 0, 8, 6, 2, 4.0), ("16 -> 16, r=4, alpha=8", 1, 16, 16, 4, 8.0),
             ("r=1, alpha=1 (scaling 1)", 2, 5, 7, 1, 1.0), ("r=8, alpha=2 (scaling 1/4)", 3, 12, 10, 8, 2.0)]
    if hidden:
        specs += [("64 -> 32, r=16, alpha=32", hidden_seed("ch09.lora_linear", 4), 64, 32, 16, 32.0)]
    for name, seed, d_in, d_out, r, alpha in specs:
        yield Case(name, (seed, d_in, d_out, r, alpha), run=lora_run,
                   expected=lambda s=seed, i=d_in, o=d_out, r=r, a=alpha: _lora_expected(s, i, o, r, a),
                   compare=compare_lora)


def _lora_mistake(scaling="alpha/r", b_init="zeros", freeze=True):
    class WrongLoRA(nn.Module):
        def __init__(self, base, r, alpha):
            super().__init__()
            self.base = base
            if freeze:
                for p in base.parameters():
                    p.requires_grad_(False)
            self.lora_A = nn.Parameter(torch.randn(r, base.in_features) * 0.01)
            self.lora_B = nn.Parameter(torch.randn(base.out_features, r) * 0.01 if b_init == "random"
                                       else torch.zeros(base.out_features, r))
            self.scaling = {"alpha/r": alpha / r, "r/alpha": r / alpha, "none": 1.0, "alpha": alpha}[scaling]

        def forward(self, x):
            return self.base(x) + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)
    return WrongLoRA


register(Exercise(
    id="ch09.lora_linear", chapter=CH, title="LoRA: a frozen linear layer plus a low-rank update", points=2,
    name="LoRALinear",
    signature="LoRALinear(base: nn.Linear, r: int, alpha: float); forward(x: Tensor[..., in]) -> Tensor[..., out]",
    reference="peft LoraConfig(r, lora_alpha, target_modules=['fc']) + get_peft_model on the same layer, A and B copied",
    solution=f"{SOL}:LoRALinear", cases=_lora_cases, difficulty="**",
    forbidden=["peft:get_peft_model", "peft:LoraConfig", "peft:LoraModel", "peft:inject_adapter_in_model",
               "peft.tuners.lora.layer:Linear"],
    mistakes=[
        Mistake("inverted-scaling", "your update is scaled by r / alpha: LoRA scales it by alpha / r",
                _lora_mistake(scaling="r/alpha")),
        Mistake("random-B", "lora_B was initialised randomly, so the model changes before any training: B starts at "
                "zero (A random), making B @ A = 0 at the start", _lora_mistake(b_init="random")),
        Mistake("not-frozen", "the base layer still trains: set requires_grad = False on its weight and bias",
                _lora_mistake(freeze=False)),
        Mistake("no-scaling", "the update B A x is not multiplied by alpha / r", _lora_mistake(scaling="none")),
    ]))


# ========================================================================================
# lora_merge
# ========================================================================================
@functools.lru_cache(maxsize=None)
def _merge_case(seed, d_in, d_out, r, alpha):
    base_w, base_b, A, B, _, _ = lora_setup(seed, d_in, d_out, r)
    model = _peft_one_linear(base_w, base_b, r, alpha)
    layer = model.base_model.model.fc
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(A)
        layer.lora_B["default"].weight.copy_(B)
    merged = model.merge_and_unload()
    return base_w, A, B, merged.fc.weight.detach().clone()


def _merge_cases(hidden: bool):
    specs = [("square 8 x 8, r=2, alpha=4", 0, 8, 8, 2, 4.0), ("in 10, out 6, r=3, alpha=6", 1, 10, 6, 3, 6.0),
             ("r=1, alpha=16", 2, 6, 6, 1, 16.0), ("in 4, out 9, r=4, alpha=1", 3, 4, 9, 4, 1.0)]
    if hidden:
        specs += [("square 32, r=8, alpha=16", hidden_seed("ch09.lora_merge", 4), 32, 32, 8, 16.0)]
    for name, seed, d_in, d_out, r, alpha in specs:
        W, A, B, merged = _merge_case(seed, d_in, d_out, r, alpha)
        yield Case(name, (W, A, B, alpha, r), expected=lambda m=merged: m,
                   compare=close_tensors(atol=1e-5, rtol=1e-4))


register(Exercise(
    id="ch09.lora_merge", chapter=CH, title="Merge LoRA into the weight", points=1, name="lora_merge",
    signature="lora_merge(weight: Tensor[out, in], lora_A: Tensor[r, in], lora_B: Tensor[out, r], alpha, r) -> Tensor[out, in]",
    reference="peft merge_and_unload() on the same layer with A and B copied",
    solution=f"{SOL}:lora_merge", cases=_merge_cases,
    forbidden=["peft:get_peft_model", "peft:LoraConfig", "peft.tuners.lora.layer:Linear"],
    mistakes=[
        Mistake("transposed", "your update is transposed: the merged weight is W + (alpha / r) * B @ A, shape (out, in) "
                "like W", lambda W, A, B, alpha, r: W + alpha / r * (B @ A).T),
        Mistake("inverted-scaling", "you scaled by r / alpha: the factor is alpha / r",
                lambda W, A, B, alpha, r: W + r / alpha * (B @ A)),
        Mistake("no-scaling", "the product B @ A must be multiplied by alpha / r", lambda W, A, B, alpha, r: W + B @ A),
        Mistake("delta-only", "you returned only the update; add it to the frozen weight W",
                lambda W, A, B, alpha, r: alpha / r * (B @ A)),
    ]))


# ========================================================================================
# add_lora
# ========================================================================================


def _make_model(kind, seed):
    if kind == "bert":
        return _tiny_bert(seed)
    torch.manual_seed(seed)
    return Branchy().eval()


# The tiny BertModel's configuration (BertConfig keyword arguments).
_BERT = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
             max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@functools.lru_cache(maxsize=None)
def _model_inputs(kind, seed):
    """The model of a case as data: its config dict and its state dict (the driver builds it)."""
    config = {"model": kind, **(_BERT if kind == "bert" else {})}
    state = {k: v.detach().clone() for k, v in _make_model(kind, seed).state_dict().items()}
    return config, state


def _tiny_bert(seed):
    from transformers import BertConfig, BertModel

    _silence()
    cfg = BertConfig(**_BERT)
    torch.manual_seed(seed)
    return BertModel(cfg).eval()


@functools.lru_cache(maxsize=None)
def _add_lora_expected(kind, seed, targets, r, alpha):
    import warnings

    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():  # peft asks transformers about gradient checkpointing with a deprecated name
        warnings.filterwarnings("ignore", category=FutureWarning)
        model = get_peft_model(_make_model(kind, seed), LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                                                    lora_dropout=0.0))
    prefix = "base_model.model."
    wrapped = []
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and isinstance(getattr(module, "lora_A"), nn.ModuleDict):
            short = name[len(prefix):] if name.startswith(prefix) else name
            wrapped.append(short)
            A, B = lora_values(short, r, module.in_features, module.out_features)
            with torch.no_grad():
                module.lora_A["default"].weight.copy_(A)
                module.lora_B["default"].weight.copy_(B)
    n_trainable = model.get_nb_trainable_parameters()[0]
    with torch.no_grad():
        out = lora_forward(kind, model, seed)
    return {"is_module": True, "wrapped": tuple(sorted(wrapped)), "n_trainable": n_trainable, "out": out}


def _add_lora_cases(hidden: bool):
    specs = [("BERT, query and value, r=4, alpha=8", "bert", 0, ("query", "value"), 4, 8.0),
             ("BERT, every 'dense' layer (pooler included), r=2, alpha=2", "bert", 1, ("dense",), 2, 2.0),
             ("layers named proj, block.proj and out_proj; target 'proj'", "branchy", 2, ("proj",), 2, 4.0),
             ("BERT, key only, r=1, alpha=4", "bert", 2, ("key",), 1, 4.0)]
    if hidden:
        specs += [("BERT, query, key and value, r=8, alpha=16", "bert", hidden_seed("ch09.add_lora", 3),
                   ("query", "key", "value"), 8, 16.0)]
    for name, kind, seed, targets, r, alpha in specs:
        # The model travels as data (config + state dict); the driver builds it for each call.
        config, state = _model_inputs(kind, seed)
        yield Case(name, (config, state, seed, targets, r, alpha), run=add_lora_run,
                   expected=lambda k=kind, s=seed, t=targets, r=r, a=alpha: _add_lora_expected(k, s, t, r, a),
                   compare=compare_add_lora, check_mutation=False)


class _RefLoRA(nn.Module):
    """The correct LoRA layer (used by the mistakes of add_lora, which get the wrapping wrong)."""

    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) * 0.01)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T @ self.lora_B.T)


def _add_lora_mistake(kind):
    def fn(model, target_modules, r, alpha):
        if kind != "not-frozen":
            for p in model.parameters():
                p.requires_grad_(False)
        chosen = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)
                  and (kind == "all-linear" or n.rpartition(".")[2] in target_modules)]
        if kind == "first-only":
            chosen = chosen[:1]
        for n, m in chosen:
            parent, _, child = n.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, _RefLoRA(m, r, alpha))
        return model
    return fn


register(Exercise(
    id="ch09.add_lora", chapter=CH, title="Put LoRA into a whole model", points=2, name="add_lora",
    signature="add_lora(model: nn.Module, target_modules: list[str], r: int, alpha: float) -> nn.Module",
    reference="peft get_peft_model(model, LoraConfig(r, lora_alpha, target_modules)) on the same tiny BertModel: "
              "wrapped layers, get_nb_trainable_parameters and outputs with the same A and B",
    solution=f"{SOL}:add_lora", cases=_add_lora_cases, difficulty="**",
    forbidden=["peft:get_peft_model", "peft:LoraConfig", "peft:LoraModel", "peft:inject_adapter_in_model"],
    mistakes=[
        Mistake("not-frozen", "the rest of the model still trains: set requires_grad = False on every parameter first, "
                "so only lora_A and lora_B train", _add_lora_mistake("not-frozen")),
        Mistake("all-linear", "you wrapped every nn.Linear: only those whose name (last part) is in target_modules",
                _add_lora_mistake("all-linear")),
        Mistake("first-only", "you wrapped only the first matching layer: every layer whose name matches gets LoRA",
                _add_lora_mistake("first-only")),
    ]))


# ========================================================================================
# token_losses
# ========================================================================================
def _tl_cases(hidden: bool):
    specs = [("B=2, T=6, V=10", 0, 2, 6, 10, 1.0), ("a batch of one, T=2 (one prediction)", 1, 1, 2, 5, 1.0),
             ("B=3, T=16, V=50, large logits (x 300)", 2, 3, 16, 50, 300.0)]
    if hidden:
        specs += [("B=8, T=64, V=64", hidden_seed("ch09.token_losses", 3), 8, 64, 64, 2.0)]
    for name, seed, B, T, V, scale in specs:
        g = _gen(seed)
        logits = torch.randn(B, T, V, generator=g) * scale
        tokens = torch.randint(V, (B, T), generator=g)
        yield Case(name, (logits, tokens),
                   expected=lambda l=logits, t=tokens: F.cross_entropy(
                       l[:, :-1].reshape(-1, l.shape[-1]).double(), t[:, 1:].reshape(-1), reduction="none"
                   ).view(t.shape[0], t.shape[1] - 1),
                   compare=close_tensors(atol=1e-4, rtol=1e-4))


def _tl_variant(logits, tokens, kind):
    if kind == "no-shift":
        l, t = logits[:, 1:], tokens[:, 1:]
    elif kind == "wrong-way":
        l, t = logits[:, 1:], tokens[:, :-1]
    else:
        l, t = logits[:, :-1], tokens[:, 1:]
    out = F.cross_entropy(l.reshape(-1, l.shape[-1]).double(), t.reshape(-1), reduction="none").view(t.shape)
    if kind == "log-prob":
        return -out
    return out


register(Exercise(
    id="ch09.token_losses", chapter=CH, title="The loss at every position", points=1, name="token_losses",
    signature="token_losses(logits: Tensor[B, T, V], tokens: Tensor[B, T]) -> Tensor[B, T-1]",
    reference="torch.nn.functional.cross_entropy(reduction='none') on logits[:, :-1] and tokens[:, 1:]",
    solution=f"{SOL}:token_losses", cases=_tl_cases,
    mistakes=[
        Mistake("no-shift", "position t must be scored on token t + 1: you paired logits[:, t] with tokens[:, t]",
                lambda l, t: _tl_variant(l, t, "no-shift")),
        Mistake("wrong-way", "you paired logits[:, t + 1] with tokens[:, t]: the logits at t predict the NEXT token",
                lambda l, t: _tl_variant(l, t, "wrong-way")),
        Mistake("log-prob", "you returned log-probabilities; the loss is their negative",
                lambda l, t: _tl_variant(l, t, "log-prob")),
    ]))


# ========================================================================================
# induction_score
# ========================================================================================
def _causal_attn(seed, shape, T):
    g = _gen(seed)
    s = torch.randn(*shape, T, T, generator=g) * 2
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return s.softmax(-1)


def _ind_expected(attn, period):
    # The entries attn[t, t - period + 1] lie on the (period - 1)-th sub-diagonal; skip its
    # first entry (query period - 1, a position before the repeat starts).
    diag = torch.diagonal(attn.double(), offset=-(period - 1), dim1=-2, dim2=-1)
    return diag[..., 1:].mean(-1)


def _ind_cases(hidden: bool):
    specs = [("H=4, T=16, period 8", 0, (4,), 16, 8), ("a single head (T, T), T=10, period 5", 1, (), 10, 5),
             ("layers x heads (2, 3, T, T), T=20, period 6", 2, (2, 3), 20, 6),
             ("period 1 (every token equals the previous one)", 3, (2,), 8, 1)]
    if hidden:
        specs += [("H=8, T=64, period 32", hidden_seed("ch09.induction_score", 4), (8,), 64, 32)]
    for name, seed, shape, T, period in specs:
        attn = _causal_attn(seed, shape, T)
        yield Case(name, (attn, period), expected=lambda a=attn, p=period: _ind_expected(a, p),
                   compare=close_tensors(atol=1e-6, rtol=1e-5))


def _ind_variant(attn, period, offset=1, first=None, reduce="mean"):
    T = attn.shape[-1]
    q = torch.arange(first if first is not None else period, T)
    k = q - period + offset
    keep = k >= 0
    vals = attn[..., q[keep], k[keep]].double()
    return vals.sum(-1) if reduce == "sum" else vals.mean(-1)


register(Exercise(
    id="ch09.induction_score", chapter=CH, title="Find the induction heads", points=2, name="induction_score",
    signature="induction_score(attn: Tensor[..., T, T], period: int) -> Tensor[...]",
    reference="the mean of the (period - 1)-th sub-diagonal (torch.diagonal), from query = period on",
    solution=f"{SOL}:induction_score", cases=_ind_cases, difficulty="**",
    mistakes=[
        Mistake("duplicate-token", "you read attn[t, t - period], the earlier copy of the CURRENT token (a 'duplicate "
                "token' head); an induction head attends to the token after it, t - period + 1",
                lambda a, p: _ind_variant(a, p, offset=0)),
        Mistake("previous-token", "you read attn[t, t - 1] (a previous-token head); an induction head attends to "
                "t - period + 1", lambda a, p: _ind_variant(a, p, offset=p - 1)),
        Mistake("early-queries", "you averaged over queries before the repeat starts too: only queries t >= period "
                "have an earlier occurrence to look back to", lambda a, p: _ind_variant(a, p, first=p - 1)),
        Mistake("sum", "you summed over the queries: take the mean", lambda a, p: _ind_variant(a, p, reduce="sum")),
    ]))
