"""Pretraining benchmark: nanoGPT's published CPU recipe vs the chapter-7 recipe, side by side.

    .venv/bin/python benchmarks/bench_pretraining.py [--threads 2] [--only baseline|recipe] [--quick]

Both runs use the course's own GPT and training loop (solutions/ch07_pretraining.py: the
reference get_batch, cross_entropy, AdamW, lr_at and clip_grad_norm) on nanoGPT's
tiny-Shakespeare file (<repo>/../shared/data/tinyshakespeare.txt, 1.1 M characters;
character level, first 90% train, last 10% validation), in one process, back to back.

- baseline: nanoGPT's README recipe for a CPU ("baby GPT": 4 layers, 4 heads, width 128,
  block 64, batch 12, 2000 iterations, lr 1e-3 with 100 warm-up steps and cosine decay to
  1e-4, AdamW betas (0.9, 0.99), weight decay 0.1 on matrices, clipping at 1.0, no
  dropout, no biases, tied embeddings). nanoGPT reports a validation loss of about 1.88.
- recipe: the chapter's recipe for the same budget (CHAPTER below: solutions.ch07_pretraining.RECIPE_MODEL
  and RECIPE).

The wall time counts training only. Both are then scored on the same 200 validation
batches of 12 x 64 characters (a fixed seed), so the two losses are directly comparable.
The machine's cores may be shared: wall times are noisy, which is why the two runs share a
process and a thread count; CPU time is reported too.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from solutions.ch07_pretraining import (GPT, RECIPE, RECIPE_MODEL, GPTConfig, TrainConfig, char_vocab,  # noqa: E402
                                        encode_corpus, estimate_loss, reference_parts, train, train_val_split)

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

BASELINE = dict(
    model=dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False),
    train=TrainConfig(steps=2000, batch_size=12, max_lr=1e-3, min_lr=1e-4, warmup=100, weight_decay=0.1,
                      betas=(0.9, 0.99), grad_clip=1.0),
)
# The chapter's recipe (solutions.ch07_pretraining.RECIPE_MODEL and RECIPE): for this
# budget a shallower model (2 layers) that sees more text, trained with larger batches and a
# higher learning rate; the same width, heads, block and data.
CHAPTER = dict(model=RECIPE_MODEL, train=RECIPE)
EVAL_BATCHES, EVAL_BATCH, EVAL_BLOCK, EVAL_SEED = 200, 12, 64, 2024


def run(name: str, spec: dict, train_ids, val_ids, vocab_size: int, quick: bool = False) -> dict:
    cfg = spec["train"]
    if quick:
        cfg = cfg._replace(steps=max(20, cfg.steps // 50), warmup=min(cfg.warmup, 5))
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, **spec["model"]))
    cpu0 = time.process_time()
    hist = train(model, train_ids, val_ids, cfg._replace(eval_batches=1), desc=name, **reference_parts())
    cpu = time.process_time() - cpu0
    val = estimate_loss(model, val_ids, EVAL_BLOCK, EVAL_BATCH, 20 if quick else EVAL_BATCHES, seed=EVAL_SEED)
    tokens = cfg.steps * cfg.batch_size * model.config.block_size
    return dict(name=name, params=model.num_parameters(), steps=cfg.steps, batch=cfg.batch_size,
                block=model.config.block_size, lr=cfg.max_lr, tokens=tokens, seconds=hist["seconds"], cpu=cpu,
                val=val)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=["baseline", "recipe"])
    p.add_argument("--quick", action="store_true", help="a few steps each (checks that the script runs)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    text = DATA.read_text(encoding="utf-8")
    vocab = char_vocab(text)
    train_ids, val_ids = train_val_split(encode_corpus(text, vocab), 0.9)
    print(f"data: {DATA.name}, {len(text):,} characters, vocabulary {len(vocab)}, "
          f"train {len(train_ids):,} / val {len(val_ids):,}; torch {torch.__version__}, {args.threads} thread(s)")
    rows = []
    for name, spec in (("baseline", BASELINE), ("recipe", CHAPTER)):
        if args.only and args.only != name:
            continue
        rows.append(run(name, spec, train_ids, val_ids, len(vocab), quick=args.quick))
    print()
    print(f"{'run':9s} {'params':>8s} {'steps':>6s} {'batch':>5s} {'block':>5s} {'max lr':>7s} {'tokens':>10s} "
          f"{'train s':>8s} {'cpu s':>7s} {'tok/s':>7s} {'val loss':>8s}")
    for r in rows:
        print(f"{r['name']:9s} {r['params']:>8,d} {r['steps']:>6d} {r['batch']:>5d} {r['block']:>5d} {r['lr']:>7.0e} "
              f"{r['tokens']:>10,d} {r['seconds']:>8.1f} {r['cpu']:>7.1f} {r['tokens'] / r['seconds']:>7.0f} "
              f"{r['val']:>8.4f}")
    if len(rows) == 2:
        base, rec = rows
        print(f"recipe / baseline: wall time x{rec['seconds'] / base['seconds']:.2f}, "
              f"val loss {rec['val']:.4f} vs {base['val']:.4f} ({rec['val'] - base['val']:+.4f})")
    print(f"(val loss: mean cross-entropy in nats on the same {20 if args.quick else EVAL_BATCHES} validation batches of "
          f"{EVAL_BATCH} x {EVAL_BLOCK} characters; nanoGPT reports about 1.88 for the baseline recipe)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
