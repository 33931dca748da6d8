"""How well the feedback names mistakes, over the whole suite, and how fast the first check is.

    .venv/bin/python benchmarks/bench_feedback.py [--chapters ch01 ch02 ...]

For every realistic wrong answer in tests/mistakes/ (graded with the hidden cases):
rejected or not; when it declares the mistake it makes, whether the feedback names that
mistake, another one, or none (and then whether the numbers gave a hint). For every correct
variant in tests/variants/: accepted or not. Then the latency of a first check in a fresh
process (torch-only exercise) and of a warm one.
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FIRST_CHECK = """
import time
t0 = time.perf_counter()
import autograder
from tests.variants import load_all
variant = next(v for v in load_all() if v.exercise_id == "ch04.scaled_dot_product_attention")
t1 = time.perf_counter()
autograder.grade("ch04.scaled_dot_product_attention", variant.submission)
t2 = time.perf_counter()
autograder.grade("ch04.scaled_dot_product_attention", variant.submission)
t3 = time.perf_counter()
print(round(t1 - t0, 2), round(t2 - t1, 2), round(t3 - t2, 2))
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--chapters", nargs="*")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    import autograder
    from autograder.core import get
    from tests.mistakes import load_all as load_wrong
    from tests.variants import load_all as load_right

    def wanted(ex_id):
        return not args.chapters or ex_id.split(".")[0] in args.chapters

    tally = collections.Counter()
    wrongly, unnamed = [], []
    per_chapter = collections.defaultdict(collections.Counter)
    for w in load_wrong():
        if not wanted(w.exercise_id):
            continue
        r = autograder.grade(w.exercise_id, w.submission, hidden=True)
        ch = w.exercise_id.split(".")[0]
        if r.passed:
            tally["passed (missed)"] += 1
            per_chapter[ch]["missed"] += 1
            continue
        tally["rejected"] += 1
        per_chapter[ch]["rejected"] += 1
        if w.diagnosis is None:
            tally["rejected, no name declared"] += 1
            continue
        messages = {m.name: m.message for m in get(w.exercise_id).mistakes}
        named = {c.diagnosis for c in r.checks if c.diagnosis}
        if messages[w.diagnosis] in named:
            tally["named correctly"] += 1
            per_chapter[ch]["named"] += 1
            if len(named) > 1:
                tally["named correctly, with other names too"] += 1
        elif named:
            tally["named wrongly"] += 1
            wrongly.append(f"{w.label}: expected {w.diagnosis}")
        else:
            tally["not named"] += 1
            if any(c.hint for c in r.checks):
                tally["not named, hint from the numbers"] += 1
            unnamed.append(w.label)
    accepted = rejected_right = 0
    refused = []
    for v in load_right():
        if not wanted(v.exercise_id):
            continue
        r = autograder.grade(v.exercise_id, v.submission, hidden=True)
        if r.passed:
            accepted += 1
        else:
            rejected_right += 1
            refused.append(v.label)
    out = subprocess.run([sys.executable, "-c", FIRST_CHECK], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    import_s, first_s, warm_s = (float(x) for x in out.stdout.split()) if out.returncode == 0 else (0, 0, 0)
    declared = tally["rejected"] - tally["rejected, no name declared"]
    report = {"wrong answers": dict(tally), "declared names": declared,
              "named / declared": f"{tally['named correctly']}/{declared}",
              "named wrongly": wrongly, "not named": unnamed,
              "correct variants accepted": f"{accepted}/{accepted + rejected_right}", "refused variants": refused,
              "first check: import s": import_s, "first check s": first_s, "warm check s": warm_s,
              "per chapter": {k: dict(v) for k, v in sorted(per_chapter.items())}}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s)")
