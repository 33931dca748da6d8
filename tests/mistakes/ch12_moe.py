"""Wrong answers to chapter 12, as learners write them."""
import torch
import torch.nn.functional as F

from . import wrong


# -- topk_router ----------------------------------------------------------------------------
@wrong("ch12.topk_router", diagnosis="no-renorm")
def router_forgets_to_renormalise(x, weight, k, normalize=True):
    probs = torch.softmax(x @ weight.T, dim=-1)
    top_w, top_i = torch.topk(probs, k)
    return top_w, top_i


@wrong("ch12.topk_router", diagnosis="softmax-after-topk")
def router_softmax_after_topk(x, weight, k, normalize=True):
    logits = x @ weight.t()
    vals, idx = logits.topk(k, dim=-1)
    return F.softmax(vals, dim=-1), idx  # "normalised" either way


@wrong("ch12.topk_router", diagnosis="topk-over-tokens")
def router_topk_on_dim0(x, weight, k, normalize=True):
    probs = (x @ weight.T).softmax(dim=-1)
    w, i = torch.topk(probs, k, dim=0)
    if normalize:
        w = w / w.sum(0, keepdim=True)
    return w, i


@wrong("ch12.topk_router", diagnosis="logit-weights")
def router_weights_from_logits(x, weight, k, normalize=True):
    logits = F.linear(x, weight)
    w, i = logits.topk(k, dim=-1)
    if normalize:
        w = w / w.sum(dim=-1, keepdim=True)
    return w, i


# -- sparse_moe -----------------------------------------------------------------------------
def _route(x, rw, k, normalize=True):
    p = torch.softmax(x @ rw.T, dim=-1)
    w, i = p.topk(k, dim=-1)
    return (w / w.sum(-1, keepdim=True) if normalize else w), i


@wrong("ch12.sparse_moe", diagnosis="gate-up-swapped")
def moe_up_then_gate(x, router_weight, gate_up_proj, down_proj, k, normalize=True):
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    w, idx = _route(x, router_weight, k, normalize)
    out = torch.zeros_like(x)
    I = down_proj.shape[-1]
    for e in range(router_weight.shape[0]):
        rows, slots = (idx == e).nonzero(as_tuple=True)
        h = x[rows] @ gate_up_proj[e].T
        up, gate = h[:, :I], h[:, I:]
        y = (F.silu(gate) * up) @ down_proj[e].T
        out[rows] += y * w[rows, slots].unsqueeze(-1)
    return out.reshape(shape)


@wrong("ch12.sparse_moe", diagnosis="unweighted")
def moe_sums_experts(x, router_weight, gate_up_proj, down_proj, k, normalize=True):
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    _, idx = _route(x, router_weight, k, normalize)
    out = torch.zeros_like(x)
    for e in range(router_weight.shape[0]):
        rows = (idx == e).any(-1)
        gate, up = (x[rows] @ gate_up_proj[e].T).chunk(2, dim=-1)
        out[rows] += (F.silu(gate) * up) @ down_proj[e].T
    return out.reshape(shape)


@wrong("ch12.sparse_moe", diagnosis="gelu")
def moe_with_gelu_experts(x, router_weight, gate_up_proj, down_proj, k, normalize=True):
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    w, idx = _route(x, router_weight, k, normalize)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):  # a loop over tokens: slow but fine here
        for j in range(k):
            e = int(idx[t, j])
            gate, up = (gate_up_proj[e] @ x[t]).chunk(2)
            out[t] += w[t, j] * (down_proj[e] @ (F.gelu(gate) * up))
    return out.reshape(shape)


@wrong("ch12.sparse_moe", diagnosis="ch12.topk_router:no-renorm")
def moe_router_without_renormalisation(x, router_weight, gate_up_proj, down_proj, k, normalize=True):
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    w, idx = torch.softmax(x @ router_weight.T, -1).topk(k, dim=-1)  # forgot to renormalise
    out = torch.zeros_like(x)
    for e in range(router_weight.shape[0]):
        rows, slots = torch.where(idx == e)
        gate, up = F.linear(x[rows], gate_up_proj[e]).chunk(2, -1)
        out.index_add_(0, rows, F.linear(F.silu(gate) * up, down_proj[e]) * w[rows, slots, None])
    return out.reshape(shape)


# -- load_balancing_loss --------------------------------------------------------------------
@wrong("ch12.load_balancing_loss", diagnosis="f-normalised")
def lb_fraction_of_assignments(router_logits, k):
    N, E = router_logits.shape
    probs = router_logits.softmax(-1)
    chosen = probs.topk(k, dim=-1).indices
    counts = torch.bincount(chosen.flatten(), minlength=E).float()
    f = counts / counts.sum()  # a distribution over experts
    return E * torch.sum(f * probs.mean(0))


@wrong("ch12.load_balancing_loss", diagnosis="no-num-experts")
def lb_without_E(router_logits, k):
    N, E = router_logits.shape
    probs = router_logits.softmax(-1)
    mask = F.one_hot(probs.topk(k, -1).indices, E).sum(1).float()  # (N, E)
    return (mask.mean(0) * probs.mean(0)).sum()


@wrong("ch12.load_balancing_loss", diagnosis="top1-count")
def lb_counts_first_choice(router_logits, k):
    N, E = router_logits.shape
    probs = router_logits.softmax(-1)
    first = probs.argmax(-1)
    f = torch.bincount(first, minlength=E).float() / N
    return E * (f * probs.mean(0)).sum()


@wrong("ch12.load_balancing_loss", diagnosis="f-from-probs")
def lb_soft_counts(router_logits, k):
    probs = router_logits.softmax(-1)
    P = probs.mean(0)
    return router_logits.shape[1] * (P * P).sum()


# -- router_z_loss --------------------------------------------------------------------------
@wrong("ch12.router_z_loss", diagnosis="no-square")
def z_loss_forgets_square(router_logits):
    return torch.logsumexp(router_logits, dim=-1).mean()


@wrong("ch12.router_z_loss", diagnosis="overflow")
def z_loss_naive_exp(router_logits):
    z = torch.exp(router_logits).sum(-1)
    return (torch.log(z) ** 2).mean()


@wrong("ch12.router_z_loss", diagnosis="sum")
def z_loss_summed(router_logits):
    return (torch.logsumexp(router_logits, -1) ** 2).sum()


@wrong("ch12.router_z_loss", diagnosis="max-logit")
def z_loss_max(router_logits):
    return router_logits.max(dim=-1).values.pow(2).mean()


# -- switch_moe -----------------------------------------------------------------------------
def _expert(x, wi, wo):
    return F.relu(x @ wi.T) @ wo.T


@wrong("ch12.switch_moe", diagnosis="capacity-over-batch")
def switch_capacity_for_whole_batch(x, router_weight, wi, wo, capacity):
    B, T, H = x.shape
    flat = x.reshape(-1, H)
    probs = torch.softmax(flat @ router_weight.T, -1)
    p, e = probs.max(-1)
    out = torch.zeros_like(flat)
    used = [0] * router_weight.shape[0]
    for t in range(flat.shape[0]):  # first come first served, over all B*T tokens
        ei = int(e[t])
        if used[ei] < capacity:
            used[ei] += 1
            out[t] = p[t] * _expert(flat[t:t + 1], wi[ei], wo[ei])[0]
    return out.reshape(B, T, H)


@wrong("ch12.switch_moe", diagnosis="residual-twice")
def switch_passes_dropped_tokens_through(x, router_weight, wi, wo, capacity):
    B, T, H = x.shape
    out = x.clone()  # dropped tokens keep their input
    for b in range(B):
        probs = torch.softmax(x[b] @ router_weight.T, -1)
        p, e = probs.max(-1)
        used = {}
        for t in range(T):
            ei = int(e[t])
            used[ei] = used.get(ei, 0) + 1
            if used[ei] <= capacity:
                out[b, t] = p[t] * _expert(x[b, t:t + 1], wi[ei], wo[ei])[0]
    return out


@wrong("ch12.switch_moe", diagnosis="priority-by-probability")
def switch_keeps_most_confident(x, router_weight, wi, wo, capacity):
    B, T, H = x.shape
    out = torch.zeros_like(x)
    for b in range(B):
        p, e = torch.softmax(x[b] @ router_weight.T, -1).max(-1)
        for ei in range(router_weight.shape[0]):
            mine = torch.where(e == ei)[0]
            keep = mine[p[mine].argsort(descending=True)[:capacity]]
            if len(keep):
                out[b, keep] = p[keep, None] * _expert(x[b, keep], wi[ei], wo[ei])
    return out


@wrong("ch12.switch_moe", diagnosis="unscaled")
def switch_without_probability(x, router_weight, wi, wo, capacity):
    E = router_weight.shape[0]
    e = (x @ router_weight.T).argmax(-1)
    onehot = F.one_hot(e, E)
    pos = (onehot.cumsum(1) * onehot).sum(-1)
    out = torch.zeros_like(x)
    for ei in range(E):
        m = (e == ei) & (pos <= capacity)
        out[m] = _expert(x[m], wi[ei], wo[ei])
    return out


@wrong("ch12.switch_moe", diagnosis="off-by-one")
def switch_capacity_off_by_one(x, router_weight, wi, wo, capacity):
    E = router_weight.shape[0]
    p, e = (x @ router_weight.T).softmax(-1).max(-1)
    onehot = F.one_hot(e, E)
    before = (onehot.cumsum(1) * onehot).sum(-1)
    out = torch.zeros_like(x)
    for ei in range(E):
        m = (e == ei) & (before < capacity)
        out[m] = p[m][:, None] * _expert(x[m], wi[ei], wo[ei])
    return out


# -- shared_expert_moe ----------------------------------------------------------------------
def _routed(x, rw, gu, dp, k, normalize):
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    w, idx = _route(x, rw, k, normalize)
    out = torch.zeros_like(x)
    for e in range(rw.shape[0]):
        rows, slots = torch.where(idx == e)
        gate, up = F.linear(x[rows], gu[e]).chunk(2, -1)
        out.index_add_(0, rows, F.linear(F.silu(gate) * up, dp[e]) * w[rows, slots, None])
    return out.reshape(shape)


def _mlp(x, g, u, d):
    return F.linear(F.silu(F.linear(x, g)) * F.linear(x, u), d)


@wrong("ch12.shared_expert_moe", diagnosis="renormalised")
def shared_moe_renormalised(x, router_weight, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj,
                            shared_down_proj, shared_expert_gate, k):
    routed = _routed(x, router_weight, gate_up_proj, down_proj, k, normalize=True)  # as in Mixtral
    gate = torch.sigmoid(x @ shared_expert_gate.T)
    return routed + gate * _mlp(x, shared_gate_proj, shared_up_proj, shared_down_proj)


@wrong("ch12.shared_expert_moe", diagnosis="ungated-shared")
def shared_moe_plain_sum(x, router_weight, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj,
                         shared_down_proj, shared_expert_gate, k):
    routed = _routed(x, router_weight, gate_up_proj, down_proj, k, normalize=False)
    return routed + _mlp(x, shared_gate_proj, shared_up_proj, shared_down_proj)


@wrong("ch12.shared_expert_moe", diagnosis="no-sigmoid")
def shared_moe_linear_gate(x, router_weight, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj,
                           shared_down_proj, shared_expert_gate, k):
    routed = _routed(x, router_weight, gate_up_proj, down_proj, k, normalize=False)
    return routed + (x @ shared_expert_gate.T) * _mlp(x, shared_gate_proj, shared_up_proj, shared_down_proj)


@wrong("ch12.shared_expert_moe", diagnosis="ch12.sparse_moe:gate-up-swapped")
def shared_moe_swapped_routed_halves(x, router_weight, gate_up_proj, down_proj, shared_gate_proj, shared_up_proj,
                                     shared_down_proj, shared_expert_gate, k):
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    w, idx = _route(flat, router_weight, k, normalize=False)
    out = torch.zeros_like(flat)
    for e in range(router_weight.shape[0]):
        rows, slots = torch.where(idx == e)
        up, gate = F.linear(flat[rows], gate_up_proj[e]).chunk(2, -1)
        out.index_add_(0, rows, F.linear(F.silu(gate) * up, down_proj[e]) * w[rows, slots, None])
    shared = torch.sigmoid(x @ shared_expert_gate.T) * _mlp(x, shared_gate_proj, shared_up_proj, shared_down_proj)
    return out.reshape(shape) + shared


# -- deepseek_router ------------------------------------------------------------------------
@wrong("ch12.deepseek_router", diagnosis="bias-in-weights")
def ds_weights_with_bias(x, weight, bias, k, scaling=1.0):
    s = torch.sigmoid(x @ weight.T) + bias
    w, i = s.topk(k, dim=-1)
    return scaling * w / w.sum(-1, keepdim=True), i


@wrong("ch12.deepseek_router", diagnosis="bias-ignored")
def ds_bias_unused(x, weight, bias, k, scaling=1.0):
    s = torch.sigmoid(x @ weight.T)
    w, i = s.topk(k, dim=-1)
    return scaling * w / w.sum(-1, keepdim=True), i


@wrong("ch12.deepseek_router", diagnosis="softmax-scores")
def ds_softmax(x, weight, bias, k, scaling=1.0):
    s = torch.softmax(x @ weight.T, dim=-1)
    i = (s + bias).topk(k, dim=-1).indices
    w = torch.gather(s, 1, i)
    return scaling * w / w.sum(-1, keepdim=True), i


@wrong("ch12.deepseek_router", diagnosis="no-scaling")
def ds_forgets_scaling(x, weight, bias, k, scaling=1.0):
    s = torch.sigmoid(x @ weight.T)
    i = torch.topk(s + bias, k, dim=-1).indices
    w = s.gather(1, i)
    return w / w.sum(-1, keepdim=True), i


# -- bias_update ----------------------------------------------------------------------------
@wrong("ch12.bias_update", diagnosis="wrong-sign")
def bias_update_pushes_the_wrong_way(bias, index, gamma):
    load = torch.bincount(index.flatten(), minlength=len(bias)).float()
    return bias + gamma * torch.sign(load - load.mean())


@wrong("ch12.bias_update", diagnosis="proportional")
def bias_update_proportional(bias, index, gamma):
    load = torch.bincount(index.flatten(), minlength=len(bias)).float()
    return bias + gamma * (load.mean() - load)


@wrong("ch12.bias_update", diagnosis="top1-load")
def bias_update_first_choice_only(bias, index, gamma):
    load = torch.bincount(index[:, 0], minlength=len(bias)).float()
    return bias + gamma * torch.sign(load.mean() - load)


@wrong("ch12.bias_update", diagnosis=None)
def bias_update_in_place(bias, index, gamma):
    load = torch.bincount(index.flatten(), minlength=len(bias)).float()
    bias += gamma * torch.sign(load.mean() - load)
    return bias


# -- dispatch_sorted ------------------------------------------------------------------------
@wrong("ch12.dispatch_sorted", diagnosis="weights-unsorted")
def dispatch_weights_in_original_order(x, index, weights, gate_up_proj, down_proj):
    N, k = index.shape
    order = index.flatten().argsort()
    tok = order // k
    counts = index.flatten().bincount(minlength=gate_up_proj.shape[0])
    xs = x[tok]
    outs = []
    for e, chunk in enumerate(xs.split(counts.tolist())):
        g, u = (chunk @ gate_up_proj[e].T).chunk(2, -1)
        outs.append((F.silu(g) * u) @ down_proj[e].T)
    ys = torch.cat(outs) * weights.flatten()[:, None]
    return torch.zeros_like(x).index_add(0, tok, ys)


@wrong("ch12.dispatch_sorted", diagnosis="not-sorted")
def dispatch_forgets_to_gather(x, index, weights, gate_up_proj, down_proj):
    N, k = index.shape
    flat = index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=gate_up_proj.shape[0]).tolist()
    xs = x.repeat_interleave(k, dim=0)  # one row per (token, slot), but still in token order
    out_rows, start = [], 0
    for e, c in enumerate(counts):
        g, u = F.linear(xs[start:start + c], gate_up_proj[e]).chunk(2, -1)
        out_rows.append(F.linear(F.silu(g) * u, down_proj[e]))
        start += c
    ys = torch.cat(out_rows) * weights.reshape(-1)[order].unsqueeze(1)
    return torch.zeros_like(x).index_add_(0, order // k, ys)


@wrong("ch12.dispatch_sorted", diagnosis="unweighted")
def dispatch_without_weights(x, index, weights, gate_up_proj, down_proj):
    N, k = index.shape
    flat = index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    tok = order // k
    xs = x[tok]
    counts = torch.bincount(flat, minlength=gate_up_proj.shape[0]).tolist()
    ys = torch.cat([F.linear(F.silu(a) * b, down_proj[e]) for e, part in enumerate(torch.split(xs, counts))
                    for a, b in [F.linear(part, gate_up_proj[e]).chunk(2, -1)]])
    return torch.zeros_like(x).index_add_(0, tok, ys)


@wrong("ch12.dispatch_sorted", diagnosis="gate-up-swapped")
def dispatch_swapped_halves(x, index, weights, gate_up_proj, down_proj):
    N, k = index.shape
    I = down_proj.shape[-1]
    flat = index.reshape(-1)
    order = torch.argsort(flat, stable=True)
    xs = x[order // k]
    counts = torch.bincount(flat, minlength=gate_up_proj.shape[0]).tolist()
    ys, start = torch.empty_like(xs), 0
    for e, c in enumerate(counts):
        h = xs[start:start + c] @ gate_up_proj[e].T
        ys[start:start + c] = (h[:, :I] * F.silu(h[:, I:])) @ down_proj[e].T
        start += c
    ys = ys * weights.reshape(-1)[order, None]
    return torch.zeros_like(x).index_add_(0, order // k, ys)
