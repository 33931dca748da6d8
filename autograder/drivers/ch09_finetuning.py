"""Chapter 9 - what the checks need to run and judge a learner's code (public).

The LoRA exercises receive their weights as seeds or as a state dict: the driver builds the
layer or the model (a tiny ``BertModel`` from its config dict, or a small model of linear
layers), hands it to the learner's code and reports what came out.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core import compare_tensors


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def silence():
    import logging as _logging

    from transformers.utils import logging

    logging.set_verbosity_error()
    _logging.getLogger("peft").setLevel(_logging.ERROR)


class ContractError(Exception):
    """The learner's module does not have the attributes the docstring names."""


def param(module, name, shape=None):
    value = getattr(module, name, None)
    if not isinstance(value, torch.Tensor):
        raise ContractError(f"your module has no tensor attribute {name!r}: name it as the docstring says")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise ContractError(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    return value


# -- ClassifierHead -----------------------------------------------------------------------
def head_run(cls, d, C, hidden, mask, weight, bias):
    """Build the learner's head, copy the classifier's weights in, run it in eval mode."""
    head = cls(d, C, 0.1)
    if not isinstance(head, nn.Module):
        raise ContractError("ClassifierHead must be an nn.Module (call super().__init__() first)")
    lin = getattr(head, "classifier", None)
    if not isinstance(lin, nn.Linear):
        raise ContractError("your head needs self.classifier = nn.Linear(hidden_size, num_labels)")
    if tuple(lin.weight.shape) != (C, d):
        raise ContractError(f"classifier.weight has shape {tuple(lin.weight.shape)}, expected {(C, d)}")
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    head.eval()
    with torch.no_grad():
        return head(hidden, mask)


def dropout_run(cls, d, C, hidden, mask, weight, bias):
    """Whether two calls differ in train mode and agree in eval mode."""
    head = cls(d, C, 0.5)
    head.train()
    torch.manual_seed(0)
    with torch.no_grad():
        a, b = head(hidden, mask), head(hidden, mask)
    head.eval()
    with torch.no_grad():
        c, e = head(hidden, mask), head(hidden, mask)
    return {"train_random": not torch.allclose(a, b), "eval_fixed": torch.allclose(c, e)}


def compare_dropout(expected, got):
    if not isinstance(got, dict):
        return f"could not read your result: {got!r}"
    if not got["eval_fixed"]:
        return "in eval mode your head gives different outputs on the same input: use nn.Dropout (off in eval mode)"
    if not got["train_random"]:
        return "in train mode two calls give the same output: apply self.dropout to the pooled vector"
    return None


# -- LoRALinear ---------------------------------------------------------------------------
def lora_setup(seed, d_in, d_out, r):
    """The base layer's weight and bias, A, B, an input and an upstream gradient, from ``seed``."""
    g = gen(seed)
    base_w = torch.randn(d_out, d_in, generator=g) / math.sqrt(d_in)
    base_b = torch.randn(d_out, generator=g) * 0.1
    A = torch.randn(r, d_in, generator=g) / math.sqrt(d_in)
    B = torch.randn(d_out, r, generator=g) * 0.5
    x = torch.randn(3, 4, d_in, generator=g)
    up = torch.randn(3, 4, d_out, generator=g)
    return base_w, base_b, A, B, x, up


def lora_run(cls, seed, d_in, d_out, r, alpha):
    """Wrap a base layer with the learner's LoRALinear; report its start, its parameters,
    its output with A and B set, and their gradients."""
    base_w, base_b, A, B, x, up = lora_setup(seed, d_in, d_out, r)
    base = nn.Linear(d_in, d_out)
    with torch.no_grad():
        base.weight.copy_(base_w)
        base.bias.copy_(base_b)
    layer = cls(base, r, alpha)
    if not isinstance(layer, nn.Module):
        raise ContractError("LoRALinear must be an nn.Module (call super().__init__() first)")
    lora_A = param(layer, "lora_A", (r, d_in))
    lora_B = param(layer, "lora_B", (d_out, r))
    with torch.no_grad():
        init_equal = torch.allclose(layer(x), F.linear(x, base_w, base_b), atol=1e-6)
    base_frozen = not base.weight.requires_grad and not base.bias.requires_grad
    own = {id(p): n for n, p in layer.named_parameters()}
    trainable = tuple(sorted(n.rpartition(".")[2] for n, p in layer.named_parameters() if p.requires_grad))
    if id(lora_A) not in own or id(lora_B) not in own:
        raise ContractError("lora_A and lora_B must be nn.Parameter attributes of the module")
    with torch.no_grad():
        lora_A.copy_(A)
        lora_B.copy_(B)
    out = layer(x)
    (out * up).sum().backward()
    return {"init_equal": init_equal, "base_frozen": base_frozen, "trainable": trainable, "out": out.detach(),
            "grad_A": lora_A.grad.clone() if lora_A.grad is not None else None,
            "grad_B": lora_B.grad.clone() if lora_B.grad is not None else None}


def compare_lora(expected, got):
    if not isinstance(got, dict):
        return f"could not read your result: {got!r}"
    if got["init_equal"] != expected["init_equal"]:
        return ("a fresh LoRALinear must compute exactly base(x): initialise lora_B to zeros (lora_A random), so the "
                "update B @ A starts at 0")
    if got["base_frozen"] != expected["base_frozen"]:
        return "the base layer's weight and bias must be frozen (requires_grad = False)"
    if got["trainable"] != expected["trainable"]:
        return f"the trainable parameters must be exactly lora_A and lora_B, yours are {list(got['trainable'])}"
    problem = compare_tensors(expected["out"], got["out"], atol=1e-5, rtol=1e-4)
    if problem:
        return f"with A and B set (B non-zero), the output differs from peft's: {problem}"
    for key in ("grad_A", "grad_B"):
        if got[key] is None:
            return f"{key[-1]} received no gradient: use self.lora_{key[-1]} in forward"
        problem = compare_tensors(expected[key], got[key], atol=1e-4, rtol=1e-4)
        if problem:
            return f"the gradient of lora_{key[-1]} differs from peft's: {problem}"
    return None


# -- add_lora -----------------------------------------------------------------------------
class Branchy(nn.Module):
    """A small model whose layer names share substrings: ``proj``, ``out_proj``, ``block.proj``."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.block = nn.Sequential()
        self.block.add_module("proj", nn.Linear(8, 8))
        self.out_proj = nn.Linear(8, 5)

    def forward(self, x):
        return self.out_proj(torch.relu(self.block.proj(torch.relu(self.proj(x)))))


def build_model(config: dict, state: dict) -> nn.Module:
    """The model a case describes: ``config["model"]`` is "bert" (the other keys are the
    ``BertConfig`` of a tiny ``BertModel``) or "branchy"; ``state`` is its state dict."""
    config = dict(config)
    kind = config.pop("model")
    if kind == "bert":
        from transformers import BertConfig, BertModel

        silence()
        model = BertModel(BertConfig(**config))
    elif kind == "branchy":
        model = Branchy()
    else:
        raise ValueError(f"unknown model {kind!r}")
    model.load_state_dict(state)
    return model.eval()


def lora_values(name, r, d_in, d_out):
    """The A and B every check puts into the layer called ``name`` (derived from the name)."""
    g = gen(sum(ord(c) * (i + 1) for i, c in enumerate(name)) % 100003)
    return torch.randn(r, d_in, generator=g) * 0.3, torch.randn(d_out, r, generator=g) * 0.3


def lora_forward(kind, model, seed):
    """The model's output on the case's input (token ids for BERT, vectors otherwise)."""
    if kind == "bert":
        return model(input_ids=torch.randint(0, 50, (2, 9), generator=gen(seed + 100))).last_hidden_state
    return model(torch.randn(4, 6, generator=gen(seed + 100)))


def add_lora_run(fn, config, state, seed, targets, r, alpha):
    """Build the model, let the learner's add_lora wrap it, set every wrapped layer's A and B,
    and report the wrapped layers, the trainable count and the output."""
    model = build_model(config, state)
    result = fn(model, list(targets), r, alpha)
    model = result if isinstance(result, nn.Module) else model
    wrapped = []
    for name, module in model.named_modules():
        A, B = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
        if isinstance(A, torch.Tensor) and isinstance(B, torch.Tensor):
            wrapped.append(name)
            vA, vB = lora_values(name, r, A.shape[1], B.shape[0])
            if A.shape != vA.shape or B.shape != vB.shape:
                raise ContractError(f"{name}: lora_A/lora_B have shapes {tuple(A.shape)}/{tuple(B.shape)}, expected "
                                    f"{tuple(vA.shape)}/{tuple(vB.shape)}")
            with torch.no_grad():
                A.copy_(vA)
                B.copy_(vB)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        out = lora_forward(config["model"], model, seed)
    return {"is_module": isinstance(result, nn.Module), "wrapped": tuple(sorted(wrapped)), "n_trainable": n_trainable,
            "out": out}


def compare_add_lora(expected, got):
    if not isinstance(got, dict):
        return f"could not read your result: {got!r}"
    if not got["is_module"]:
        return "return the model (the same object, modified in place)"
    if got["wrapped"] != expected["wrapped"]:
        missing = sorted(set(expected["wrapped"]) - set(got["wrapped"]))
        extra = sorted(set(got["wrapped"]) - set(expected["wrapped"]))
        return (f"peft wraps {len(expected['wrapped'])} layers, you wrapped {len(got['wrapped'])}"
                + (f"; missing e.g. {missing[0]}" if missing else "") + (f"; not a target: {extra[0]}" if extra else ""))
    if got["n_trainable"] != expected["n_trainable"]:
        return (f"{got['n_trainable']:,} trainable parameters, peft has {expected['n_trainable']:,}: only the LoRA "
                "matrices may keep requires_grad = True")
    problem = compare_tensors(expected["out"], got["out"], atol=1e-5, rtol=1e-4)
    return None if problem is None else f"with the same A and B in every wrapped layer, the output differs: {problem}"
