"""Wrong answers to chapter 9, as learners write them."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import wrong


# -- ClassifierHead -------------------------------------------------------------------------
@wrong("ch09.classifier_head", diagnosis="cls-token")
class HeadOnFirstToken(nn.Module):
    def __init__(self, hidden_size, num_labels, dropout=0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden, attention_mask):
        return self.classifier(self.dropout(hidden[:, 0, :]))


@wrong("ch09.classifier_head", diagnosis="padding-included")
class HeadPlainMean(nn.Module):
    def __init__(self, hidden_size, num_labels, dropout=0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden, attention_mask):
        return self.classifier(self.dropout(hidden.mean(dim=1)))


@wrong("ch09.classifier_head", diagnosis="sum")
class HeadMaskedSum(nn.Module):
    def __init__(self, hidden_size, num_labels, dropout=0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden, attention_mask):
        pooled = (hidden * attention_mask.unsqueeze(-1)).sum(1)
        return self.classifier(self.dropout(pooled))


@wrong("ch09.classifier_head", diagnosis=None)
class HeadWithoutDropout(nn.Module):
    def __init__(self, hidden_size, num_labels, dropout=0.1):
        super().__init__()
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        return self.classifier((hidden * m).sum(1) / m.sum(1))


@wrong("ch09.classifier_head", diagnosis=None)
class HeadFunctionalDropoutAlwaysOn(nn.Module):
    def __init__(self, hidden_size, num_labels, dropout=0.1):
        super().__init__()
        self.p = dropout
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1)
        return self.classifier(F.dropout(pooled, self.p))  # training=True by default, even in eval mode


# -- LoRALinear -----------------------------------------------------------------------------
@wrong("ch09.lora_linear", diagnosis="inverted-scaling")
class LoRAScaledByROverAlpha(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad = False
        self.base.bias.requires_grad = False
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.scaling = r / alpha

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling


@wrong("ch09.lora_linear", diagnosis="random-B")
class LoRABothRandom(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad = False
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) / math.sqrt(base.in_features))
        self.lora_B = nn.Parameter(torch.randn(base.out_features, r) / math.sqrt(r))
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T


@wrong("ch09.lora_linear", diagnosis="not-frozen")
class LoRAForgetsToFreeze(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) * 0.01)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T


@wrong("ch09.lora_linear", diagnosis="no-scaling")
class LoRAWithoutScaling(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) * 0.01)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + x @ self.lora_A.T @ self.lora_B.T


@wrong("ch09.lora_linear", diagnosis=None)
class LoRAFullMatrixFromDetachedWeights(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) * 0.01)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.scaling = alpha / r

    def forward(self, x):
        delta = (self.lora_B @ self.lora_A).detach()  # no gradient reaches A and B
        return self.base(x) + self.scaling * x @ delta.T


# -- lora_merge -----------------------------------------------------------------------------
@wrong("ch09.lora_merge", diagnosis="transposed")
def lora_merge_transposed(weight, lora_A, lora_B, alpha, r):
    return weight + (alpha / r) * (lora_A.T @ lora_B.T)


@wrong("ch09.lora_merge", diagnosis="inverted-scaling")
def lora_merge_r_over_alpha(weight, lora_A, lora_B, alpha, r):
    return weight + (r / alpha) * lora_B @ lora_A


@wrong("ch09.lora_merge", diagnosis="delta-only")
def lora_merge_forgets_base(weight, lora_A, lora_B, alpha, r):
    return alpha / r * torch.matmul(lora_B, lora_A)


@wrong("ch09.lora_merge", diagnosis=None)
def lora_merge_in_place(weight, lora_A, lora_B, alpha, r):
    weight += alpha / r * lora_B @ lora_A  # modifies the caller's weight
    return weight


# -- add_lora -------------------------------------------------------------------------------
class _MyLoRA(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad = False
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) * 0.01)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.lora_A.T) @ self.lora_B.T


@wrong("ch09.add_lora", diagnosis="not-frozen")
def add_lora_trains_everything(model, target_modules, r, alpha):
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.split(".")[-1] in target_modules:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.split(".")[-1], _MyLoRA(module, r, alpha))
    return model


@wrong("ch09.add_lora", diagnosis="all-linear")
def add_lora_everywhere(model, target_modules, r, alpha):
    model.requires_grad_(False)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.split(".")[-1], _MyLoRA(module, r, alpha))
    return model


@wrong("ch09.add_lora", diagnosis="first-only")
def add_lora_returns_after_first(model, target_modules, r, alpha):
    model.requires_grad_(False)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[-1] in target_modules:
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.split(".")[-1], _MyLoRA(module, r, alpha))
            return model  # the loop cannot go on after changing the module tree, so it stops here
    return model


@wrong("ch09.add_lora", diagnosis=None)
def add_lora_substring_match(model, target_modules, r, alpha):
    model.requires_grad_(False)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and any(t in name for t in target_modules):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.split(".")[-1], _MyLoRA(module, r, alpha))
    return model


# -- token_losses ---------------------------------------------------------------------------
@wrong("ch09.token_losses", diagnosis="no-shift")
def token_losses_same_position(logits, tokens):
    logp = logits.log_softmax(-1)
    return -logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)[:, 1:]


@wrong("ch09.token_losses", diagnosis="wrong-way")
def token_losses_shift_backwards(logits, tokens):
    logp = logits[:, 1:].log_softmax(-1)
    return -logp.gather(-1, tokens[:, :-1, None])[..., 0]


@wrong("ch09.token_losses", diagnosis="log-prob")
def token_losses_log_probs(logits, tokens):
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    return logp.gather(2, tokens[:, 1:].unsqueeze(2)).squeeze(2)


@wrong("ch09.token_losses", diagnosis=None)
def token_losses_mean(logits, tokens):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


# -- induction_score ------------------------------------------------------------------------
@wrong("ch09.induction_score", diagnosis="duplicate-token")
def induction_score_same_token(attn, period):
    T = attn.shape[-1]
    vals = [attn[..., t, t - period] for t in range(period, T)]
    return torch.stack(vals, -1).mean(-1)


@wrong("ch09.induction_score", diagnosis="previous-token")
def induction_score_previous_token(attn, period):
    return torch.diagonal(attn, offset=-1, dim1=-2, dim2=-1)[..., period - 1:].mean(-1)


@wrong("ch09.induction_score", diagnosis="early-queries")
def induction_score_whole_diagonal(attn, period):
    return torch.diagonal(attn, offset=-(period - 1), dim1=-2, dim2=-1).mean(-1)


@wrong("ch09.induction_score", diagnosis="sum")
def induction_score_total(attn, period):
    T = attn.shape[-1]
    q = torch.arange(period, T)
    return attn[..., q, q - period + 1].sum(-1)
