"""Chapter 7: wrong answers as learners write them."""
from __future__ import annotations

import math

import torch

from . import wrong


# -- get_batch ----------------------------------------------------------------------------
@wrong("ch07.get_batch", diagnosis="last-window-missing")
def get_batch_minus_one(data, block_size, batch_size, generator=None):
    # "- 1 so that y does not run off the end" (but randint's high is already exclusive)
    ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i + 1:i + block_size + 1] for i in ix])
    return x, y


@wrong("ch07.get_batch", diagnosis="unshifted")
def get_batch_same_targets(data, block_size, batch_size, generator=None):
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i:i + block_size] for i in ix])
    return x, y


@wrong("ch07.get_batch", diagnosis="one-start")
def get_batch_one_start(data, block_size, batch_size, generator=None):
    i = torch.randint(len(data) - block_size, (1,), generator=generator).item()
    x = data[i:i + block_size].repeat(batch_size, 1)
    y = data[i + 1:i + block_size + 1].repeat(batch_size, 1)
    return x, y


@wrong("ch07.get_batch", diagnosis="ignores-generator")
def get_batch_global_rng(data, block_size, batch_size, generator=None):
    ix = torch.randint(0, len(data) - block_size, (batch_size,))
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + block_size] for i in ix])
    return x, y


@wrong("ch07.get_batch")
def get_batch_past_the_end(data, block_size, batch_size, generator=None):
    # randint(N - T + 1) can draw the start N - T, whose target window runs off the end.
    ix = torch.randint(len(data) - block_size + 1, (batch_size,), generator=generator)
    offsets = torch.arange(block_size)
    return data[ix[:, None] + offsets], data[(ix[:, None] + offsets + 1).clamp(max=len(data) - 1)]


@wrong("ch07.get_batch")
def get_batch_python_random(data, block_size, batch_size, generator=None):
    import random
    xs, ys = [], []
    for _ in range(batch_size):
        i = random.randint(0, len(data) - block_size - 1)
        xs.append(data[i:i + block_size])
        ys.append(data[i + 1:i + block_size + 1])
    return torch.stack(xs), torch.stack(ys)


# -- cross_entropy ------------------------------------------------------------------------
@wrong("ch07.cross_entropy", diagnosis="overflow")
def ce_naive(logits, targets):
    probs = logits.exp() / logits.exp().sum(dim=-1, keepdim=True)
    p = probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return -p.log().mean()


@wrong("ch07.cross_entropy", diagnosis="log-of-softmax")
def ce_log_of_softmax(logits, targets):
    probs = torch.softmax(logits, dim=-1)
    return -torch.log(probs.gather(-1, targets.unsqueeze(-1))).mean()


@wrong("ch07.cross_entropy", diagnosis="time-axis")
def ce_wrong_axis(logits, targets):
    m = logits.max(dim=1, keepdim=True).values
    log_probs = logits - m - (logits - m).exp().sum(dim=1, keepdim=True).log()
    return -log_probs.gather(2, targets[..., None]).mean()


@wrong("ch07.cross_entropy", diagnosis="per-sequence")
def ce_sum_over_time(logits, targets):
    B, T, V = logits.shape
    m = logits.max(-1, keepdim=True).values
    lse = m.squeeze(-1) + torch.log(torch.exp(logits - m).sum(-1))
    nll = lse - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return nll.sum(dim=1).mean()


@wrong("ch07.cross_entropy")
def ce_item(logits, targets):
    # Right number, but .item() cuts the graph: loss.backward() has nothing to follow.
    m = logits.max(-1, keepdim=True).values
    lse = m.squeeze(-1) + torch.log(torch.exp(logits - m).sum(-1))
    nll = lse - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return torch.tensor(nll.mean().item())


# -- AdamW --------------------------------------------------------------------------------
class _LearnerAdamBase(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))


@wrong("ch07.AdamW", diagnosis="l2")
class AdamWithL2(_LearnerAdamBase):
    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad + group["weight_decay"] * p  # weight decay as L2 in the gradient
                st = self.state[p]
                if len(st) == 0:
                    st["t"], st["m"], st["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                st["t"] += 1
                st["m"] = b1 * st["m"] + (1 - b1) * g
                st["v"] = b2 * st["v"] + (1 - b2) * g * g
                m_hat = st["m"] / (1 - b1 ** st["t"])
                v_hat = st["v"] / (1 - b2 ** st["t"])
                p -= group["lr"] * m_hat / (v_hat.sqrt() + group["eps"])


@wrong("ch07.AdamW", diagnosis="no-bias-correction")
class AdamWNoBiasCorrection(_LearnerAdamBase):
    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
                st["m"].mul_(b1).add_((1 - b1) * p.grad)
                st["v"].mul_(b2).add_((1 - b2) * p.grad ** 2)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(-group["lr"] * st["m"] / (st["v"].sqrt() + group["eps"]))


@wrong("ch07.AdamW", diagnosis="decay-frozen")
class AdamWDecaysEverything(_LearnerAdamBase):
    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            b1, b2 = group["betas"]
            for p in group["params"]:
                p.mul_(1 - lr * wd)  # decay first ... even for parameters that get no gradient
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                st["step"] += 1
                st["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (st["v"] / (1 - b2 ** st["step"])).sqrt() + group["eps"]
                p.addcdiv_(st["m"] / (1 - b1 ** st["step"]), denom, value=-lr)


@wrong("ch07.AdamW", diagnosis="global-step")
class AdamWGlobalStep(_LearnerAdamBase):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)
        self.t = 0

    @torch.no_grad()
    def step(self, closure=None):
        self.t += 1
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
                st["m"] = b1 * st["m"] + (1 - b1) * p.grad
                st["v"] = b2 * st["v"] + (1 - b2) * p.grad ** 2
                m_hat = st["m"] / (1 - b1 ** self.t)
                v_hat = st["v"] / (1 - b2 ** self.t)
                p.data = p.data * (1 - group["lr"] * group["weight_decay"]) - group["lr"] * m_hat / (v_hat.sqrt() + group["eps"])


@wrong("ch07.AdamW", diagnosis="stale-lr")
class AdamWFixedLr(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.lr, self.betas, self.eps = lr, betas, eps  # remembered once

    @torch.no_grad()
    def step(self, closure=None):
        b1, b2 = self.betas
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                st["step"] += 1
                st["m"].lerp_(p.grad, 1 - b1)
                st["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.mul_(1 - self.lr * group["weight_decay"])
                step_size = self.lr / (1 - b1 ** st["step"])
                denom = st["v"].sqrt() / math.sqrt(1 - b2 ** st["step"]) + self.eps
                p.addcdiv_(st["m"], denom, value=-step_size)


@wrong("ch07.AdamW", diagnosis="decay-without-lr")
class AdamWDecayNoLr(_LearnerAdamBase):
    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                st["step"] += 1
                st["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.sub_(group["weight_decay"] * p)
                m_hat = st["m"] / (1 - b1 ** st["step"])
                v_hat = st["v"] / (1 - b2 ** st["step"])
                p.sub_(group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]))


@wrong("ch07.AdamW")
class AdamWEpsInsideSqrt(_LearnerAdamBase):
    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                st["step"] += 1
                st["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                m_hat = st["m"] / (1 - b1 ** st["step"])
                v_hat = st["v"] / (1 - b2 ** st["step"])
                p.sub_(group["lr"] * m_hat / (v_hat + group["eps"]).sqrt())  # eps inside the root


# -- lr_at --------------------------------------------------------------------------------
@wrong("ch07.lr_at", diagnosis="warmup-nanogpt")
def lr_at_nanogpt(step, max_lr, min_lr, warmup, total):
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    if step > total:
        return min_lr
    ratio = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


@wrong("ch07.lr_at", diagnosis="progress-from-zero")
def lr_at_progress_from_zero(step, max_lr, min_lr, warmup, total):
    if step < warmup:
        return max_lr * step / warmup
    if step >= total:
        return min_lr
    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * step / total)) / 2


@wrong("ch07.lr_at", diagnosis="no-min-lr")
def lr_at_to_zero(step, max_lr, min_lr, warmup, total):
    if step < warmup:
        return max_lr * step / warmup
    if step >= total:
        return min_lr
    return max_lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@wrong("ch07.lr_at", diagnosis="no-floor")
def lr_at_no_floor(step, max_lr, min_lr, warmup, total):
    if step < warmup:
        return max_lr * step / warmup
    p = (step - warmup) / (total - warmup)
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * p))


@wrong("ch07.lr_at", diagnosis="warmup-from-min")
def lr_at_warm_from_min(step, max_lr, min_lr, warmup, total):
    if step < warmup:
        return min_lr + (max_lr - min_lr) * step / warmup
    if step >= total:
        return min_lr
    p = (step - warmup) / (total - warmup)
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * p))


@wrong("ch07.lr_at")
def lr_at_missing_half(step, max_lr, min_lr, warmup, total):
    # Forgot the 1/2 in front of (1 + cos): the decay starts at twice max_lr.
    if step < warmup:
        return max_lr * step / warmup
    if step >= total:
        return min_lr
    p = (step - warmup) / (total - warmup)
    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * p))


# -- clip_grad_norm -----------------------------------------------------------------------
@wrong("ch07.clip_grad_norm", diagnosis="per-parameter")
def clip_each(parameters, max_norm):
    norms = []
    for p in parameters:
        if p.grad is None:
            continue
        n = p.grad.norm()
        norms.append(n)
        if n > max_norm:
            p.grad *= max_norm / (n + 1e-6)
    return torch.stack(norms).norm() if norms else torch.tensor(0.0)


@wrong("ch07.clip_grad_norm", diagnosis="clip-value")
def clip_values(parameters, max_norm):
    params = [p for p in parameters if p.grad is not None]
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in params)) if params else torch.tensor(0.0)
    for p in params:
        p.grad.clamp_(min=-max_norm, max=max_norm)
    return total


@wrong("ch07.clip_grad_norm", diagnosis="always-scale")
def clip_always(parameters, max_norm):
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
    for p in params:
        p.grad.mul_(max_norm / (total + 1e-6))
    return total


@wrong("ch07.clip_grad_norm", diagnosis="generator-consumed")
def clip_two_passes(parameters, max_norm):
    total_sq = torch.tensor(0.0)
    for p in parameters:
        if p.grad is not None:
            total_sq += p.grad.pow(2).sum()
    total = total_sq.sqrt()
    if total > max_norm:
        for p in parameters:  # a generator is already exhausted here
            if p.grad is not None:
                p.grad.mul_(max_norm / (total + 1e-6))
    return total


@wrong("ch07.clip_grad_norm", diagnosis="norm-after")
def clip_returns_new_norm(parameters, max_norm):
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    total = torch.stack([p.grad.norm() for p in params]).norm()
    if total > max_norm:
        for p in params:
            p.grad.mul_(max_norm / (total + 1e-6))
    return torch.stack([p.grad.norm() for p in params]).norm()


@wrong("ch07.clip_grad_norm", diagnosis="sum-of-norms")
def clip_sum_of_norms(parameters, max_norm):
    params = [p for p in parameters if p.grad is not None]
    total = sum(p.grad.norm() for p in params) if params else torch.tensor(0.0)
    if total > max_norm:
        for p in params:
            p.grad.mul_(max_norm / (total + 1e-6))
    return total


# -- save_checkpoint ----------------------------------------------------------------------
@wrong("ch07.save_checkpoint", diagnosis="no-optimizer")
def save_model_only(path, model, optimizer, step, generator):
    torch.save({"model": model.state_dict(), "step": step, "torch_rng": torch.get_rng_state(),
                "generator": generator.get_state()}, path)


@wrong("ch07.save_checkpoint", diagnosis="no-torch_rng")
def save_without_global_rng(path, model, optimizer, step, generator):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "generator": generator.get_state()}, path)


@wrong("ch07.save_checkpoint", diagnosis="no-generator")
def save_without_generator(path, model, optimizer, step, generator):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "torch_rng": torch.get_rng_state()}, path)


@wrong("ch07.save_checkpoint", diagnosis="step-plus-one")
def save_next_step(path, model, optimizer, step, generator):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1,
                "torch_rng": torch.get_rng_state(), "generator": generator.get_state()}, path)


@wrong("ch07.save_checkpoint")
def save_whole_objects(path, model, optimizer, step, generator):
    # Pickles the module itself: torch.load(weights_only=True) refuses it.
    torch.save({"model": model, "optimizer": optimizer.state_dict(), "step": step,
                "torch_rng": torch.get_rng_state(), "generator": generator.get_state()}, path)


@wrong("ch07.save_checkpoint")
def save_generator_seed(path, model, optimizer, step, generator):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "torch_rng": torch.get_rng_state(), "generator": generator.initial_seed()}, path)


# -- load_checkpoint ----------------------------------------------------------------------
@wrong("ch07.load_checkpoint", diagnosis="no-optimizer")
def load_weights_only(path, model, optimizer, generator):
    ckpt = torch.load(path, weights_only=True)
    model.load_state_dict(ckpt["model"])
    torch.set_rng_state(ckpt["torch_rng"])
    generator.set_state(ckpt["generator"])
    return ckpt["step"]


@wrong("ch07.load_checkpoint", diagnosis="no-torch_rng")
def load_without_global_rng(path, model, optimizer, generator):
    ckpt = torch.load(path, weights_only=True)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    generator.set_state(ckpt["generator"])
    return ckpt["step"]


@wrong("ch07.load_checkpoint", diagnosis="no-generator")
def load_without_generator(path, model, optimizer, generator):
    ckpt = torch.load(path, weights_only=True)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["torch_rng"])
    return ckpt["step"]


@wrong("ch07.load_checkpoint", diagnosis="step-plus-one")
def load_returns_next(path, model, optimizer, generator):
    ckpt = torch.load(path, weights_only=True)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.set_rng_state(ckpt["torch_rng"])
    generator.set_state(ckpt["generator"])
    return ckpt["step"] + 1


@wrong("ch07.load_checkpoint")
def load_reseeds(path, model, optimizer, generator):
    ckpt = torch.load(path, weights_only=True)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    torch.manual_seed(ckpt["step"])  # "any seed will do"
    generator.manual_seed(ckpt["step"])
    return ckpt["step"]
