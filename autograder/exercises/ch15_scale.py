"""Chapter 15 - Training at scale.

Every exercise is the code of one rank; the checks run the ranks of a small group as
threads (``autograder.drivers.ch15_scale.ThreadGroup``). References, independent of the
course's solutions:
- shard_indices: ``torch.utils.data.DistributedSampler`` itself (it runs without a
  process group when told its rank and world size);
- allreduce_gradients, train_replica: the single-process gradient / SGD training on the
  whole global batch, which is what ``DistributedDataParallel`` computes (the project's
  tests run real DDP on gloo in separate processes and find the same numbers);
- accumulate_gradients: autograd on the whole batch at once;
- zero_partition: ZeroRedundancyOptimizer's greedy rule, re-derived here with a heap (the
  tests compare it with the library's partition in a real gloo run);
- ZeroOptimizer: ``torch.optim.AdamW`` on the whole model (ZeroRedundancyOptimizer gives
  the same parameters: tested on gloo);
- fsdp_shard: DTensor's ``Shard(0)._split_tensor``, the split ``fully_shard`` uses
  (tested against the local shards of a real fully_shard run);
- mixed_precision_step: ``torch.autocast("cpu", dtype=torch.bfloat16)`` and SGD;
- Checkpoint: ``torch.utils.checkpoint.checkpoint`` (outputs, gradients, and the bytes
  autograd saves, counted with ``saved_tensors_hooks``).
"""
from __future__ import annotations

import functools
import heapq
import math

import torch
import torch.nn.functional as F

from ..core import Case, Exercise, Mistake, compare_equal, hidden_seed, inherit, register
from ..drivers import ch15_scale as D

CH = "ch15"
SOL = "solutions.ch15_scale"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pick(g, choices):
    return choices[int(torch.randint(len(choices), (1,), generator=g))]


def _once(thunk):
    """A thunk that computes its value once (the cases of one set-up share it)."""
    memo = []

    def value():
        if not memo:
            memo.append(thunk())
        return memo[0]
    return value


def _mlp_state(config: dict, seed: int) -> dict:
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in D.build_mlp(config).state_dict().items()}


# ========================================================================================
# shard_indices
# ========================================================================================
def _sampler_expected(n, world, shuffle, seed, epoch):
    from torch.utils.data import DistributedSampler

    out = []
    for r in range(world):
        s = DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=shuffle, seed=seed)
        s.set_epoch(epoch)
        out.append([int(i) for i in s])
    return out


def _shard_case(name, n, world, shuffle=False, seed=0, epoch=0):
    return Case(name, (n, world), dict(shuffle=shuffle, seed=seed, epoch=epoch), run=D.run_shards,
                expected=lambda: _sampler_expected(n, world, shuffle, seed, epoch), compare=D.compare_shards)


def _shard_cases(hidden):
    yield _shard_case("n=12 samples, W=2 ranks, in order", 12, 2)
    yield _shard_case("n=10, W=4: padded to 12 by repeating the first samples", 10, 4)
    yield _shard_case("n=2, W=5: more ranks than samples", 2, 5)
    yield _shard_case("shuffled: n=9, W=3, seed=0, epoch=0", 9, 3, True, 0, 0)
    yield _shard_case("shuffled: n=20, W=4, seed=5, epoch=3 (a new order each epoch)", 20, 4, True, 5, 3)
    yield _shard_case("W=1: one rank reads everything", 7, 1, True, 1, 0)
    if hidden:
        for i in range(3):
            g = _gen(hidden_seed("ch15.shard_indices", i))
            n, w = int(torch.randint(5, 40, (1,), generator=g)), int(torch.randint(2, 7, (1,), generator=g))
            yield _shard_case(f"hidden case {i + 1}", n, w, True, int(torch.randint(100, (1,), generator=g)),
                              int(torch.randint(1, 5, (1,), generator=g)))


def _shard_wrong(kind):
    def fn(n, rank, world_size, shuffle=False, seed=0, epoch=0):
        s = seed + (rank if kind == "seed-per-rank" else 0) + (0 if kind == "epoch-ignored" else epoch)
        order = torch.randperm(n, generator=_gen(s)).tolist() if shuffle else list(range(n))
        if kind == "not-sharded":
            return order
        total = math.ceil(n / world_size) * world_size
        if kind == "no-padding":
            return order[rank::world_size]
        while len(order) < total:
            order += order[: total - len(order)]
        if kind == "blocks":
            per = total // world_size
            return order[rank * per:(rank + 1) * per]
        return order[rank:total:world_size]
    return fn


register(Exercise(
    id="ch15.shard_indices", chapter=CH, title="Which samples each rank reads", points=1, name="shard_indices",
    signature="shard_indices(n: int, rank: int, world_size: int, shuffle: bool = False, seed: int = 0, "
              "epoch: int = 0) -> list[int]",
    reference="torch.utils.data.DistributedSampler(range(n), num_replicas=W, rank=r, shuffle, seed), set_epoch",
    solution=f"{SOL}:shard_indices", cases=_shard_cases,
    forbidden=["torch.utils.data:DistributedSampler", "torch.utils.data.distributed:DistributedSampler"],
    mistakes=[
        Mistake("not-sharded", "every rank reads the WHOLE data set: the ranks then compute on the same "
                "samples and the data parallelism buys nothing. Rank r takes every W-th index, starting at r",
                _shard_wrong("not-sharded")),
        Mistake("seed-per-rank", "each rank shuffles with its own seed (seed + rank): the ranks' orders differ, "
                "so some samples are read twice and others never. Every rank must draw the SAME permutation "
                "(seed + epoch) and then take its own slice", _shard_wrong("seed-per-rank")),
        Mistake("blocks", "you gave each rank a contiguous block; DistributedSampler interleaves: rank r takes "
                "positions r, r + W, r + 2W, ...", _shard_wrong("blocks")),
        Mistake("no-padding", "without padding the ranks get different numbers of samples, and in a real run "
                "the rank with fewer batches stops calling all_reduce while the others wait forever. Repeat the "
                "first indices until the length divides by W", _shard_wrong("no-padding")),
        Mistake("epoch-ignored", "the shuffle ignores the epoch: every epoch repeats the same order. Seed the "
                "generator with seed + epoch", _shard_wrong("epoch-ignored")),
    ]))


# ========================================================================================
# allreduce_gradients
# ========================================================================================
def _full_batch_grads(config, state, xs, ys):
    """The gradient of the mean loss over ALL ranks' samples (equal shards): what DDP gives."""
    model = D.load_mlp(config, state)
    F.cross_entropy(model(torch.cat(xs)), torch.cat(ys)).backward()
    return {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}


def _mlp_data(g, config, world, per_rank):
    xs = [torch.randn(per_rank, config["d_in"], generator=g) for _ in range(world)]
    ys = [torch.randint(config["classes"], (per_rank,), generator=g) for _ in range(world)]
    return xs, ys


def _allreduce_case(name, seed, world, per_rank=5, frozen=False, d_in=6, hidden_units=8, classes=3):
    config = dict(d_in=d_in, hidden=hidden_units, classes=classes, frozen_bias=frozen)
    state = _mlp_state(config, seed)
    xs, ys = _mlp_data(_gen(seed + 1), config, world, per_rank)

    def expected():
        g = _full_batch_grads(config, state, xs, ys)
        return [g for _ in range(world)]
    return Case(name, (config, state, xs, ys), run=D.run_allreduce, expected=expected, compare=D.compare_rank_grads)


def _allreduce_cases(hidden):
    yield _allreduce_case("W=2 ranks, 5 samples each", 0, 2)
    yield _allreduce_case("W=4 ranks", 1, 4)
    yield _allreduce_case("W=3, a frozen bias (its grad is None: leave it alone)", 2, 3, frozen=True)
    yield _allreduce_case("W=1: nothing to average", 3, 1)
    if hidden:
        for i in range(2):
            g = _gen(hidden_seed("ch15.allreduce_gradients", i))
            yield _allreduce_case(f"hidden case {i + 1}", int(torch.randint(10**6, (1,), generator=g)),
                                  _pick(g, [2, 3, 4]), per_rank=_pick(g, [2, 4, 7]), frozen=i == 1)


def _allreduce_wrong(kind):
    def fn(model, world_size, all_reduce):
        for p in model.parameters():
            if p.grad is None:
                continue
            if kind == "local":
                continue
            if kind == "double-divide":
                p.grad /= world_size
            all_reduce(p.grad)
            if kind != "sum":
                p.grad /= world_size
    return fn


register(Exercise(
    id="ch15.allreduce_gradients", chapter=CH, title="All-reduce the gradients by hand", points=1,
    name="allreduce_gradients",
    signature="allreduce_gradients(model: nn.Module, world_size: int, all_reduce) -> None (p.grad in place)",
    reference="the gradient of the mean loss over all ranks' samples (single process), which is what "
              "DistributedDataParallel computes (tested on gloo)",
    solution=f"{SOL}:allreduce_gradients", cases=_allreduce_cases,
    forbidden=["torch.nn.parallel:DistributedDataParallel"],
    mistakes=[
        Mistake("sum", "your gradients are the SUM over the ranks, W times too large: all_reduce sums, so "
                "divide by the world size afterwards (gloo has no AVG)", _allreduce_wrong("sum")),
        Mistake("local", "every rank kept its own gradient: nothing was all-reduced, so the replicas will "
                "drift apart at the first step", _allreduce_wrong("local")),
        Mistake("double-divide", "you divided by the world size twice (before and after the all-reduce): the "
                "gradients are the mean divided by W", _allreduce_wrong("double-divide")),
    ]))


# ========================================================================================
# train_replica
# ========================================================================================
def _big_batch_sgd(config, seed, x, y, world, steps, batch_size, lr):
    """One process, the global batch of step t = samples [t W b, (t + 1) W b)."""
    torch.manual_seed(seed)
    model = D.build_mlp(config)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gb = world * batch_size
    for t in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x[t * gb:(t + 1) * gb]), y[t * gb:(t + 1) * gb]).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _replica_case(name, seed, world, steps=3, batch_size=4, lr=0.5, extra=0):
    config = dict(d_in=5, hidden=8, classes=3)
    g = _gen(seed + 7)
    n = world * batch_size * steps + extra * world
    x, y = torch.randn(n, 5, generator=g), torch.randint(3, (n,), generator=g)
    args = (config, x, y, world, seed, steps, batch_size, lr)
    return Case(name, args, run=D.run_replicas, compare=D.compare_replicas,
                expected=lambda: [_big_batch_sgd(config, seed, x, y, world, steps, batch_size, lr)] * world)


def _replica_cases(hidden):
    yield _replica_case("W=2 ranks, 3 steps of 4 samples per rank", 0, 2)
    yield _replica_case("W=4 ranks, 2 steps, data left over", 1, 4, steps=2, extra=2)
    yield _replica_case("W=3, 4 steps, seed 5", 5, 3, steps=4, batch_size=2)
    if hidden:
        for i in range(2):
            g = _gen(hidden_seed("ch15.train_replica", i))
            yield _replica_case(f"hidden case {i + 1}", int(torch.randint(10**6, (1,), generator=g)),
                                _pick(g, [2, 3, 4]), steps=_pick(g, [2, 3]), batch_size=_pick(g, [2, 3, 5]))


def _replica_wrong(kind, shard=None, allreduce=None):
    shard = shard or (lambda n, r, w, **k: list(range(n))[r::w])
    allreduce = allreduce or _allreduce_wrong("right")

    def fn(make_model, x, y, rank, world_size, all_reduce, seed=0, steps=3, batch_size=4, lr=0.1):
        torch.manual_seed(seed + (rank if kind == "seed-per-rank" else 0))
        model = make_model()
        mine = list(range(len(x))) if kind == "not-sharded" else shard(len(x), rank, world_size)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for step in range(steps):
            idx = mine[step * batch_size:(step + 1) * batch_size]
            if kind != "no-zero-grad":
                opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            allreduce(model, world_size, all_reduce)
            opt.step()
        return model.state_dict()
    return fn


register(Exercise(
    id="ch15.train_replica", chapter=CH, title="One rank of data-parallel training", points=2,
    name="train_replica", difficulty="**",
    signature="train_replica(make_model, x, y, rank, world_size, all_reduce, seed=0, steps=3, batch_size=4, "
              "lr=0.1) -> dict (state_dict)",
    reference="plain SGD in one process on the global batches of W x batch_size samples (what "
              "DistributedDataParallel with a DistributedSampler computes, tested on gloo)",
    solution=f"{SOL}:train_replica", cases=_replica_cases,
    forbidden=["torch.nn.parallel:DistributedDataParallel", "torch.utils.data:DistributedSampler"],
    mistakes=[
        Mistake("seed-per-rank", "each rank built its model with its own seed (seed + rank): the replicas start "
                "different and never agree. Seed every rank's model init with the same seed (DDP hides this by "
                "broadcasting rank 0's weights; a hand-written data-parallel loop does not)",
                _replica_wrong("seed-per-rank")),
        Mistake("not-sharded", "every rank trained on the same samples (the data was not sharded): the "
                "effective batch is one rank's batch, not W of them. Read this rank's shard_indices",
                _replica_wrong("not-sharded")),
        Mistake("no-zero-grad", "the gradients were never reset: each step adds the new gradient to all the "
                "old ones. Zero them before each backward", _replica_wrong("no-zero-grad")),
        *inherit("ch15.shard_indices", lambda part: _replica_wrong("right", shard=part)),
        *inherit("ch15.allreduce_gradients", lambda part: _replica_wrong("right", allreduce=part)),
    ]))


# ========================================================================================
# accumulate_gradients
# ========================================================================================
def _accumulate_case(name, seed, n, micro):
    config = dict(d_in=6, hidden=10, classes=4)
    state = _mlp_state(config, seed)
    g = _gen(seed + 3)
    x, y = torch.randn(n, 6, generator=g), torch.randint(4, (n,), generator=g)

    def expected():
        model = D.load_mlp(config, state)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return {"loss": loss.detach(), "grads": {k: p.grad.clone() for k, p in model.named_parameters()},
                "largest_forward": -(-n // micro), "micro_batches": micro}
    expected = _once(expected)
    args = (config, state, x, y, micro)
    return [Case(f"{name}: the gradients", args, run=D.run_accumulate, expected=expected,
                 compare=D.compare_accumulated),
            Case(f"{name}: the returned loss", args, run=D.run_accumulate, expected=expected,
                 compare=D.compare_accumulated_loss)]


def _accumulate_cases(hidden):
    yield from _accumulate_case("N=12 samples in 3 micro-batches of 4", 0, 12, 3)
    yield from _accumulate_case("N=10 in 3 micro-batches of unequal size (4, 3, 3)", 1, 10, 3)
    yield from _accumulate_case("one micro-batch: the plain step", 2, 8, 1)
    yield from _accumulate_case("N=5 in 5 micro-batches of one sample", 3, 5, 5)
    if hidden:
        for i in range(2):
            g = _gen(hidden_seed("ch15.accumulate_gradients", i))
            micro = _pick(g, [3, 4, 6])
            n = micro * _pick(g, [2, 3]) + _pick(g, [1, 2])    # never divisible: unequal pieces
            yield from _accumulate_case(f"hidden case {i + 1}", int(torch.randint(10**6, (1,), generator=g)), n, micro)


def _accumulate_wrong(kind):
    def fn(model, x, y, micro_batches):
        if kind == "full-batch":
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss.detach()
        total = torch.zeros(())
        for xb, yb in zip(torch.tensor_split(x, micro_batches), torch.tensor_split(y, micro_batches)):
            if kind == "zero-inside":
                model.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            if kind == "equal-weights":
                loss = loss / micro_batches
            elif kind != "no-scaling":
                loss = loss * len(xb) / len(x)
            loss.backward()
            total += loss.detach()
        return total
    return fn


register(Exercise(
    id="ch15.accumulate_gradients", chapter=CH, title="Gradient accumulation", points=1,
    name="accumulate_gradients",
    signature="accumulate_gradients(model, x: Tensor[N, ...], y: LongTensor[N], micro_batches: int) -> Tensor[]",
    reference="autograd on the whole batch at once (the gradient of the mean cross-entropy over N samples)",
    solution=f"{SOL}:accumulate_gradients", cases=_accumulate_cases,
    mistakes=[
        Mistake("no-scaling", "you added up the micro-batches' mean losses without scaling them: the gradient "
                "is about micro_batches times too large. Scale each piece's loss by its share of the batch",
                _accumulate_wrong("no-scaling")),
        Mistake("zero-inside", "the gradients were reset inside the loop: only the last micro-batch's "
                "gradient is left. Zero once, before accumulating", _accumulate_wrong("zero-inside")),
        Mistake("equal-weights", "you divided every micro-batch's loss by the number of micro-batches: right "
                "only when the pieces have equal sizes. Weigh each by len(piece) / N",
                _accumulate_wrong("equal-weights")),
        Mistake("full-batch", "the gradient is right but the model ran on the whole batch at once: "
                "accumulation exists to keep only one micro-batch's activations in memory",
                _accumulate_wrong("full-batch")),
    ]))


# ========================================================================================
# zero_partition
# ========================================================================================
def _zero_partition_reference(sizes, world):
    """ZeroRedundancyOptimizer's rule, re-derived: a heap of (load, rank) gives the least
    loaded rank (lowest rank on ties); parameters by decreasing size, ties in order."""
    heap = [(0, r) for r in range(world)]
    owner = [0] * len(sizes)
    for size, i in sorted((-s, i) for i, s in enumerate(sizes)):
        load, r = heapq.heappop(heap)
        owner[i] = r
        heapq.heappush(heap, (load - size, r))
    return owner


def _partition_case(name, sizes, world):
    return Case(name, (list(sizes), world), expected=lambda: _zero_partition_reference(sizes, world),
                compare=compare_equal)


def _partition_cases(hidden):
    yield _partition_case("5 parameters on 2 ranks", [100, 10, 50, 50, 1], 2)
    yield _partition_case("a small GPT's shapes on 3 ranks", [4160, 4096, 64, 64, 12288, 4096, 64, 16384, 16384, 64], 3)
    yield _partition_case("equal sizes: ties keep the model's order", [8, 8, 8, 8, 8], 2)
    yield _partition_case("more ranks than parameters", [5, 9], 4)
    yield _partition_case("one rank owns everything", [3, 1, 2], 1)
    if hidden:
        for i in range(3):
            g = _gen(hidden_seed("ch15.zero_partition", i))
            n = int(torch.randint(6, 15, (1,), generator=g))
            sizes = [_pick(g, [16, 64, 64, 256, 1000, 4096]) for _ in range(n)]
            yield _partition_case(f"hidden case {i + 1}", sizes, _pick(g, [2, 3, 4]))


def _partition_wrong(kind):
    def fn(sizes, world_size):
        if kind == "round-robin":
            return [i % world_size for i in range(len(sizes))]
        load, count = [0] * world_size, [0] * world_size
        order = list(range(len(sizes)))
        if kind == "ascending":
            order = sorted(order, key=lambda i: sizes[i])
        elif kind != "no-sort":
            order = sorted(order, key=lambda i: -sizes[i])
        owner = [0] * len(sizes)
        for i in order:
            key = count if kind == "by-count" else load
            r = key.index(min(key))
            owner[i] = r
            load[r] += sizes[i]
            count[r] += 1
        return owner
    return fn


register(Exercise(
    id="ch15.zero_partition", chapter=CH, title="ZeRO-1: who owns which parameter", points=1,
    name="zero_partition",
    signature="zero_partition(sizes: list[int], world_size: int) -> list[int]",
    reference="ZeroRedundancyOptimizer's greedy partition (largest first, to the least loaded rank), re-derived; "
              "tested against the library's partition on gloo",
    solution=f"{SOL}:zero_partition", cases=_partition_cases,
    mistakes=[
        Mistake("round-robin", "you dealt the parameters round-robin (i % W): ZeRO balances the number of "
                "ELEMENTS, giving each parameter, largest first, to the least loaded rank",
                _partition_wrong("round-robin")),
        Mistake("by-count", "you balanced the number of parameters, not their sizes: the rank's load is the "
                "sum of its parameters' numel()", _partition_wrong("by-count")),
        Mistake("no-sort", "you handed out the parameters in the model's order: ZeroRedundancyOptimizer sorts "
                "them by size, largest first (a stable sort) before the greedy choice", _partition_wrong("no-sort")),
        Mistake("ascending", "you sorted the parameters smallest first: the greedy rule places the largest "
                "first, which balances the loads far better", _partition_wrong("ascending")),
    ]))


# ========================================================================================
# ZeroOptimizer
# ========================================================================================
def _adamw_reference(config, state, grads, world, lr, weight_decay):
    model = D.load_mlp(config, state)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    for g in grads:
        for name, p in model.named_parameters():
            p.grad = g[name].clone()
        opt.step()
        opt.zero_grad()
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sizes = [p.numel() for p in model.parameters()]
    owner = _zero_partition_reference(sizes, world)
    numel = [2 * sum(s for s, o in zip(sizes, owner) if o == r) for r in range(world)]
    return {"params": [params] * world, "state_numel": numel, "cleared": [True] * world, "optimizers": [1] * world}


def _zero_cases(hidden):
    specs = [("W=2 ranks, 3 AdamW steps", 0, 2, 3, (6, 16, 4)), ("W=3 ranks, 2 steps", 1, 3, 2, (8, 5, 3)),
             ("W=4 ranks: more ranks than large parameters", 2, 4, 2, (3, 7, 2))]
    if hidden:
        for i in range(2):
            g = _gen(hidden_seed("ch15.ZeroOptimizer", i))
            specs.append((f"hidden case {i + 1}", int(torch.randint(10**6, (1,), generator=g)), _pick(g, [2, 3, 4]),
                          _pick(g, [2, 3]), (_pick(g, [4, 9]), _pick(g, [6, 12]), _pick(g, [2, 5]))))
    for name, seed, world, steps, (d_in, h, c) in specs:
        config = dict(d_in=d_in, hidden=h, classes=c)
        state = _mlp_state(config, seed)
        g = _gen(seed + 11)
        grads = [{k: torch.randn(v.shape, generator=g) for k, v in state.items()} for _ in range(steps)]
        args = (config, state, grads, world, 0.01, 0.1)
        expected = _once(functools.partial(_adamw_reference, *args))
        yield Case(f"{name}: parameters", args, run=D.run_zero, expected=expected, compare=D.compare_zero_params)
        yield Case(f"{name}: optimizer state per rank", args, run=D.run_zero, expected=expected,
                   compare=D.compare_zero_state)


def _zero_wrong(kind, partition=None):
    partition = partition or _zero_partition_reference

    class Wrong:
        def __init__(self, params, rank, world_size, broadcast, optimizer_class=torch.optim.AdamW, **defaults):
            self.params = list(params)
            self.owner = partition([p.numel() for p in self.params], world_size)
            self.broadcast, self.rank = broadcast, rank
            mine = self.params if kind == "unsharded-state" else [
                p for p, r in zip(self.params, self.owner) if r == rank]
            self.optimizer = optimizer_class(mine, **defaults)

        def step(self):
            self.optimizer.step()
            if kind in ("unsharded-state", "no-broadcast"):
                return
            for p, r in zip(self.params, self.owner):
                self.broadcast(p.data, 0 if kind == "broadcast-from-0" else r)

        def zero_grad(self):
            for p in (self.optimizer.param_groups[0]["params"] if kind == "zero-own-only" else self.params):
                p.grad = None
    return Wrong


register(Exercise(
    id="ch15.ZeroOptimizer", chapter=CH, title="ZeRO-1: the sharded optimizer", points=2,
    name="ZeroOptimizer", difficulty="**",
    signature="class ZeroOptimizer(params, rank, world_size, broadcast, optimizer_class=torch.optim.AdamW, "
              "**defaults): step(), zero_grad()",
    reference="torch.optim.AdamW on the whole model (ZeroRedundancyOptimizer gives the same parameters, tested "
              "on gloo); optimizer state per rank from ZeroRedundancyOptimizer's partition",
    solution=f"{SOL}:ZeroOptimizer", cases=_zero_cases,
    forbidden=["torch.distributed.optim:ZeroRedundancyOptimizer"],
    mistakes=[
        Mistake("unsharded-state", "every rank steps an optimizer over ALL the parameters: the results are "
                "right, but each rank holds the whole optimizer state, which is what ZeRO-1 removes. Build the "
                "local optimizer over the owned parameters only", _zero_wrong("unsharded-state")),
        Mistake("no-broadcast", "the ranks only updated the parameters they own and never shared them: after "
                "the step each rank must receive every parameter from its owner (broadcast from the owner)",
                _zero_wrong("no-broadcast")),
        Mistake("broadcast-from-0", "every parameter was broadcast from rank 0, which only updated its own: "
                "broadcast each parameter from the rank that OWNS it", _zero_wrong("broadcast-from-0")),
        Mistake("zero-own-only", "zero_grad reset only the owned parameters' gradients: every rank computes "
                "gradients for all parameters, so all must be reset", _zero_wrong("zero-own-only")),
        *inherit("ch15.zero_partition", lambda part: _zero_wrong("right", partition=part)),
    ]))


# ========================================================================================
# fsdp_shard
# ========================================================================================
def _fsdp_expected(param, world):
    from torch.distributed.tensor.placement_types import Shard

    shards = Shard(0)._split_tensor(param, world, with_padding=False)[0]
    return {"shards": [s.clone() for s in shards], "views": [False] * world}


def _fsdp_case(name, shape, world, seed):
    param = torch.randn(*shape, generator=_gen(seed))
    return Case(name, (param, world), run=D.run_fsdp_shards, expected=lambda: _fsdp_expected(param, world),
                compare=D.compare_fsdp_shards)


def _fsdp_cases(hidden):
    yield _fsdp_case("a (6, 4) weight on 2 ranks", (6, 4), 2, 0)
    yield _fsdp_case("(5, 3) on 4 ranks: 2, 2, 1 and 0 rows", (5, 3), 4, 1)
    yield _fsdp_case("a bias (3,) on 4 ranks: the last rank gets nothing", (3,), 4, 2)
    yield _fsdp_case("(10, 2, 2) on 3 ranks", (10, 2, 2), 3, 3)
    yield _fsdp_case("(7, 2) on 1 rank", (7, 2), 1, 4)
    if hidden:
        for i in range(2):
            g = _gen(hidden_seed("ch15.fsdp_shard", i))
            rows = int(torch.randint(3, 14, (1,), generator=g))
            yield _fsdp_case(f"hidden case {i + 1}", (rows, _pick(g, [1, 3])), _pick(g, [3, 4, 5]),
                             int(torch.randint(10**6, (1,), generator=g)))


def _fsdp_wrong(kind):
    def fn(param, rank, world_size):
        if kind == "balanced":
            return torch.tensor_split(param, world_size)[rank].clone()
        if kind == "floor":
            per = param.shape[0] // world_size
            return param[rank * per:(rank + 1) * per].clone()
        if kind == "last-dim":
            return torch.chunk(param, world_size, dim=-1)[rank].clone() if rank < len(
                torch.chunk(param, world_size, dim=-1)) else param[..., :0].clone()
        per = -(-param.shape[0] // world_size)
        return param[rank * per:(rank + 1) * per]  # a view
    return fn


register(Exercise(
    id="ch15.fsdp_shard", chapter=CH, title="FSDP: the shard each rank stores", points=1, name="fsdp_shard",
    signature="fsdp_shard(param: Tensor[rows, ...], rank: int, world_size: int) -> Tensor[<= ceil(rows/W), ...]",
    reference="DTensor Shard(0)._split_tensor, the split fully_shard uses (tested against a real fully_shard run)",
    solution=f"{SOL}:fsdp_shard", cases=_fsdp_cases,
    mistakes=[
        Mistake("balanced", "you balanced the rows (torch.tensor_split: sizes differ by at most one); FSDP2 "
                "cuts ceil(rows / W) rows per rank, as torch.chunk does, so the last ranks get fewer or none",
                _fsdp_wrong("balanced")),
        Mistake("floor", "rows // W rows per rank drops the remainder: some rows belong to no rank",
                _fsdp_wrong("floor")),
        Mistake("last-dim", "you cut the last dimension: FSDP shards along dim 0", _fsdp_wrong("last-dim")),
        Mistake("view", "your shard is a view into the full parameter, which keeps the whole tensor alive: "
                "return a copy", _fsdp_wrong("view")),
    ]))


# ========================================================================================
# mixed_precision_step
# ========================================================================================
def _mixed_reference(config, state, x, y, lr):
    model = D.load_mlp(config, state)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return {"loss": float(loss.detach()), "params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "dtypes": ["torch.float32"], "stepped": 1, "step_under_autocast": False, "cleared": True}


def _mixed_cases(hidden):
    specs = [("a 16-32-5 MLP, batch 8", 0, (16, 32, 5), 8), ("a 24-48-7 MLP, batch 16", 1, (24, 48, 7), 16)]
    if hidden:
        g = _gen(hidden_seed("ch15.mixed_precision_step", 0))
        specs.append(("hidden case 1", int(torch.randint(10**6, (1,), generator=g)),
                      (_pick(g, [12, 20]), _pick(g, [24, 40]), _pick(g, [4, 6])), _pick(g, [8, 12])))
    for name, seed, (d_in, h, c), n in specs:
        config = dict(d_in=d_in, hidden=h, classes=c)
        state = {k: v * 4 for k, v in _mlp_state(config, seed).items()}   # large logits: bf16 shows
        g = _gen(seed + 5)
        x, y = torch.randn(n, d_in, generator=g) * 2, torch.randint(c, (n,), generator=g)
        args = (config, state, x, y, 0.05)
        expected = _once(functools.partial(_mixed_reference, *args))
        yield Case(f"{name}: the loss (computed in bf16 autocast)", args, run=D.run_mixed, expected=expected,
                   compare=D.compare_mixed_loss)
        yield Case(f"{name}: the float32 master weights after the step", args, run=D.run_mixed,
                   expected=expected, compare=D.compare_mixed_update)
        yield Case(f"{name}: optimizer.step() outside autocast", args, run=D.run_mixed, expected=expected,
                   compare=D.compare_mixed_autocast, names="autocast-around-step")


def _mixed_wrong(kind):
    def fn(model, optimizer, x, y):
        if kind == "bf16-weights":
            model.to(torch.bfloat16)
            loss = F.cross_entropy(model(x.to(torch.bfloat16)), y)
        elif kind == "no-autocast":
            loss = F.cross_entropy(model(x), y)
        elif kind == "loss-outside":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(x)
            loss = F.cross_entropy(logits, y)
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
                if kind == "autocast-around-step":
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
                    return float(loss.detach())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return float(loss.detach())
    return fn


register(Exercise(
    id="ch15.mixed_precision_step", chapter=CH, title="A bf16 mixed-precision step", points=1,
    name="mixed_precision_step",
    signature="mixed_precision_step(model, optimizer, x: Tensor[N, D], y: LongTensor[N]) -> float",
    reference="torch.autocast('cpu', dtype=torch.bfloat16) around the forward pass and the loss; SGD outside",
    solution=f"{SOL}:mixed_precision_step", cases=_mixed_cases,
    mistakes=[
        Mistake("no-autocast", "your loss is the float32 one: run the forward pass and the loss under "
                "torch.autocast('cpu', dtype=torch.bfloat16)", _mixed_wrong("no-autocast")),
        Mistake("bf16-weights", "you converted the model to bfloat16: the master weights must stay float32 "
                "(bf16 keeps 8 bits of mantissa, so small updates round away); autocast casts the matmuls' "
                "inputs on the fly", _mixed_wrong("bf16-weights")),
        Mistake("loss-outside", "the loss was computed outside autocast on bf16 logits, so it was computed in "
                "bf16; inside autocast cross_entropy runs in float32. Put the loss inside the autocast block",
                _mixed_wrong("loss-outside")),
        Mistake("autocast-around-step", "optimizer.step() ran inside the autocast region: autocast is for the "
                "forward pass (and loss); the backward pass and the update of the float32 master weights belong "
                "outside it", _mixed_wrong("autocast-around-step")),
    ]))


# ========================================================================================
# Checkpoint
# ========================================================================================
def _checkpoint_reference(config, state, x, weight):
    from torch.utils.checkpoint import checkpoint

    blocks = D.build_stack(config, state)
    xr = x.clone().requires_grad_(True)
    h = xr
    for block in blocks:
        h = h + checkpoint(block, h, use_reentrant=False)
    (h * weight).sum().backward()
    # The bytes a checkpointed stack keeps: the reentrant variant of the library saves each
    # block's input through save_for_backward, which the hooks count.
    blocks2 = D.build_stack(config, state)
    x2 = x.clone().requires_grad_(True)
    with D.saved_bytes() as total:
        h2 = x2
        for block in blocks2:
            h2 = h2 + checkpoint(block, h2, use_reentrant=True)
        (h2 * weight).sum()
    return {"out": h.detach().clone(), "x_grad": xr.grad.clone(),
            "grads": {n: p.grad.clone() for n, p in blocks.named_parameters()}, "saved_bytes": total[0]}


def _checkpoint_cases(hidden):
    specs = [("3 blocks of width 16, batch (4, 16)", 0, 3, 16, (4, 16)),
             ("5 blocks of width 8, batch (2, 3, 8)", 1, 5, 8, (2, 3, 8))]
    if hidden:
        g = _gen(hidden_seed("ch15.Checkpoint", 0))
        w = _pick(g, [8, 12])
        specs.append(("hidden case 1", int(torch.randint(10**6, (1,), generator=g)), _pick(g, [2, 4]), w,
                      (_pick(g, [3, 5]), w)))
    for name, seed, depth, width, shape in specs:
        config = dict(depth=depth, width=width)
        torch.manual_seed(seed)
        blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Linear(width, 4 * width), torch.nn.GELU(),
                                torch.nn.Linear(4 * width, width)) for _ in range(depth))
        state = {k: v.detach().clone() for k, v in blocks.state_dict().items()}
        g = _gen(seed + 9)
        x, weight = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
        args = (config, state, x, weight)
        expected = _once(functools.partial(_checkpoint_reference, *args))
        yield Case(f"{name}: output, gradients and what autograd keeps", args, run=D.run_checkpoint,
                   expected=expected, compare=D.compare_checkpoint)


def _checkpoint_wrong(kind):
    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, fn, x):
            ctx.fn = fn
            if kind == "saves-activations":
                with torch.enable_grad():
                    xd = x.detach().requires_grad_(True)
                    out = fn(xd)
                ctx.graph = (xd, out)
                return out.detach()
            ctx.save_for_backward(x)
            return fn(x)

        @staticmethod
        def backward(ctx, grad_out):
            if kind == "saves-activations":
                xd, out = ctx.graph
                torch.autograd.backward(out, grad_out)
                return None, xd.grad
            (x,) = ctx.saved_tensors
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                out = ctx.fn(x)
            if kind == "no-param-grads":
                return None, torch.autograd.grad(out, x, grad_out)[0]
            torch.autograd.backward(out, grad_out)
            return None, (None if kind == "no-input-grad" else x.grad)
    Wrong.__name__ = "Checkpoint"
    return Wrong


register(Exercise(
    id="ch15.Checkpoint", chapter=CH, title="Activation checkpointing", points=2, name="Checkpoint",
    difficulty="**",
    signature="class Checkpoint(torch.autograd.Function): forward(ctx, fn, x), backward(ctx, grad_out)",
    reference="torch.utils.checkpoint.checkpoint (outputs and gradients with use_reentrant=False; the bytes "
              "saved for backward as its reentrant variant saves them)",
    solution=f"{SOL}:Checkpoint", cases=_checkpoint_cases,
    forbidden=["torch.utils.checkpoint:checkpoint", "torch.utils.checkpoint:CheckpointFunction"],
    mistakes=[
        Mistake("saves-activations", "the gradients are right, but autograd kept every activation of the "
                "block: the forward pass built a graph. Compute fn(x) without one (autograd is off inside "
                "forward) and save only x", _checkpoint_wrong("saves-activations")),
        Mistake("no-input-grad", "backward returned no gradient for x: the blocks before this one then get "
                "no gradient at all. Return (None, x.grad)", _checkpoint_wrong("no-input-grad")),
        Mistake("no-param-grads", "the input's gradient is right but the blocks' parameters got none: "
                "torch.autograd.grad(out, x, ...) differentiates with respect to x only. Backpropagate through "
                "the recomputed output (torch.autograd.backward), which fills the parameters' .grad as well",
                _checkpoint_wrong("no-param-grads")),
    ]))
