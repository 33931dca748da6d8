"""Chapter 15 - what the checks need to run and judge a learner's code (public).

The exercises are the code of ONE rank. A check runs every rank of a small group as a
thread of this process; their collectives (``all_reduce``, ``broadcast``) meet at a
barrier. One rank computes at a time (a turn passed at each collective), so that torch's
global random state is used as it would be in separate processes.
"""
from __future__ import annotations

import contextlib
import sys
import threading

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core import compare_equal, compare_float, compare_tensors

COLLECTIVE_TIMEOUT_S = 5.0


class RankFailed(Exception):
    """A rank of the simulated group could not go on (another rank failed or deadlocked)."""


class ThreadGroup:
    """``world`` ranks as threads, with the two collectives the exercises use."""

    def __init__(self, world: int):
        self.world = world
        self.barrier = threading.Barrier(world, timeout=COLLECTIVE_TIMEOUT_S)
        self.turn = threading.Lock()
        self.slots: list = [None] * world
        self.calls = [0] * world

    def _meet(self):
        self.turn.release()
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            raise RankFailed("the other ranks never reached this collective: in a real run every rank "
                             "would wait here forever (each rank must call the same collectives in the "
                             "same order)") from None
        finally:
            self.turn.acquire()

    def _check(self, t, what):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what} takes a tensor, got {type(t).__name__}")

    def all_reduce_for(self, rank: int):
        def all_reduce(tensor, op=None):
            """Sum ``tensor`` over the ranks, in place (as dist.all_reduce with SUM)."""
            self._check(tensor, "all_reduce")
            if op is not None and str(op).split(".")[-1].upper() not in ("SUM", "REDOPTYPE.SUM"):
                raise ValueError(f"this group sums (ReduceOp.SUM); gloo has no {op}")
            self.calls[rank] += 1
            self.slots[rank] = tensor
            self._meet()
            shapes = {tuple(t.shape) for t in self.slots}
            if len(shapes) > 1:
                raise ValueError(f"the ranks passed tensors of different shapes to all_reduce: {sorted(shapes)}")
            total = self.slots[0].detach().clone()
            for t in self.slots[1:]:
                total += t.detach()
            self._meet()  # everyone has read before anyone writes
            with torch.no_grad():
                tensor.copy_(total)
            return None
        return all_reduce

    def broadcast_for(self, rank: int):
        def broadcast(tensor, src):
            """Copy rank ``src``'s ``tensor`` into every rank's ``tensor`` (dist.broadcast)."""
            self._check(tensor, "broadcast")
            if not isinstance(src, int) or not 0 <= src < self.world:
                raise ValueError(f"broadcast: src must be a rank in 0..{self.world - 1}, got {src!r}")
            self.calls[rank] += 1
            self.slots[rank] = (tensor, src)
            self._meet()
            srcs = {s for _, s in self.slots}
            if len(srcs) > 1:
                raise ValueError(f"the ranks called broadcast with different sources {sorted(srcs)}")
            value = self.slots[src][0].detach().clone()
            if value.shape != tensor.shape:
                raise ValueError("the ranks passed tensors of different shapes to broadcast")
            self._meet()
            with torch.no_grad():
                tensor.copy_(value)
            return None
        return broadcast


def run_ranks(world: int, target) -> list:
    """``target(rank, group)`` on ``world`` threads; their results in rank order, or the
    first error of a rank (a learner's exception keeps its traceback)."""
    group = ThreadGroup(world)
    results, errors = [None] * world, [None] * world
    profile = sys.getprofile()  # the grader's guard follows the ranks into their threads

    def body(rank):
        sys.setprofile(profile)
        group.turn.acquire()
        try:
            results[rank] = target(rank, group)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            errors[rank] = exc
            group.barrier.abort()
        finally:
            if group.barrier.n_waiting:  # they wait for a rank that has finished: never
                group.barrier.abort()
            group.turn.release()

    threads = [threading.Thread(target=body, args=(r,), daemon=True, name=f"rank{r}") for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if any(t.is_alive() for t in threads):
        group.barrier.abort()
        raise RankFailed("a rank never finished (blocked in a collective?)")
    own = [e for e in errors if e is not None and not isinstance(e, RankFailed)]
    if own:
        raise own[0]
    if any(e is not None for e in errors):
        raise next(e for e in errors if e is not None)
    if len(set(group.calls)) > 1:
        raise RankFailed(f"the ranks made different numbers of collective calls: {group.calls}")
    return results


# ----------------------------------------------------------------------------------------
# Models of the checks, built from plain data
# ----------------------------------------------------------------------------------------
def build_mlp(config: dict) -> nn.Module:
    """Linear(d_in, hidden) -> tanh -> Linear(hidden, classes), from torch's global RNG.
    ``frozen_bias``: the first bias does not train (its grad stays None)."""
    model = nn.Sequential(nn.Linear(config["d_in"], config["hidden"]), nn.Tanh(),
                          nn.Linear(config["hidden"], config["classes"]))
    if config.get("frozen_bias"):
        model[0].bias.requires_grad_(False)
    return model


def load_mlp(config: dict, state: dict) -> nn.Module:
    model = build_mlp(config)
    model.load_state_dict(state)
    return model


def build_stack(config: dict, state: dict) -> nn.ModuleList:
    """``depth`` residual branches LayerNorm -> Linear(w, 4w) -> GELU -> Linear(4w, w)."""
    w = config["width"]
    blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(w), nn.Linear(w, 4 * w), nn.GELU(), nn.Linear(4 * w, w))
                           for _ in range(config["depth"]))
    blocks.load_state_dict(state)
    return blocks


def _grads(model: nn.Module) -> dict:
    return {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}


def _state(model_or_state) -> dict:
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return {k: v.detach().clone() for k, v in state.items()}


# ----------------------------------------------------------------------------------------
# shard_indices
# ----------------------------------------------------------------------------------------
def run_shards(fn, n, world_size, shuffle=False, seed=0, epoch=0):
    """Every rank's indices: [fn(n, r, W, ...) for r in range(W)]."""
    out = []
    for r in range(world_size):
        got = fn(n, r, world_size, shuffle=shuffle, seed=seed, epoch=epoch)
        if isinstance(got, torch.Tensor):
            got = got.tolist()
        out.append([int(i) for i in got] if isinstance(got, (list, tuple, range)) else got)
    return out


def compare_shards(expected, got):
    if not isinstance(got, list) or len(got) != len(expected):
        return f"expected one list of indices per rank ({len(expected)} ranks)"
    for r, (e, g) in enumerate(zip(expected, got)):
        if not isinstance(g, list):
            return f"rank {r}: expected a list of ints, got {type(g).__name__}"
        if len(g) != len(e):
            return f"rank {r} got {len(g)} indices, expected {len(e)} (every rank must get ceil(n / W))"
        if g != e:
            i = next(i for i, (a, b) in enumerate(zip(e, g)) if a != b)
            return f"rank {r}: index {i} is {g[i]}, expected {e[i]} (rank {r} got {g[:8]}..., expected {e[:8]}...)"
    return None


# ----------------------------------------------------------------------------------------
# allreduce_gradients
# ----------------------------------------------------------------------------------------
def run_allreduce(fn, config, state, xs, ys):
    """Rank r: its replica, backward on (xs[r], ys[r]), then ``fn``; every rank's grads."""
    def rank_body(rank, group):
        model = load_mlp(config, state)
        F.cross_entropy(model(xs[rank]), ys[rank]).backward()
        fn(model, len(xs), group.all_reduce_for(rank))
        return _grads(model)
    return run_ranks(len(xs), rank_body)


def compare_rank_grads(expected, got, atol=1e-6, rtol=1e-5):
    """Every rank's gradients (a list of dicts name -> tensor or None)."""
    if not isinstance(got, list) or len(got) != len(expected):
        return "expected the gradients of every rank"
    for r, (e, g) in enumerate(zip(expected, got)):
        for name, et in e.items():
            gt = g.get(name)
            if et is None or gt is None:
                if et is not gt:
                    return f"rank {r}, {name}: gradient {'None' if gt is None else 'set'}, expected " \
                           f"{'None' if et is None else 'a tensor'}"
                continue
            problem = compare_tensors(et, gt, atol=atol, rtol=rtol)
            if problem:
                return f"rank {r}, gradient of {name}: {problem}"
    return None


# ----------------------------------------------------------------------------------------
# train_replica
# ----------------------------------------------------------------------------------------
def run_replicas(fn, config, x, y, world_size, seed, steps, batch_size, lr):
    """Every rank's state dict after ``fn`` trained its replica."""
    def make_model():
        return build_mlp(config)

    def rank_body(rank, group):
        state = fn(make_model, x, y, rank, world_size, group.all_reduce_for(rank), seed=seed, steps=steps,
                   batch_size=batch_size, lr=lr)
        return _state(state) if isinstance(state, (dict, nn.Module)) else state
    return run_ranks(world_size, rank_body)


def compare_replicas(expected, got, atol=1e-6, rtol=1e-5):
    """Every rank's state dict against the expected one of that rank."""
    if not isinstance(got, list) or not all(isinstance(g, dict) for g in got):
        return "every rank must return its model's state_dict()"
    if len(got) != len(expected):
        return f"expected {len(expected)} ranks' states, got {len(got)}"
    for r, (e, g) in enumerate(zip(expected, got)):
        for k, et in e.items():
            if k not in g:
                return f"rank {r}: the state dict has no {k}"
            problem = compare_tensors(et, g[k], atol=atol, rtol=rtol)
            if problem:
                diverged = r > 0 and k in got[0] and compare_tensors(got[0][k], g[k], atol=atol, rtol=rtol)
                lead = (f"the replicas diverged: rank {r}'s {k} differs from rank 0's (they must stay identical); "
                        if diverged else "")
                return f"{lead}rank {r}, {k}: {problem}"
    return None


# ----------------------------------------------------------------------------------------
# accumulate_gradients
# ----------------------------------------------------------------------------------------
def run_accumulate(fn, config, state, x, y, micro_batches):
    model = load_mlp(config, state)
    rows = []
    model.register_forward_pre_hook(lambda m, args: rows.append(int(args[0].shape[0])))
    loss = fn(model, x, y, micro_batches)
    if isinstance(loss, torch.Tensor):
        loss = loss.detach().clone()
    return {"loss": loss, "grads": _grads(model), "largest_forward": max(rows) if rows else 0}


def compare_accumulated_loss(expected, got, atol=1e-6, rtol=1e-5):
    loss = got["loss"]
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        loss = float(loss)
    problem = compare_float(float(expected["loss"]), loss, atol=atol, rtol=rtol)
    return None if problem is None else f"the returned loss: {problem}"


def compare_accumulated(expected, got, atol=1e-6, rtol=1e-5):
    problem = compare_rank_grads([expected["grads"]], [got["grads"]], atol=atol, rtol=rtol)
    if problem:
        return problem.replace("rank 0, ", "")
    if got["largest_forward"] > expected["largest_forward"]:
        return (f"the model ran on {got['largest_forward']} samples at once: with {expected['micro_batches']} "
                f"micro-batches no forward pass should see more than {expected['largest_forward']}")
    return None


# ----------------------------------------------------------------------------------------
# ZeroOptimizer
# ----------------------------------------------------------------------------------------
_LOCAL = threading.local()


class CountingAdamW(torch.optim.AdamW):
    """AdamW that remembers, per rank (thread), the instances built and what they step."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        getattr(_LOCAL, "optimizers", []).append(self)


def run_zero(cls, config, state, grads, world_size, lr, weight_decay):
    """Each rank: its replica, ``cls(params, rank, W, broadcast, optimizer_class=...)``; for
    every step, the (already averaged) gradients ``grads[t]``, then ``step()`` and
    ``zero_grad()``. Returns every rank's parameters, optimizer-state elements, and
    whether zero_grad cleared every gradient."""
    def rank_body(rank, group):
        _LOCAL.optimizers = []
        model = load_mlp(config, state)
        opt = cls(model.parameters(), rank, world_size, group.broadcast_for(rank),
                  optimizer_class=CountingAdamW, lr=lr, weight_decay=weight_decay)
        cleared = True
        for g in grads:
            for name, p in model.named_parameters():
                p.grad = g[name].clone()
            opt.step()
            opt.zero_grad()
            cleared &= all(p.grad is None or not bool(p.grad.any()) for p in model.parameters())
        numel = 0
        for o in _LOCAL.optimizers:
            for st in o.state.values():
                numel += sum(v.numel() for v in st.values() if torch.is_tensor(v) and v.dim() > 0)
        return {"params": _state(model), "state_numel": numel, "cleared": cleared,
                "optimizers": len(_LOCAL.optimizers)}
    out = run_ranks(world_size, rank_body)
    return {"params": [o["params"] for o in out], "state_numel": [o["state_numel"] for o in out],
            "cleared": [o["cleared"] for o in out], "optimizers": [o["optimizers"] for o in out]}


def compare_zero_params(expected, got, atol=1e-6, rtol=1e-5):
    return compare_replicas(expected["params"], got["params"], atol=atol, rtol=rtol)


def compare_zero_state(expected, got):
    if 0 in got["optimizers"] and 0 not in expected["optimizers"]:
        return "a rank built no optimizer with optimizer_class: build the shard's optimizer with it"
    if got["state_numel"] != expected["state_numel"]:
        return (f"optimizer-state elements per rank: {got['state_numel']}, expected {expected['state_numel']} "
                "(AdamW keeps 2 numbers per parameter element, for the owned parameters only)")
    if list(got["cleared"]) != list(expected["cleared"]):
        return "after zero_grad() some gradients were still there: reset ALL parameters' gradients"
    return None


# ----------------------------------------------------------------------------------------
# fsdp_shard
# ----------------------------------------------------------------------------------------
def run_fsdp_shards(fn, param, world_size):
    shards, views = [], []
    for r in range(world_size):
        s = fn(param, r, world_size)
        shards.append(s.detach().clone() if isinstance(s, torch.Tensor) else s)
        views.append(isinstance(s, torch.Tensor) and s.numel() > 0
                     and s.untyped_storage().data_ptr() == param.untyped_storage().data_ptr())
    return {"shards": shards, "views": views}


def compare_fsdp_shards(expected, got):
    for r, (e, g) in enumerate(zip(expected["shards"], got["shards"])):
        problem = compare_tensors(e, g, atol=0, rtol=0)
        if problem:
            return f"rank {r}'s shard: {problem}"
    if list(got["views"]) != list(expected["views"]):
        if any(got["views"]):
            return ("your shard is a view into the full parameter: it keeps the whole tensor alive, so no "
                    "memory is saved; return a copy")
        return "your shards are copies where views were expected"
    return None


# ----------------------------------------------------------------------------------------
# mixed_precision_step
# ----------------------------------------------------------------------------------------
class ProbeSGD(torch.optim.SGD):
    """SGD that records whether autocast was on when ``step`` ran."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.under_autocast = []

    def step(self, closure=None):
        self.under_autocast.append(torch.is_autocast_enabled("cpu"))
        return super().step(closure)


def run_mixed(fn, config, state, x, y, lr):
    model = load_mlp(config, state)
    opt = ProbeSGD(model.parameters(), lr)
    loss = fn(model, opt, x, y)
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        loss = float(loss)
    return {"loss": loss, "params": _state(model),
            "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
            "stepped": len(opt.under_autocast), "step_under_autocast": any(opt.under_autocast),
            "cleared": all(p.grad is None or not bool(p.grad.any()) for p in model.parameters())}


def compare_mixed_loss(expected, got, atol=1e-6, rtol=1e-6):
    problem = compare_float(expected["loss"], got["loss"], atol=atol, rtol=rtol)
    return None if problem is None else f"the loss: {problem}"


def compare_mixed_update(expected, got, atol=1e-6, rtol=1e-5):
    if got["dtypes"] != expected["dtypes"]:
        return f"the parameters are {got['dtypes']} after the step, expected {expected['dtypes']} (master weights)"
    if got["stepped"] != 1:
        return f"optimizer.step() ran {got['stepped']} times, expected once"
    for k, e in expected["params"].items():
        problem = compare_tensors(e, got["params"][k], atol=atol, rtol=rtol)
        if problem:
            return f"{k} after the step: {problem}"
    if not got["cleared"]:
        return "the gradients were not reset after the step (optimizer.zero_grad())"
    return None


def compare_mixed_autocast(expected, got):
    if bool(got["step_under_autocast"]) != bool(expected["step_under_autocast"]):
        return ("optimizer.step() ran inside the autocast region" if got["step_under_autocast"]
                else "optimizer.step() ran outside the autocast region")
    return None


# ----------------------------------------------------------------------------------------
# Checkpoint
# ----------------------------------------------------------------------------------------
@contextlib.contextmanager
def saved_bytes():
    """Count the bytes autograd saves for backward inside the block, each storage once:
    ``with saved_bytes() as total: ...`` then ``total[0]``."""
    seen, total = set(), [0]

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key not in seen:
            seen.add(key)
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def run_checkpoint(cls, config, state, x, weight):
    if not hasattr(cls, "apply"):
        cls()  # a stub raises NotImplementedError here
        raise TypeError("Checkpoint must be a subclass of torch.autograd.Function (used as Checkpoint.apply)")
    blocks = build_stack(config, state)
    x = x.clone().requires_grad_(True)
    with saved_bytes() as total:
        h = x
        for block in blocks:
            h = h + cls.apply(block, h)
        loss = (h * weight).sum()
    loss.backward()
    return {"out": h.detach().clone(), "x_grad": None if x.grad is None else x.grad.clone(),
            "grads": _grads(blocks), "saved_bytes": total[0]}


def compare_checkpoint_grads(expected, got, atol=1e-5, rtol=1e-4):
    problem = compare_tensors(expected["out"], got["out"], atol=atol, rtol=rtol)
    if problem:
        return f"the output: {problem}"
    if got["x_grad"] is None:
        return "the input got no gradient: backward must return the gradient of x"
    problem = compare_tensors(expected["x_grad"], got["x_grad"], atol=atol, rtol=rtol)
    if problem:
        return f"the gradient of the input: {problem}"
    problem = compare_rank_grads([expected["grads"]], [got["grads"]], atol=atol, rtol=rtol)
    return None if problem is None else problem.replace("rank 0, ", "")


def compare_checkpoint(expected, got):
    """Outputs and gradients first, then the bytes kept for backward."""
    return compare_checkpoint_grads(expected, got) or compare_checkpoint_memory(expected, got)


def compare_checkpoint_memory(expected, got):
    if got["saved_bytes"] > 1.25 * expected["saved_bytes"]:
        return (f"autograd kept {got['saved_bytes']:,} bytes for backward; checkpointing each block keeps "
                f"{expected['saved_bytes']:,}: only the block inputs should be saved")
    return None


__all__ = [n for n in dir() if not n.startswith("_")] + ["compare_equal"]
