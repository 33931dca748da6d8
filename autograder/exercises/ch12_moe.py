"""Chapter 12 - Mixture of Experts.

References, all independent of the course's solutions (Hugging Face ``transformers``,
experts run as the plain eager loop, weights copied in):
- top-k router: ``MixtralTopKRouter`` (renormalised) and ``Qwen2MoeTopKRouter`` (not);
- sparse MoE block: ``MixtralSparseMoeBlock``; without renormalisation ``Qwen2MoeTopKRouter``
  followed by ``Qwen2MoeExperts``;
- load-balancing loss: ``mixtral.load_balancing_loss_func``; router z-loss:
  ``switch_transformers.router_z_loss_func``;
- capacity and dropping: ``SwitchTransformersSparseMLP``;
- shared expert: ``Qwen2MoeSparseMoeBlock``;
- DeepSeek-V3 router: ``DeepseekV3TopkRouter`` (one group);
- the auxiliary-loss-free bias update has no library implementation (transformers never
  updates ``e_score_correction_bias``): it is re-derived here from Wang et al. (2024) with a
  plain Python loop over the experts;
- sorted dispatch: ``MixtralExperts`` with ``experts_implementation="eager"`` (the loop).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..core import Case, Exercise, Mistake, close_tensors, hidden_seed, inherit, register
from ..drivers.ch12_moe import compare_routing, compare_scalar

CH = "ch12"
SOL = "solutions.ch12_moe"
MIXTRAL = "transformers.models.mixtral.modeling_mixtral"
QWEN = "transformers.models.qwen2_moe.modeling_qwen2_moe"
SWITCH = "transformers.models.switch_transformers.modeling_switch_transformers"
DEEPSEEK = "transformers.models.deepseek_v3.modeling_deepseek_v3"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _silence():
    import warnings

    from transformers.utils import logging

    logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module="transformers")


def _hidden_shape(ex_id: str, i: int, choices: dict) -> dict:
    """Random shape parameters of hidden case i, drawn from the secret."""
    g = _gen(hidden_seed(ex_id, i, "shape"))
    return {k: v[int(torch.randint(len(v), (1,), generator=g))] for k, v in choices.items()}


def _close_scalar(atol=1e-5, rtol=1e-5):
    return functools.partial(compare_scalar, atol=atol, rtol=rtol)


# ========================================================================================
# shared set-up: router and expert weights
# ========================================================================================
def _moe_weights(g, N, H, I, E, lead=None):
    x = torch.randn(*(lead or (N,)), H, generator=g)
    rw = torch.randn(E, H, generator=g) / math.sqrt(H) * 1.5
    gu = torch.randn(E, 2 * I, H, generator=g) / math.sqrt(H)
    dp = torch.randn(E, H, I, generator=g) / math.sqrt(I)
    return x, rw, gu, dp


def _mixtral_config(H, I, E, k):
    from transformers import MixtralConfig

    return MixtralConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=k,
                         num_attention_heads=1, num_key_value_heads=1, router_jitter_noise=0.0,
                         experts_implementation="eager")


def _qwen_config(H, I, E, k, S=8, norm=False):
    from transformers import Qwen2MoeConfig

    return Qwen2MoeConfig(hidden_size=H, moe_intermediate_size=I, num_experts=E, num_experts_per_tok=k,
                          shared_expert_intermediate_size=S, norm_topk_prob=norm, num_attention_heads=1,
                          num_key_value_heads=1, experts_implementation="eager")


# ========================================================================================
# topk_router
# ========================================================================================
def _router_expected(x, w, k, normalize):
    _silence()
    E, H = w.shape
    if normalize:
        from transformers.models.mixtral.modeling_mixtral import MixtralTopKRouter

        router = MixtralTopKRouter(_mixtral_config(H, 8, E, k))
    else:
        from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeTopKRouter

        router = Qwen2MoeTopKRouter(_qwen_config(H, 8, E, k))
    with torch.no_grad():
        router.weight.copy_(w)
        _, weights, index = router(x)
    return weights, index


def _router_cases(hidden: bool):
    specs = [("N=6 tokens, H=8, E=4 experts, k=2", 0, 6, 8, 4, 2, True),
             ("E=8, k=3", 1, 10, 16, 8, 3, True),
             ("k=1: one expert per token, weight 1", 2, 5, 8, 4, 1, True),
             ("normalize=False (Qwen2-MoE): raw probabilities", 3, 7, 8, 6, 2, False)]
    for name, seed, N, H, E, k, norm in specs:
        g = _gen(seed)
        x, w = torch.randn(N, H, generator=g), torch.randn(E, H, generator=g)
        yield Case(name, (x, w, k, norm), expected=lambda x=x, w=w, k=k, n=norm: _router_expected(x, w, k, n),
                   compare=compare_routing)
    if hidden:
        for i in range(3):
            s = _hidden_shape("ch12.topk_router", i, {"N": [9, 17, 33], "H": [8, 16], "E": [4, 8, 16], "k": [1, 2, 4]})
            g = _gen(hidden_seed("ch12.topk_router", i))
            x, w = torch.randn(s["N"], s["H"], generator=g), torch.randn(s["E"], s["H"], generator=g)
            norm = i != 1
            yield Case(f"hidden case {i + 1} (normalize={norm})",
                       (x, w, s["k"], norm),
                       expected=lambda x=x, w=w, k=s["k"], n=norm: _router_expected(x, w, k, n), compare=compare_routing)


def _router_wrong(kind):
    def fn(x, weight, k, normalize=True):
        logits = F.linear(x, weight).float()
        if kind == "softmax-after-topk":
            v, i = logits.topk(k, dim=-1)
            return v.softmax(-1), i
        if kind == "logit-weights":
            v, i = logits.topk(k, dim=-1)
            return (v / v.sum(-1, keepdim=True) if normalize else v), i
        probs = logits.softmax(-1)
        if kind == "topk-over-tokens":
            v, i = probs.topk(k, dim=0)
            return (v / v.sum(0, keepdim=True) if normalize else v), i
        v, i = probs.topk(k, dim=-1)
        return v, i  # no-renorm
    return fn


register(Exercise(
    id="ch12.topk_router", chapter=CH, title="The top-k router", points=1, name="topk_router",
    signature="topk_router(x: Tensor[N, H], weight: Tensor[E, H], k: int, normalize: bool = True) "
              "-> (weights: Tensor[N, k], index: LongTensor[N, k])",
    reference="transformers MixtralTopKRouter (normalize=True) and Qwen2MoeTopKRouter (normalize=False), weight copied",
    solution=f"{SOL}:topk_router", cases=_router_cases,
    forbidden=[f"{MIXTRAL}:MixtralTopKRouter", f"{QWEN}:Qwen2MoeTopKRouter"],
    mistakes=[
        Mistake("no-renorm", "your k weights are the raw softmax probabilities: with normalize=True (Mixtral) divide "
                "them by their sum so each token's weights add up to 1", _router_wrong("no-renorm")),
        Mistake("softmax-after-topk", "you renormalised where the model does not: a softmax over the top-k logits "
                "(softmax AFTER top-k) gives the same numbers as renormalising. With normalize=False the weights are "
                "the probabilities of the softmax over ALL E experts", _router_wrong("softmax-after-topk")),
        Mistake("topk-over-tokens", "you took the top k over the tokens (dim 0): each TOKEN chooses k experts, so "
                "take the top k along the expert dimension (dim=-1)", _router_wrong("topk-over-tokens")),
        Mistake("logit-weights", "your weights are the raw logits: apply the softmax over the experts first",
                _router_wrong("logit-weights")),
    ]))


# ========================================================================================
# sparse_moe
# ========================================================================================
@functools.lru_cache(maxsize=None)
def _moe_data(seed, B, T, H, I, E):
    return _moe_weights(_gen(seed), None, H, I, E, lead=(B, T))


def _moe_expected(x, rw, gu, dp, k, normalize):
    _silence()
    E, H = rw.shape
    I = dp.shape[-1]
    with torch.no_grad():
        if normalize:
            from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

            block = MixtralSparseMoeBlock(_mixtral_config(H, I, E, k)).eval()
            block.gate.weight.copy_(rw)
            block.experts.gate_up_proj.copy_(gu)
            block.experts.down_proj.copy_(dp)
            return block(x)  # x is (B, T, H) in every case
        from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeExperts, Qwen2MoeTopKRouter

        cfg = _qwen_config(H, I, E, k)
        router, experts = Qwen2MoeTopKRouter(cfg), Qwen2MoeExperts(cfg)
        router.weight.copy_(rw)
        experts.gate_up_proj.copy_(gu)
        experts.down_proj.copy_(dp)
        flat = x.reshape(-1, H)
        _, weights, index = router(flat)
        return experts(flat, index, weights).reshape(x.shape)


def _moe_cases(hidden: bool):
    specs = [("B=2, T=5, H=8, I=16, E=4, k=2", 0, 2, 5, 8, 16, 4, 2, True),
             ("E=8, k=2, H=16, I=8", 1, 3, 7, 16, 8, 8, 2, True),
             ("k=1 (every token one expert)", 2, 1, 9, 8, 8, 4, 1, True),
             ("normalize=False (Qwen2-MoE's routed experts)", 3, 2, 6, 8, 12, 6, 2, False)]
    if hidden:
        for i in range(3):
            s = _hidden_shape("ch12.sparse_moe", i, {"B": [1, 2, 4], "T": [8, 13], "H": [8, 16], "I": [8, 24],
                                                     "E": [4, 8], "k": [1, 2, 3]})
            specs.append((f"hidden case {i + 1}",
                          hidden_seed("ch12.sparse_moe", i), s["B"], s["T"], s["H"], s["I"], s["E"], s["k"], i != 2))
    for name, seed, B, T, H, I, E, k, norm in specs:
        x, rw, gu, dp = _moe_data(seed, B, T, H, I, E)
        yield Case(name, (x, rw, gu, dp, k, norm),
                   expected=lambda a=(seed, B, T, H, I, E, k, norm): _moe_expected_cached(*a), compare=close_tensors())


@functools.lru_cache(maxsize=64)
def _moe_expected_cached(seed, B, T, H, I, E, k, norm):
    return _moe_expected(*_moe_data(seed, B, T, H, I, E), k, norm)


def _moe_loop(router, x, rw, gu, dp, k, normalize=True, variant=None):
    """The loop over experts with a given router (used by the mistakes and by inherit)."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    weights, index = router(x, rw, k, normalize)
    out = torch.zeros_like(x)
    for e in range(rw.shape[0]):
        tok, slot = torch.where(index == e)
        if tok.numel() == 0:
            continue
        a, b = F.linear(x[tok], gu[e]).chunk(2, dim=-1)
        if variant == "gate-up-swapped":
            a, b = b, a
        h = F.gelu(a) * b if variant == "gelu" else F.silu(a) * b
        y = F.linear(h, dp[e])
        w = torch.ones_like(weights[tok, slot]) if variant == "unweighted" else weights[tok, slot]
        out.index_add_(0, tok, y * w[:, None].to(x.dtype))
    return out.reshape(shape)


def _correct_router(x, w, k, normalize=True):
    v, i = F.linear(x, w).float().softmax(-1).topk(k, dim=-1)
    return (v / v.sum(-1, keepdim=True) if normalize else v), i


def _moe_wrong(variant):
    return lambda x, rw, gu, dp, k, normalize=True: _moe_loop(_correct_router, x, rw, gu, dp, k, normalize, variant)


register(Exercise(
    id="ch12.sparse_moe", chapter=CH, title="The sparse MoE block (a loop over experts)", points=2, name="sparse_moe",
    signature="sparse_moe(x: Tensor[..., H], router_weight: Tensor[E, H], gate_up_proj: Tensor[E, 2I, H], "
              "down_proj: Tensor[E, H, I], k: int, normalize: bool = True) -> Tensor[..., H]",
    reference="transformers MixtralSparseMoeBlock (experts_implementation='eager', weights copied); for "
              "normalize=False Qwen2MoeTopKRouter + Qwen2MoeExperts",
    solution=f"{SOL}:sparse_moe", cases=_moe_cases, difficulty="**",
    forbidden=[f"{MIXTRAL}:MixtralSparseMoeBlock", f"{MIXTRAL}:MixtralExperts", f"{QWEN}:Qwen2MoeExperts",
               f"{QWEN}:Qwen2MoeSparseMoeBlock", f"{SOL}:dispatch_sorted"],
    mistakes=[
        Mistake("gate-up-swapped", "the gate and up halves of gate_up_proj are swapped: the FIRST I rows are the "
                "gate (silu goes on them), the last I rows the up projection", _moe_wrong("gate-up-swapped")),
        Mistake("unweighted", "you added the k experts' outputs without multiplying by the router weights",
                _moe_wrong("unweighted")),
        Mistake("gelu", "your experts use GELU: Mixtral's experts are SwiGLU, silu(gate) * up", _moe_wrong("gelu")),
        *inherit("ch12.topk_router", lambda router: (
            lambda x, rw, gu, dp, k, normalize=True: _moe_loop(router, x, rw, gu, dp, k, normalize)), "the router"),
    ]))


# ========================================================================================
# load_balancing_loss
# ========================================================================================
def _lb_expected(logits, k):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    return load_balancing_loss_func((logits,), logits.shape[-1], k)


def _balanced_logits(N, E, k, g):
    """Token t strongly prefers experts t, t+1, ..., t+k-1 (mod E): every expert gets the same count."""
    logits = torch.randn(N, E, generator=g) * 0.3
    for t in range(N):
        for j in range(k):
            logits[t, (t + j) % E] += 4.0 - 0.5 * j
    return logits


def _lb_cases(hidden: bool):
    specs = [("N=32 tokens, E=8, k=2, random logits", torch.randn(32, 8, generator=_gen(0)), 2),
             ("a balanced router (every expert equally loaded) scores exactly k = 2",
              _balanced_logits(16, 4, 2, _gen(1)), 2),
             ("a collapsed router (expert 0 wins almost every token), E=4, k=1",
              torch.randn(20, 4, generator=_gen(2)) + torch.tensor([3.0, 0.0, 0.0, 0.0]), 1),
             ("E=6, k=3", torch.randn(15, 6, generator=_gen(3)) * 2, 3)]
    if hidden:
        for i in range(3):
            s = _hidden_shape("ch12.load_balancing_loss", i, {"N": [24, 50, 128], "E": [4, 8, 16], "k": [1, 2, 3]})
            specs.append((f"hidden case {i + 1}",
                          torch.randn(s["N"], s["E"], generator=_gen(hidden_seed("ch12.load_balancing_loss", i))) * 2,
                          s["k"]))
    for name, logits, k in specs:
        yield Case(name, (logits, k), expected=lambda l=logits, k=k: _lb_expected(l, k),
                   compare=_close_scalar(1e-5, 1e-5))


def _lb_wrong(kind):
    def fn(logits, k):
        N, E = logits.shape
        p = logits.float().softmax(-1)
        idx = p.topk(k, -1).indices
        if kind == "top1-count":
            idx = idx[:, :1]
        f = F.one_hot(idx, E).sum((0, 1)).float() / N
        if kind == "f-normalised":
            f = f / k
        if kind == "f-from-probs":
            f = p.mean(0)
        loss = (f * p.mean(0)).sum()
        return loss if kind == "no-num-experts" else E * loss
    return fn


register(Exercise(
    id="ch12.load_balancing_loss", chapter=CH, title="The load-balancing loss", points=1, name="load_balancing_loss",
    signature="load_balancing_loss(router_logits: Tensor[N, E], k: int) -> Tensor[]",
    reference="transformers mixtral.load_balancing_loss_func((router_logits,), E, k)",
    solution=f"{SOL}:load_balancing_loss", cases=_lb_cases,
    forbidden=[f"{MIXTRAL}:load_balancing_loss_func", f"{SWITCH}:load_balancing_loss_func",
               f"{QWEN}:load_balancing_loss_func"],
    mistakes=[
        Mistake("f-normalised", "your f sums to 1 (you divided the counts by N * k): f_i is the number of top-k slots "
                "expert i received divided by N, so it sums to k and a balanced router scores k",
                _lb_wrong("f-normalised")),
        Mistake("no-num-experts", "the sum of f_i P_i is not multiplied by the number of experts E",
                _lb_wrong("no-num-experts")),
        Mistake("top1-count", "you counted only each token's first choice: f counts all k slots",
                _lb_wrong("top1-count")),
        Mistake("f-from-probs", "your f is the mean probability (so you computed E * sum P_i^2): f must count the "
                "top-k choices (it carries no gradient; P does)", _lb_wrong("f-from-probs")),
    ]))


# ========================================================================================
# router_z_loss
# ========================================================================================
def _z_expected(logits):
    from transformers.models.switch_transformers.modeling_switch_transformers import router_z_loss_func

    return router_z_loss_func(logits)


def _z_cases(hidden: bool):
    specs = [("B=2, T=8, E=4", torch.randn(2, 8, 4, generator=_gen(0))),
             ("B=1, T=16, E=8, logits x 3", torch.randn(1, 16, 8, generator=_gen(1)) * 3),
             ("large logits (x 100): compute log-sum-exp without overflow", torch.randn(3, 5, 6, generator=_gen(2)) * 100)]
    if hidden:
        for i in range(2):
            s = _hidden_shape("ch12.router_z_loss", i, {"B": [1, 3, 4], "T": [7, 32], "E": [4, 16], "scale": [1.0, 50.0]})
            specs.append((f"hidden case {i + 1}",
                          torch.randn(s["B"], s["T"], s["E"], generator=_gen(hidden_seed("ch12.router_z_loss", i)))
                          * s["scale"]))
    for name, logits in specs:
        yield Case(name, (logits,), expected=lambda l=logits: _z_expected(l), compare=_close_scalar(1e-4, 1e-5))


def _z_wrong(kind):
    def fn(logits):
        l = logits.float()
        if kind == "overflow":
            lse = l.exp().sum(-1).log()
        elif kind == "max-logit":
            lse = l.max(-1).values
        else:
            lse = torch.logsumexp(l, -1)
        if kind == "no-square":
            return lse.mean()
        if kind == "sum":
            return lse.square().sum()
        return lse.square().mean()
    return fn


register(Exercise(
    id="ch12.router_z_loss", chapter=CH, title="The router z-loss", points=1, name="router_z_loss",
    signature="router_z_loss(router_logits: Tensor[..., E]) -> Tensor[]",
    reference="transformers switch_transformers.router_z_loss_func", solution=f"{SOL}:router_z_loss", cases=_z_cases,
    forbidden=[f"{SWITCH}:router_z_loss_func"],
    mistakes=[
        Mistake("no-square", "you averaged log Z itself: the z-loss is the mean of (log Z)^2", _z_wrong("no-square")),
        Mistake("sum", "you summed over tokens: take the mean", _z_wrong("sum")),
        Mistake("max-logit", "you used the largest logit instead of log-sum-exp over the experts",
                _z_wrong("max-logit")),
        Mistake("overflow", "exp(logits) overflowed to inf: use torch.logsumexp (or subtract the max first)",
                _z_wrong("overflow")),
    ]))


# ========================================================================================
# switch_moe: capacity and token dropping
# ========================================================================================
@functools.lru_cache(maxsize=None)
def _switch_data(seed, B, T, H, Fd, E, skew):
    g = _gen(seed)
    x = torch.randn(B, T, H, generator=g)
    rw = torch.randn(E, H, generator=g) / math.sqrt(H)
    rw[0] += skew * x.mean((0, 1)) / (x.mean((0, 1)).norm() + 1e-6)  # expert 0 popular: its queue overflows
    wi = torch.randn(E, Fd, H, generator=g) / math.sqrt(H)
    wo = torch.randn(E, H, Fd, generator=g) / math.sqrt(Fd)
    return x, rw, wi, wo


def _switch_expected(x, rw, wi, wo, capacity):
    _silence()
    from transformers import SwitchTransformersConfig
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersSparseMLP

    E, H = rw.shape
    cfg = SwitchTransformersConfig(d_model=H, d_ff=wi.shape[1], num_experts=E, expert_capacity=capacity,
                                   router_jitter_noise=0.0, dropout_rate=0.0, num_heads=1, d_kv=4)
    mlp = SwitchTransformersSparseMLP(cfg).eval()
    with torch.no_grad():
        mlp.router.classifier.weight.copy_(rw)
        for e in range(E):
            mlp.experts[f"expert_{e}"].wi.weight.copy_(wi[e])
            mlp.experts[f"expert_{e}"].wo.weight.copy_(wo[e])
        return mlp(x.clone())


def _switch_cases(hidden: bool):
    specs = [("B=2, T=12, E=4, capacity 2: tokens dropped", 0, 2, 12, 8, 16, 4, 2, 2.0),
             ("capacity 1, one popular expert", 1, 3, 8, 8, 8, 4, 1, 4.0),
             ("capacity 16 >= T: nothing dropped", 2, 2, 10, 8, 12, 4, 16, 1.0),
             ("B=4, T=6, E=3, capacity 2 (per sequence, not per batch)", 3, 4, 6, 8, 8, 3, 2, 2.0)]
    if hidden:
        for i in range(3):
            s = _hidden_shape("ch12.switch_moe", i, {"B": [2, 3, 5], "T": [8, 16], "E": [3, 4, 8], "cap": [1, 2, 3]})
            specs.append((f"hidden case {i + 1}",
                          hidden_seed("ch12.switch_moe", i), s["B"], s["T"], 8, 16, s["E"], s["cap"], 2.0))
    for name, seed, B, T, H, Fd, E, cap, skew in specs:
        x, rw, wi, wo = _switch_data(seed, B, T, H, Fd, E, skew)
        yield Case(name, (x, rw, wi, wo, cap), expected=lambda a=(seed, B, T, H, Fd, E, skew, cap):
                   _switch_expected_cached(*a), compare=close_tensors())


@functools.lru_cache(maxsize=64)
def _switch_expected_cached(seed, B, T, H, Fd, E, skew, cap):
    return _switch_expected(*_switch_data(seed, B, T, H, Fd, E, skew), cap)


def _switch_wrong(kind):
    def fn(x, rw, wi, wo, capacity):
        B, T, H = x.shape
        E = rw.shape[0]
        p = F.linear(x.float(), rw.float()).softmax(-1)
        top_p, expert = p.max(-1)
        onehot = F.one_hot(expert, E)
        if kind == "capacity-over-batch":
            arrival = (onehot.reshape(B * T, E).cumsum(0) * onehot.reshape(B * T, E)).sum(-1).reshape(B, T)
        elif kind == "priority-by-probability":
            arrival = torch.zeros(B, T, dtype=torch.long)
            for b in range(B):
                for e in range(E):
                    pos = torch.where(expert[b] == e)[0]
                    ranked = pos[top_p[b, pos].argsort(descending=True)]
                    arrival[b, ranked] = torch.arange(1, len(ranked) + 1)
        else:
            arrival = (onehot.cumsum(1) * onehot).sum(-1)
        kept = arrival < capacity if kind == "off-by-one" else arrival <= capacity
        out = x.clone() if kind == "residual-twice" else torch.zeros_like(x)
        for e in range(E):
            sel = (expert == e) & kept
            if sel.any():
                y = F.linear(F.relu(F.linear(x[sel], wi[e])), wo[e])
                out[sel] = y if kind == "unscaled" else top_p[sel, None] * y
        return out
    return fn


register(Exercise(
    id="ch12.switch_moe", chapter=CH, title="Expert capacity and token dropping", points=2, name="switch_moe",
    signature="switch_moe(x: Tensor[B, T, H], router_weight: Tensor[E, H], wi: Tensor[E, F, H], "
              "wo: Tensor[E, H, F], capacity: int) -> Tensor[B, T, H]",
    reference="transformers SwitchTransformersSparseMLP (expert_capacity, weights copied)",
    solution=f"{SOL}:switch_moe", cases=_switch_cases, difficulty="**",
    forbidden=[f"{SWITCH}:SwitchTransformersSparseMLP", f"{SWITCH}:SwitchTransformersTop1Router"],
    mistakes=[
        Mistake("capacity-over-batch", "you counted the capacity over the whole batch: Switch counts it per expert "
                "PER SEQUENCE (a cumulative sum along the sequence dimension, separately for each sequence)",
                _switch_wrong("capacity-over-batch")),
        Mistake("residual-twice", "a dropped token's output here must be 0: the layer's residual connection adds x "
                "afterwards, so returning x gives the dropped token its residual twice", _switch_wrong("residual-twice")),
        Mistake("priority-by-probability", "you kept the tokens with the highest router probability: the reference "
                "is first come first served (earlier positions first)", _switch_wrong("priority-by-probability")),
        Mistake("unscaled", "a kept token's output is the expert's output times its router probability",
                _switch_wrong("unscaled")),
        Mistake("off-by-one", "an expert keeps `capacity` tokens, not capacity - 1 (arrival number <= capacity)",
                _switch_wrong("off-by-one")),
    ]))


# ========================================================================================
# shared_expert_moe (Qwen2-MoE)
# ========================================================================================
@functools.lru_cache(maxsize=None)
def _shared_data(seed, B, T, H, I, E, S):
    g = _gen(seed)
    x, rw, gu, dp = _moe_weights(g, None, H, I, E, lead=(B, T))
    sg = torch.randn(S, H, generator=g) / math.sqrt(H)
    su = torch.randn(S, H, generator=g) / math.sqrt(H)
    sd = torch.randn(H, S, generator=g) / math.sqrt(S)
    seg = torch.randn(1, H, generator=g) / math.sqrt(H)
    return x, rw, gu, dp, sg, su, sd, seg


def _shared_expected(x, rw, gu, dp, sg, su, sd, seg, k):
    _silence()
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    E, H = rw.shape
    block = Qwen2MoeSparseMoeBlock(_qwen_config(H, dp.shape[-1], E, k, S=sg.shape[0], norm=False)).eval()
    with torch.no_grad():
        block.gate.weight.copy_(rw)
        block.experts.gate_up_proj.copy_(gu)
        block.experts.down_proj.copy_(dp)
        block.shared_expert.gate_proj.weight.copy_(sg)
        block.shared_expert.up_proj.weight.copy_(su)
        block.shared_expert.down_proj.weight.copy_(sd)
        block.shared_expert_gate.weight.copy_(seg)
        return block(x)


def _shared_cases(hidden: bool):
    specs = [("B=2, T=5, H=8, E=4, k=2, shared size 12", 0, 2, 5, 8, 8, 4, 12, 2),
             ("E=8, k=4, shared size 16", 1, 1, 9, 16, 8, 8, 16, 4),
             ("k=1", 2, 3, 4, 8, 12, 6, 8, 1)]
    if hidden:
        for i in range(2):
            s = _hidden_shape("ch12.shared_expert_moe", i, {"B": [1, 2], "T": [6, 11], "E": [4, 8], "k": [1, 2, 3]})
            specs.append((f"hidden case {i + 1}",
                          hidden_seed("ch12.shared_expert_moe", i), s["B"], s["T"], 8, 8, s["E"], 12, s["k"]))
    for name, seed, B, T, H, I, E, S, k in specs:
        args = _shared_data(seed, B, T, H, I, E, S) + (k,)
        yield Case(name, args, expected=lambda a=(seed, B, T, H, I, E, S, k): _shared_expected_cached(*a),
                   compare=close_tensors())


@functools.lru_cache(maxsize=64)
def _shared_expected_cached(seed, B, T, H, I, E, S, k):
    return _shared_expected(*_shared_data(seed, B, T, H, I, E, S), k)


def _shared_part(x, sg, su, sd):
    return F.linear(F.silu(F.linear(x, sg)) * F.linear(x, su), sd)


def _shared_wrong(kind):
    def fn(x, rw, gu, dp, sg, su, sd, seg, k):
        routed = _moe_loop(_correct_router, x, rw, gu, dp, k, normalize=(kind == "renormalised"))
        shared = _shared_part(x, sg, su, sd)
        if kind == "ungated-shared":
            return routed + shared
        if kind == "no-sigmoid":
            return routed + F.linear(x, seg) * shared
        if kind == "shared-missing":
            return routed
        return routed + torch.sigmoid(F.linear(x, seg)) * shared
    return fn


register(Exercise(
    id="ch12.shared_expert_moe", chapter=CH, title="A shared expert (Qwen2-MoE)", points=2, name="shared_expert_moe",
    signature="shared_expert_moe(x: Tensor[..., H], router_weight, gate_up_proj, down_proj, shared_gate_proj: "
              "Tensor[S, H], shared_up_proj: Tensor[S, H], shared_down_proj: Tensor[H, S], shared_expert_gate: "
              "Tensor[1, H], k: int) -> Tensor[..., H]",
    reference="transformers Qwen2MoeSparseMoeBlock (norm_topk_prob=False, eager experts, weights copied)",
    solution=f"{SOL}:shared_expert_moe", cases=_shared_cases,
    forbidden=[f"{QWEN}:Qwen2MoeSparseMoeBlock", f"{QWEN}:Qwen2MoeMLP"],
    mistakes=[
        Mistake("renormalised", "your routed weights are renormalised (or softmaxed after the top-k): Qwen2-MoE keeps "
                "the raw top-k probabilities (norm_topk_prob=False)", _shared_wrong("renormalised")),
        Mistake("ungated-shared", "the shared expert's output is added without its gate: multiply it by "
                "sigmoid(x @ shared_expert_gate.T)", _shared_wrong("ungated-shared")),
        Mistake("no-sigmoid", "the shared expert's gate is used raw: squash it with a sigmoid",
                _shared_wrong("no-sigmoid")),
        Mistake("shared-missing", "the shared expert is missing: every token goes through it, on top of its routed "
                "experts", _shared_wrong("shared-missing")),
        *inherit("ch12.sparse_moe", lambda moe: (
            lambda x, rw, gu, dp, sg, su, sd, seg, k: moe(x, rw, gu, dp, k, normalize=False)
            + torch.sigmoid(F.linear(x, seg)) * _shared_part(x, sg, su, sd)), "the routed experts (sparse_moe)"),
    ]))


# ========================================================================================
# deepseek_router
# ========================================================================================
def _ds_expected(x, w, bias, k, scaling):
    _silence()
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter

    E, H = w.shape
    cfg = DeepseekV3Config(hidden_size=H, n_routed_experts=E, num_experts_per_tok=k, n_group=1, topk_group=1,
                           norm_topk_prob=True, routed_scaling_factor=scaling, moe_intermediate_size=8,
                           num_attention_heads=1, num_key_value_heads=1)
    router = DeepseekV3TopkRouter(cfg)
    with torch.no_grad():
        router.weight.copy_(w)
        router.e_score_correction_bias.copy_(bias)
        _, weights, index = router(x)
    return weights, index


def _ds_cases(hidden: bool):
    specs = [("N=8, E=8, k=2, bias 0", 0, 8, 8, 8, 2, 0.0, 1.0),
             ("a bias that changes the choice (bias ~ 0.3)", 1, 10, 8, 8, 2, 0.3, 1.0),
             ("k=3, routed_scaling_factor 2.5", 2, 6, 16, 6, 3, 0.2, 2.5),
             ("a large bias on expert 0: chosen by every token, weighted by its own score", 3, 5, 8, 4, 2, -1.0, 1.0)]
    if hidden:
        for i in range(2):
            s = _hidden_shape("ch12.deepseek_router", i, {"N": [9, 20], "E": [8, 16], "k": [2, 4], "b": [0.1, 0.5]})
            specs.append((f"hidden case {i + 1}", hidden_seed("ch12.deepseek_router", i),
                          s["N"], 8, s["E"], s["k"], s["b"], 1.5))
    for name, seed, N, H, E, k, b, scaling in specs:
        g = _gen(seed)
        x, w = torch.randn(N, H, generator=g), torch.randn(E, H, generator=g) / math.sqrt(H)
        if b >= 0:
            bias = torch.randn(E, generator=g) * b
        else:
            bias = torch.zeros(E)
            bias[0] = 5.0
        yield Case(name, (x, w, bias, k, scaling), expected=lambda a=(x, w, bias, k, scaling): _ds_expected(*a),
                   compare=functools.partial(compare_routing, sort=True))


def _ds_wrong(kind):
    def fn(x, w, bias, k, scaling=1.0):
        logits = F.linear(x.float(), w.float())
        s = logits.softmax(-1) if kind == "softmax-scores" else logits.sigmoid()
        choice = s if kind == "bias-ignored" else s + bias
        idx = choice.topk(k, -1).indices
        wts = (s + bias if kind == "bias-in-weights" else s).gather(1, idx)
        if kind != "no-renorm":
            wts = wts / (wts.sum(-1, keepdim=True) + 1e-20)
        return wts * (1.0 if kind == "no-scaling" else scaling), idx
    return fn


register(Exercise(
    id="ch12.deepseek_router", chapter=CH, title="DeepSeek-V3's router: the bias picks, the score weighs", points=1,
    name="deepseek_router",
    signature="deepseek_router(x: Tensor[N, H], weight: Tensor[E, H], bias: Tensor[E], k: int, scaling: float = 1.0) "
              "-> (weights: Tensor[N, k], index: LongTensor[N, k])",
    reference="transformers DeepseekV3TopkRouter (n_group=1, norm_topk_prob=True, e_score_correction_bias copied)",
    solution=f"{SOL}:deepseek_router", cases=_ds_cases,
    forbidden=[f"{DEEPSEEK}:DeepseekV3TopkRouter"],
    mistakes=[
        Mistake("bias-in-weights", "the bias leaked into the weights: it only CHOOSES the experts; the weights are "
                "the unbiased sigmoid scores of the chosen experts", _ds_wrong("bias-in-weights")),
        Mistake("bias-ignored", "you chose the experts by the scores alone: the choice is by score + bias",
                _ds_wrong("bias-ignored")),
        Mistake("softmax-scores", "DeepSeek-V3 scores experts with a sigmoid, not a softmax", _ds_wrong("softmax-scores")),
        Mistake("no-renorm", "the chosen scores must be divided by their sum before the scaling factor",
                _ds_wrong("no-renorm")),
        Mistake("no-scaling", "multiply the normalised weights by `scaling` (routed_scaling_factor)",
                _ds_wrong("no-scaling")),
    ]))


# ========================================================================================
# bias_update (no library reference: re-derived from Wang et al., 2024)
# ========================================================================================
def _bias_expected(bias, index, gamma):
    E = bias.shape[0]
    flat = [int(i) for i in index.reshape(-1)]
    load = [flat.count(e) for e in range(E)]
    mean = len(flat) / E
    new = []
    for e in range(E):
        step = gamma if load[e] < mean else (-gamma if load[e] > mean else 0.0)  # underloaded up, overloaded down
        new.append(float(bias[e]) + step)
    return torch.tensor(new, dtype=bias.dtype)


def _bias_cases(hidden: bool):
    def rand_index(g, N, E, k):
        return torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(N)])

    g = _gen(0)
    specs = [("N=16, E=4, k=2, gamma=0.01", torch.zeros(4), rand_index(g, 16, 4, 2), 0.01),
             ("a non-zero bias, E=8, k=2, gamma=0.1", torch.randn(8, generator=g), rand_index(g, 10, 8, 2), 0.1),
             ("perfectly balanced load: the bias does not move", torch.tensor([0.5, -0.5, 0.0, 0.2]),
              torch.tensor([[0, 1], [2, 3], [1, 2], [3, 0]]), 0.05),
             ("one expert never chosen, mean load not an integer", torch.zeros(5),
              torch.tensor([[0, 1], [0, 2], [0, 3], [1, 0]]), 0.001)]
    if hidden:
        for i in range(2):
            g = _gen(hidden_seed("ch12.bias_update", i))
            s = _hidden_shape("ch12.bias_update", i, {"N": [7, 30, 64], "E": [4, 8, 16], "k": [1, 2]})
            specs.append((f"hidden case {i + 1}", torch.randn(s["E"], generator=g),
                          rand_index(g, s["N"], s["E"], s["k"]), 0.02))
    for name, bias, index, gamma in specs:
        yield Case(name, (bias, index, gamma), expected=lambda a=(bias, index, gamma): _bias_expected(*a),
                   compare=close_tensors(1e-7, 1e-6))


def _bias_wrong(kind):
    def fn(bias, index, gamma):
        E = bias.shape[0]
        idx = index[:, :1] if kind == "top1-load" else index
        load = torch.bincount(idx.reshape(-1), minlength=E).float()
        err = load.mean() - load
        if kind == "wrong-sign":
            return bias - gamma * torch.sign(err)
        if kind == "proportional":
            return bias + gamma * err
        return bias + gamma * torch.sign(err)
    return fn


register(Exercise(
    id="ch12.bias_update", chapter=CH, title="The auxiliary-loss-free bias update", points=1, name="bias_update",
    signature="bias_update(bias: Tensor[E], index: LongTensor[N, k], gamma: float) -> Tensor[E]",
    reference="the update of Wang et al. (2024), used by DeepSeek-V3, re-derived (transformers never updates the "
              "bias): b_i + gamma * sign(mean load - load_i)",
    solution=f"{SOL}:bias_update", cases=_bias_cases,
    mistakes=[
        Mistake("wrong-sign", "the sign is reversed: an OVERLOADED expert's bias must go down (so it is chosen less)",
                _bias_wrong("wrong-sign")),
        Mistake("proportional", "you moved the bias by gamma times the load error: the update is gamma times its "
                "SIGN (a fixed step, whatever the size of the imbalance)", _bias_wrong("proportional")),
        Mistake("top1-load", "you counted only each token's first expert: the load counts all k choices",
                _bias_wrong("top1-load")),
    ]))


# ========================================================================================
# dispatch_sorted
# ========================================================================================
def _dispatch_expected(x, index, weights, gu, dp):
    _silence()
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    E = gu.shape[0]
    experts = MixtralExperts(_mixtral_config(x.shape[-1], dp.shape[-1], E, index.shape[-1]))
    with torch.no_grad():
        experts.gate_up_proj.copy_(gu)
        experts.down_proj.copy_(dp)
        return experts(x, index, weights)


def _dispatch_data(g, N, H, I, E, k, skip_expert=None):
    x, rw, gu, dp = _moe_weights(g, N, H, I, E)
    logits = F.linear(x, rw)
    if skip_expert is not None:
        logits[:, skip_expert] = -1e9
    weights, index = logits.softmax(-1).topk(k, -1)
    weights = weights / weights.sum(-1, keepdim=True)
    return x, index, weights, gu, dp


def _dispatch_cases(hidden: bool):
    specs = [("N=12, H=8, I=16, E=4, k=2", 0, 12, 8, 16, 4, 2, None),
             ("E=8, k=2, expert 5 receives no token", 1, 20, 8, 8, 8, 2, 5),
             ("a single token, k=3", 2, 1, 8, 8, 4, 3, None),
             ("N=64, k=1", 3, 64, 16, 8, 8, 1, None)]
    if hidden:
        for i in range(2):
            s = _hidden_shape("ch12.dispatch_sorted", i, {"N": [17, 50, 128], "E": [4, 8], "k": [1, 2, 3]})
            specs.append((f"hidden case {i + 1}", hidden_seed("ch12.dispatch_sorted", i),
                          s["N"], 8, 16, s["E"], s["k"], None))
    for name, seed, N, H, I, E, k, skip in specs:
        args = _dispatch_data(_gen(seed), N, H, I, E, k, skip)
        yield Case(name, args, expected=lambda a=args: _dispatch_expected(*a), compare=close_tensors())


def _dispatch_wrong(kind):
    def fn(x, index, weights, gu, dp):
        N, k = index.shape
        E = gu.shape[0]
        flat = index.reshape(-1)
        order = flat.argsort(stable=True)
        token = order // k
        counts = torch.bincount(flat, minlength=E).tolist()
        xs = x.repeat_interleave(k, dim=0) if kind == "not-sorted" else x[token]
        ys = torch.empty_like(xs)
        start = 0
        for e, c in enumerate(counts):
            if c:
                a, b = F.linear(xs[start:start + c], gu[e]).chunk(2, -1)
                if kind == "gate-up-swapped":
                    a, b = b, a
                ys[start:start + c] = F.linear(F.silu(a) * b, dp[e])
                start += c
        if kind == "weights-unsorted":
            ys = ys * weights.reshape(-1)[:, None]
        elif kind != "unweighted":
            ys = ys * weights.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add_(0, token, ys)
    return fn


register(Exercise(
    id="ch12.dispatch_sorted", chapter=CH, title="Efficient dispatch: sort by expert, one matmul each",
    points=2, name="dispatch_sorted",
    signature="dispatch_sorted(x: Tensor[N, H], index: LongTensor[N, k], weights: Tensor[N, k], gate_up_proj: "
              "Tensor[E, 2I, H], down_proj: Tensor[E, H, I]) -> Tensor[N, H]",
    reference="transformers MixtralExperts with experts_implementation='eager' (the loop), weights copied",
    solution=f"{SOL}:dispatch_sorted", cases=_dispatch_cases, difficulty="**",
    forbidden=[f"{MIXTRAL}:MixtralExperts", "transformers.integrations.moe:grouped_mm_experts_forward",
               "transformers.integrations.moe:batched_mm_experts_forward", f"{SOL}:sparse_moe"],
    mistakes=[
        Mistake("weights-unsorted", "you multiplied the sorted outputs by the weights in their ORIGINAL order: "
                "permute the flattened weights with the same argsort as the tokens", _dispatch_wrong("weights-unsorted")),
        Mistake("not-sorted", "the tokens were not gathered in sorted order: slice i of the sorted pairs must hold "
                "the tokens x[order // k] that chose expert i", _dispatch_wrong("not-sorted")),
        Mistake("unweighted", "the expert outputs were not multiplied by the router weights",
                _dispatch_wrong("unweighted")),
        Mistake("gate-up-swapped", "the gate and up halves of gate_up_proj are swapped: the first I rows are the gate",
                _dispatch_wrong("gate-up-swapped")),
    ]))
