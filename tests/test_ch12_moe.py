"""Chapter 12: claims the chapter makes, checked against the libraries."""
from __future__ import annotations

import torch

from solutions.ch12_moe import MoEConfig, MoEGPT, dispatch_sorted, topk_router


def _mixtral_experts(impl, gu, dp, H, I, E, k):
    import transformers
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    transformers.logging.set_verbosity_error()
    cfg = MixtralConfig(hidden_size=H, intermediate_size=I, num_local_experts=E, num_experts_per_tok=k,
                        num_attention_heads=1, num_key_value_heads=1, experts_implementation=impl)
    experts = MixtralExperts(cfg)
    with torch.no_grad():
        experts.gate_up_proj.copy_(gu)
        experts.down_proj.copy_(dp)
    return experts


def test_sorted_dispatch_equals_hf_grouped_mm_and_eager():
    g = torch.Generator().manual_seed(0)
    N, H, I, E, k = 300, 32, 48, 8, 2
    x = torch.randn(N, H, generator=g)
    rw, gu, dp = torch.randn(E, H, generator=g), torch.randn(E, 2 * I, H, generator=g) / 6, torch.randn(E, H, I, generator=g) / 7
    w, idx = topk_router(x, rw, k)
    ours = dispatch_sorted(x, idx, w, gu, dp)
    with torch.no_grad():
        for impl in ("eager", "grouped_mm"):
            ref = _mixtral_experts(impl, gu, dp, H, I, E, k)(x, idx, w)
            assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-4), impl


def test_a_balanced_router_scores_k_in_the_library():
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    E, k, N = 8, 2, 64
    logits = torch.randn(N, E) * 0.1
    for t in range(N):  # token t prefers experts t and t+1 (mod E): equal counts
        logits[t, t % E] += 5
        logits[t, (t + 1) % E] += 4
    assert abs(float(load_balancing_loss_func((logits,), E, k)) - k) < 1e-5


def test_moe_model_counts_active_parameters_like_its_dense_twin():
    moe = MoEGPT(MoEConfig(vocab_size=20))
    dense = MoEGPT(MoEConfig(vocab_size=20, moe=False))
    total, active = moe.parameter_counts()
    d_total, d_active = dense.parameter_counts()
    assert d_total == d_active
    assert active - d_active == moe.cfg.n_layer * moe.cfg.n_experts * moe.cfg.n_embd  # only the routers differ
    assert total > 2 * d_total
