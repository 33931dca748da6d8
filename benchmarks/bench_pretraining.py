"""Pretraining benchmark: nanoGPT's CPU recipe vs the chapter-7 recipe, side by side.

    .venv/bin/python benchmarks/bench_pretraining.py [--threads 2] [--repeats 3] [--per-step 8]
        [--only nanogpt,baseline,recipe,recipe_adamw] [--quick]
        [--json benchmarks/results/pretraining.json]

Three runs on nanoGPT's tiny-Shakespeare file (<repo>/../shared/data/tinyshakespeare.txt,
1.1 M characters; character level, first 90% train, last 10% validation), in one process,
back to back, the order rotated at every repeat:

- nanogpt: nanoGPT's own model and loop, re-implemented below as nanoGPT's model.py and
  train.py run them on a CPU (modules c_attn/c_proj, exact GELU, F.cross_entropy on the
  flattened logits, torch.optim.AdamW as nanoGPT builds it off CUDA, i.e. its default
  per-tensor loop, clip_grad_norm_, loss.item() at every step, batches by torch.stack of
  slices). It measures the per-step speed the course's code is compared with.
- baseline: nanoGPT's README recipe for a CPU ("baby GPT": 4 layers, 4 heads, width 128,
  block 64, batch 12, 2000 iterations, lr 1e-3 with 100 warm-up steps and cosine decay to
  1e-4, AdamW betas (0.9, 0.99), weight decay 0.1 on matrices, clipping at 1.0, no
  dropout, no biases, tied embeddings, exact GELU) trained by the course's GPT and loop
  (solutions/ch07_pretraining.py: train with reference_parts()). nanoGPT reports a
  validation loss of about 1.88.
- recipe: the chapter's recipe (solutions.ch07_pretraining.RECIPE_MODEL and RECIPE), by
  the course's GPT and loop, with Muon on the blocks' matrices and AdamW on the rest.
- recipe_adamw (only with --only): the same recipe with AdamW on every parameter.

The wall time counts training only. All are then scored on the same 200 validation
batches of 12 x 64 characters (a fixed seed), so the losses are directly comparable.
The machine's cores may be shared, and a virtual machine's speed drifts by 20% or more
from one minute to the next: whole-run wall times are noisy, which is why the runs share a
process and a thread count, alternate their order, repeat, and report CPU time and the
load average just before each run too. With --per-step N the script then runs every
configuration in short segments (100 steps), alternated N times: each segment's time per
step, and the time of a whole run estimated from it, are compared with those of the
baseline segment of the same alternation, so the drift cancels out of the ratios.
"""
import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from solutions.ch07_pretraining import (GPT, RECIPE, RECIPE_MODEL, GPTConfig, TrainConfig, char_vocab,  # noqa: E402
                                        encode_corpus, estimate_loss, reference_parts, train, train_val_split)

DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

BASELINE = dict(
    model=dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False,
               activation="gelu_exact"),
    train=TrainConfig(steps=2000, batch_size=12, max_lr=1e-3, min_lr=1e-4, warmup=100, weight_decay=0.1,
                      betas=(0.9, 0.99), grad_clip=1.0),
)
# The chapter's recipe (solutions.ch07_pretraining.RECIPE_MODEL and RECIPE).
CHAPTER = dict(model=RECIPE_MODEL, train=RECIPE)
EVAL_BATCHES, EVAL_BATCH, EVAL_BLOCK, EVAL_SEED = 200, 12, 64, 2024
RESULTS = ROOT / "benchmarks" / "results" / "pretraining.json"


# --------------------------------------------------------------------------------------
# nanoGPT's model and CPU training loop, as its model.py and train.py run them
# --------------------------------------------------------------------------------------
class _NanoLayerNorm(nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)


class _NanoAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)
        self.n_head, self.n_embd = n_head, n_embd

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class _NanoBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln_1, self.attn = _NanoLayerNorm(n_embd), _NanoAttention(n_embd, n_head)
        self.ln_2 = _NanoLayerNorm(n_embd)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(n_embd, 4 * n_embd, bias=False), gelu=nn.GELU(),
                                      c_proj=nn.Linear(4 * n_embd, n_embd, bias=False)))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        m = self.mlp
        return x + m.c_proj(m.gelu(m.c_fc(self.ln_2(x))))


class NanoStyleGPT(nn.Module):
    """nanoGPT's GPT without biases or dropout: forward(idx, targets) -> (logits, loss);
    forward(idx) -> logits (every position, for scoring with estimate_loss)."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int, **_):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                                n_embd=n_embd)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd), wpe=nn.Embedding(block_size, n_embd),
            h=nn.ModuleList(_NanoBlock(n_embd, n_head) for _ in range(n_layer)), ln_f=_NanoLayerNorm(n_embd)))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None):
        t = idx.size(1)
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(0, t, dtype=torch.long))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def nanogpt_train(model: NanoStyleGPT, data: torch.Tensor, cfg: TrainConfig) -> float:
    """nanoGPT's train.py loop on a CPU (no evaluation); returns the seconds it took."""
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.max_lr, betas=cfg.betas)  # fused only on CUDA in nanoGPT
    T, B = model.config.block_size, cfg.batch_size

    def get_lr(it):
        if it < cfg.warmup:
            return cfg.max_lr * (it + 1) / (cfg.warmup + 1)
        ratio = (it - cfg.warmup) / (cfg.steps - cfg.warmup)
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.max_lr - cfg.min_lr)

    def get_batch():
        ix = torch.randint(len(data) - T, (B,))
        x = torch.stack([data[i:i + T] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + T] for i in ix])
        return x, y

    model.train()
    t0 = time.perf_counter()
    X, Y = get_batch()
    for it in range(cfg.steps):
        lr = get_lr(it)
        for group in opt.param_groups:
            group["lr"] = lr
        _, loss = model(X, Y)
        X, Y = get_batch()  # the next batch, fetched while (on a GPU) the forward runs
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT's README runs with --log_interval=1
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------
def run(name: str, spec: dict, train_ids, val_ids, vocab_size: int, quick: bool = False, score: bool = True) -> dict:
    cfg = spec["train"]
    if quick:
        cfg = cfg._replace(steps=max(20, cfg.steps // 50), warmup=min(cfg.warmup, 5))
    torch.manual_seed(cfg.seed)
    load = os.getloadavg()[0]  # other jobs on the machine's cores, just before the run
    cpu0 = time.process_time()
    if spec.get("nanogpt"):
        model = NanoStyleGPT(vocab_size=vocab_size, **spec["model"])
        seconds = nanogpt_train(model, train_ids, cfg)
    else:
        model = GPT(GPTConfig(vocab_size=vocab_size, **spec["model"]))
        seconds = train(model, train_ids, val_ids, cfg._replace(eval_batches=1), desc=name,
                        progress=score, **reference_parts())["seconds"]
    cpu = time.process_time() - cpu0
    val = (estimate_loss(model, val_ids, EVAL_BLOCK, EVAL_BATCH, 20 if quick else EVAL_BATCHES, seed=EVAL_SEED)
           if score else float("nan"))
    tokens = cfg.steps * cfg.batch_size * model.config.block_size
    return dict(name=name, params=model.num_parameters(), layers=model.config.n_layer, steps=cfg.steps,
                batch=cfg.batch_size, block=model.config.block_size, lr=cfg.max_lr, tokens=tokens,
                seconds=round(seconds, 2), cpu=round(cpu, 2), ms_per_step=round(1e3 * seconds / cfg.steps, 2),
                val=round(val, 4), load_before=round(load, 2))


# The recipe with AdamW on every parameter (no Muon): what the optimizer is worth.
ADAMW_ONLY = dict(model=RECIPE_MODEL, train=RECIPE._replace(muon_lr_scale=0.0, muon_weight_decay=0.0))
RUNS = {"nanogpt": dict(BASELINE, nanogpt=True), "baseline": BASELINE, "recipe": CHAPTER,
        "recipe_adamw": ADAMW_ONLY}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--only", default="nanogpt,baseline,recipe", help="comma-separated runs among " + ", ".join(RUNS))
    p.add_argument("--quick", action="store_true", help="a few steps each (checks that the script runs)")
    p.add_argument("--per-step", type=int, default=0, metavar="N",
                   help="then N alternations of 100-step segments of every run: the per-step costs and the "
                        "whole-run time ratios, with the machine's drift cancelled out")
    p.add_argument("--json", type=Path, help=f"write the table there (the committed one: {RESULTS.relative_to(ROOT)})")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    if set(names) - set(RUNS):
        p.error(f"unknown run(s) {sorted(set(names) - set(RUNS))}")
    torch.set_num_threads(args.threads)
    text = DATA.read_text(encoding="utf-8")
    vocab = char_vocab(text)
    train_ids, val_ids = train_val_split(encode_corpus(text, vocab), 0.9)
    print(f"data: {DATA.name}, {len(text):,} characters, vocabulary {len(vocab)}, "
          f"train {len(train_ids):,} / val {len(val_ids):,}; torch {torch.__version__}, {args.threads} thread(s)")
    rows, ratios, per_step = [], [], {}

    def write_json() -> None:  # after every repeat: a long run interrupted keeps what it measured
        spec = {n: dict(model=RUNS[n]["model"], train=RUNS[n]["train"]._asdict(),
                        code="nanoGPT's model and loop (NanoStyleGPT, nanogpt_train)" if RUNS[n].get("nanogpt")
                        else "solutions.ch07_pretraining: GPT, train, reference_parts()") for n in names}
        out = dict(script="benchmarks/bench_pretraining.py", torch=torch.__version__, threads=args.threads,
                   machine=f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores",
                   quick=args.quick, runs=spec, rows=rows, ratios=ratios, per_step=per_step)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")

    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]  # rotate who goes first
        done = {}
        for name in order:
            done[name] = dict(run(name, RUNS[name], train_ids, val_ids, len(vocab), quick=args.quick), repeat=rep)
            print(json.dumps(done[name]), flush=True)
        rows += [done[n] for n in names]
        if "baseline" in done:
            base = done["baseline"]
            ratios.append({f"{n}/baseline": round(done[n]["seconds"] / base["seconds"], 3)
                           for n in names if n != "baseline"}
                          | {f"{n}/baseline cpu": round(done[n]["cpu"] / base["cpu"], 3)
                             for n in names if n != "baseline"} | {"repeat": rep})
        if args.json:
            write_json()
    if args.per_step:
        # Short segments of every run, alternated (the order rotating): all the codes see the
        # same machine, minute by minute, so its drift cancels out of the ratios.
        steps = 20 if args.quick else 100
        ms = {n: [] for n in names}
        for k in range(args.per_step):
            for name in names[k % len(names):] + names[:k % len(names)]:
                seg = RUNS[name]["train"]._replace(steps=steps, warmup=min(10, RUNS[name]["train"].warmup))
                r = run(name, dict(RUNS[name], train=seg), train_ids, val_ids, len(vocab), score=False)
                ms[name].append(r["ms_per_step"])
        per_step = dict(steps_per_segment=steps, alternations=args.per_step, ms_per_step=ms)
        def spread(ratios: list[float]) -> dict:
            ratios = sorted(ratios)
            return dict(median=round(ratios[len(ratios) // 2], 3), low=round(ratios[0], 3), high=round(ratios[-1], 3))

        if "baseline" in names:
            base = ms["baseline"]
            if "nanogpt" in names:  # the same recipe: the course's code per step over nanoGPT's
                per_step["nanogpt_per_step_ratio"] = spread([b / a for a, b in zip(ms["nanogpt"], base)])
            for n in names:  # a whole run of each recipe over a whole baseline run
                if n not in ("nanogpt", "baseline"):
                    steps_ratio = RUNS[n]["train"].steps / RUNS["baseline"]["train"].steps
                    per_step[f"{n}_run_time_ratio"] = spread([a * steps_ratio / b for a, b in zip(ms[n], base)])
        if args.json:
            write_json()
    print()
    print(f"{'run':12s} {'rep':>3s} {'params':>8s} {'steps':>6s} {'batch':>5s} {'max lr':>7s} {'tokens':>10s} "
          f"{'train s':>8s} {'cpu s':>7s} {'ms/step':>8s} {'tok/s':>7s} {'val loss':>8s} {'load':>5s}")
    for r in rows:
        print(f"{r['name']:12s} {r['repeat']:>3d} {r['params']:>8,d} {r['steps']:>6d} {r['batch']:>5d} {r['lr']:>7.0e} "
              f"{r['tokens']:>10,d} {r['seconds']:>8.1f} {r['cpu']:>7.1f} {r['ms_per_step']:>8.1f} "
              f"{r['tokens'] / r['seconds']:>7.0f} {r['val']:>8.4f} {r['load_before']:>5.1f}")
    for r in ratios:
        print(f"repeat {r['repeat']}: time relative to the baseline: "
              + ", ".join(f"{k} x{v:.2f}" for k, v in r.items() if k != "repeat"))
    print(f"(val loss: mean cross-entropy in nats on the same {20 if args.quick else EVAL_BATCHES} validation batches "
          f"of {EVAL_BATCH} x {EVAL_BLOCK} characters; nanoGPT reports about 1.88 for the baseline recipe)")
    if per_step:
        print(f"alternated segments of {per_step['steps_per_segment']} steps, {args.per_step} of each:")
        for n in names:
            print(f"  {n:12s} ms/step {sorted(per_step['ms_per_step'][n])}")
        for k, v in per_step.items():
            if k.endswith("_ratio"):
                what = ("per step, the course's code / nanoGPT's" if k.startswith("nanogpt")
                        else f"a whole {k.split('_run_time')[0]} run / the baseline's")
                print(f"  {what}: median x{v['median']:.3f} (x{v['low']:.3f} to x{v['high']:.3f})")
    if args.json:
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
