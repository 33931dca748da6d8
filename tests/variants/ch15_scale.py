"""Correct answers to chapter 15, in other styles than the reference."""
import heapq
import itertools

import torch
import torch.nn.functional as F

from solutions.ch15_scale import allreduce_gradients, shard_indices, zero_partition

from . import right


# -- shard_indices --------------------------------------------------------------------------
@right("ch15.shard_indices", style="itertools.cycle for the padding, a tensor slice")
def shard_cycle(n, rank, world_size, shuffle=False, seed=0, epoch=0):
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    else:
        order = torch.arange(n)
    total = -(-n // world_size) * world_size
    padded = torch.tensor(list(itertools.islice(itertools.cycle(order.tolist()), total)))
    return padded[rank::world_size].tolist()


@right("ch15.shard_indices", style="index arithmetic: position rank + j W modulo n")
def shard_arithmetic(n, rank, world_size, shuffle=False, seed=0, epoch=0):
    g = torch.Generator()
    g.manual_seed(seed + epoch)
    order = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
    per = (n + world_size - 1) // world_size
    return [order[(rank + j * world_size) % n] for j in range(per)]


# -- allreduce_gradients --------------------------------------------------------------------
@right("ch15.allreduce_gradients", style="divide first, then sum")
def allreduce_divide_first(model, world_size, all_reduce):
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(world_size)
            all_reduce(p.grad)


@right("ch15.allreduce_gradients", style="one flat bucket, as DDP does")
def allreduce_bucket(model, world_size, all_reduce):
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


# -- train_replica --------------------------------------------------------------------------
@right("ch15.train_replica", style="manual SGD update, loss summed then divided")
def replica_manual_sgd(make_model, x, y, rank, world_size, all_reduce, seed=0, steps=3, batch_size=4, lr=0.1):
    torch.manual_seed(seed)
    model = make_model()
    idx = shard_indices(x.shape[0], rank, world_size)
    for step in range(steps):
        batch = idx[step * batch_size:(step + 1) * batch_size]
        for p in model.parameters():
            p.grad = None
        loss = F.cross_entropy(model(x[batch]), y[batch], reduction="sum") / len(batch)
        loss.backward()
        allreduce_gradients(model, world_size, all_reduce)
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
    return {k: v.clone() for k, v in model.state_dict().items()}


@right("ch15.train_replica", style="a DataLoader over the rank's indices")
def replica_dataloader(make_model, x, y, rank, world_size, all_reduce, seed=0, steps=3, batch_size=4, lr=0.1):
    from torch.utils.data import DataLoader, Subset, TensorDataset

    torch.manual_seed(seed)
    model = make_model()
    data = Subset(TensorDataset(x, y), shard_indices(len(x), rank, world_size))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _, (xb, yb) in zip(range(steps), DataLoader(data, batch_size=batch_size, shuffle=False)):
        opt.zero_grad(set_to_none=False)
        F.cross_entropy(model(xb), yb).backward()
        allreduce_gradients(model, world_size, all_reduce)
        opt.step()
    return model.state_dict()


# -- accumulate_gradients -------------------------------------------------------------------
@right("ch15.accumulate_gradients", style="summed losses divided by N, chunk()")
def accumulate_sum_reduction(model, x, y, micro_batches):
    n = x.shape[0]
    total = 0.0
    size = -(-n // micro_batches)
    for start in range(0, n, size):
        loss = F.cross_entropy(model(x[start:start + size]), y[start:start + size], reduction="sum") / n
        loss.backward()
        total += loss.item()
    return torch.tensor(total)


@right("ch15.accumulate_gradients", style="float64 bookkeeping of the weights")
def accumulate_weights(model, x, y, micro_batches):
    pieces = list(zip(torch.tensor_split(x, micro_batches), torch.tensor_split(y, micro_batches)))
    weights = [len(xb) / len(x) for xb, _ in pieces]
    losses = []
    for (xb, yb), w in zip(pieces, weights):
        if len(xb):
            loss = w * F.cross_entropy(model(xb), yb)
            loss.backward()
            losses.append(loss.item())
    return torch.tensor(sum(losses), dtype=torch.float64)


# -- zero_partition -------------------------------------------------------------------------
@right("ch15.zero_partition", style="a heap of (load, rank)")
def partition_heap(sizes, world_size):
    heap = [(0, r) for r in range(world_size)]
    owner = [None] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: sizes[i], reverse=True):
        load, r = heapq.heappop(heap)
        owner[i] = r
        heapq.heappush(heap, (load + sizes[i], r))
    return owner


@right("ch15.zero_partition", style="min() with a key, a dict of lists per rank")
def partition_dict(sizes, world_size):
    per_rank = {r: [] for r in range(world_size)}
    for i, s in sorted(enumerate(sizes), key=lambda t: (-t[1], t[0])):
        r = min(per_rank, key=lambda r: (sum(sizes[j] for j in per_rank[r]), r))
        per_rank[r].append(i)
    return [next(r for r, idx in per_rank.items() if i in idx) for i in range(len(sizes))]


# -- ZeroOptimizer --------------------------------------------------------------------------
@right("ch15.ZeroOptimizer", style="a dict rank -> params; broadcast rank by rank")
class ZeroByRank:
    def __init__(self, params, rank, world_size, broadcast, optimizer_class=torch.optim.AdamW, **defaults):
        self.all = list(params)
        owners = zero_partition([p.numel() for p in self.all], world_size)
        self.owners = owners
        self.broadcast = broadcast
        self.local = optimizer_class([p for p, o in zip(self.all, owners) if o == rank], **defaults)

    def step(self):
        self.local.step()
        for p, o in zip(self.all, self.owners):
            self.broadcast(p.detach(), o)

    def zero_grad(self):
        for p in self.all:
            if p.grad is not None:
                p.grad.zero_()


@right("ch15.ZeroOptimizer", style="a subclass-free wrapper keeping param groups")
class ZeroGroups:
    def __init__(self, params, rank, world_size, broadcast, optimizer_class=torch.optim.AdamW, **defaults):
        params = list(params)
        sizes = [p.numel() for p in params]
        self.plan = list(zip(params, zero_partition(sizes, world_size)))
        self.send = broadcast
        self.optimizer = optimizer_class([{"params": [p for p, o in self.plan if o == rank]}], **defaults)

    def step(self):
        self.optimizer.step()
        with torch.no_grad():
            for p, owner in self.plan:
                self.send(p, owner)

    def zero_grad(self):
        for p, _ in self.plan:
            p.grad = None


# -- fsdp_shard -----------------------------------------------------------------------------
@right("ch15.fsdp_shard", style="torch.chunk, an empty tensor past the last chunk")
def fsdp_chunk(param, rank, world_size):
    chunks = torch.chunk(param, world_size, dim=0)
    if rank < len(chunks):
        return chunks[rank].clone()
    return param.new_empty((0, *param.shape[1:]))


@right("ch15.fsdp_shard", style="narrow() with clamped bounds, contiguous()")
def fsdp_narrow(param, rank, world_size):
    rows = param.size(0)
    per = (rows + world_size - 1) // world_size
    start = min(rank * per, rows)
    length = max(0, min(per, rows - start))
    return param.narrow(0, start, length).contiguous().clone()


# -- mixed_precision_step -------------------------------------------------------------------
@right("ch15.mixed_precision_step", style="autocast as a decorator on a forward helper")
def mixed_decorator(model, optimizer, x, y):
    @torch.autocast("cpu", dtype=torch.bfloat16)
    def forward():
        return F.cross_entropy(model(x), y)

    loss = forward()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


@right("ch15.mixed_precision_step", style="torch.amp.autocast, zero_grad first")
def mixed_amp(model, optimizer, x, y):
    optimizer.zero_grad()
    with torch.amp.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=True):
        logits = model(x)
        loss = F.cross_entropy(logits, y, reduction="mean")
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return float(loss.detach().cpu())


# -- Checkpoint -----------------------------------------------------------------------------
@right("ch15.Checkpoint", style="torch.autograd.grad over input and parameters")
class CheckpointGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, x):
        ctx.fn = fn
        ctx.save_for_backward(x)
        with torch.no_grad():
            return fn(x)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        params = [p for p in ctx.fn.parameters() if p.requires_grad]
        with torch.enable_grad():
            xi = x.detach().requires_grad_()
            out = ctx.fn(xi)
        grads = torch.autograd.grad(out, [xi, *params], grad_out)
        for p, g in zip(params, grads[1:]):
            p.grad = g if p.grad is None else p.grad + g
        return None, grads[0]


@right("ch15.Checkpoint", style="out.backward(grad_out), input kept as an attribute")
class CheckpointAttr(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, x):
        ctx.fn, ctx.x = fn, x.detach()
        return fn(x)

    @staticmethod
    def backward(ctx, grad_out):
        x = ctx.x.clone().requires_grad_(True)
        with torch.enable_grad():
            out = ctx.fn(x)
        out.backward(grad_out)
        return None, x.grad
