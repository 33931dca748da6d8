"""Chapter 15 on this machine: gloo's all-reduce, and the latency of the chapter's checks.

1. All-reduce over gloo on 127.0.0.1 with 2 and 4 processes (one thread each), float32
   tensors from 1 KB to 16 MB, 7 repetitions each after 2 warm-up calls; a fit of the
   ring model T = 2 (W - 1) (alpha + n / (W beta)) to the medians gives this machine's
   latency alpha and bandwidth beta, the two numbers of the chapter's paper model.
2. Each chapter-15 check (visible cases) graded on the reference solution, warm, in CPU
   and wall-clock seconds.

Run:  .venv/bin/python benchmarks/bench_scale.py  ->  benchmarks/results/scale.json
"""
from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = [256, 4096, 65536, 1 << 20, 4 << 20]  # float32 elements: 1 KB .. 16 MB
REPEAT = 7


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = []
    for n in SIZES:
        t = torch.ones(n)
        for _ in range(2):
            dist.all_reduce(t)
        times = []
        for _ in range(REPEAT):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - t0)
        rows.append({"elements": n, "bytes": 4 * n, "median_s": statistics.median(times), "best_s": min(times)})
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
    dist.destroy_process_group()


def allreduce_table(world: int) -> list[dict]:
    import torch.multiprocessing as mp

    out = Path(tempfile.mkdtemp()) / "rows.json"
    mp.spawn(_rank, args=(world, _port(), str(out)), nprocs=world, join=True)
    return json.loads(out.read_text())


def fit(rows: list[dict], world: int) -> dict:
    """Least squares of T = 2 (W-1) alpha + 2 (W-1)/W * n / beta on the medians."""
    a = torch.tensor([[2 * (world - 1), 2 * (world - 1) / world * r["bytes"]] for r in rows], dtype=torch.float64)
    b = torch.tensor([r["median_s"] for r in rows], dtype=torch.float64)
    alpha, inv_beta = torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1).tolist()
    return {"alpha_us": alpha * 1e6, "beta_GB_s": 1 / inv_beta / 1e9 if inv_beta > 0 else float("inf")}


def check_latencies() -> dict:
    import autograder
    from tests.helpers import reference_submission

    out = {}
    for row in autograder.catalogue("ch15"):
        sub = reference_submission(row["id"])
        autograder.grade(row["id"], sub)  # warm
        c0, w0 = time.process_time(), time.perf_counter()
        result = autograder.grade(row["id"], sub)
        out[row["id"]] = {"passed": result.passed, "cpu_s": round(time.process_time() - c0, 3),
                          "wall_s": round(time.perf_counter() - w0, 3)}
    return out


def main() -> None:
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                          "load_average": os.getloadavg()}, "allreduce": {}, "checks": {}}
    for world in (2, 4):
        rows = allreduce_table(world)
        report["allreduce"][str(world)] = {"rows": rows, "fit": fit(rows, world)}
        print(f"W={world}: " + ", ".join(f"{r['bytes'] / 1e6:g} MB {r['median_s'] * 1e3:.2f} ms" for r in rows)
              + f"; fit alpha {report['allreduce'][str(world)]['fit']['alpha_us']:.0f} us,"
                f" beta {report['allreduce'][str(world)]['fit']['beta_GB_s']:.2f} GB/s")
    report["checks"] = check_latencies()
    for k, v in report["checks"].items():
        print(f"{k:32s} {v}")
    dest = ROOT / "benchmarks" / "results" / "scale.json"
    dest.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
