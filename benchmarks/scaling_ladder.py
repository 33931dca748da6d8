"""The scaling ladder of chapter 11: tiny character-level GPTs trained on Shakespeare.

Two sets of runs, written to ``benchmarks/results/scaling_ladder.json`` (small, committed;
chapter 11 plots and fits it):

* ``ladder``: six models of increasing size, each trained on the same number of tokens,
  with their validation loss and the emergence probe (exact match of a 5-letter word
  ending vs the per-letter log-probability of the same answer).
* ``isoflop``: at each of three compute budgets C, six sizes (at the smallest budget a
  d = 8 model instead of the largest, to bracket its optimum), each trained for
  C / (FLOPs per token) tokens (Chinchilla's approach 2).

Every run uses ``solutions.ch11_scaling.train_ladder_model`` (the chapter trains its two
smallest rungs live with the same function). N is the number of NON-embedding parameters;
the compute of a run is C = (FLOPs per token) x D with the per-token count
6 N_matmul + 12 n_layer T d (chapter 11's exercise), and C_6ND = 6 N D is written too.

    nice -n 5 .venv/bin/python benchmarks/scaling_ladder.py [threads]   # one thread by default

Runs already in the JSON (same sizes and token count) are kept, so an interrupted run resumes.
"""
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from solutions.ch11_scaling import (  # noqa: E402
    ANSWER_LEN, BATCH, BLOCK, GIVEN, MIN_COUNT, MIN_LETTERS, cloze_scores, cloze_set, ladder_sizes,
    shakespeare_char_data, train_ladder_model)

OUT = Path(__file__).resolve().parent / "results" / "scaling_ladder.json"
LADDER_TOKENS = 1_500_000  # tokens seen by every ladder model
# (n_layer, n_embd, n_head), smallest first
LADDER = [(1, 16, 2), (1, 24, 2), (2, 32, 4), (2, 48, 4), (3, 64, 4), (4, 96, 4)]
ISOFLOP = {1e11: [(1, 8, 1)] + LADDER[:5], 2e11: LADDER, 4e11: LADDER}  # sizes that bracket each optimum


def probe_only(rows, train_ids, val_ids, vocab):
    """Score the ladder's models again on the probe (retraining them: the runs are deterministic
    on one thread, so the losses must come out equal), then merge into the finished results."""
    scores = []
    for n_layer, d, h in LADDER:
        run, model = train_ladder_model(n_layer, d, h, LADDER_TOKENS, train_ids, val_ids, len(vocab))
        scores.append((run, {k: round(v, 5) for k, v in cloze_scores(model, rows).items()}))
        print(f"probe L{n_layer} d{d} val={run['val_loss']:.4f} {scores[-1][1]}", flush=True)
    while "total_seconds" not in json.loads(OUT.read_text()):  # a full run is still writing the file
        time.sleep(10)
    result = json.loads(OUT.read_text())
    for entry, (run, score) in zip(result["ladder"], scores):
        assert entry["val_loss"] == run["val_loss"], (entry, run)
        entry.update(score)
    result["probe"].update({"task": f"words of >= {MIN_LETTERS} letters from the validation text that the training "
                                    f"text uses >= {MIN_COUNT} times: given the preceding context and the first "
                                    f"{GIVEN} letters, predict the next {ANSWER_LEN}", "n": len(rows),
                            "answer_len": ANSWER_LEN})
    OUT.write_text(json.dumps(result, indent=1) + "\n")


def main():
    # One thread: these models are too small for a second one to pay, and on a shared
    # machine a descheduled OpenMP thread stalls every matrix product of the other.
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    torch.set_num_threads(int(args[0]) if args else 1)
    vocab, train_ids, val_ids, train_text, val_text = shakespeare_char_data()
    stoi = {c: i for i, c in enumerate(vocab)}
    rows = cloze_set(val_text, train_text, lambda s: [stoi[c] for c in s])
    if "--probe-only" in sys.argv:
        return probe_only(rows, train_ids, val_ids, vocab)
    t_start = time.perf_counter()
    result = {"about": __doc__.split("\n\n")[0],
              "machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                          "python": platform.python_version()},
              "data": {"corpus": "shakespeare (complete works), character level", "vocab_size": len(vocab),
                       "train_tokens": len(train_ids), "val_tokens": len(val_ids)},
              "probe": {"task": f"words of >= {MIN_LETTERS} letters from the validation text that the training "
                                f"text uses >= {MIN_COUNT} times: given the preceding context and the first "
                                f"{GIVEN} letters, predict the next {ANSWER_LEN}",
                        "n": len(rows), "answer_len": ANSWER_LEN},
              "ladder": [], "isoflop": []}

    def save():
        OUT.write_text(json.dumps(result, indent=1) + "\n")

    done = json.loads(OUT.read_text()) if OUT.exists() else {"ladder": [], "isoflop": []}

    def previous(kind, n_layer, d, tokens, budget=None):
        steps = max(20, round(tokens / (BATCH * BLOCK)))
        for run in done.get(kind, []):
            if (run["n_layer"], run["n_embd"], run["steps"], run.get("budget")) == (n_layer, d, steps, budget):
                return run
        return None

    for n_layer, d, h in LADDER:
        run = previous("ladder", n_layer, d, LADDER_TOKENS)
        if run is None:
            run, model = train_ladder_model(n_layer, d, h, LADDER_TOKENS, train_ids, val_ids, len(vocab))
            run.update({k: round(v, 5) for k, v in cloze_scores(model, rows).items()})
        result["ladder"].append(run)
        print(f"ladder L{n_layer} d{d} N={run['N']:,} val={run['val_loss']:.4f} EM={run['exact_match']:.3f} "
              f"lp={run['logprob_per_token']:.3f} {run['seconds']:.0f}s", flush=True)
        save()
    for budget, configs in ISOFLOP.items():
        for n_layer, d, h in configs:
            tokens = budget / ladder_sizes(n_layer, d, len(vocab))["flops_per_token"]
            run = previous("isoflop", n_layer, d, tokens, budget)
            if run is None:
                run, _ = train_ladder_model(n_layer, d, h, tokens, train_ids, val_ids, len(vocab))
                run["budget"] = budget
            result["isoflop"].append(run)
            print(f"isoflop C={budget:.0e} L{n_layer} d{d} N={run['N']:,} D={run['tokens']:,} "
                  f"val={run['val_loss']:.4f} {run['seconds']:.0f}s", flush=True)
            save()
    result["total_seconds"] = round(time.perf_counter() - t_start, 1)
    result["train_seconds"] = round(sum(r["seconds"] for r in result["ladder"] + result["isoflop"]), 1)
    save()
    print(f"total {result['total_seconds']:.0f} s -> {OUT}")


if __name__ == "__main__":
    main()
