"""DPO on the chapter-7 Shakespeare model: the chapter's loop vs trl's DPOTrainer, time per step.

    python benchmarks/bench_alignment.py [--steps 20] [--out benchmarks/results/alignment.json]

Both train the same model (0.8 M parameters) on the same "thou, not you" pairs, 16 pairs per
step, beta 0.1, AdamW at 3e-5, on the CPU in float32, one thread each (faster for a model
this small). The chapter's loop computes the
reference log-probs once for all pairs; trl runs the reference model at every step (its
default). trl's one-off costs (import, dataset tokenization, trainer set-up) are reported
apart. Timings depend on the machine's load: the JSON records the load average.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from solutions.ch07_pretraining import load_pretrained_shakespeare  # noqa: E402
from solutions.ch08_objectives import torch_threads  # noqa: E402
from solutions.ch10_alignment import (batched_logprobs, char_tokenizer, dpo_loss, encode_pairs,  # noqa: E402
                                      preference_pairs, sequence_logprobs, to_hf_gpt2)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "alignment.json"))
    args = p.parse_args()
    torch.manual_seed(0)
    model, encode, decode = load_pretrained_shakespeare()
    pairs = preference_pairs(16 * args.steps, 64)
    eos = encode("\n")[0]
    train, test = encode_pairs(pairs["train"], encode, eos), encode_pairs(pairs["test"], encode, eos)

    # The chapter's training step (as in dpo_train, without its evaluations), timed alone.
    policy = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-5, weight_decay=0.0)
    ids, mask = train
    n = len(ids) // 2
    with torch_threads(1):
        t0 = time.perf_counter()
        ref = batched_logprobs(model, ids, mask, sequence_logprobs)
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        for step in range(args.steps):
            rows = torch.cat([torch.arange(16 * step, 16 * step + 16), torch.arange(16 * step, 16 * step + 16) + n])
            T = int(mask[rows].nonzero()[:, 1].max()) + 1
            logps = sequence_logprobs(policy(ids[rows, :T]), ids[rows, :T], mask[rows, :T])
            loss = dpo_loss(logps[:16], logps[16:], ref[rows[:16]], ref[rows[16:]], 0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import trl
        from datasets import Dataset
    from transformers.utils import logging

    logging.set_verbosity_error()
    t_import = time.perf_counter() - t0
    vocab = [decode([i]) for i in range(model.config.vocab_size)]
    t0 = time.perf_counter()
    cfg = trl.DPOConfig(output_dir=tempfile.mkdtemp(), bf16=False, use_cpu=True, beta=0.1, learning_rate=3e-5,
                        lr_scheduler_type="constant", weight_decay=0.0, per_device_train_batch_size=16,
                        max_steps=args.steps, report_to=[], save_strategy="no", disable_tqdm=True,
                        logging_strategy="no", seed=0)
    trainer = trl.DPOTrainer(model=to_hf_gpt2(model), ref_model=to_hf_gpt2(model), args=cfg,
                             train_dataset=Dataset.from_list(pairs["train"]),
                             processing_class=char_tokenizer(vocab, chat=False))
    t_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch_threads(1):   # one thread, as the chapter's loop
        warnings.simplefilter("ignore")
        trainer.train()
    t_train = time.perf_counter() - t0

    result = {
        "steps": args.steps, "pairs_per_step": 16, "threads": 1,
        "load_average_1min": os.getloadavg()[0], "torch": torch.__version__, "trl": trl.__version__,
        "ours_s_per_step": ours / args.steps, "ours_total_s": ours,
        "ours_reference_logprobs": "computed once for all pairs", "ours_reference_once_s": t_ref,
        "trl_import_s": t_import, "trl_setup_s": t_setup, "trl_s_per_step": t_train / args.steps,
        "trl_reference_logprobs": "a reference forward at every step",
    }
    print(f"{'':28} {'s/step':>8}")
    print(f"{'chapter loop':28} {result['ours_s_per_step']:8.3f}   (+ reference log-probs once, {t_ref:.1f} s)")
    print(f"{'trl DPOTrainer':28} {result['trl_s_per_step']:8.3f}   (+ import {t_import:.1f} s, set-up {t_setup:.1f} s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
