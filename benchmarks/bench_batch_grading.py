"""Batch grading benchmark: N simulated submissions of chapter 1 on J cores, with a real
interruption and resume.

    .venv/bin/python benchmarks/bench_batch_grading.py [--n 100] [--jobs 2] [--out DIR]

1. makes an nbgrader course for chapter 1 and N submissions (a mix: all correct, not
   started, one typical mistake, a crash in one exercise);
2. starts `python -m grading batch` and sends it SIGTERM once a third of the class is graded;
3. runs the same command again (it resumes), then once more (nothing left to do);
4. checks that the gradebook, the CSV and the per-student results agree (no grade lost
   or counted twice) and prints the figures as JSON.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WRONG = {
    "ch01.bigram_counts": "def bigram_counts(ids, vocab_size):\n    import torch\n    c = torch.zeros(vocab_size, vocab_size, dtype=torch.int64)\n"
                          "    for a, b in zip(ids[:-1].tolist(), ids[1:].tolist()):\n        c[b, a] += 1\n    return c\n",
    "ch01.perplexity": "def perplexity(logits, targets):\n    return float(cross_entropy(logits, targets))\n",
    "ch01.gpt2_param_count": "def gpt2_param_count(vocab_size, n_positions, n_embd, n_layer):\n    d = n_embd\n"
                             "    return 2 * vocab_size * d + n_positions * d + n_layer * (12 * d * d + 13 * d) + 2 * d\n",
}
CRASH = "def sample_next(logits, temperature, generator=None):\n    import os\n    os._exit(0)\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--no-interrupt", action="store_true")
    args = ap.parse_args()
    from grading.simulate import make_course, submission, venv_env, write_submission

    base = args.out or Path(tempfile.mkdtemp(prefix="bench-grading-"))
    course = base / "course"
    t = time.monotonic()
    release = make_course(course, "ch01")
    setup_s = time.monotonic() - t
    slug = "ch01_next_token"
    rel = json.loads(release.read_text())
    kinds = {}
    for i in range(args.n):
        student = f"student{i:03d}"
        r = i % 10
        if r < 5:
            nb, kind = submission(rel), "correct"
        elif r < 7:
            nb, kind = submission(rel, all_correct=False), "not started"
        elif r < 9:
            ex = list(WRONG)[i % len(WRONG)]
            nb, kind = submission(rel, {ex: WRONG[ex]}), f"wrong {ex}"
        else:
            nb, kind = submission(rel, {"ch01.sample_next": CRASH}), "os._exit in sample_next"
        write_submission(course, slug, student, nb)
        kinds[student] = kind
    csv_path = base / "grades.csv"
    cmd = [sys.executable, "-m", "grading", "batch", slug, "--course-dir", str(course), "--jobs", str(args.jobs),
           "--csv", str(csv_path)]
    env = venv_env()
    state = course / "trusted" / slug
    figures: dict = {"submissions": args.n, "jobs": args.jobs, "course_setup_s": round(setup_s, 1)}

    # run 1, interrupted
    t1 = time.monotonic()
    log1 = open(base / "run1.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log1, stderr=subprocess.STDOUT)
    interrupted_at = None
    while proc.poll() is None:
        done = len(list(state.glob("*.json"))) if state.exists() else 0
        if not args.no_interrupt and interrupted_at is None and done >= args.n // 3:
            proc.send_signal(signal.SIGTERM)
            interrupted_at = done
        time.sleep(0.5)
    run1 = time.monotonic() - t1
    figures["run1"] = {"seconds": round(run1, 1), "returncode": proc.returncode,
                       "results_when_interrupted": interrupted_at,
                       "results_after_stop": len(list(state.glob("*.json")))}
    # run 2, resume
    t2 = time.monotonic()
    out2 = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    run2 = time.monotonic() - t2
    (base / "run2.log").write_text(out2.stdout + out2.stderr)
    summary2 = json.loads(out2.stdout.strip().splitlines()[-1])
    figures["run2_resume"] = {"seconds": round(run2, 1), **summary2}
    # run 3, nothing to do
    t3 = time.monotonic()
    out3 = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    figures["run3_noop"] = {"seconds": round(time.monotonic() - t3, 1),
                            **json.loads(out3.stdout.strip().splitlines()[-1])}

    # consistency
    rows = list(csv.DictReader(open(csv_path)))
    per_sub, per_cpu, attempts = [], [], []
    for p in state.glob("*.json"):
        d = json.loads(p.read_text())
        per_sub.append(sum(nb["result"]["seconds"] for nb in d["notebooks"].values()))
        per_cpu.append(sum(nb["result"].get("sandbox_cpu_s", 0.0) for nb in d["notebooks"].values()))
        attempts.append(sum(nb["result"]["attempts"] for nb in d["notebooks"].values()))
    from grading.nbgrader_step import Course
    from nbgrader.api import Gradebook
    c = Course(course)
    with Gradebook(c.db_url, c.course_id) as gb:
        gb_scores = {s.student.id: s.score for s in gb.assignment_submissions(slug)}
    csv_scores = {r["student"]: float(r["score"]) for r in rows}
    figures["consistency"] = {
        "csv_rows": len(rows), "unique_students": len(csv_scores), "gradebook_submissions": len(gb_scores),
        "gradebook_equals_csv": all(abs(gb_scores.get(s, -1) - v) < 1e-9 for s, v in csv_scores.items())
        and len(gb_scores) == len(csv_scores),
        "expected_scores_ok": all(
            float(csv_scores[s]) == {"correct": 7.0, "not started": 0.0}.get(k, 6.0 if k.startswith("wrong") and "cross" not in k
                                                                              else 6.0) for s, k in kinds.items())}
    total_grading = run1 + run2
    figures["wall_s_total_grading"] = round(total_grading, 1)
    figures["per_submission_s_mean_in_worker"] = round(sum(per_sub) / len(per_sub), 2)
    figures["sandbox_runs_total"] = sum(attempts)
    figures["throughput_per_min"] = round(args.n / total_grading * 60, 1)
    figures["kinds"] = {k: sum(1 for v in kinds.values() if v == k) for k in sorted(set(kinds.values()))}
    figures["load_average_at_end"] = os.getloadavg()
    print(json.dumps(figures, indent=1))
    (base / "figures.json").write_text(json.dumps(figures, indent=1))
    return 0 if figures["consistency"]["gradebook_equals_csv"] and len(rows) == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
