"""Chapter 7 - Pretraining."""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from ..core import Case, Exercise, Mistake, close_tensors, hidden_seed, register
from ..drivers.ch07_pretraining import (adamw_run, batch_run, ce_grad_run, clip_run, clip_setup, compare_batches,
                                        compare_clip, compare_lrs, compare_params, compare_resumed, fresh,
                                        load_checkpoint_run, lr_run, one_thread, run_steps, save_checkpoint_run,
                                        warm_up_optimizers)

CH = "ch07"
SOL = "solutions.ch07_pretraining"


# -- get_batch ----------------------------------------------------------------------------
def _stream(n: int, seed: int) -> torch.Tensor:
    # Distinct values, so every window says where it starts.
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g) + 3


def _batch_cases(hidden: bool):
    specs = [("N=40, block_size=8, batch_size=16 (200 batches)", 40, 8, 16, 200, True, 0),
             ("N=25, block_size=1, batch_size=8 (250 batches)", 25, 1, 8, 250, True, 1),
             ("N = block_size + 1: a single window", 9, 8, 4, 20, True, 2),
             ("N=5000, block_size=64, batch_size=32 (only bounds)", 5000, 64, 32, 20, False, 3)]
    if hidden:
        specs += [("N=70, block_size=20, batch_size=5 (600 batches)", 70, 20, 5, 600, True,
                   hidden_seed("ch07.get_batch", 4)),
                  ("N=12, block_size=3, batch_size=1 (400 batches)", 12, 3, 1, 400, True,
                   hidden_seed("ch07.get_batch", 5))]
    for name, n, t, b, calls, coverage, seed in specs:
        data = _stream(n, seed)
        expected = {"form": "ok", "windows": True, "targets": "shifted", "range": "every start",
                    "batch": "independent starts", "uniform": True, "generator": "reproducible"}
        yield Case(name, (data, t, b, calls, coverage), run=batch_run,
                   expected=lambda e=expected: e, compare=compare_batches)


def _sampler(low_shift=0, high_shift=0, target_shift=1, one_start=False, use_generator=True):
    def get_batch(data, block_size, batch_size, generator=None):
        gen = generator if use_generator else None
        n = 1 if one_start else batch_size
        starts = torch.randint(low_shift, len(data) - block_size + high_shift, (n,), generator=gen)
        starts = starts.expand(batch_size)
        x = torch.stack([data[s:s + block_size] for s in starts.tolist()])
        y = torch.stack([data[s + target_shift:s + target_shift + block_size] for s in starts.tolist()])
        return x, y
    return get_batch


register(Exercise(
    id="ch07.get_batch", chapter=CH, title="Sample a batch of training windows", points=1, name="get_batch",
    signature="get_batch(data: Tensor[N] int64, block_size, batch_size, generator) -> (x, y): Tensor[B, T] int64",
    reference="a statistical test: starts uniform over {0, ..., N - block_size - 1} (chi-square), y = x shifted by one",
    solution=f"{SOL}:get_batch", cases=_batch_cases, difficulty="*",
    mistakes=[
        Mistake("last-window-missing", "off by one: your starts stop at N - block_size - 2, so the last window "
                "(whose target is the final token) is never drawn; torch.randint(high) excludes high already",
                _sampler(high_shift=-1)),
        Mistake("unshifted", "y equals x: the target of position t is the NEXT token, data[s + t + 1]",
                _sampler(target_shift=0)),
        Mistake("one-start", "you drew one start and used it for the whole batch: draw batch_size starts "
                "(torch.randint(high, (batch_size,), generator=generator))", _sampler(one_start=True)),
        Mistake("ignores-generator", "you sample from the global RNG: pass generator=generator to torch.randint, "
                "or a resumed run will not see the same batches", _sampler(use_generator=False)),
    ]))


# -- cross_entropy ------------------------------------------------------------------------
def _ce_inputs(seed, shape, scale=1.0, shift=0.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    B, T, V = shape
    logits = (torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale + shift).to(dtype)
    return logits, torch.randint(0, V, (B, T), generator=g)


def _ref_ce(logits, targets):
    return F.cross_entropy(logits.double().reshape(-1, logits.shape[-1]), targets.reshape(-1))


@one_thread
def _ce_ref_grad(logits, targets):
    logits = logits.double().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_ref_ce(logits, targets), logits)
    return grad


def _ce_cases(hidden: bool):
    specs = [("B=2, T=3, V=5", _ce_inputs(0, (2, 3, 5))),
             ("a batch of one sequence of one token", _ce_inputs(1, (1, 1, 4))),
             ("huge logits (scale 1000): a naive exp overflows", _ce_inputs(2, (2, 4, 6), scale=1000.0)),
             ("very negative logits (-5000 shift)", _ce_inputs(3, (3, 2, 7), shift=-5000.0)),
             ("B=4, T=16, V=65, float64", _ce_inputs(4, (4, 16, 65), scale=3.0, dtype=torch.float64))]
    if hidden:
        specs += [("B=8, T=32, V=300", _ce_inputs(hidden_seed("ch07.cross_entropy", 5), (8, 32, 300), scale=2.0)),
                  ("T=1, V=2", _ce_inputs(hidden_seed("ch07.cross_entropy", 6), (5, 1, 2), scale=10.0))]
    for name, (logits, targets) in specs:
        yield Case(name, (logits, targets), expected=lambda l=logits, t=targets: _ref_ce(l, t),
                   compare=close_tensors(atol=1e-4, rtol=1e-5))
    grad_specs = [("gradient with respect to the logits (B=2, T=5, V=7)", _ce_inputs(7, (2, 5, 7), scale=2.0))]
    if hidden:
        grad_specs += [("gradient with huge logits",
                        _ce_inputs(hidden_seed("ch07.cross_entropy", 8), (2, 3, 4), scale=500.0))]
    for name, (logits, targets) in grad_specs:
        yield Case(name, (logits, targets), run=ce_grad_run, expected=lambda l=logits, t=targets: _ce_ref_grad(l, t),
                   compare=close_tensors(atol=1e-6, rtol=1e-4))


def _ce_naive(logits, targets):
    p = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    return -torch.log(p.gather(-1, targets.unsqueeze(-1))).mean()


def _ce_log_softmax(logits, targets):
    return -torch.log(torch.softmax(logits, -1).gather(-1, targets.unsqueeze(-1))).mean()


def _ce_stable(logits, targets, dim=-1):
    m = logits.max(dim=dim, keepdim=True).values
    log_probs = logits - m - torch.log(torch.exp(logits - m).sum(dim=dim, keepdim=True))
    return -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)


register(Exercise(
    id="ch07.cross_entropy", chapter=CH, title="The language-modelling loss over (B, T, V) logits", points=1,
    name="cross_entropy", signature="cross_entropy(logits: Tensor[B, T, V], targets: Tensor[B, T] int64) -> Tensor[]",
    reference="torch.nn.functional.cross_entropy(logits.view(-1, V), targets.view(-1)) and its gradient",
    solution=f"{SOL}:cross_entropy", cases=_ce_cases, difficulty="*",
    forbidden=["torch.nn.functional:cross_entropy", "torch.nn.functional:nll_loss", "torch.nn.functional:log_softmax",
               "torch:log_softmax", "torch:logsumexp", "torch.special:logsumexp", "torch.special:log_softmax",
               "torch.nn:CrossEntropyLoss", "torch.nn:NLLLoss", "torch.nn:LogSoftmax",
               "torch:Tensor.log_softmax", "torch:Tensor.logsumexp"],
    mistakes=[
        Mistake("overflow", "exp(logits) overflowed: subtract the maximum over the vocabulary before exponentiating "
                "(log-sum-exp trick)", _ce_naive),
        Mistake("log-of-softmax", "log(softmax(logits)) underflows to log(0) = -inf for large logits: compute "
                "logits[target] - logsumexp(logits) instead", _ce_log_softmax),
        Mistake("time-axis", "you normalised over the time axis (dim=1); the softmax runs over the vocabulary, the last axis",
                lambda l, t: _ce_stable(l, t, dim=1).mean()),
        Mistake("sum", "you summed the per-token losses; take the mean over all B * T positions",
                lambda l, t: _ce_stable(l, t).sum()),
        Mistake("per-sequence", "you summed over time and averaged over sequences; average over all B * T positions",
                lambda l, t: _ce_stable(l, t).sum(1).mean()),
    ]))


# -- AdamW --------------------------------------------------------------------------------


@one_thread
def _adamw_expected(spec):
    return adamw_run(lambda groups, **kw: torch.optim.AdamW(groups, foreach=False, **kw), spec)


def _adamw_cases(hidden: bool):
    warm_up_optimizers()
    kw = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    specs = [
        ("one 4x3 matrix, 20 steps, weight decay 0.1", dict(seed=0, shapes=[(4, 3)], steps=20, kw=kw)),
        ("three tensors, one frozen (requires_grad=False, grad None)",
         dict(seed=1, shapes=[(5,), (3, 3), (2, 2)], frozen=[1], steps=15, kw=kw)),
        ("a parameter that gets no gradient every third step (its step count must not move)",
         dict(seed=2, shapes=[(6,), (2, 3)], intermittent=[0], steps=12, kw=kw)),
        ("the learning rate changed between steps (as a scheduler does)",
         dict(seed=3, shapes=[(3, 4), (4,)], schedule=True, steps=25, kw=dict(kw, lr=3e-2))),
        ("two parameter groups: decay on the matrix only, another lr",
         dict(seed=4, shapes=[(4, 4), (4,)], steps=20, kw=kw,
              groups=[([0], {}), ([1], {"weight_decay": 0.0, "lr": 5e-3})])),
    ]
    if hidden:
        specs += [
            ("float32, 200 steps, betas (0.9, 0.95), eps 1e-6",
             dict(seed=hidden_seed("ch07.AdamW", 5), shapes=[(8, 8), (8,)], steps=200, dtype=torch.float32,
                  kw=dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.05))),
            ("no weight decay: plain Adam",
             dict(seed=hidden_seed("ch07.AdamW", 6), shapes=[(3, 2)], steps=30, kw=dict(kw, weight_decay=0.0))),
            ("default hyperparameters", dict(seed=hidden_seed("ch07.AdamW", 7), shapes=[(2, 5)], steps=10, kw={})),
        ]
    for name, spec in specs:
        yield Case(name, (spec,), run=adamw_run, expected=lambda s=spec: _adamw_expected(s),
                   compare=functools.partial(compare_params, spec=spec))


def _adam_variant(l2=False, bias_correction=True, decay_lr=True, decay_frozen=False, global_step=False,
                  stale_lr=False):
    """A plain AdamW with one typical mistake switched on."""
    class Variant(torch.optim.Optimizer):
        def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
            super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
            self.t = 0
            self.first_lrs = [group["lr"] for group in self.param_groups]

        @torch.no_grad()
        def step(self, closure=None):
            self.t += 1
            for group, first_lr in zip(self.param_groups, self.first_lrs):
                lr = first_lr if stale_lr else group["lr"]
                (b1, b2), eps, wd = group["betas"], group["eps"], group["weight_decay"]
                for p in group["params"]:
                    if p.grad is None:
                        if decay_frozen:
                            p.mul_(1 - lr * wd)
                        continue
                    s = self.state[p]
                    if not s:
                        s.update(t=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                    s["t"] += 1
                    t = self.t if global_step else s["t"]
                    g = p.grad + wd * p if l2 else p.grad
                    s["m"].mul_(b1).add_(g, alpha=1 - b1)
                    s["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                    m_hat, v_hat = (s["m"] / (1 - b1 ** t), s["v"] / (1 - b2 ** t)) if bias_correction else (s["m"], s["v"])
                    if not l2:
                        p.mul_(1 - (lr * wd if decay_lr else wd))
                    p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    return Variant


register(Exercise(
    id="ch07.AdamW", chapter=CH, title="AdamW, with decoupled weight decay", points=2, name="AdamW",
    signature="class AdamW(torch.optim.Optimizer): __init__(params, lr, betas, eps, weight_decay); step()",
    reference="torch.optim.AdamW (foreach=False), parameters compared after every case's steps",
    solution=f"{SOL}:AdamW", cases=_adamw_cases, difficulty="**",
    forbidden=["torch.optim:AdamW", "torch.optim:Adam", "torch.optim.adamw:AdamW", "torch.optim.adam:Adam",
               "torch.optim.adamw:adamw", "torch.optim.adam:adam", "torch.optim:Adamax", "torch.optim:NAdam",
               "torch.optim:RAdam"],
    mistakes=[
        Mistake("l2", "you added weight_decay * p to the gradient (Adam with L2 regularisation): AdamW decays the "
                "weights directly, p -= lr * weight_decay * p, outside the moment estimates",
                _adam_variant(l2=True)),
        Mistake("no-bias-correction", "the moments are not bias-corrected: divide m by (1 - beta1^t) and v by "
                "(1 - beta2^t), or the first steps are far too small", _adam_variant(bias_correction=False)),
        Mistake("decay-without-lr", "your decay is p -= weight_decay * p; it is scaled by the learning rate: "
                "p -= lr * weight_decay * p", _adam_variant(decay_lr=False)),
        Mistake("decay-frozen", "you decayed a parameter that has no gradient (frozen, or unused this step): "
                "skip such parameters entirely", _adam_variant(decay_frozen=True)),
        Mistake("global-step", "you count steps for the optimizer as a whole; each parameter's bias correction uses "
                "its OWN count of updates (keep it in self.state[p])", _adam_variant(global_step=True)),
        Mistake("stale-lr", "you read the learning rate once, in __init__; read group['lr'] at every step, "
                "a scheduler changes it", _adam_variant(stale_lr=True)),
    ]))


# -- lr_at --------------------------------------------------------------------------------


@one_thread
def _lr_expected(max_lr, min_lr, warmup, total, extra):
    """The warm-up as a linspace from 0 to max_lr; the decay read back, step by step, from
    torch's CosineAnnealingLR (eta_min = min_lr over total - warmup steps); then min_lr."""
    warm = torch.linspace(0.0, max_lr, warmup + 1, dtype=torch.float64)[:-1].tolist()
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=max_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=min_lr)
    decay = []
    for _ in range(total - warmup + 1):
        decay.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradient: nothing moves, but the scheduler sees the expected call order
        sched.step()
    return torch.tensor(warm + decay + [min_lr] * extra, dtype=torch.float64)


def _lr_cases(hidden: bool):
    warm_up_optimizers()
    specs = [("max 1e-3, min 1e-4, warmup 10, total 100 (and 20 steps beyond)", 1e-3, 1e-4, 10, 100, 20),
             ("nanoGPT-like: max 1e-3, min 1e-4, warmup 100, total 2000", 1e-3, 1e-4, 100, 2000, 5),
             ("no warm-up (warmup = 0)", 1e-2, 0.0, 0, 50, 5),
             ("warmup = 1", 5e-4, 5e-5, 1, 20, 3)]
    if hidden:
        specs += [("min_lr = max_lr: flat after the warm-up", 3e-4, 3e-4, 5, 40, 5),
                  ("max 1, min 0.1, warmup 7, total 23", 1.0, 0.1, 7, 23, 10)]
    for name, *args in specs:
        yield Case(name, tuple(args), run=lr_run, expected=lambda a=tuple(args): _lr_expected(*a),
                   compare=compare_lrs)


def _schedule(warm, decay_progress=None, floor=True, min_in_cosine=True):
    def lr_at(step, max_lr, min_lr, warmup, total):
        if step < warmup:
            return warm(step, max_lr, min_lr, warmup)
        if step >= total and floor:
            return min_lr
        progress = decay_progress(step, warmup, total) if decay_progress else (step - warmup) / (total - warmup)
        low = min_lr if min_in_cosine else 0.0
        return low + (max_lr - low) * 0.5 * (1 + math.cos(math.pi * progress))
    return lr_at


_linear_warm = lambda step, max_lr, min_lr, warmup: max_lr * step / warmup  # noqa: E731

register(Exercise(
    id="ch07.lr_at", chapter=CH, title="Warm-up and cosine decay", points=1, name="lr_at",
    signature="lr_at(step: int, max_lr: float, min_lr: float, warmup: int, total: int) -> float",
    reference="a linear ramp from 0 (torch.linspace), then torch.optim.lr_scheduler.CosineAnnealingLR read back "
              "step by step, then min_lr",
    solution=f"{SOL}:lr_at", cases=_lr_cases, difficulty="*",
    # (Hugging Face's schedule functions are not listed: forbidding them would import transformers.)
    forbidden=["torch.optim.lr_scheduler:CosineAnnealingLR"],
    mistakes=[
        Mistake("warmup-plus-one", "the warm-up is shifted by one step: lr(step) = max_lr * step / warmup, so "
                "step 0 gets 0 and step `warmup` is the first to get max_lr",
                _schedule(lambda s, M, m, w: M * (s + 1) / w)),
        Mistake("warmup-nanogpt", "you used nanoGPT's warm-up, max_lr * (step + 1) / (warmup + 1); this course (like "
                "Hugging Face) uses max_lr * step / warmup", _schedule(lambda s, M, m, w: M * (s + 1) / (w + 1))),
        Mistake("warmup-from-min", "your warm-up starts from min_lr; it starts from 0: max_lr * step / warmup",
                _schedule(lambda s, M, m, w: m + (M - m) * s / w)),
        Mistake("progress-from-zero", "the cosine's progress must start at the end of the warm-up: "
                "(step - warmup) / (total - warmup), not step / total",
                _schedule(_linear_warm, decay_progress=lambda s, w, T: s / T)),
        Mistake("no-min-lr", "your cosine decays to 0 and ignores min_lr: min_lr + (max_lr - min_lr) * (1 + cos) / 2",
                _schedule(_linear_warm, min_in_cosine=False)),
        Mistake("no-floor", "after `total` steps the cosine climbs back up: return min_lr for step >= total",
                _schedule(_linear_warm, floor=False)),
    ]))


# -- clip_grad_norm -----------------------------------------------------------------------


@one_thread
def _clip_expected(spec):
    params = clip_setup(spec)
    norm = torch.nn.utils.clip_grad_norm_(params, spec["max_norm"], foreach=False)
    return float(norm), [None if p.grad is None else p.grad.clone() for p in params]


def _clip_cases(hidden: bool):
    specs = [("norm far above max_norm: every gradient is scaled", dict(seed=0, shapes=[(4, 3), (5,), (2, 2)], scale=3.0, max_norm=1.0)),
             ("norm below max_norm: nothing changes", dict(seed=1, shapes=[(3, 3), (4,)], scale=0.05, max_norm=1.0)),
             ("a parameter without gradient is skipped", dict(seed=2, shapes=[(6,), (2, 3), (3,)], no_grad=[1], scale=2.0, max_norm=0.5)),
             ("parameters passed as a generator, like model.parameters()", dict(seed=3, shapes=[(5, 2), (7,)], scale=4.0, max_norm=1.0, generator=True))]
    if hidden:
        ex = "ch07.clip_grad_norm"
        specs += [("one large tensor, max_norm 5",
                   dict(seed=hidden_seed(ex, 4), shapes=[(64, 64)], scale=1.0, max_norm=5.0)),
                  ("no gradients at all: norm 0",
                   dict(seed=hidden_seed(ex, 5), shapes=[(3,), (2,)], no_grad=[0, 1], scale=1.0, max_norm=1.0))]
    for name, spec in specs:
        yield Case(name, (spec,), run=clip_run, expected=lambda s=spec: _clip_expected(s), compare=compare_clip)


def _clip_mistake(kind):
    def clip(parameters, max_norm):
        is_generator = not isinstance(parameters, (list, tuple))
        params = [p for p in parameters if p.grad is not None]
        norms = [p.grad.norm() for p in params]
        total = torch.stack(norms).norm() if norms else torch.tensor(0.0)
        if kind == "per-parameter":
            for p, n in zip(params, norms):
                if n > max_norm:
                    p.grad.mul_(max_norm / (n + 1e-6))
            return total
        if kind == "clip-value":
            for p in params:
                p.grad.clamp_(-max_norm, max_norm)
            return total
        if kind == "sum-of-norms":
            total = sum(norms) if norms else torch.tensor(0.0)
        if kind == "generator-consumed" and is_generator:
            return total  # the second pass over the exhausted generator scales nothing
        if total > max_norm or kind == "always-scale":
            for p in params:
                p.grad.mul_(max_norm / (total + 1e-6))
        if kind == "norm-after":
            return torch.stack([p.grad.norm() for p in params]).norm() if params else total
        return total
    return clip


register(Exercise(
    id="ch07.clip_grad_norm", chapter=CH, title="Gradient clipping by the global norm", points=1,
    name="clip_grad_norm", signature="clip_grad_norm(parameters: Iterable[Tensor], max_norm: float) -> Tensor[]",
    reference="torch.nn.utils.clip_grad_norm_ (returned norm and the gradients afterwards)",
    solution=f"{SOL}:clip_grad_norm", cases=_clip_cases, difficulty="*",
    forbidden=["torch.nn.utils:clip_grad_norm_", "torch.nn.utils:clip_grad_norm", "torch.nn.utils:get_total_norm",
               "torch.nn.utils:clip_grads_with_norm_", "torch.nn.utils.clip_grad:clip_grad_norm_",
               "torch.nn.utils.clip_grad:clip_grad_norm", "torch.nn.utils.clip_grad:_get_total_norm",
               "torch.nn.utils.clip_grad:_clip_grads_with_norm_"],
    mistakes=[
        Mistake("per-parameter", "you clipped each parameter's gradient on its own; the norm is global, over all "
                "gradients together, and one common factor scales them all", _clip_mistake("per-parameter")),
        Mistake("clip-value", "you clamped each gradient element to [-max_norm, max_norm] (clip_grad_value_); "
                "clip_grad_norm rescales whole gradients, keeping their direction", _clip_mistake("clip-value")),
        Mistake("always-scale", "you rescaled even though the norm was below max_norm: scale only when "
                "norm > max_norm (small gradients must not be blown up)", _clip_mistake("always-scale")),
        Mistake("sum-of-norms", "you added up the per-parameter norms; the global norm is "
                "sqrt(sum of squared norms)", _clip_mistake("sum-of-norms")),
        Mistake("norm-after", "you returned the norm after clipping; return the norm measured before "
                "(that is what you log to watch training)", _clip_mistake("norm-after")),
        Mistake("generator-consumed", "`parameters` was a generator and your second loop over it saw nothing: "
                "make a list first (params = [p for p in parameters if p.grad is not None])",
                _clip_mistake("generator-consumed")),
    ]))


# -- save_checkpoint / load_checkpoint ----------------------------------------------------


@one_thread
def _straight(seed, total):
    model, opt, gen = fresh(seed)
    run_steps(model, opt, gen, 0, total, total)
    return [p.detach().clone() for p in model.parameters()]


def _ckpt_cases(role):
    def cases(hidden: bool):
        warm_up_optimizers()
        specs = [("checkpoint at step 6 of 12", 0, 12, 6), ("checkpoint at step 0 (nothing trained yet)", 1, 8, 0),
                 ("checkpoint at step 9 of 10", 2, 10, 9)]
        if hidden:
            specs += [("checkpoint at step 13 of 25", hidden_seed(f"ch07.{role}_checkpoint", 3), 25, 13)]
        for name, seed, total, at in specs:
            run = save_checkpoint_run if role == "save" else load_checkpoint_run
            yield Case(name, (seed, total, at), run=run, expected=lambda s=seed, t=total: _straight(s, t),
                       compare=compare_resumed)
    return cases


def _save_mistake(skip=(), step_shift=0):
    def save(path, model, optimizer, step, generator):
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step + step_shift,
                 "torch_rng": torch.get_rng_state(), "generator": generator.get_state()}
        torch.save({k: v for k, v in state.items() if k not in skip}, path)
    return save


def _load_mistake(skip=(), step_shift=0):
    def load(path, model, optimizer, generator):
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["model"])
        if "optimizer" not in skip:
            optimizer.load_state_dict(state["optimizer"])
        if "torch_rng" not in skip:
            torch.set_rng_state(state["torch_rng"])
        if "generator" not in skip:
            generator.set_state(state["generator"])
        return state["step"] + step_shift
    return load


_CKPT_MESSAGES = {
    "optimizer": "the optimizer's state (AdamW's moments m and v and its step counts) was not {}: without it the "
                 "first steps after resuming are Adam's first steps again",
    "torch_rng": "the global RNG (torch.get_rng_state / set_rng_state) was not {}: dropout draws other masks after resuming",
    "generator": "the batch generator's state (generator.get_state / set_state) was not {}: the resumed run sees other batches",
}

register(Exercise(
    id="ch07.save_checkpoint", chapter=CH, title="Save a checkpoint", points=1, name="save_checkpoint",
    signature="save_checkpoint(path, model, optimizer, step, generator) -> None",
    reference="a bit-exact comparison (torch.equal) with an uninterrupted run, after loading your file with "
              "torch.load(weights_only=True) into fresh objects",
    solution=f"{SOL}:save_checkpoint", cases=_ckpt_cases("save"), difficulty="*",
    mistakes=[Mistake(f"no-{k}", _CKPT_MESSAGES[k].format("saved"), _save_mistake(skip=(k,)))
              for k in ("optimizer", "torch_rng", "generator")]
    + [Mistake("step-plus-one", "you saved step + 1; `step` is already the number of updates done, the index "
               "of the next one", _save_mistake(step_shift=1))],
))

register(Exercise(
    id="ch07.load_checkpoint", chapter=CH, title="Resume from a checkpoint, bit for bit", points=1,
    name="load_checkpoint", signature="load_checkpoint(path, model, optimizer, generator) -> int",
    reference="a bit-exact comparison (torch.equal) with an uninterrupted run",
    solution=f"{SOL}:load_checkpoint", cases=_ckpt_cases("load"), difficulty="*",
    mistakes=[Mistake(f"no-{k}", _CKPT_MESSAGES[k].format("restored"), _load_mistake(skip=(k,)))
              for k in ("optimizer", "torch_rng", "generator")]
    + [Mistake("step-plus-one", "you returned step + 1; return the saved step, the index of the next update",
               _load_mistake(step_shift=1))],
))
