"""Correct answers to chapter 9, in other styles than the reference."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import right


# -- ClassifierHead -------------------------------------------------------------------------
@right("ch09.classifier_head", style="mask turned into averaging weights, einsum for the pooling")
class ClassifierHeadEinsum(nn.Module):
    def __init__(self, hidden_size, num_labels, dropout=0.1):
        super().__init__()
        self.dropout = nn.Dropout(p=dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden, attention_mask):
        w = attention_mask.to(hidden.dtype)
        w = w / w.sum(dim=1, keepdim=True)
        pooled = torch.einsum("bt,btd->bd", w, hidden)
        return self.classifier(self.dropout(pooled))


@right("ch09.classifier_head", style="a loop over the batch, boolean indexing of the real tokens")
class ClassifierHeadLoop(nn.Module):
    def __init__(self, hidden_size, num_labels, dropout=0.1):
        super().__init__()
        self.classifier = nn.Linear(hidden_size, num_labels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden, attention_mask):
        pooled = torch.stack([hidden[b][attention_mask[b].bool()].mean(dim=0) for b in range(hidden.shape[0])])
        return self.classifier(self.dropout(pooled))


@right("ch09.classifier_head", style="functional dropout driven by self.training, masked_fill before summing")
class ClassifierHeadFunctionalDropout(nn.Module):
    def __init__(self, hidden_size, num_labels, dropout=0.1):
        super().__init__()
        self.p = dropout
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden, attention_mask):
        pad = attention_mask.unsqueeze(-1) == 0
        total = hidden.masked_fill(pad, 0.0).sum(dim=1)
        count = attention_mask.sum(dim=1, keepdim=True).to(hidden.dtype)
        pooled = F.dropout(total / count, p=self.p, training=self.training)
        return self.classifier(pooled)


# -- LoRALinear -----------------------------------------------------------------------------
@right("ch09.lora_linear", style="F.linear twice, scaling kept as a float, base frozen through requires_grad")
class LoRALinearFunctional(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base
        base.weight.requires_grad = False
        if base.bias is not None:
            base.bias.requires_grad = False
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.empty(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        self.scaling = float(alpha) / r

    def forward(self, x):
        low_rank = F.linear(F.linear(x, self.lora_A), self.lora_B)
        return self.base(x) + low_rank * self.scaling


@right("ch09.lora_linear", style="A drawn uniformly in +-1/sqrt(in) (the same law as kaiming_uniform(a=sqrt 5)), einsum forward")
class LoRALinearEinsum(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base.requires_grad_(False)
        bound = 1.0 / math.sqrt(base.in_features)
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features).uniform_(-bound, bound))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.register_buffer("scale", torch.tensor(alpha / r), persistent=False)
        self.scaling = alpha / r

    def forward(self, x):
        down = torch.einsum("...i,ri->...r", x, self.lora_A)
        up = torch.einsum("...r,or->...o", down, self.lora_B)
        return self.base(x) + self.scale * up


# -- lora_merge -----------------------------------------------------------------------------
@right("ch09.lora_merge", style="torch.addmm with alpha = scaling")
def lora_merge_addmm(weight, lora_A, lora_B, alpha, r):
    return torch.addmm(weight, lora_B, lora_A, beta=1.0, alpha=alpha / r)


@right("ch09.lora_merge", style="a sum of r outer products")
def lora_merge_outer(weight, lora_A, lora_B, alpha, r):
    merged = weight.clone()
    for k in range(lora_A.shape[0]):
        merged += (alpha / r) * torch.outer(lora_B[:, k], lora_A[k])
    return merged


@right("ch09.lora_merge", style="einsum in float64, cast back")
def lora_merge_einsum(weight, lora_A, lora_B, alpha, r):
    delta = torch.einsum("or,ri->oi", lora_B.double(), lora_A.double()) * (alpha / r)
    return (weight.double() + delta).to(weight.dtype)


# -- add_lora -------------------------------------------------------------------------------
@right("ch09.add_lora", style="recursive walk over named_children, the learner's own LoRALinear")
def add_lora_recursive(model, target_modules, r, alpha):
    model.requires_grad_(False)
    targets = set(target_modules)

    def walk(module):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and name in targets:
                setattr(module, name, LoRALinearFunctional(child, r, alpha))
            else:
                walk(child)

    walk(model)
    return model


@right("ch09.add_lora", style="dotted names resolved with getattr step by step, replacement through _modules")
def add_lora_by_path(model, target_modules, r, alpha):
    for p in model.parameters():
        p.requires_grad = False
    paths = [name for name, m in model.named_modules()
             if type(m) is nn.Linear and name.split(".")[-1] in target_modules]
    for path in paths:
        *parents, leaf = path.split(".")
        owner = model
        for part in parents:
            owner = getattr(owner, part)
        owner._modules[leaf] = LoRALinearEinsum(owner._modules[leaf], r, alpha)
    return model


# -- token_losses ---------------------------------------------------------------------------
@right("ch09.token_losses", style="own stable log-softmax in float64, gather")
def token_losses_manual(logits, tokens):
    pred = logits[:, :-1].double()
    nxt = tokens[:, 1:]
    m = pred.max(-1, keepdim=True).values
    log_z = m + torch.log(torch.exp(pred - m).sum(-1, keepdim=True))
    picked = torch.gather(pred, 2, nxt.unsqueeze(2))
    return (log_z - picked).squeeze(2).float()


@right("ch09.token_losses", style="torch.distributions.Categorical(logits=...).log_prob")
def token_losses_categorical(logits, tokens):
    dist = torch.distributions.Categorical(logits=logits[:, :-1])
    return -dist.log_prob(tokens[:, 1:])


# -- induction_score ------------------------------------------------------------------------
@right("ch09.induction_score", style="Python loop over the queries, running sum")
def induction_score_loop(attn, period):
    T = attn.shape[-1]
    total = torch.zeros(attn.shape[:-2], dtype=torch.float64)
    for t in range(period, T):
        total = total + attn[..., t, t - period + 1].double()
    return (total / (T - period)).to(attn.dtype)


@right("ch09.induction_score", style="a (T, T) 0/1 pattern of the induction positions, weighted sum")
def induction_score_pattern(attn, period):
    T = attn.shape[-1]
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    pattern = ((q >= period) & (k == q - period + 1)).to(attn.dtype)
    return (attn * pattern).sum(dim=(-2, -1)) / pattern.sum()
