"""Chapter 19: the chapter's metrics from scratch next to the libraries, timed on the same data.

    python benchmarks/bench_evaluation.py [--pairs 2000]

Writes benchmarks/results/evaluation.json: for corpus BLEU (vs sacrebleu) and ROUGE-L (vs
rouge-score) the largest difference and both times on Shakespeare line pairs; the exact WEAT
permutation test (12,870 splits of 16 words) and the enumeration of 10^4 canary candidates
with the chapter-7 model; and the warm latency of every chapter-19 check.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import autograder  # noqa: E402
from solutions import ch19_evaluation as sol  # noqa: E402
from tests.helpers import reference_submission  # noqa: E402


def best_of(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, min(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=2000)
    args = p.parse_args()
    import sacrebleu
    from rouge_score import rouge_scorer

    lines = sol.lines_of(sol.held_out_text(), min_words=4, max_chars=120)
    rng = random.Random(0)
    hyps, refs = [], []
    for _ in range(args.pairs):
        ref = rng.choice(lines)
        words = ref.split()
        hyp = " ".join(w for w in words if rng.random() < 0.8) + " " + rng.choice(lines).split()[0]
        hyps.append(hyp)
        refs.append([ref])
    out = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "pairs": args.pairs}

    ours, t_ours = best_of(lambda: sol.corpus_bleu(hyps, refs))
    lib, t_lib = best_of(lambda: sacrebleu.corpus_bleu(hyps, [[r[0] for r in refs]]).score)
    out["corpus_bleu"] = {"ours": ours, "sacrebleu": lib, "difference": abs(ours - lib),
                          "ours_s": t_ours, "sacrebleu_s": t_lib}

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    n = min(500, args.pairs)
    mine, t_ours = best_of(lambda: [sol.rouge_l(r[0], h)["fmeasure"] for h, r in zip(hyps[:n], refs[:n])])
    theirs, t_lib = best_of(lambda: [scorer.score(r[0], h)["rougeL"].fmeasure for h, r in zip(hyps[:n], refs[:n])])
    out["rouge_l"] = {"pairs": n, "max_difference": max(abs(a - b) for a, b in zip(mine, theirs)),
                      "ours_s": t_ours, "rouge_score_s": t_lib}

    g = torch.Generator().manual_seed(0)
    X, Y, A, B = (torch.randn(8, 384, generator=g) for _ in range(4))
    pval, t = best_of(lambda: sol.weat_p_value(X, Y, A, B))
    out["weat_exact_permutation"] = {"splits": 12870, "p": pval, "seconds": t}

    model, encode, _ = sol.shakespeare_model()
    _, t = best_of(lambda: sol.candidate_log_perplexities(model, encode, sol.CANARY_PREFIX), repeat=2)
    out["canary_candidates"] = {"candidates": 10 ** 4, "seconds": t}

    checks = {}
    for row in autograder.catalogue("ch19"):
        sub = reference_submission(row["id"])
        autograder.grade(row["id"], sub)  # cold: imports, model construction
        checks[row["id"]] = best_of(lambda: autograder.grade(row["id"], sub))[1]
    out["warm_check_s"] = checks
    out["slowest_warm_check_s"] = max(checks.values())

    path = ROOT / "benchmarks" / "results" / "evaluation.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
