"""Latency of every check: grade each exercise's reference solution, visible and hidden cases.

    python benchmarks/bench_checks.py [--chapter ch01] [--repeat 3]

The first call of a chapter pays one-off imports (transformers, tokenizers); the table
shows that cold time and the best warm time. Goal: every check returns within 2 s.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import autograder  # noqa: E402
from tests.helpers import reference_submission  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chapter")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    rows = autograder.catalogue(args.chapter)
    print(f"{'exercise':<34} {'cold s':>7} {'warm s':>7} {'hidden s':>8}  result")
    worst = 0.0
    for row in rows:
        sub = reference_submission(row["id"])
        t0 = time.perf_counter()
        result = autograder.grade(row["id"], sub)
        cold = time.perf_counter() - t0
        warm = min(_timed(lambda: autograder.grade(row["id"], sub)) for _ in range(args.repeat))
        hidden = _timed(lambda: autograder.grade(row["id"], sub, hidden=True))
        worst = max(worst, warm)
        print(f"{row['id']:<34} {cold:7.3f} {warm:7.3f} {hidden:8.3f}  {'pass' if result.passed else 'FAIL'}")
    print(f"slowest warm check: {worst:.3f} s ({'within' if worst <= 2 else 'OVER'} the 2 s goal)")
    return 0


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
