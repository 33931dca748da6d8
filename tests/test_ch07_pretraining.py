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

from solutions.ch07_pretraining import (GPT, RECIPE, RECIPE_MODEL, AdamW, GPTConfig, Optimizers, TrainConfig,
                                        clip_grad_norm, make_optimizer,
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


# -- Muon for the blocks' matrices (the recipe's optimizer) ---------------------------------
def _tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16))


def test_muon_takes_exactly_the_blocks_matrices_and_adamw_the_rest():
    model = _tiny()
    opt = make_optimizer(model, TrainConfig(muon_lr_scale=0.5, muon_weight_decay=0.3, weight_decay=0.1), fast_adamw)
    assert isinstance(opt, Optimizers)
    adam, muon = opt.optimizers
    assert isinstance(adam, torch.optim.AdamW) and isinstance(muon, torch.optim.Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = sorted(names[id(p)] for g in muon.param_groups for p in g["params"])
    in_adam = sorted(names[id(p)] for g in adam.param_groups for p in g["params"])
    assert in_muon == sorted(f"blocks.{i}.{m}.weight" for i in range(2)
                             for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"))
    assert in_adam == sorted(set(names.values()) - set(in_muon))  # embeddings (tied head), norms
    assert adam.param_groups[0]["weight_decay"] == 0.1 and adam.param_groups[1]["weight_decay"] == 0.0
    assert muon.param_groups[0]["weight_decay"] == 0.3
    assert muon.param_groups[0]["lr_scale"] == 0.5
    # Without Muon the optimizer passed in trains every parameter, as before.
    plain = make_optimizer(model, TrainConfig(), fast_adamw)
    assert isinstance(plain, torch.optim.AdamW)
    assert sum(len(g["params"]) for g in plain.param_groups) == len(list(model.parameters()))


def test_a_muon_run_is_adamw_plus_torchs_muon_stepped_by_hand():
    data = torch.randint(20, (3000,), generator=torch.Generator().manual_seed(6))
    cfg = TrainConfig(steps=12, batch_size=4, max_lr=1e-2, min_lr=1e-4, warmup=3, betas=(0.9, 0.95),
                      weight_decay=0.3, muon_lr_scale=0.5, muon_weight_decay=0.3, seed=7)
    model = _tiny()
    train(model, data, data, cfg, progress=False, **reference_parts())

    by_hand = _tiny()
    hidden = [p for n, p in by_hand.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
    ids = {id(p) for p in hidden}
    rest = [p for p in by_hand.parameters() if id(p) not in ids]
    adam = torch.optim.AdamW([{"params": [p for p in rest if p.dim() == 2], "weight_decay": 0.3},
                              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                             lr=1e-2, betas=(0.9, 0.95), fused=True)
    muon = torch.optim.Muon(hidden, lr=5e-3, weight_decay=0.3, adjust_lr_fn="match_rms_adamw")
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    for step in range(cfg.steps):
        lr = lr_at(step, cfg.max_lr, cfg.min_lr, cfg.warmup, cfg.steps)
        for group in adam.param_groups:
            group["lr"] = lr
        for group in muon.param_groups:
            group["lr"] = 0.5 * lr
        x, y = get_batch(data, 8, 4, g)
        loss = torch.nn.functional.cross_entropy(by_hand(x).flatten(0, 1), y.flatten())
        adam.zero_grad(set_to_none=True)
        muon.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(by_hand.parameters(), 1.0)
        adam.step()
        muon.step()
    for (name, p), q in zip(model.named_parameters(), by_hand.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), name
    # Muon moved its matrices: the run is not AdamW alone.
    adam_only = _tiny()
    train(adam_only, data, data, cfg._replace(muon_lr_scale=0.0), progress=False, **reference_parts())
    assert not torch.allclose(adam_only.blocks[0].mlp.fc.weight, model.blocks[0].mlp.fc.weight, atol=1e-4)


def test_the_two_optimizers_save_and_resume_as_one():
    model = _tiny()
    cfg = TrainConfig(muon_lr_scale=0.5, muon_weight_decay=0.3)
    x = torch.randint(20, (4, 8), generator=torch.Generator().manual_seed(8))

    def steps(m, opt, n):
        for _ in range(n):
            loss = m(x).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    opt = make_optimizer(model, cfg, fast_adamw)
    steps(model, opt, 3)
    state, weights = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    steps(model, opt, 3)
    resumed = _tiny(1)
    resumed.load_state_dict(weights)
    opt2 = make_optimizer(resumed, cfg, fast_adamw)
    opt2.load_state_dict(state)
    assert opt2.optimizers[1].state  # Muon's momentum came back
    steps(resumed, opt2, 3)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
