"""Correct answers to chapter 7, in other styles than the reference."""
import io
import math
from pathlib import Path

import numpy as np
import torch

from . import right


# -- get_batch ------------------------------------------------------------------------------
@right("ch07.get_batch", style="one start drawn per row in a loop, slices stacked")
def get_batch_loop(data, block_size, batch_size, generator=None):
    xs, ys = [], []
    last_start = len(data) - block_size - 1
    for _ in range(batch_size):
        s = int(torch.randint(0, last_start + 1, (1,), generator=generator))
        xs.append(data[s:s + block_size])
        ys.append(data[s + 1:s + 1 + block_size])
    return torch.stack(xs), torch.stack(ys)


@right("ch07.get_batch", style="Tensor.unfold into every window, then rows picked by the starts")
def get_batch_unfold(data, block_size, batch_size, generator=None):
    windows = data.unfold(0, block_size + 1, 1)  # (N - block_size, block_size + 1)
    pick = torch.randint(high=windows.shape[0], size=(batch_size,), generator=generator)
    chosen = windows[pick]
    return chosen[:, :block_size].clone(), chosen[:, 1:].clone()


# -- cross_entropy --------------------------------------------------------------------------
@right("ch07.cross_entropy", style="flattened to (B*T, V), own log-sum-exp with amax, one-hot selection")
def lm_cross_entropy_flat(logits, targets):
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    t = targets.reshape(-1)
    m = flat.amax(dim=1, keepdim=True)
    lse = m + (flat - m).exp().sum(dim=1, keepdim=True).log()
    one_hot = torch.zeros_like(flat).scatter(1, t[:, None], 1.0)
    nll = (lse - flat).mul(one_hot).sum(dim=1)
    return nll.sum() / t.numel()


@right("ch07.cross_entropy", style="float64 inside, advanced indexing, cast back to the input dtype")
def lm_cross_entropy_float64(logits, targets):
    x = logits.to(torch.float64)
    shifted = x - x.max(dim=-1, keepdim=True).values
    log_probs = shifted - torch.log(torch.sum(torch.exp(shifted), dim=-1, keepdim=True))
    B, T = targets.shape
    b = torch.arange(B)[:, None].expand(B, T)
    t = torch.arange(T)[None, :].expand(B, T)
    return (-log_probs[b, t, targets].mean()).to(logits.dtype)


# -- AdamW ----------------------------------------------------------------------------------
@right("ch07.AdamW", style="torch's own arrangement: step size lr / (1 - b1^t), denominator sqrt(v) / sqrt(1 - b2^t) + eps")
class AdamWTorchStyle(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                st = self.state[p]
                if len(st) == 0:
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["step"] += 1
                t = st["step"].item()
                p.mul_(1 - group["lr"] * group["weight_decay"])
                st["exp_avg"].lerp_(grad, 1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(grad, grad.conj(), value=1 - b2)
                bias1 = 1 - b1 ** t
                bias2 = 1 - b2 ** t
                denom = (st["exp_avg_sq"].sqrt() / math.sqrt(bias2)).add_(group["eps"])
                p.addcdiv_(st["exp_avg"], denom, value=-group["lr"] / bias1)


@right("ch07.AdamW", style="out-of-place arithmetic copied back, state under other names")
class AdamWOutOfPlace(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def step(self, closure=None):
        with torch.no_grad():
            for group in self.param_groups:
                lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
                beta1, beta2 = group["betas"]
                for p in filter(lambda q: q.grad is not None, group["params"]):
                    s = self.state[p]
                    count = s.get("count", 0) + 1
                    first = beta1 * s.get("first", torch.zeros_like(p)) + (1 - beta1) * p.grad
                    second = beta2 * s.get("second", torch.zeros_like(p)) + (1 - beta2) * p.grad ** 2
                    s.update(count=count, first=first, second=second)
                    m_hat = first / (1 - beta1 ** count)
                    v_hat = second / (1 - beta2 ** count)
                    new_p = p - lr * wd * p - lr * m_hat / (torch.sqrt(v_hat) + eps)
                    p.copy_(new_p)
        return None


# -- lr_at ----------------------------------------------------------------------------------
@right("ch07.lr_at", style="cosine written as cos^2(pi * progress / 2), branches in another order")
def lr_at_cos_squared(step, max_lr, min_lr, warmup, total):
    if step >= total:
        return float(min_lr)
    if step >= warmup:
        progress = (step - warmup) / (total - warmup)
        return min_lr + (max_lr - min_lr) * math.cos(math.pi * progress / 2) ** 2
    return max_lr * (step / warmup)


@right("ch07.lr_at", style="numpy.interp for the warm-up, numpy cosine for the decay, clamped progress")
def lr_at_numpy(step, max_lr, min_lr, warmup, total):
    if step < warmup:
        return float(np.interp(step, [0, warmup], [0.0, max_lr]))
    progress = min(1.0, (step - warmup) / (total - warmup))
    return float(min_lr + 0.5 * (max_lr - min_lr) * (1.0 + np.cos(np.pi * progress)))


# -- clip_grad_norm -------------------------------------------------------------------------
@right("ch07.clip_grad_norm", style="one flat vector of every gradient, torch.linalg.vector_norm")
def clip_grad_norm_flat(parameters, max_norm):
    grads = [p.grad for p in list(parameters) if p.grad is not None]
    if len(grads) == 0:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads]))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in grads:
            g.mul_(coef)
    return total


@right("ch07.clip_grad_norm", style="Python float accumulation in double precision")
def clip_grad_norm_python(parameters, max_norm):
    with_grad = []
    squares = 0.0
    for p in parameters:
        if p.grad is not None:
            with_grad.append(p)
            squares += float(p.grad.double().pow(2).sum())
    norm = math.sqrt(squares)
    if norm > max_norm:
        factor = max_norm / (norm + 1e-6)
        for p in with_grad:
            p.grad.mul_(factor)
    return torch.tensor(norm, dtype=torch.float32)


# -- save_checkpoint ------------------------------------------------------------------------
@right("ch07.save_checkpoint", style="written through an open file object, the dict built key by key")
def save_checkpoint_file_object(path, model, optimizer, step, generator):
    checkpoint = {}
    checkpoint["step"] = step
    checkpoint["model"] = model.state_dict()
    checkpoint["optimizer"] = optimizer.state_dict()
    checkpoint["generator"] = generator.get_state()
    checkpoint["torch_rng"] = torch.get_rng_state()
    with open(path, "wb") as f:
        torch.save(checkpoint, f)


@right("ch07.save_checkpoint", style="serialised into memory first (io.BytesIO), then written with pathlib, tensors cloned")
def save_checkpoint_bytes(path, model, optimizer, step, generator):
    buffer = io.BytesIO()
    torch.save(dict(model={k: v.detach().clone() for k, v in model.state_dict().items()},
                    optimizer=optimizer.state_dict(), step=int(step),
                    torch_rng=torch.random.get_rng_state().clone(), generator=generator.get_state().clone()),
               buffer)
    Path(path).write_bytes(buffer.getvalue())


# -- load_checkpoint ------------------------------------------------------------------------
@right("ch07.load_checkpoint", style="read through a file object with map_location, RNGs restored first")
def load_checkpoint_file_object(path, model, optimizer, generator):
    with open(path, "rb") as f:
        ckpt = torch.load(f, map_location="cpu", weights_only=True)
    torch.random.set_rng_state(ckpt["torch_rng"])
    generator.set_state(ckpt["generator"])
    optimizer.load_state_dict(ckpt["optimizer"])
    model.load_state_dict(ckpt["model"], strict=True)
    return int(ckpt["step"])


@right("ch07.load_checkpoint", style="bytes read with pathlib into io.BytesIO, a table of restore actions")
def load_checkpoint_table(path, model, optimizer, generator):
    saved = torch.load(io.BytesIO(Path(path).read_bytes()), weights_only=True)
    restore = {"model": model.load_state_dict, "optimizer": optimizer.load_state_dict,
               "torch_rng": torch.set_rng_state, "generator": generator.set_state}
    for key, action in restore.items():
        action(saved[key])
    step = saved["step"]
    return step.item() if isinstance(step, torch.Tensor) else int(step)


@right("ch07.get_batch", style="starts drawn with torch.multinomial over uniform weights, with replacement")
def get_batch_multinomial(data, block_size, batch_size, generator=None):
    n_starts = data.numel() - block_size
    starts = torch.multinomial(torch.ones(n_starts), batch_size, replacement=True, generator=generator)
    offsets = torch.arange(block_size)
    x = data[starts.unsqueeze(1) + offsets]
    y = data[starts.unsqueeze(1) + offsets + 1]
    return x, y
