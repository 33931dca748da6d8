"""Chapter 15: the references the checks re-derive, proven equal to the real libraries.

The checks run in one process (the ranks as threads). Here the same computations run in
real processes on gloo (``torch.multiprocessing.spawn``, 2 and 4 ranks): DDP with a
DistributedSampler, ZeroRedundancyOptimizer and fully_shard, and their results are
compared with the references of ``autograder/exercises/ch15_scale.py``.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.nn.functional as F

import autograder
from autograder.core import get, using_secret
from autograder.drivers import ch15_scale as D
from autograder.exercises import ch15_scale as X
from tests.helpers import reference_submission


def _cases(exercise_id, hidden=False):
    return list(get(exercise_id).cases(hidden))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    """One rank: every library computation the tests compare, results saved per rank."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DistributedSampler

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    out = {}
    # 1. DDP + DistributedSampler + SGD on the train_replica cases of this world size
    for i, case in enumerate(_cases("ch15.train_replica")):
        config, x, y, w, seed, steps, b, lr = case.args
        if w != world:
            continue
        torch.manual_seed(seed + 1000 * rank)  # different on purpose: DDP broadcasts rank 0's
        model = D.build_mlp(config)
        if rank == 0:
            torch.manual_seed(seed)
            model.load_state_dict(D.build_mlp(config).state_dict())
        ddp = DDP(model)
        mine = list(DistributedSampler(range(len(x)), num_replicas=world, rank=rank, shuffle=False))
        opt = torch.optim.SGD(ddp.parameters(), lr=lr)
        for t in range(steps):
            idx = mine[t * b:(t + 1) * b]
            opt.zero_grad()
            F.cross_entropy(ddp(x[idx]), y[idx]).backward()
            opt.step()
        out[f"replica{i}"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # 2. DDP gradients on the allreduce_gradients cases of this world size
    for i, case in enumerate(_cases("ch15.allreduce_gradients")):
        config, state, xs, ys = case.args
        if len(xs) != world:
            continue
        model = D.load_mlp(config, state)
        ddp = DDP(model)
        F.cross_entropy(ddp(xs[rank]), ys[rank]).backward()
        out[f"grads{i}"] = {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()}
    # 3. ZeroRedundancyOptimizer: the partition, and the parameters after the steps
    for i, case in enumerate(_cases("ch15.zero_partition")):
        sizes, w = case.args
        if w != world:
            continue
        params = [torch.nn.Parameter(torch.zeros(s)) for s in sizes]
        zero = ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.SGD, lr=0.1)
        owner = {id(p): r for r, groups in enumerate(zero._partition_parameters())
                 for g in groups for p in g["params"]}
        out[f"partition{i}"] = [owner[id(p)] for p in params]
    for i, case in enumerate(_cases("ch15.ZeroOptimizer")[::2]):
        config, state, grads, w, lr, wd = case.args
        if w != world:
            continue
        model = D.load_mlp(config, state)
        zero = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW, lr=lr,
                                       weight_decay=wd)
        for g in grads:
            for name, p in model.named_parameters():
                p.grad = g[name].clone()
            zero.step()
            zero.zero_grad()
        local = sum(v.numel() for st in zero.optim.state.values() for v in st.values()
                    if torch.is_tensor(v) and v.dim() > 0)
        out[f"zero{i}"] = ({k: v.detach().clone() for k, v in model.state_dict().items()}, local)
    # 4. fully_shard: the local shard of each parameter
    mesh = init_device_mesh("cpu", (world,))
    for i, case in enumerate(_cases("ch15.fsdp_shard")):
        param, w = case.args
        if w != world:
            continue
        module = torch.nn.Module()
        module.p = torch.nn.Parameter(param.clone())
        fully_shard(module, mesh=mesh)
        out[f"fsdp{i}"] = module.p.to_local().detach().clone()
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module", params=[2, 4])
def gloo_run(request, tmp_path_factory):
    import torch.multiprocessing as mp

    world = request.param
    out_dir = tmp_path_factory.mktemp(f"gloo{world}")
    mp.spawn(_worker, args=(world, _free_port(), str(out_dir)), nprocs=world, join=True)
    return world, [torch.load(out_dir / f"rank{r}.pt") for r in range(world)]


def test_ddp_training_equals_the_big_batch_reference(gloo_run):
    world, ranks = gloo_run
    checked = 0
    for i, case in enumerate(_cases("ch15.train_replica")):
        if f"replica{i}" not in ranks[0]:
            continue
        expected = case.expected()
        assert D.compare_replicas(expected, [r[f"replica{i}"] for r in ranks]) is None, case.name
        checked += 1
    assert checked or world not in (2, 4)


def test_ddp_gradients_equal_the_full_batch_gradient(gloo_run):
    world, ranks = gloo_run
    checked = 0
    for i, case in enumerate(_cases("ch15.allreduce_gradients")):
        if f"grads{i}" in ranks[0]:
            assert D.compare_rank_grads(case.expected(), [r[f"grads{i}"] for r in ranks]) is None, case.name
            checked += 1
    assert checked


def test_zero_partition_equals_zero_redundancy_optimizer(gloo_run):
    world, ranks = gloo_run
    checked = 0
    for i, case in enumerate(_cases("ch15.zero_partition")):
        if f"partition{i}" in ranks[0]:
            assert ranks[0][f"partition{i}"] == case.expected(), case.name
            checked += 1
    # sizes of many kinds, partitioned by the library in the same process group
    assert checked


def test_zero_optimizer_reference_equals_zero_redundancy_optimizer(gloo_run):
    world, ranks = gloo_run
    for i, case in enumerate(_cases("ch15.ZeroOptimizer")[::2]):
        if f"zero{i}" not in ranks[0]:
            continue
        expected = case.expected()
        got = [r[f"zero{i}"][0] for r in ranks]
        assert D.compare_replicas(expected["params"], got) is None, case.name
        assert [r[f"zero{i}"][1] for r in ranks] == expected["state_numel"], case.name


def test_fsdp_shards_equal_fully_shard_local_shards(gloo_run):
    world, ranks = gloo_run
    checked = 0
    for i, case in enumerate(_cases("ch15.fsdp_shard")):
        if f"fsdp{i}" in ranks[0]:
            expected = case.expected()["shards"]
            for r in range(world):
                assert torch.equal(ranks[r][f"fsdp{i}"], expected[r]), (case.name, r)
            checked += 1
    assert checked


def test_partition_reference_under_many_random_sizes():
    """The heap re-derivation against the plain greedy loop of the library's source."""
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(1, 30, (1,), generator=g))
        sizes = torch.randint(1, 6, (n,), generator=g).mul(16).tolist()
        world = int(torch.randint(1, 6, (1,), generator=g))
        load, owner = [0] * world, [0] * n
        for i in sorted(range(n), key=lambda i: sizes[i], reverse=True):
            r = min(range(world), key=lambda r: (load[r], r))
            owner[i] = r
            load[r] += sizes[i]
        assert X._zero_partition_reference(sizes, world) == owner


def test_bf16_loss_differs_from_float32_in_every_case():
    """The 'no autocast' mistake must be visible: the bf16 loss is far outside the tolerance."""
    for secret in ["a", "b", "c"]:
        with using_secret(secret):
            for case in _cases("ch15.mixed_precision_step", hidden=True)[::3]:
                config, state, x, y, lr = case.args
                model = D.load_mlp(config, state)
                fp32 = F.cross_entropy(model(x), y).item()
                assert abs(case.expected()["loss"] - fp32) > 100 * (1e-6 + 1e-6 * abs(fp32)), case.name


def test_checkpoint_reference_saves_only_block_inputs():
    for case in _cases("ch15.Checkpoint"):
        config, state, x, weight = case.args
        expected = case.expected()
        per_block = x.numel() * x.element_size()
        # each block's input, plus what (h * weight).sum() keeps for h's gradient: weight
        assert expected["saved_bytes"] == (config["depth"] + 1) * per_block, case.name


@pytest.mark.parametrize("secret", ["first", "second", "third"])
def test_reference_passes_hidden_cases_under_other_secrets(secret):
    with using_secret(secret):
        for row in autograder.catalogue("ch15"):
            result = autograder.grade(row["id"], reference_submission(row["id"]), hidden=True)
            assert result.passed, result.feedback


def test_a_rank_that_skips_a_collective_is_reported_not_hung():
    def body(rank, group):
        if rank == 0:
            group.all_reduce_for(rank)(torch.ones(2))
        return rank

    with pytest.raises(D.RankFailed):
        D.run_ranks(2, body)
