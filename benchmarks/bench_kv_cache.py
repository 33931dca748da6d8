"""KV cache vs no cache: greedy decoding speed of the chapter-6 GPT, side by side.

    python benchmarks/bench_kv_cache.py                   # 4 layers x 256 wide, context 1152
    python benchmarks/bench_kv_cache.py --lengths 64 256  # skip the slow 1024-token run
    python benchmarks/bench_kv_cache.py --threads 0       # PyTorch's default thread count

For each number of new tokens N it times the course's reference ``generate`` (batch of
one, a 16-token prompt, greedy) with ``use_cache=True`` and ``use_cache=False`` in
alternation, keeps the best of ``--repeats`` runs of each, checks that both produce the
same tokens, and prints tokens per second and their ratio. Both sides run in the same
process one after the other, so a busy machine slows them alike; the ratio is the number
to read. The weights are random (GPT-2's initialisation): speed does not depend on them.

It runs on one thread by default: decoding one sequence of a small model is a stream of
tiny kernels, and on a shared machine a second intra-op thread mostly waits for a
descheduled peer (measured while other jobs were running: the cached path ran about nine
times slower on two threads than on one). ``--threads 0`` keeps PyTorch's default.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from solutions.ch06_gpt import GPT, GPTConfig, generate, init_gpt2_weights  # noqa: E402


def timed(model, prompt, n_new, use_cache):
    t0 = time.perf_counter()
    out = generate(model, prompt, n_new, use_cache=use_cache)
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024], help="numbers of new tokens")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=256)
    p.add_argument("--context", type=int, default=1152, help="block_size (prompt + new tokens must fit)")
    p.add_argument("--prompt", type=int, default=16, help="prompt length")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs (1 for no-cache runs >= 1024)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: PyTorch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prompt + max(args.lengths) > args.context:
        p.error("--context must hold the prompt and the longest generation")

    torch.manual_seed(0)
    config = GPTConfig(vocab_size=args.vocab, block_size=args.context, n_layer=args.layers, n_head=args.heads,
                       n_embd=args.width)
    model = init_gpt2_weights(GPT(config)).eval()
    n_params = sum(p.numel() for p in model.parameters())
    prompt = torch.randint(0, args.vocab, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    print(f"GPT: {args.layers} layers x {args.width} wide, {args.heads} heads, context {args.context}, "
          f"{n_params / 1e6:.2f} M parameters; prompt {args.prompt} tokens, batch 1, greedy")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}")
    for use_cache in (True, False):  # warm-up: first calls allocate and pick kernels
        generate(model, prompt, 8, use_cache=use_cache)

    rows = []
    for n_new in args.lengths:
        best = {True: float("inf"), False: float("inf")}
        outs = {}
        repeats = {True: args.repeats, False: 1 if n_new >= 1024 else args.repeats}
        for r in range(max(repeats.values())):
            for use_cache in (True, False):  # alternate, so load changes hit both sides
                if r < repeats[use_cache]:
                    seconds, outs[use_cache] = timed(model, prompt, n_new, use_cache)
                    best[use_cache] = min(best[use_cache], seconds)
        same = torch.equal(outs[True], outs[False])
        rows.append((n_new, n_new / best[True], n_new / best[False], best[False] / best[True], same))
        print(f"  {n_new:5d} new tokens: {rows[-1][1]:8.1f} tok/s with the cache, {rows[-1][2]:8.1f} without, "
              f"x{rows[-1][3]:.1f}{'' if same else '  (outputs differ!)'}", flush=True)

    print("\n| new tokens | with KV cache (tok/s) | without (tok/s) | speed-up | same tokens |")
    print("|---:|---:|---:|---:|:---:|")
    for n_new, cached, uncached, ratio, same in rows:
        print(f"| {n_new} | {cached:.1f} | {uncached:.1f} | x{ratio:.1f} | {'yes' if same else 'NO'} |")
    return 0 if all(r[4] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
