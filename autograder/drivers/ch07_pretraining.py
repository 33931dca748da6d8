"""Chapter 7 - what the checks need to run and judge a learner's code (public)."""
from __future__ import annotations

import math
import os
import tempfile

import torch
import torch.nn.functional as F

from ..core import compare_float, compare_tensors, one_thread


def warm_up_optimizers() -> None:
    """The first optimizer built in a process imports torch._dynamo (seconds on a busy
    machine); do it before the timed cases."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1).zero_grad()


# -- get_batch ----------------------------------------------------------------------------
@one_thread
def batch_run(fn, data, block_size, batch_size, calls, coverage=True):
    """Call the sampler ``calls`` times with a seeded generator and summarise what it drew.

    The summary is a dict of coarse facts (shapes, windows, targets, which starts occur,
    one start per batch or not, uniformity, use of the generator), so that two samplers
    with the same bug summarise the same way whatever their random draws.
    """
    N, T, B = len(data), block_size, batch_size
    n_windows = N - T
    where = torch.full((int(data.max()) + 1,), -1, dtype=torch.long)
    where[data] = torch.arange(N)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    counts = torch.zeros(N, dtype=torch.long)
    shifted = same_as_x = True
    one_start = B > 1 and n_windows > 1
    for _ in range(calls):
        out = fn(data, T, B, gen)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            return {"form": f"return a pair (x, y), not {type(out).__name__}"}
        x, y = out
        for name, t in (("x", x), ("y", y)):
            if not isinstance(t, torch.Tensor):
                return {"form": f"{name} should be a tensor, got {type(t).__name__}"}
            if tuple(t.shape) != (B, T):
                return {"form": f"{name} should have shape (batch_size, block_size) = {(B, T)}, got {tuple(t.shape)}"}
            if t.dtype != torch.long:
                return {"form": f"{name} should be int64 token ids, got {t.dtype}"}
        inside = (x >= 0) & (x < len(where))
        if not bool(inside.all()):
            return {"form": "ok", "windows": False}
        starts = where[x[:, 0]]
        expect_x = data[(starts.clamp(0, N - T))[:, None] + torch.arange(T)]
        if bool((starts < 0).any()) or not torch.equal(x, expect_x):
            return {"form": "ok", "windows": False}
        if bool((starts > N - T - 1).any()):
            return {"form": "ok", "windows": True, "targets": "shifted", "range": "past the end: a start above N - block_size - 1"}
        expect_y = data[starts[:, None] + torch.arange(1, T + 1)]
        shifted &= torch.equal(y, expect_y)
        same_as_x &= torch.equal(y, x)
        one_start &= bool((starts == starts[0]).all())
        counts += torch.bincount(starts, minlength=N)
    summary = {"form": "ok", "windows": True,
               "targets": "shifted" if shifted else ("x itself" if same_as_x else "not x shifted by one")}
    seen = torch.nonzero(counts).flatten()
    lo, hi = int(seen.min()), int(seen.max())
    if coverage:
        if lo == 0 and hi == N - T - 1 and len(seen) == n_windows:
            summary["range"] = "every start"
        elif lo == 0 and hi == N - T - 2:
            summary["range"] = "never the last window"
        else:
            summary["range"] = f"starts seen only in [{lo}, {hi}] ({len(seen)} distinct)"
    else:
        summary["range"] = "every start"  # only bounds checked (above)
    summary["batch"] = "one start per batch" if one_start else "independent starts"
    if coverage and summary["range"] == "every start" and not one_start and n_windows > 1:
        summary["uniform"] = looks_uniform(counts[:n_windows])
    else:
        summary["uniform"] = True
    # A seeded generator must reproduce the batch whatever the global RNG did in between.
    torch.manual_seed(1)
    a = fn(data, T, B, torch.Generator().manual_seed(77))
    torch.manual_seed(2)
    b = fn(data, T, B, torch.Generator().manual_seed(77))
    summary["generator"] = "reproducible" if torch.equal(a[0], b[0]) else "ignored"
    return summary


def looks_uniform(counts: torch.Tensor) -> bool:
    """Pearson's chi-square test against the uniform distribution, at p = 1e-6."""
    n, k = int(counts.sum()), len(counts)
    expected = n / k
    stat = float(((counts.double() - expected) ** 2 / expected).sum())
    # Upper tail of chi-square with k - 1 degrees of freedom (Wilson-Hilferty: the cube
    # root of chi2 / df is close to normal), accurate to a few percent in p here.
    df = k - 1
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    p_value = 0.5 * math.erfc(z / math.sqrt(2))
    return p_value > 1e-6  # a correct sampler fails about once in a million


_BATCH_SENTENCES = {
    "form": lambda e, g: g,
    "windows": lambda e, g: "each row of x must be a contiguous window data[s : s + block_size] of the input",
    "targets": lambda e, g: f"y is {g}: y[b] must be data[s + 1 : s + block_size + 1], x shifted left by one",
    "range": lambda e, g: (f"window starts: {g}; every start 0 .. N - block_size - 1 should be possible, "
                           "no more (the last window's target ends at data[N - 1])"),
    "batch": lambda e, g: "every row of a batch starts at the same place: draw batch_size independent starts",
    "uniform": lambda e, g: ("the starts are not uniform (chi-square test, p < 1e-6): every window should be "
                             "equally likely"),
    "generator": lambda e, g: ("the same seeded generator gave different batches: draw with "
                               "torch.randint(..., generator=generator) rather than the global RNG"),
}


def compare_batches(expected: dict, got) -> str | None:
    if not isinstance(got, dict):
        return f"could not collect your batches: {got!r}"
    for key, want in expected.items():
        have = got.get(key)
        if have != want:
            return _BATCH_SENTENCES[key](want, have)
    return None


# -- cross_entropy ------------------------------------------------------------------------
@one_thread
def ce_grad_run(fn, logits, targets):
    """The gradient of the learner's loss with respect to the logits."""
    logits = logits.clone().requires_grad_(True)
    loss = fn(logits, targets)
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        raise TypeError("the loss must be a tensor connected to the logits (no .item(), no torch.tensor(...)): "
                        "training calls loss.backward()")
    (grad,) = torch.autograd.grad(loss, logits)
    return grad


# -- AdamW --------------------------------------------------------------------------------
def adamw_setup(spec):
    """The parameters (and groups) of a case and the gradients of its steps, from its spec."""
    g = torch.Generator().manual_seed(spec["seed"])
    dtype = spec.get("dtype", torch.float64)
    shapes = spec["shapes"]
    params = [torch.randn(s, generator=g, dtype=dtype).requires_grad_(True) for s in shapes]
    for i in spec.get("frozen", ()):
        params[i].requires_grad_(False)
    # Gradients of mixed scales, like a real network's (some tiny, some large).
    scales = [10.0 ** (i % 3 - 1) for i in range(len(shapes))]
    grads = [[torch.randn(s, generator=g, dtype=dtype) * scales[i] for i, s in enumerate(shapes)]
             for _ in range(spec["steps"])]
    if "groups" in spec:
        groups = [{"params": [params[i] for i in idx], **extra} for idx, extra in spec["groups"]]
    else:
        groups = params
    return params, groups, grads


@one_thread
def adamw_run(cls, spec):
    """Build the optimizer class ``cls`` on the case's parameters, run its steps, return them."""
    params, groups, grads = adamw_setup(spec)
    kw = spec["kw"]
    opt = cls(groups, **kw)
    base_lrs = [group["lr"] for group in opt.param_groups] if spec.get("schedule") else None
    for t in range(spec["steps"]):
        for i, p in enumerate(params):
            if i in spec.get("frozen", ()) or (i in spec.get("intermittent", ()) and t % 3 == 1):
                p.grad = None
            else:
                p.grad = grads[t][i].clone()
        if base_lrs is not None:  # what a scheduler does between steps
            for group, base in zip(opt.param_groups, base_lrs):
                group["lr"] = base * (0.2 + 0.8 * math.cos(math.pi * t / (2 * spec["steps"])))
        optimizer_step(opt)
    return [p.detach().clone() for p in params]


def optimizer_step(opt):
    """``opt.step()`` without the profiling wrapper torch.optim.Optimizer puts around every
    subclass's step: that wrapper's code is shared by all optimizers, including the forbidden
    ones, so the forbidden-call guard would mistake it for a call to torch's AdamW."""
    step = type(opt).step
    if getattr(step, "hooked", False) and hasattr(step, "__wrapped__"):
        return step.__wrapped__(opt)
    return opt.step()


def compare_params(expected, got, spec):
    """The parameters after the case's steps, one by one (``functools.partial(compare_params, spec=...)``)."""
    tol = dict(atol=1e-9, rtol=1e-7) if spec.get("dtype", torch.float64) == torch.float64 else dict(atol=2e-5, rtol=1e-4)
    if not isinstance(got, list) or len(got) != len(expected):
        return f"could not read the parameters after your steps: {got!r}"
    for i, (e, g) in enumerate(zip(expected, got)):
        problem = compare_tensors(e, g, **tol)
        if problem:
            what = " (the frozen one: requires_grad=False, grad None)" if i in spec.get("frozen", ()) else (
                " (it gets no gradient every third step)" if i in spec.get("intermittent", ()) else "")
            return f"parameter {i}{what} after {spec['steps']} steps: {problem}"
    return None


# -- lr_at --------------------------------------------------------------------------------
@one_thread
def lr_run(fn, max_lr, min_lr, warmup, total, extra):
    """The learner's schedule at every step from 0 to total + extra, as a float64 tensor."""
    lrs = []
    for step in range(total + extra + 1):
        lr = fn(step, max_lr, min_lr, warmup, total)
        if isinstance(lr, torch.Tensor) and lr.numel() == 1:
            lr = lr.item()
        if isinstance(lr, bool) or not isinstance(lr, (int, float)):
            raise TypeError(f"lr_at({step}, ...) returned {lr!r}; return a float")
        lrs.append(float(lr))
    return torch.tensor(lrs, dtype=torch.float64)


def compare_lrs(expected, got):
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return f"could not read your schedule: {got!r}"
    bad = (got - expected).abs() > 1e-12 + 1e-9 * expected.abs()
    if not bool(bad.any()):
        return None
    step = int(torch.nonzero(bad)[0])
    return (f"lr_at({step}, ...) = {float(got[step]):.6g}, expected {float(expected[step]):.6g} "
            f"({int(bad.sum())} of {len(bad)} steps differ)")


# -- clip_grad_norm -----------------------------------------------------------------------
def clip_setup(spec):
    """The parameters of a case, with their gradients (none where ``no_grad`` says so)."""
    g = torch.Generator().manual_seed(spec["seed"])
    params = []
    for i, shape in enumerate(spec["shapes"]):
        p = torch.randn(shape, generator=g).requires_grad_(True)
        if i not in spec.get("no_grad", ()):
            p.grad = torch.randn(shape, generator=g) * spec["scale"] * (1 + i)
        params.append(p)
    return params


@one_thread
def clip_run(fn, spec):
    """The norm the learner returns and the gradients after the call."""
    params = clip_setup(spec)
    arg = (p for p in params) if spec.get("generator") else params
    norm = fn(arg, spec["max_norm"])
    if isinstance(norm, torch.Tensor):
        if norm.numel() != 1:
            raise TypeError(f"return the total norm (one number), not a tensor of shape {tuple(norm.shape)}")
        norm = norm.item()
    if isinstance(norm, bool) or not isinstance(norm, (int, float)):
        raise TypeError(f"return the total norm as a 0-dim tensor (or a float), not {norm!r}")
    return float(norm), [None if p.grad is None else p.grad.clone() for p in params]


def compare_clip(expected, got):
    e_norm, e_grads = expected
    g_norm, g_grads = got
    problem = compare_float(e_norm, g_norm, atol=1e-5, rtol=1e-5)
    if problem:
        return f"the returned norm: {problem} (the global norm of all gradients, before clipping)"
    for i, (e, g) in enumerate(zip(e_grads, g_grads)):
        if e is None:
            if g is not None:
                return f"parameter {i} had no gradient and should still have none"
            continue
        problem = compare_tensors(e, g, atol=1e-6, rtol=1e-5)
        if problem:
            return f"gradient {i} after clipping: {problem}"
    return None


# -- save_checkpoint / load_checkpoint ----------------------------------------------------
VOCAB, CTX, BATCH = 11, 6, 4


class TinyLM(torch.nn.Module):
    """A tiny language model with dropout, so resuming also depends on the global RNG."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, 16)
        self.drop = torch.nn.Dropout(0.3)
        self.out = torch.nn.Linear(16, VOCAB)

    def forward(self, idx):
        return self.out(self.drop(torch.tanh(self.emb(idx))))


def fresh(seed):
    """A new model, its AdamW and a batch generator, all from ``seed``."""
    torch.manual_seed(seed)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    return model, opt, torch.Generator().manual_seed(seed + 1)


def run_steps(model, opt, gen, start, stop, total):
    """Training steps ``start`` .. ``stop - 1`` of a ``total``-step run."""
    data = torch.arange(200) * 7 % VOCAB
    for step in range(start, stop):
        for group in opt.param_groups:  # the schedule is a function of the step alone
            group["lr"] = 1e-2 * min(1.0, (step + 1) / 3) * (0.55 + 0.45 * math.cos(math.pi * step / total))
        ix = torch.randint(len(data) - CTX, (BATCH,), generator=gen)
        x = data[ix[:, None] + torch.arange(CTX)]
        y = data[ix[:, None] + torch.arange(1, CTX + 1)]
        loss = F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def grader_save(path, model, opt, step, gen):
    """Write a checkpoint in the documented format (to test a learner's load_checkpoint)."""
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "torch_rng": torch.get_rng_state(), "generator": gen.get_state()}, path)


def grader_load(path, model, opt, gen):
    """Read a learner's checkpoint in the documented format (what is missing stays fresh)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"save_checkpoint wrote no file at the path it was given ({path})")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError("torch.load(path, weights_only=True) cannot read your checkpoint: save only tensors, "
                         f"numbers, strings, lists and dicts (state_dict(), get_state()), not objects ({first})") from None
    if not isinstance(state, dict):
        raise ValueError(f"the checkpoint should be one dict, got {type(state).__name__}")
    for key, kind in (("torch_rng", "torch.get_rng_state()"), ("generator", "generator.get_state()")):
        if key in state and not (isinstance(state[key], torch.Tensor) and state[key].dtype == torch.uint8):
            raise ValueError(f"checkpoint[{key!r}] should be {kind} (a uint8 tensor), got {type(state[key]).__name__}")
    if "model" in state:
        model.load_state_dict(state["model"])
    if "optimizer" in state:
        opt.load_state_dict(state["optimizer"])
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"])
    if "generator" in state:
        gen.set_state(state["generator"])
    return int(state.get("step", 0))


@one_thread
def resume_run(save, load, seed, total, at):
    """Train `at` steps, save, rebuild everything from other seeds, load, train to `total`."""
    model, opt, gen = fresh(seed)
    run_steps(model, opt, gen, 0, at, total)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt.pt")
        save(path, model, opt, at, gen)
        del model, opt, gen
        model, opt, gen = fresh(seed + 1000)  # different init, empty optimizer, other generator, other RNG
        step = load(path, model, opt, gen)
    if isinstance(step, torch.Tensor) and step.numel() == 1:
        step = step.item()
    if isinstance(step, bool) or not isinstance(step, int):
        raise TypeError(f"load_checkpoint should return the saved step as an int, got {step!r}")
    run_steps(model, opt, gen, step, total, total)
    return [p.detach().clone() for p in model.parameters()]


def save_checkpoint_run(fn, seed, total, at):
    """Resume with the learner's save_checkpoint and the documented loader."""
    return resume_run(fn, grader_load, seed, total, at)


def load_checkpoint_run(fn, seed, total, at):
    """Resume with the documented saver and the learner's load_checkpoint."""
    return resume_run(grader_save, fn, seed, total, at)


def compare_resumed(expected, got):
    if not isinstance(got, list) or len(got) != len(expected):
        return f"could not read the resumed model: {got!r}"
    diffs = [float((e - g).abs().max()) if e.shape == g.shape else float("inf") for e, g in zip(expected, got)]
    if all(torch.equal(e, g) for e, g in zip(expected, got)):
        return None
    return (f"the resumed run ended with different parameters than an uninterrupted run (max abs difference "
            f"{max(diffs):.3g}); resuming must be bit-exact: something training depends on was not saved or not restored")
