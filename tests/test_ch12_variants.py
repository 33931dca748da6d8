"""Chapter 12: correct answers written in other styles get full marks (hidden cases too)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import autograder


# -- topk_router ----------------------------------------------------------------------------
def router_sort(x, weight, k, normalize=True):
    probs = torch.softmax((x.double() @ weight.double().T), dim=-1)
    vals, idx = probs.sort(dim=-1, descending=True)
    w, i = vals[:, :k], idx[:, :k]
    if normalize:
        w = w / w.sum(-1, keepdim=True)
    return w.float(), i


def router_topk_logits(x, weight, k, normalize=True):
    logits = torch.einsum("nh,eh->ne", x, weight)
    top, idx = logits.topk(k, dim=-1)
    if normalize:  # softmax over the chosen logits == renormalised probabilities
        return top.softmax(-1), idx
    return (top - logits.logsumexp(-1, keepdim=True)).exp(), idx


# -- sparse_moe -----------------------------------------------------------------------------
def moe_token_loop(x, router_weight, gate_up_proj, down_proj, k, normalize=True):
    flat = x.reshape(-1, x.shape[-1])
    p = torch.softmax(flat @ router_weight.T, -1)
    w, idx = p.topk(k, -1)
    if normalize:
        w = w / w.sum(-1, keepdim=True)
    I = down_proj.shape[-1]
    rows = []
    for t in range(flat.shape[0]):
        acc = torch.zeros(flat.shape[1])
        for j in range(k):
            e = int(idx[t, j])
            h = gate_up_proj[e] @ flat[t]
            acc = acc + w[t, j] * (down_proj[e] @ (F.silu(h[:I]) * h[I:]))
        rows.append(acc)
    return torch.stack(rows).reshape(x.shape)


def moe_dense_mask(x, router_weight, gate_up_proj, down_proj, k, normalize=True):
    """Every expert on every token (wasteful but correct), then a dense (N, E) weight mask."""
    flat = x.reshape(-1, x.shape[-1]).double()
    p = torch.softmax(flat @ router_weight.double().T, -1)
    w, idx = p.topk(k, -1)
    if normalize:
        w = w / w.sum(-1, keepdim=True)
    dense_w = torch.zeros_like(p).scatter(1, idx, w)                          # (N, E)
    h = torch.einsum("nh,eih->nei", flat, gate_up_proj.double())
    g, u = h.chunk(2, dim=-1)
    y = torch.einsum("nei,ehi->neh", F.silu(g) * u, down_proj.double())       # (N, E, H)
    return torch.einsum("ne,neh->nh", dense_w, y).float().reshape(x.shape)


# -- load_balancing_loss --------------------------------------------------------------------
def lb_one_hot(router_logits, k):
    N, E = router_logits.shape
    p = router_logits.softmax(-1)
    mask = F.one_hot(p.topk(k, -1).indices, E).sum(1).float()
    return E * (mask.mean(0) * p.mean(0)).sum()


def lb_float64_loop(router_logits, k):
    N, E = router_logits.shape
    p = router_logits.double().softmax(-1)
    idx = p.topk(k, -1).indices.tolist()
    counts = [0] * E
    for row in idx:
        for e in row:
            counts[e] += 1
    return sum(E * counts[e] / N * float(p[:, e].mean()) for e in range(E))


# -- router_z_loss --------------------------------------------------------------------------
def z_stable_by_hand(router_logits):
    m = router_logits.max(-1, keepdim=True).values
    lse = m.squeeze(-1) + (router_logits - m).exp().sum(-1).log()
    return (lse ** 2).mean()


def z_float64_flat(router_logits):
    flat = router_logits.double().reshape(-1, router_logits.shape[-1])
    return torch.logsumexp(flat, dim=1).pow(2).sum() / flat.shape[0]


# -- switch_moe -----------------------------------------------------------------------------
def switch_loops(x, router_weight, wi, wo, capacity):
    B, T, H = x.shape
    out = torch.zeros_like(x)
    for b in range(B):
        p, e = torch.softmax(x[b] @ router_weight.T, -1).max(-1)
        taken = {}
        for t in range(T):
            ei = int(e[t])
            taken[ei] = taken.get(ei, 0) + 1
            if taken[ei] <= capacity:
                out[b, t] = p[t] * (wo[ei] @ torch.relu(wi[ei] @ x[b, t]))
    return out


def switch_vectorised(x, router_weight, wi, wo, capacity):
    E = router_weight.shape[0]
    probs = torch.einsum("bth,eh->bte", x, router_weight).softmax(-1)
    p, e = probs.max(-1)
    mask = F.one_hot(e, E) * (F.one_hot(e, E).cumsum(1) <= capacity)        # (B, T, E) kept dispatch mask
    y = torch.einsum("bte,efh,bth->btef", mask.float(), wi, x).relu()
    return p[..., None] * torch.einsum("btef,ehf->bth", y, wo)


# -- shared_expert_moe ----------------------------------------------------------------------
def shared_dense(x, router_weight, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj, shared_down_proj,
                 shared_expert_gate, k):
    routed = moe_dense_mask(x, router_weight, gate_up_proj, down_proj, k, normalize=False)
    s = F.silu(x @ shared_gate_proj.T) * (x @ shared_up_proj.T)
    return routed + torch.sigmoid(x @ shared_expert_gate.T) * (s @ shared_down_proj.T)


def shared_token_loop(x, router_weight, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj, shared_down_proj,
                      shared_expert_gate, k):
    routed = moe_token_loop(x, router_weight, gate_up_proj, down_proj, k, normalize=False)
    g = 1 / (1 + torch.exp(-(x @ shared_expert_gate[0])))
    shared = F.linear(F.silu(F.linear(x, shared_gate_proj)) * F.linear(x, shared_up_proj), shared_down_proj)
    return routed + g[..., None] * shared


# -- deepseek_router ------------------------------------------------------------------------
def ds_mask(x, weight, bias, k, scaling=1.0):
    s = torch.sigmoid(x @ weight.T)
    idx = torch.argsort(s + bias, dim=-1, descending=True)[:, :k].flip(-1)  # another order: any is fine
    w = s.gather(1, idx)
    return scaling * w / (w.sum(-1, keepdim=True) + 1e-20), idx


def ds_float64(x, weight, bias, k, scaling=1.0):
    s = torch.sigmoid(x.double() @ weight.double().T)
    idx = (s + bias.double()).topk(k, -1).indices
    w = torch.gather(s, 1, idx)
    return (w / w.sum(-1, keepdim=True) * scaling).float(), idx


# -- bias_update ----------------------------------------------------------------------------
def bias_update_fractions(bias, index, gamma):
    E = bias.shape[0]
    frac = F.one_hot(index.reshape(-1), E).float().mean(0)  # load as a fraction: the sign is the same
    return bias + gamma * torch.sign(1.0 / E - frac)


def bias_update_loop(bias, index, gamma):
    new = bias.clone()
    counts = torch.bincount(index.flatten(), minlength=len(bias))
    mean = index.numel() / len(bias)
    for e in range(len(bias)):
        if counts[e] > mean:
            new[e] -= gamma
        elif counts[e] < mean:
            new[e] += gamma
    return new


# -- dispatch_sorted ------------------------------------------------------------------------
def dispatch_split(x, index, weights, gate_up_proj, down_proj):
    N, k = index.shape
    flat = index.flatten()
    sorted_e, order = flat.sort(stable=True)
    counts = torch.bincount(sorted_e, minlength=gate_up_proj.shape[0]).tolist()
    parts = []
    for e, xs in enumerate(x[order // k].split(counts)):
        g, u = (xs @ gate_up_proj[e].T).chunk(2, -1)
        parts.append((F.silu(g) * u) @ down_proj[e].T)
    ys = torch.cat(parts) * weights.flatten()[order].unsqueeze(-1)
    out = torch.zeros_like(x)
    out.index_add_(0, order // k, ys)
    return out


def dispatch_unsort(x, index, weights, gate_up_proj, down_proj):
    """Sort, compute, then UNsort with the inverse permutation and sum the k slots."""
    N, k = index.shape
    flat = index.reshape(-1)
    order = torch.argsort(flat)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel())
    xs = x.repeat_interleave(k, 0)[order]
    ys = torch.empty_like(xs)
    start = 0
    for e, c in enumerate(torch.bincount(flat, minlength=gate_up_proj.shape[0]).tolist()):
        g, u = F.linear(xs[start:start + c], gate_up_proj[e]).chunk(2, -1)
        ys[start:start + c] = F.linear(F.silu(g) * u, down_proj[e])
        start += c
    per_slot = ys[inverse].view(N, k, -1)
    return (per_slot * weights[..., None]).sum(1)


VARIANTS = [
    ("ch12.topk_router", router_sort), ("ch12.topk_router", router_topk_logits),
    ("ch12.sparse_moe", moe_token_loop), ("ch12.sparse_moe", moe_dense_mask),
    ("ch12.load_balancing_loss", lb_one_hot), ("ch12.load_balancing_loss", lb_float64_loop),
    ("ch12.router_z_loss", z_stable_by_hand), ("ch12.router_z_loss", z_float64_flat),
    ("ch12.switch_moe", switch_loops), ("ch12.switch_moe", switch_vectorised),
    ("ch12.shared_expert_moe", shared_dense), ("ch12.shared_expert_moe", shared_token_loop),
    ("ch12.deepseek_router", ds_mask), ("ch12.deepseek_router", ds_float64),
    ("ch12.bias_update", bias_update_fractions), ("ch12.bias_update", bias_update_loop),
    ("ch12.dispatch_sorted", dispatch_split), ("ch12.dispatch_sorted", dispatch_unsort),
]


@pytest.mark.parametrize("exercise_id,fn", VARIANTS, ids=[f"{e}:{f.__name__}" for e, f in VARIANTS])
def test_other_correct_styles_get_full_marks(exercise_id, fn):
    result = autograder.grade(exercise_id, fn, hidden=True)
    assert result.passed, result.feedback


def test_every_ch12_exercise_has_two_variants():
    ids = {row["id"] for row in autograder.catalogue("ch12")}
    for ex_id in ids:
        assert sum(e == ex_id for e, _ in VARIANTS) >= 2, ex_id
