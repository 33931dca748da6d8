"""Chapter 7: the training path's fast parts are the exercise references, within float32 rounding.

`reference_parts()` hands the training loop PyTorch's fused loss, fused AdamW and a foreach
clipping instead of the exercise references (which stay as they are: the autograder grades
against them). Each substitute is proven equal to its reference here, on its own and over a
whole short training run.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from solutions.ch07_pretraining import (GPT, RECIPE, RECIPE_MODEL, AdamW, GPTConfig, TrainConfig, clip_grad_norm,
                                        cross_entropy, fast_adamw, fast_clip_grad_norm, fast_cross_entropy, get_batch,
                                        lr_at, param_groups, reference_parts, train)


def _references() -> dict:
    return dict(get_batch=get_batch, cross_entropy=cross_entropy, optimizer=AdamW, lr_at=lr_at,
                clip_grad_norm=clip_grad_norm)


def test_fast_cross_entropy_equals_the_reference_in_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    for scale, shape in ((1.0, (3, 7, 11)), (30.0, (2, 5, 65)), (3000.0, (4, 1, 9))):
        logits = (torch.randn(*shape, generator=g) * scale).requires_grad_()
        targets = torch.randint(shape[-1], shape[:2], generator=g)
        ref = cross_entropy(logits, targets)
        (grad_ref,) = torch.autograd.grad(ref, logits)
        fast = fast_cross_entropy(logits, targets)
        (grad_fast,) = torch.autograd.grad(fast, logits)
        assert fast.shape == ref.shape == ()
        assert torch.allclose(fast, ref, rtol=1e-6, atol=1e-5 * scale), (scale, float(fast), float(ref))
        assert torch.allclose(grad_fast, grad_ref, rtol=1e-5, atol=1e-8)


def _grads(seed: int, scale: float) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.zeros(s)) for s in ((5, 3), (7,), (2, 2, 2), (4,))]
    for p in params[:-1]:  # the last one has no gradient
        p.grad = torch.randn(p.shape, generator=g) * scale
    return params


def test_fast_clipping_equals_the_reference():
    for scale in (1e-3, 0.2, 5.0, 300.0):  # below and above max_norm = 1
        a, b = _grads(1, scale), _grads(1, scale)
        norm_ref = clip_grad_norm(iter(a), 1.0)  # a generator: read once
        norm_fast = fast_clip_grad_norm(iter(b), 1.0)
        assert torch.allclose(norm_fast, norm_ref, rtol=1e-6), scale
        for p, q in zip(a, b):
            assert (p.grad is None) == (q.grad is None)
            if p.grad is not None:
                assert torch.allclose(q.grad, p.grad, rtol=1e-6, atol=1e-9), scale
    assert float(fast_clip_grad_norm([nn.Parameter(torch.ones(2))], 1.0)) == 0.0


def test_fused_adamw_equals_the_reference_over_many_steps():
    g = torch.Generator().manual_seed(2)
    base = [nn.Parameter(torch.randn(s, generator=g)) for s in ((6, 4), (4,), (3, 3), (5,))]
    a, b = copy.deepcopy(base), copy.deepcopy(base)

    def groups(ps):
        return [{"params": ps[:2], "weight_decay": 0.1}, {"params": ps[2:], "weight_decay": 0.0}]

    ref = AdamW(groups(a), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    fast = fast_adamw(groups(b), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for step in range(60):
        for opt in (ref, fast):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, 1e-2, 1e-4, 5, 60)  # changed between steps
        grads = [torch.randn(p.shape, generator=g) for p in base]
        for ps in (a, b):
            for i, (p, grad) in enumerate(zip(ps, grads)):
                # the last parameter misses every third step: skipped, its count stays behind
                p.grad = None if (i == 3 and step % 3 == 0) else grad.clone()
        ref.step()
        fast.step()
    for p, q in zip(a, b):
        assert torch.allclose(q, p, rtol=1e-5, atol=1e-6), (p - q).abs().max()
    assert int(fast.state[b[3]]["step"]) == ref.state[a[3]]["step"] == 40


def test_a_training_run_with_the_fast_parts_is_the_run_with_the_references():
    g = torch.Generator().manual_seed(3)
    data = torch.randint(30, (5000,), generator=g)
    cfg = TrainConfig(steps=30, batch_size=8, max_lr=1e-2, min_lr=1e-4, warmup=5, betas=(0.9, 0.95),
                      eval_every=10, eval_batches=2, seed=4)
    config = GPTConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=32)
    hists = []
    for parts in (_references(), reference_parts()):
        torch.manual_seed(0)
        hists.append(train(GPT(config), data, data[:500], cfg, progress=False, **parts))
    ref, fast = hists
    assert len(fast["loss"]) == len(fast["grad_norm"]) == len(fast["lr"]) == cfg.steps
    assert all(isinstance(v, float) for v in fast["loss"] + fast["grad_norm"])
    assert fast["lr"] == ref["lr"] and fast["eval_step"] == ref["eval_step"] == [10, 20, 30]
    assert max(abs(x - y) for x, y in zip(fast["loss"], ref["loss"])) < 1e-4
    assert max(abs(x - y) / y for x, y in zip(fast["grad_norm"], ref["grad_norm"])) < 1e-3
    assert max(abs(x - y) for x, y in zip(fast["val_loss"], ref["val_loss"])) < 1e-4


def test_the_loop_flushes_the_history_before_each_evaluation():
    data = torch.randint(20, (2000,), generator=torch.Generator().manual_seed(5))
    seen = []
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=1, n_embd=16))
    cfg = TrainConfig(steps=6, batch_size=4, warmup=1, eval_every=3, eval_batches=1, grad_clip=0.0)
    hist = train(model, data, data, cfg, progress=False, on_eval=lambda s, m: seen.append(s), **reference_parts())
    assert seen == [3, 6] and hist["grad_norm"] == [0.0] * 6 and len(hist["loss"]) == 6


def test_exact_gelu_is_nanogpts_and_the_default_stays_gpt2s_tanh_form():
    x = torch.randn(2, 3, 16)
    for activation, gelu in (("gelu_exact", nn.GELU()), ("gelu", nn.GELU(approximate="tanh"))):
        torch.manual_seed(0)
        mlp = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16,
                            activation=activation)).blocks[0].mlp
        assert torch.allclose(mlp(x), mlp.proj(gelu(mlp.fc(x))), atol=1e-7), activation
    # The pretrained model (and every chapter that builds a GPT) keeps GPT-2's tanh form.
    assert GPTConfig().activation == "gelu"


def test_the_recipe_is_cheaper_per_step_than_the_baby_gpt_it_replaces():
    # The chapter's recipe model: the benchmark's numbers assume its shape.
    assert RECIPE_MODEL["block_size"] == 64 and RECIPE.grad_clip == 1.0
    recipe = GPT(GPTConfig(vocab_size=65, **RECIPE_MODEL))
    baby = GPT(GPTConfig(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64))
    assert recipe.num_parameters() < baby.num_parameters()
    assert param_groups(recipe, 0.1)[1]["weight_decay"] == 0.0
