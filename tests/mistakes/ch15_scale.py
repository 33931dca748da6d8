"""Wrong answers to chapter 15, as learners write them."""
import math

import torch
import torch.nn.functional as F

from solutions.ch15_scale import allreduce_gradients, shard_indices, zero_partition

from . import wrong


# -- shard_indices --------------------------------------------------------------------------
@wrong("ch15.shard_indices", diagnosis="not-sharded")
def shard_everything(n, rank, world_size, shuffle=False, seed=0, epoch=0):
    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        return torch.randperm(n, generator=g).tolist()
    return list(range(n))


@wrong("ch15.shard_indices", diagnosis="seed-per-rank")
def shard_seeded_by_rank(n, rank, world_size, shuffle=False, seed=0, epoch=0):
    g = torch.Generator()
    g.manual_seed(seed + epoch + rank)  # "different randomness on each rank"
    order = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
    total = math.ceil(n / world_size) * world_size
    order = (order * world_size)[:total]
    return order[rank::world_size]


@wrong("ch15.shard_indices", diagnosis="blocks")
def shard_in_blocks(n, rank, world_size, shuffle=False, seed=0, epoch=0):
    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    per = math.ceil(n / world_size)
    order = (order * world_size)[:per * world_size]
    return order[rank * per:(rank + 1) * per]


@wrong("ch15.shard_indices", diagnosis="no-padding")
def shard_without_padding(n, rank, world_size, shuffle=False, seed=0, epoch=0):
    if shuffle:
        g = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    return order[rank::world_size]


@wrong("ch15.shard_indices", diagnosis="epoch-ignored")
def shard_same_order_every_epoch(n, rank, world_size, shuffle=False, seed=0, epoch=0):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist() if shuffle else list(range(n))
    while len(order) % world_size:
        order.append(order[len(order) % n])
    return order[rank::world_size]


# -- allreduce_gradients --------------------------------------------------------------------
@wrong("ch15.allreduce_gradients", diagnosis="sum")
def allreduce_sum_only(model, world_size, all_reduce):
    for p in model.parameters():
        if p.grad is not None:
            all_reduce(p.grad)


@wrong("ch15.allreduce_gradients", diagnosis="local")
def allreduce_on_a_temporary(model, world_size, all_reduce):
    for p in model.parameters():
        if p.grad is not None:
            all_reduce(p.grad / world_size)  # reduces a new tensor; p.grad never changes


@wrong("ch15.allreduce_gradients", diagnosis="double-divide")
def allreduce_divides_twice(model, world_size, all_reduce):
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    for g in grads:
        g.div_(world_size)
        all_reduce(g)
        g.div_(world_size)


# -- train_replica --------------------------------------------------------------------------
@wrong("ch15.train_replica", diagnosis="seed-per-rank")
def replica_seeded_by_rank(make_model, x, y, rank, world_size, all_reduce, seed=0, steps=3, batch_size=4, lr=0.1):
    torch.manual_seed(seed + rank)
    model = make_model()
    idx_all = shard_indices(len(x), rank, world_size)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for s in range(steps):
        idx = idx_all[s * batch_size:(s + 1) * batch_size]
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        allreduce_gradients(model, world_size, all_reduce)
        opt.step()
    return model.state_dict()


@wrong("ch15.train_replica", diagnosis="not-sharded")
def replica_reads_everything(make_model, x, y, rank, world_size, all_reduce, seed=0, steps=3, batch_size=4, lr=0.1):
    torch.manual_seed(seed)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for s in range(steps):
        xb, yb = x[s * batch_size:(s + 1) * batch_size], y[s * batch_size:(s + 1) * batch_size]
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        allreduce_gradients(model, world_size, all_reduce)
        opt.step()
    return model.state_dict()


@wrong("ch15.train_replica", diagnosis="no-zero-grad")
def replica_never_zeroes(make_model, x, y, rank, world_size, all_reduce, seed=0, steps=3, batch_size=4, lr=0.1):
    torch.manual_seed(seed)
    model = make_model()
    mine = shard_indices(len(x), rank, world_size)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for s in range(steps):
        idx = mine[s * batch_size:(s + 1) * batch_size]
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        allreduce_gradients(model, world_size, all_reduce)
        opt.step()
    return model.state_dict()


@wrong("ch15.train_replica", diagnosis="ch15.allreduce_gradients:sum")
def replica_sums_gradients(make_model, x, y, rank, world_size, all_reduce, seed=0, steps=3, batch_size=4, lr=0.1):
    torch.manual_seed(seed)
    model = make_model()
    mine = shard_indices(len(x), rank, world_size)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for s in range(steps):
        idx = mine[s * batch_size:(s + 1) * batch_size]
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        for p in model.parameters():
            all_reduce(p.grad)
        opt.step()
    return model.state_dict()


# -- accumulate_gradients -------------------------------------------------------------------
@wrong("ch15.accumulate_gradients", diagnosis="no-scaling")
def accumulate_unscaled(model, x, y, micro_batches):
    total = 0.0
    for xb, yb in zip(x.chunk(micro_batches), y.chunk(micro_batches)):
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        total += loss.item()
    return torch.tensor(total / micro_batches)


@wrong("ch15.accumulate_gradients", diagnosis="zero-inside")
def accumulate_zeroes_each_time(model, x, y, micro_batches):
    n = len(x)
    total = torch.zeros(())
    for xb, yb in zip(torch.tensor_split(x, micro_batches), torch.tensor_split(y, micro_batches)):
        model.zero_grad()
        loss = F.cross_entropy(model(xb), yb) * len(xb) / n
        loss.backward()
        total += loss.detach()
    return total


@wrong("ch15.accumulate_gradients", diagnosis="equal-weights")
def accumulate_divides_by_count(model, x, y, micro_batches):
    total = torch.zeros(())
    for xb, yb in zip(torch.tensor_split(x, micro_batches), torch.tensor_split(y, micro_batches)):
        loss = F.cross_entropy(model(xb), yb) / micro_batches
        loss.backward()
        total += loss.detach()
    return total


@wrong("ch15.accumulate_gradients", diagnosis="full-batch")
def accumulate_all_at_once(model, x, y, micro_batches):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.detach()


# -- zero_partition -------------------------------------------------------------------------
@wrong("ch15.zero_partition", diagnosis="round-robin")
def partition_round_robin(sizes, world_size):
    return [i % world_size for i in range(len(sizes))]


@wrong("ch15.zero_partition", diagnosis="by-count")
def partition_by_count(sizes, world_size):
    counts = [0] * world_size
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        r = counts.index(min(counts))
        owner[i] = r
        counts[r] += 1
    return owner


@wrong("ch15.zero_partition", diagnosis="no-sort")
def partition_in_model_order(sizes, world_size):
    load = [0] * world_size
    owner = []
    for s in sizes:
        r = min(range(world_size), key=lambda r: load[r])
        owner.append(r)
        load[r] += s
    return owner


@wrong("ch15.zero_partition", diagnosis="ascending")
def partition_smallest_first(sizes, world_size):
    load = [0] * world_size
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: sizes[i]):
        r = load.index(min(load))
        owner[i] = r
        load[r] += sizes[i]
    return owner


# -- ZeroOptimizer --------------------------------------------------------------------------
@wrong("ch15.ZeroOptimizer", diagnosis="unsharded-state")
class ZeroEveryoneStepsAll:
    def __init__(self, params, rank, world_size, broadcast, optimizer_class=torch.optim.AdamW, **defaults):
        self.params = list(params)
        self.optimizer = optimizer_class(self.params, **defaults)

    def step(self):
        self.optimizer.step()

    def zero_grad(self):
        self.optimizer.zero_grad()


@wrong("ch15.ZeroOptimizer", diagnosis="no-broadcast")
class ZeroWithoutBroadcast:
    def __init__(self, params, rank, world_size, broadcast, optimizer_class=torch.optim.AdamW, **defaults):
        self.params = list(params)
        owners = zero_partition([p.numel() for p in self.params], world_size)
        self.optimizer = optimizer_class([p for p, o in zip(self.params, owners) if o == rank], **defaults)

    def step(self):
        self.optimizer.step()

    def zero_grad(self):
        for p in self.params:
            p.grad = None


@wrong("ch15.ZeroOptimizer", diagnosis="broadcast-from-0")
class ZeroBroadcastFromRankZero:
    def __init__(self, params, rank, world_size, broadcast, optimizer_class=torch.optim.AdamW, **defaults):
        self.params = list(params)
        self.broadcast = broadcast
        owners = zero_partition([p.numel() for p in self.params], world_size)
        self.optimizer = optimizer_class([p for p, o in zip(self.params, owners) if o == rank], **defaults)

    def step(self):
        self.optimizer.step()
        for p in self.params:
            self.broadcast(p.data, 0)

    def zero_grad(self):
        for p in self.params:
            p.grad = None


@wrong("ch15.ZeroOptimizer", diagnosis="zero-own-only")
class ZeroClearsOnlyItsShard:
    def __init__(self, params, rank, world_size, broadcast, optimizer_class=torch.optim.AdamW, **defaults):
        self.params = list(params)
        self.broadcast = broadcast
        self.owner = zero_partition([p.numel() for p in self.params], world_size)
        self.optimizer = optimizer_class([p for p, o in zip(self.params, self.owner) if o == rank], **defaults)

    def step(self):
        self.optimizer.step()
        for p, o in zip(self.params, self.owner):
            self.broadcast(p.data, o)

    def zero_grad(self):
        self.optimizer.zero_grad()


# -- fsdp_shard -----------------------------------------------------------------------------
@wrong("ch15.fsdp_shard", diagnosis="balanced")
def fsdp_balanced(param, rank, world_size):
    return torch.tensor_split(param, world_size, dim=0)[rank].clone()


@wrong("ch15.fsdp_shard", diagnosis="floor")
def fsdp_floor(param, rank, world_size):
    rows = param.shape[0] // world_size
    return param[rank * rows:(rank + 1) * rows].clone()


@wrong("ch15.fsdp_shard", diagnosis="view")
def fsdp_view(param, rank, world_size):
    chunks = torch.chunk(param, world_size)
    return chunks[rank] if rank < len(chunks) else param[:0]


# -- mixed_precision_step -------------------------------------------------------------------
@wrong("ch15.mixed_precision_step", diagnosis="autocast-around-step")
def mixed_everything_in_autocast(model, optimizer, x, y):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return loss.item()


@wrong("ch15.mixed_precision_step", diagnosis="bf16-weights")
def mixed_casts_the_model(model, optimizer, x, y):
    model.to(torch.bfloat16)
    loss = F.cross_entropy(model(x.bfloat16()), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return float(loss.detach())


@wrong("ch15.mixed_precision_step", diagnosis="no-autocast")
def mixed_without_autocast(model, optimizer, x, y):
    optimizer.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


@wrong("ch15.mixed_precision_step", diagnosis="loss-outside")
def mixed_loss_outside(model, optimizer, x, y):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


# -- Checkpoint -----------------------------------------------------------------------------
@wrong("ch15.Checkpoint", diagnosis="saves-activations")
class CheckpointKeepsTheGraph(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, x):
        with torch.enable_grad():
            inp = x.detach().requires_grad_()
            out = fn(inp)
        ctx.inp, ctx.out = inp, out
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out):
        ctx.out.backward(grad_out)
        return None, ctx.inp.grad


@wrong("ch15.Checkpoint", diagnosis="no-input-grad")
class CheckpointNoInputGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, x):
        ctx.fn = fn
        ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx, grad_out):
        x, = ctx.saved_tensors
        with torch.enable_grad():
            out = ctx.fn(x.detach().requires_grad_())
        out.backward(grad_out)
        return None, None


@wrong("ch15.Checkpoint", diagnosis="no-param-grads")
class CheckpointOnlyInputGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, x):
        ctx.fn = fn
        ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx, grad_out):
        x, = ctx.saved_tensors
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = ctx.fn(x)
        (gx,) = torch.autograd.grad(out, x, grad_out)
        return None, gx
