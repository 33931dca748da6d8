"""Mamba: the course's chunked scan in a Mamba block vs Hugging Face's MambaMixer, and decoding.

    python benchmarks/bench_mamba.py                        # L = 1,024, 4,096, 16,384; contexts to 16,384
    python benchmarks/bench_mamba.py --lengths 1024 4096    # skip the longest block run
    python benchmarks/bench_mamba.py --threads 1

Part 1 (the block). One Mamba mixer, hidden size 128, state 16 (inner width 256, conv 4),
with Hugging Face's random initialisation; the same weights are copied into the course's
``MambaWeights``. For each length L it runs ``MambaMixer`` (its PyTorch path: no
``mamba_ssm`` on a CPU, ``use_associative_scan=False``) and the course's ``mamba_mixer``
with ``chunked_scan`` (chunks of 32) inside, alternately, keeps the best of ``--repeats``
runs of each, checks that the outputs agree, and reports ms, tokens/s and the ratio.
Both run in the same process one after the other, so a busy machine slows them alike.

Part 2 (decoding). The chapter-6 GPT (4 layers, width 128, 4 heads) with its KV cache and a
stack of 4 Mamba mixers of width 128 decoding with ``mamba_step``: for each context length
n the cache (or the state) holds n tokens, then one more token is timed (best of repeats,
on one thread by default: decoding one sequence of a small model is a stream of tiny
kernels), and the bytes each must keep to continue are counted. Results go to
``benchmarks/results/bench_mamba.json`` and a figure to ``benchmarks/results/bench_mamba.png``.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from solutions.ch06_gpt import GPT, GPTConfig, KVCache, forward_with_cache  # noqa: E402
from solutions.ch13_long_context import MambaWeights, chunked_scan, mamba_mixer, mamba_step  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def best(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def block_benchmark(lengths, repeats, chunk):
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer
    from transformers.utils import logging

    logging.set_verbosity_error()  # the PyTorch fallback announces itself once otherwise
    cfg = MambaConfig(hidden_size=128, state_size=16, num_hidden_layers=1, vocab_size=64, use_associative_scan=False)
    torch.manual_seed(0)
    hf = MambaMixer(cfg, layer_idx=0).eval()
    ours = MambaWeights(128, state_size=16).eval()
    ours.load_state_dict(hf.state_dict())
    scan = functools.partial(chunked_scan, chunk_size=chunk)
    rows = []
    for L in lengths:
        x = torch.randn(1, L, 128, generator=torch.Generator().manual_seed(L))
        with torch.no_grad():
            y_hf, y_ours = hf(x), mamba_mixer(ours, x, scan=scan)  # warm-up, and the outputs compared
            t_hf = t_ours = float("inf")
            for _ in range(repeats):  # alternate, so that load changes hit both
                t_hf = min(t_hf, best(lambda: hf(x), 1))
                t_ours = min(t_ours, best(lambda: mamba_mixer(ours, x, scan=scan), 1))
        diff = float((y_hf - y_ours).abs().max())
        rows.append({"L": L, "hf_ms": t_hf * 1e3, "ours_ms": t_ours * 1e3, "hf_tokens_per_s": L / t_hf,
                     "ours_tokens_per_s": L / t_ours, "speedup": t_hf / t_ours, "max_abs_diff": diff})
        print(f"L={L:>6}: MambaMixer {t_hf * 1e3:8.1f} ms ({L / t_hf:9.0f} tok/s) | course chunked "
              f"{t_ours * 1e3:8.1f} ms ({L / t_ours:9.0f} tok/s) | {t_hf / t_ours:4.2f}x | max diff {diff:.1e}",
              flush=True)
    return rows


def decode_benchmark(contexts, repeats, threads):
    torch.set_num_threads(threads)  # one token of a small model is a stream of tiny kernels (see bench_kv_cache.py)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=65, block_size=max(contexts) + 8, n_layer=4, n_head=4, n_embd=128)).eval()
    mambas = [MambaWeights(128, state_size=16).eval() for _ in range(4)]
    rows = []
    with torch.no_grad():
        for n in contexts:
            caches = [KVCache() for _ in gpt.blocks]
            prompt = torch.randint(65, (1, n))
            for s in range(0, n, 1024):  # prefill in pieces: a full n x n score matrix would not fit
                forward_with_cache(gpt, prompt[:, s:s + 1024], caches)
            nxt = torch.randint(65, (1, 1))

            def gpt_token():
                for c in caches:
                    c.length = n
                forward_with_cache(gpt, nxt, caches)

            t_gpt = best(gpt_token, repeats)
            kv = sum(2 * c.k[:, :, :n].numel() * c.k.element_size() for c in caches)
            # run the Mamba stack over n tokens so that the state is a real one (its size never changes)
            states = [(torch.zeros(1, 256, 4), torch.zeros(1, 256, 16)) for _ in mambas]
            xs = torch.randn(1, min(n, 256), 128)
            for t in range(xs.shape[1]):
                x = xs[:, t]
                for i, w in enumerate(mambas):
                    y, c, s = mamba_step(w, x, *states[i])
                    states[i] = (c, s)
                    x = x + y
            h = torch.randn(1, 128)

            def mamba_token():
                x = h
                for w, (c, s) in zip(mambas, states):
                    x = x + mamba_step(w, x, c, s)[0]

            t_mamba = best(mamba_token, repeats)
            state = sum(c.numel() * c.element_size() + s.numel() * s.element_size() for c, s in states)
            rows.append({"context": n, "attention_ms_per_token": t_gpt * 1e3, "attention_cache_bytes": kv,
                         "mamba_ms_per_token": t_mamba * 1e3, "mamba_state_bytes": state})
            print(f"context {n:>6}: attention {t_gpt * 1e3:6.2f} ms/token, KV cache {kv / 2 ** 20:8.2f} MB | "
                  f"Mamba {t_mamba * 1e3:6.2f} ms/token, state {state / 2 ** 20:6.3f} MB", flush=True)
    return rows


def figure(block_rows, decode_rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    Ls = [r["L"] for r in block_rows]
    axes[0].plot(Ls, [r["hf_ms"] for r in block_rows], "o-", label="HF MambaMixer (PyTorch path)")
    axes[0].plot(Ls, [r["ours_ms"] for r in block_rows], "o-", label="course block, chunked scan")
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length L", ylabel="ms per forward",
                title="One Mamba block (hidden 128, state 16)")
    ns = [r["context"] for r in decode_rows]
    axes[1].plot(ns, [r["attention_ms_per_token"] for r in decode_rows], "o-", label="GPT + KV cache")
    axes[1].plot(ns, [r["mamba_ms_per_token"] for r in decode_rows], "o-", label="Mamba (recurrent)")
    axes[1].set(xscale="log", xlabel="context length", ylabel="ms per new token", title="Decoding one token, 4 layers")
    axes[2].plot(ns, [r["attention_cache_bytes"] / 2 ** 20 for r in decode_rows], "o-", label="GPT + KV cache")
    axes[2].plot(ns, [r["mamba_state_bytes"] / 2 ** 20 for r in decode_rows], "o-", label="Mamba (recurrent)")
    axes[2].set(xscale="log", yscale="log", xlabel="context length", ylabel="MB kept between tokens",
                title="Memory carried while decoding")
    for ax in axes:
        ax.legend()
    plt.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--contexts", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    p.add_argument("--threads", type=int, default=2, help="threads for the block comparison")
    p.add_argument("--decode-threads", type=int, default=1, help="threads for the decoding comparison")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--out", default=str(RESULTS / "bench_mamba.json"))
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}", flush=True)
    t0 = time.perf_counter()
    block_rows = block_benchmark(args.lengths, args.repeats, args.chunk)
    decode_rows = decode_benchmark(args.contexts, max(args.repeats, 5), args.decode_threads)
    # time growing linearly in L: ms per token at the longest length over the shortest
    per_token = [r["ours_ms"] / r["L"] for r in block_rows]
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "threads_block": args.threads, "threads_decode": args.decode_threads,
                    "load_average_at_start": load,
                    "torch": torch.__version__},
        "settings": {"hidden_size": 128, "state_size": 16, "intermediate_size": 256, "conv_kernel": 4,
                     "chunk_size": args.chunk, "repeats": args.repeats},
        "block": block_rows,
        "block_ms_per_token_ratio_longest_vs_shortest": per_token[-1] / per_token[0],
        "decode": decode_rows,
        "seconds": time.perf_counter() - t0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    figure(block_rows, decode_rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
