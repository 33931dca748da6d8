"""Chapter 15 - Training at scale: data parallelism, ZeRO, FSDP, mixed precision,
activation checkpointing.

Reference solutions. The docstrings of the exercise functions are the specification the
learner reads; their bodies are the reference solution. Every exercise is written as the
code of ONE rank: the collective operations it needs (``all_reduce``, ``broadcast``) are
passed in as arguments, so the same function runs with ``torch.distributed`` in the real
multi-process runs of the chapter and with a simulated group of threads in the checks.

The rest is PROVIDED: the program each rank runs in the experiments (one OS process per
rank, gloo on 127.0.0.1, written to a file from the functions below and started the way
``torchrun`` starts it), the launcher, the measurement helpers and the paper model of a
large run.
"""

from __future__ import annotations

import ast
import inspect
import json
import linecache
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from solutions.ch07_pretraining import (
    GPT,
    GPTConfig,
    char_vocab,
    encode_corpus,
    shakespeare_text,
)


# ----------------------------------------------------------------------------------------
# Exercise: which samples each rank reads (DistributedSampler)
# ----------------------------------------------------------------------------------------
def shard_indices(
    n: int,
    rank: int,
    world_size: int,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
) -> list[int]:
    """The dataset indices rank ``rank`` of ``world_size`` reads in one epoch.

    n: the dataset's length. Every rank gets ceil(n / world_size) indices: the order of
    the epoch (``0..n-1``, or, with ``shuffle``, ``torch.randperm(n, generator=g)`` with
    ``g`` seeded with ``seed + epoch``: the SAME permutation on every rank) is padded by
    repeating its first indices until its length divides by world_size, then rank r
    takes every world_size-th index starting at r (positions r, r + W, r + 2W, ...).
    Returns a list of ints, as ``torch.utils.data.DistributedSampler`` would yield them.
    """
    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed + epoch)  # the same order on every rank
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    total = math.ceil(n / world_size) * world_size
    while len(order) < total:  # pad with the first indices again
        order += order[: total - len(order)]
    return order[rank:total:world_size]


# ----------------------------------------------------------------------------------------
# Exercise: averaging the gradients of all ranks by hand
# ----------------------------------------------------------------------------------------
def allreduce_gradients(model: nn.Module, world_size: int, all_reduce) -> None:
    """Make every rank's gradients the average over the ranks, in place.

    model: this rank's replica, after ``loss.backward()`` on this rank's batch.
    all_reduce(t): a collective called by every rank with its own tensor ``t``; when it
    returns, ``t`` holds the SUM of the ranks' tensors, in place (``dist.all_reduce``).
    After this call ``p.grad`` of every parameter that has a gradient is the mean of the
    ranks' gradients, identical on every rank. Returns None.
    """
    for p in model.parameters():
        if p.grad is not None:
            all_reduce(p.grad)  # sum over the ranks, in place
            p.grad /= world_size  # gloo has no AVG: divide yourself


# ----------------------------------------------------------------------------------------
# Exercise: one rank of data-parallel training
# ----------------------------------------------------------------------------------------
def train_replica(
    make_model,
    x: torch.Tensor,
    y: torch.Tensor,
    rank: int,
    world_size: int,
    all_reduce,
    seed: int = 0,
    steps: int = 3,
    batch_size: int = 4,
    lr: float = 0.1,
) -> dict:
    """Train this rank's replica with plain data parallelism; return its state dict.

    make_model(): builds a fresh model from torch's global random state. x: (N, ...)
    inputs, y: (N,) int64 class labels, the whole data set, the same on every rank.
    Build the replica after ``torch.manual_seed(seed)``. This rank reads the indices
    ``shard_indices(N, rank, world_size)`` (no shuffling), in order, ``batch_size`` per
    step. Each step: ``F.cross_entropy`` (mean) on the local batch, backward, average
    the gradients over the ranks with ``allreduce_gradients``, then one step of
    ``torch.optim.SGD(model.parameters(), lr=lr)``. Zero the gradients before each step.
    Returns ``model.state_dict()`` after ``steps`` steps.
    """
    torch.manual_seed(seed)  # the SAME seed on every rank
    model = make_model()
    mine = shard_indices(len(x), rank, world_size)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps):
        idx = mine[step * batch_size : (step + 1) * batch_size]
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        allreduce_gradients(model, world_size, all_reduce)
        opt.step()
    return model.state_dict()


# ----------------------------------------------------------------------------------------
# Exercise: gradient accumulation
# ----------------------------------------------------------------------------------------
def accumulate_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, micro_batches: int
) -> torch.Tensor:
    """Leave in ``p.grad`` the gradient of the mean loss over the whole batch, computed
    in ``micro_batches`` pieces.

    x: (N, ...) inputs, y: (N,) int64 labels. Split the batch along dim 0 into
    ``micro_batches`` consecutive pieces (``torch.tensor_split``; the pieces may differ
    in size by one). Run forward and backward on one piece at a time, so that only one
    piece's activations are alive at once, and scale each piece's mean
    ``F.cross_entropy`` so that the accumulated gradient equals the gradient of the mean
    loss over all N samples. The gradients are zero (None) when the call starts.
    Returns the mean loss over the N samples, a detached 0-dim tensor.
    """
    n = len(x)
    total = torch.zeros(())
    for xb, yb in zip(
        torch.tensor_split(x, micro_batches), torch.tensor_split(y, micro_batches)
    ):
        if len(xb) == 0:
            continue
        # this piece's share of the mean over all N samples
        loss = F.cross_entropy(model(xb), yb) * (len(xb) / n)
        loss.backward()  # adds into p.grad
        total += loss.detach()
    return total


# ----------------------------------------------------------------------------------------
# Exercise: ZeRO-1, who owns which parameter
# ----------------------------------------------------------------------------------------
def zero_partition(sizes: list[int], world_size: int) -> list[int]:
    """The rank that owns each parameter's optimizer state, as ZeroRedundancyOptimizer
    decides.

    sizes: the number of elements of each parameter, in the model's order. Visit the
    parameters from the largest to the smallest (a stable sort: equal sizes keep their
    order) and give each to the rank that owns the fewest elements so far (the lowest
    rank on a tie). Returns a list of ranks, one per parameter, in the ORIGINAL order.
    """
    load = [0] * world_size
    owner = [0] * len(sizes)
    # largest first; sorted() is stable, so equal sizes keep the model's order
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        r = load.index(min(load))  # the least loaded rank, lowest on ties
        owner[i] = r
        load[r] += sizes[i]
    return owner


# ----------------------------------------------------------------------------------------
# Exercise: ZeRO-1, the sharded optimizer
# ----------------------------------------------------------------------------------------
class ZeroOptimizer:
    """ZeRO stage 1 on one rank: each rank keeps the optimizer state of its own shard.

    params: every parameter of this rank's replica (the same list on every rank).
    broadcast(t, src): a collective every rank calls with its own copy ``t``; when it
    returns, every copy holds rank ``src``'s values (``dist.broadcast``).
    optimizer_class(params, **defaults): the optimizer to run on the shard.
    """

    def __init__(
        self,
        params,
        rank: int,
        world_size: int,
        broadcast,
        optimizer_class=torch.optim.AdamW,
        **defaults,
    ):
        """Decide the owners with ``zero_partition`` (sizes = ``p.numel()``), and build
        ONE ``optimizer_class(owned_params, **defaults)`` over the parameters this rank
        owns (its state then exists for them only). Keep ``params`` and the owners."""
        self.params = list(params)
        self.owner = zero_partition([p.numel() for p in self.params], world_size)
        self.broadcast = broadcast
        mine = [p for p, r in zip(self.params, self.owner) if r == rank]
        self.optimizer = optimizer_class(mine, **defaults)

    def step(self) -> None:
        """Step the local optimizer (gradients are already averaged over the ranks),
        then send every parameter from its owner to all ranks with ``broadcast``, in
        the order of ``params``."""
        self.optimizer.step()
        with torch.no_grad():
            for p, r in zip(self.params, self.owner):
                self.broadcast(p.data, r)  # the owner's new values, everywhere

    def zero_grad(self) -> None:
        """Reset the gradients of ALL parameters (not only the owned ones) to None."""
        for p in self.params:
            p.grad = None


# ----------------------------------------------------------------------------------------
# Exercise: FSDP's shards
# ----------------------------------------------------------------------------------------
def fsdp_shard(param: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """The piece of ``param`` that rank ``rank`` stores under FSDP2 (``fully_shard``).

    param: a full parameter, any shape with at least one dimension. FSDP2 cuts it along
    dim 0 into ``world_size`` pieces of ceil(rows / world_size) rows each (what
    ``torch.chunk`` does); the last ranks get fewer rows, or an EMPTY piece of shape
    (0, ...) when there are not enough rows to go round. Returns a new tensor (a copy,
    not a view of ``param``).
    """
    rows = param.shape[0]
    per = -(-rows // world_size)  # ceil(rows / world_size)
    start, stop = min(rank * per, rows), min((rank + 1) * per, rows)
    return param[start:stop].clone()


# ----------------------------------------------------------------------------------------
# Exercise: a mixed-precision training step
# ----------------------------------------------------------------------------------------
def mixed_precision_step(
    model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor
) -> float:
    """One training step in bf16 mixed precision on the CPU, float32 master weights.

    The model's parameters are float32 and stay float32. Run the forward pass AND the
    loss (``F.cross_entropy``, mean) under
    ``torch.autocast("cpu", dtype=torch.bfloat16)``, then, outside autocast:
    ``backward``, ``optimizer.step()`` and ``optimizer.zero_grad()``.
    Returns the loss as a Python float.
    """
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), y)  # matmuls in bf16, the loss in float32
    loss.backward()  # float32 gradients (the weights' dtype)
    optimizer.step()
    optimizer.zero_grad()
    return float(loss.detach())


# ----------------------------------------------------------------------------------------
# Exercise: activation checkpointing
# ----------------------------------------------------------------------------------------
class Checkpoint(torch.autograd.Function):
    """``Checkpoint.apply(fn, x)`` computes ``fn(x)`` but saves only ``x`` for backward;
    the backward pass runs ``fn`` again to rebuild what it needs.

    fn: a module or function of one tensor (its parameters get their gradients too);
    x: a tensor that requires grad.
    """

    @staticmethod
    def forward(ctx, fn, x):
        """Run ``fn(x)`` without building a graph (autograd is off inside ``forward``);
        keep ``fn`` and save ``x`` with ``ctx.save_for_backward``; return the output."""
        ctx.fn = fn
        ctx.save_for_backward(x)
        return fn(x)

    @staticmethod
    def backward(ctx, grad_out):
        """Recompute ``fn`` on a detached copy of ``x`` that requires grad, with
        autograd ON (``torch.enable_grad()``), backpropagate ``grad_out`` through it
        (that also fills the gradients of ``fn``'s parameters), and return
        ``(None, grad of x)``: one gradient per input of ``forward``."""
        (x,) = ctx.saved_tensors
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = ctx.fn(x)
        torch.autograd.backward(out, grad_out)
        return None, x.grad


# ----------------------------------------------------------------------------------------
# Provided: measuring what autograd keeps for the backward pass
# ----------------------------------------------------------------------------------------
def saved_bytes(run) -> int:
    """The bytes of the tensors autograd saves for backward while ``run()`` executes
    (each tensor counted once), via ``torch.autograd.graph.saved_tensors_hooks``."""
    seen, total = set(), [0]

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    return total[0], out


def your_checkpoint(cls):
    """``cls.apply`` (your Checkpoint), or the course's while yours raises
    NotImplementedError."""
    try:
        cls.apply(nn.Identity(), torch.ones(1, requires_grad=True))
        return cls.apply
    except NotImplementedError:
        from autograder import get
        from autograder.core import resolve

        try:
            reference = resolve(get("ch15.Checkpoint").solution)
        except ImportError:
            raise NotImplementedError(
                "finish exercise ch15.Checkpoint first: this experiment runs your code"
            ) from None
        print(
            "[Checkpoint is not implemented yet: using the course's reference solution]"
        )
        return reference.apply


def block_stack(depth: int, width: int = 256, seed: int = 0) -> nn.ModuleList:
    """``depth`` residual MLP branches W2 gelu(W1 layernorm(x)), width -> 4 width."""
    torch.manual_seed(seed)
    return nn.ModuleList(
        nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, 4 * width),
            nn.GELU(),
            nn.Linear(4 * width, width),
        )
        for _ in range(depth)
    )


def run_stack(blocks, x: torch.Tensor, checkpoint=None) -> torch.Tensor:
    """x through residual blocks; ``checkpoint(fn, h)`` wraps each block's branch."""
    for block in blocks:
        x = x + (checkpoint(block, x) if checkpoint else block(x))
    return x


# ----------------------------------------------------------------------------------------
# Provided: the program of one rank (written to a file and started once per rank)
# ----------------------------------------------------------------------------------------
def model_state_bytes(model: nn.Module, optimizer) -> dict:
    """Bytes of parameters, gradients and optimizer state THIS rank holds (local shards
    of DTensors only)."""

    def local(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    params = list(model.parameters())
    out = {
        "params": sum(local(p) for p in params),
        "grads": sum(local(p.grad) for p in params if p.grad is not None),
        "optimizer": 0,
    }
    opt = getattr(optimizer, "optim", getattr(optimizer, "optimizer", optimizer))
    for state in opt.state.values():  # ZeRO keeps a local optimizer
        out["optimizer"] += sum(
            local(v) for v in state.values() if torch.is_tensor(v) and v.dim() > 0
        )
    return out


def rank_main() -> None:
    """What each process runs: join the group, train in every mode, save the results."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    job = json.loads(Path(os.environ["CH15_JOB"]).read_text())
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method="file://" + job["store"], rank=rank, world_size=world
    )
    results = {}
    try:
        for mode in job["modes"]:
            results[mode] = train_mode(job, mode, rank, world)
            dist.barrier()
    finally:
        dist.destroy_process_group()
    out = Path(job["out"]) / f"rank{rank}.json"
    out.write_text(json.dumps(results))


def train_mode(job: dict, mode: str, rank: int, world: int) -> dict:
    """Train the small GPT for ``job["steps"]`` steps in one mode and measure each step.

    modes: "manual" (your all-reduce after backward), "ddp" (DistributedDataParallel),
    "zero1" (your ZeroOptimizer), "zero_lib" (ZeroRedundancyOptimizer), "fsdp"
    (fully_shard on every block and on the root).
    """
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    cfg = GPTConfig(**job["model"])
    torch.manual_seed(job["seed"])  # the same replica everywhere
    model = GPT(cfg)
    data = torch.load(job["data"])  # (n_windows, T + 1) int64
    mine = shard_indices(len(data), rank, world, shuffle=True, seed=job["seed"])
    B, M, lr = job["batch_per_rank"], job["micro_batches"], job["lr"]
    if mode == "ddp":
        model = DDP(model)
    if mode == "fsdp":
        for block in model.blocks:
            fully_shard(block)  # gathered one block at a time
        fully_shard(model)
    if mode == "zero1":
        opt = ZeroOptimizer(model.parameters(), rank, world, dist.broadcast, lr=lr)
    elif mode == "zero_lib":
        opt = ZeroRedundancyOptimizer(
            model.parameters(), optimizer_class=torch.optim.AdamW, lr=lr
        )
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
    all_reduce = dist.all_reduce
    record = {"step": [], "comm": [], "loss": []}
    for step in range(job["steps"]):
        batch = data[mine[step * B : (step + 1) * B]]
        x, y = batch[:, :-1], batch[:, 1:]
        opt.zero_grad()
        t0 = time.perf_counter()
        hand = mode in ("manual", "zero1", "zero_lib")
        loss = (
            accumulate_gradients(_Flat(model), x, y, M)
            if hand
            else _train_step_library(model, x, y, M, mode)
        )
        t1 = time.perf_counter()
        if hand:
            allreduce_gradients(model, world, all_reduce)
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        loss = loss.detach().clone()
        dist.all_reduce(loss)  # the mean loss over the ranks
        record["step"].append(t3 - t0)
        record["comm"].append(t2 - t1)
        record["loss"].append(float(loss) / world)
    record["bytes"] = model_state_bytes(model, opt)
    if job.get("save_state") and mode in job["save_state"]:
        inner = getattr(model, "module", model)
        state = {
            k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
            for k, v in inner.state_dict().items()
        }
        if rank == 0:
            torch.save(state, Path(job["out"]) / f"state_{mode}.pt")
    return record


class _Flat(nn.Module):
    """The GPT's logits as (B, V, T), the layout ``F.cross_entropy`` takes with (B, T)
    targets: ``accumulate_gradients`` then treats each sequence as one sample."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, idx):
        return self.gpt(idx).transpose(1, 2)


def _train_step_library(model, x, y, micro_batches, mode) -> torch.Tensor:
    """Forward and backward with the library doing the communication (DDP, FSDP).
    DDP and FSDP average gradients over ranks by themselves; with micro-batches, DDP
    is told not to all-reduce until the last one (``no_sync``)."""
    import contextlib

    total = torch.zeros(())
    pieces = list(
        zip(torch.tensor_split(x, micro_batches), torch.tensor_split(y, micro_batches))
    )
    for i, (xb, yb) in enumerate(pieces):
        last = i == len(pieces) - 1
        quiet = (
            model.no_sync()
            if (mode == "ddp" and not last)
            else contextlib.nullcontext()
        )
        if mode == "fsdp":
            model.set_requires_gradient_sync(last)
        with quiet:
            loss = F.cross_entropy(model(xb).transpose(1, 2), yb) * (len(xb) / len(x))
            loss.backward()
        total += loss.detach()
    return total


# ----------------------------------------------------------------------------------------
# Provided: the launcher (what torchrun does, in a few lines)
# ----------------------------------------------------------------------------------------
PROGRAM_HEAD = '''\
"""One rank of a chapter-15 run (generated by launch(): edit the notebook, not this)."""
from __future__ import annotations
import json, math, os, time
from pathlib import Path
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from solutions.ch07_pretraining import GPT, GPTConfig
'''
PROGRAM_PARTS = [
    "model_state_bytes",
    "rank_main",
    "train_mode",
    "_Flat",
    "_train_step_library",
]


def source_of(obj) -> str:
    """The source code of a function or class, also when it was defined in a notebook
    cell (Python 3.11's ``inspect`` cannot find a notebook class: read it from a
    method)."""
    try:
        return textwrap.dedent(inspect.getsource(obj))
    except (OSError, TypeError):
        if not isinstance(obj, type):
            raise
    methods = [v for v in vars(obj).values() if inspect.isfunction(v)]
    methods += [v.__func__ for v in vars(obj).values() if isinstance(v, staticmethod)]
    if not methods:
        raise OSError(f"cannot find the source of {obj.__name__}")
    filename = methods[0].__code__.co_filename
    text = "".join(linecache.getlines(filename))
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef) and node.name == obj.__name__:
            return textwrap.dedent(ast.get_source_segment(text, node, padded=True))
    raise OSError(f"cannot find the source of {obj.__name__}")


def write_program(path: Path, parts: dict) -> Path:
    """Write the program every rank runs: the provided rank code plus the exercise
    functions in ``parts`` (name -> function or class: yours, or the course's)."""
    here = globals()
    chunks = [PROGRAM_HEAD]
    for name in PROGRAM_PARTS:
        chunks.append(source_of(here[name]))
    for name, obj in parts.items():
        src = source_of(obj)
        if not src.lstrip().startswith(("def ", "class ", "@")):
            raise ValueError(f"{name}: not a plain def or class")
        chunks.append(src)
    chunks.append('if __name__ == "__main__":\n    rank_main()\n')
    Path(path).write_text("\n\n".join(chunks))
    return Path(path)


def launch(
    job: dict, world_size: int, parts: dict, workdir: Path, timeout: float = 600.0
) -> list:
    """Start ``world_size`` processes of the program (one per rank, one thread each),
    wait for them, and return every rank's results (the JSON each one saved)."""
    workdir = Path(workdir)
    run = workdir / f"world{world_size}"
    run.mkdir(parents=True, exist_ok=True)
    for old in run.glob("*"):
        old.unlink()
    program = write_program(run / "ch15_program.py", parts)
    job = dict(job, store=str(run / "store"), out=str(run))
    (run / "job.json").write_text(json.dumps(job))
    path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    procs = []
    for rank in range(world_size):
        env = dict(
            os.environ,
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            CH15_JOB=str(run / "job.json"),
            PYTHONPATH=path,
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            GLOO_SOCKET_IFNAME="lo",
        )
        log = open(run / f"rank{rank}.log", "w")
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, str(program)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=run,
                ),
                log,
            )
        )
    deadline = time.monotonic() + timeout
    failed = None
    for rank, (proc, log) in enumerate(procs):
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = "timeout"
        log.close()
        if code != 0 and failed is None:
            failed = (rank, code)
    if failed is not None:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
        rank, code = failed
        tail = (run / f"rank{rank}.log").read_text()[-3000:]
        raise RuntimeError(f"rank {rank} of {world_size} failed ({code}):\n{tail}")
    return [json.loads((run / f"rank{r}.json").read_text()) for r in range(world_size)]


RANK_PARTS = {
    "shard_indices": "ch15.shard_indices",
    "allreduce_gradients": "ch15.allreduce_gradients",
    "accumulate_gradients": "ch15.accumulate_gradients",
    "zero_partition": "ch15.zero_partition",
    "ZeroOptimizer": "ch15.ZeroOptimizer",
}


def rank_parts(namespace: dict) -> dict:
    """Your exercise answers that the ranks run, from the notebook's ``namespace``; the
    course's reference for any you have not written yet (when it is available)."""
    from autograder import get
    from autograder.core import resolve

    parts = {}
    for name, exercise_id in RANK_PARTS.items():
        obj = namespace.get(name)
        try:
            written = obj is not None and "NotImplementedError" not in source_of(obj)
        except (OSError, TypeError):
            written = False
        if not written:
            try:
                obj = resolve(get(exercise_id).solution)
            except ImportError:
                raise NotImplementedError(
                    f"finish exercise {exercise_id} ({name}) first: the ranks run"
                    " your code"
                ) from None
            print(
                f"[{name}: not written yet (or its source cannot be read): the ranks"
                " use the course's reference]"
            )
        parts[name] = obj
    return parts


def window_dataset(n_chars: int, block_size: int, path: Path) -> tuple[int, int]:
    """Cut Shakespeare into non-overlapping windows of block_size + 1 characters, save
    them as one (n_windows, block_size + 1) int64 tensor; return (windows, vocab)."""
    text = shakespeare_text(n_chars)
    vocab = char_vocab(text)
    ids = encode_corpus(text, vocab)
    n = len(ids) // (block_size + 1)
    torch.save(ids[: n * (block_size + 1)].view(n, block_size + 1).clone(), path)
    return n, len(vocab)


# ----------------------------------------------------------------------------------------
# Provided: a paper model of data parallelism on a large cluster
# ----------------------------------------------------------------------------------------
def ring_allreduce_seconds(
    n_bytes: float, world: int, bandwidth: float, latency: float
) -> float:
    """Time of a ring all-reduce: 2 (W-1) steps, each sends n/W bytes to a neighbour."""
    if world == 1:
        return 0.0
    return 2 * (world - 1) * (latency + n_bytes / world / bandwidth)


def data_parallel_model(
    n_params: float,
    global_tokens: float,
    world: int,
    flops: float,
    mfu: float,
    bandwidth: float,
    latency: float,
    grad_bytes: int = 2,
    overlap: float = 0.0,
) -> dict:
    """Seconds per step of data-parallel training of a ``n_params`` model on a fixed
    global batch: compute (6 N D / (W x flops x mfu)) and the gradient all-reduce.
    ``overlap``: the fraction of the all-reduce hidden behind the backward pass."""
    compute = 6 * n_params * global_tokens / (world * flops * mfu)
    comm = ring_allreduce_seconds(n_params * grad_bytes, world, bandwidth, latency)
    # backward is 2/3 of the compute: overlap hides the all-reduce behind it
    exposed = max(comm - overlap * compute * 2 / 3, 0.0)
    # memory: bf16 weights and gradients, fp32 master weights and Adam moments
    return {
        "compute": compute,
        "comm": comm,
        "step": compute + exposed,
        "memory_gb": 16 * n_params / 1e9,
    }
