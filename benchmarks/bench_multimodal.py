"""Chapter 14 on a CPU: the ViT input layer at ViT-B/16 scale, and the chapter's training steps.

1. The ViT embeddings of a batch of 16 images of 224 x 224 (196 patches of 16 x 16, D=768):
   the course's ``vit_embeddings`` (a reshape and one matrix multiplication) against Hugging
   Face's ``ViTEmbeddings`` (a strided Conv2d) with the same weights; the outputs are compared
   before any timing. Repetitions interleaved; best and median times.
2. One training step of the chapter's TinyCLIP (128 pairs of 32 x 32 images and 10-token
   captions) and of its captioner (128 sequences of 27 tokens, frozen vision features), with 1
   and 2 threads: what the chapter's run time is made of.

Run:  .venv/bin/python benchmarks/bench_multimodal.py  ->  benchmarks/results/multimodal.json
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from solutions.ch14_multimodal import (Captioner, CaptionerConfig, TinyCLIP, TinyCLIPConfig,  # noqa: E402
                                       captioner_prompt, default_parts, make_data, split_combos,
                                       vit_embeddings)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(runners: dict, repeat: int) -> dict:
    for fn in runners.values():
        fn()  # warm-up
    times = {name: [] for name in runners}
    for _ in range(repeat):
        for name, fn in runners.items():
            times[name].append(timed(fn))
    return {name: {"best_ms": min(ts) * 1e3, "median_ms": statistics.median(ts) * 1e3} for name, ts in times.items()}


def bench_vit(threads: int = 2, repeat: int = 10) -> dict:
    import transformers
    from transformers import ViTConfig
    from transformers.models.vit.modeling_vit import ViTEmbeddings

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    emb = ViTEmbeddings(ViTConfig(image_size=224, patch_size=16, hidden_size=768, hidden_dropout_prob=0.0)).eval()
    x = torch.randn(16, 3, 224, 224)
    w, b = emb.patch_embeddings.projection.weight, emb.patch_embeddings.projection.bias
    with torch.no_grad():
        diff = (emb(x) - vit_embeddings(x, w, b, emb.cls_token, emb.position_embeddings)).abs().max().item()
        res = interleaved({"course vit_embeddings (reshape + matmul)": lambda: vit_embeddings(
            x, w, b, emb.cls_token, emb.position_embeddings), "HF ViTEmbeddings (Conv2d)": lambda: emb(x)}, repeat)
    return {"shape": "16 x 3 x 224 x 224, patch 16, D 768", "threads": threads, "max_abs_difference": diff,
            "times": res}


def bench_steps(repeat: int = 10) -> dict:
    seen, _ = split_combos()
    data = make_data(seen, 2, seed=0)
    out = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        parts = default_parts()
        clip = TinyCLIP(TinyCLIPConfig(), parts)
        opt = torch.optim.AdamW(clip.parameters(), lr=1e-3)
        pix, ids = data.pixels[:128], data.ids[:128]

        def clip_step():
            loss, _ = clip(pix, ids)
            opt.zero_grad()
            loss.backward()
            opt.step()

        cap = Captioner(clip.vision, CaptionerConfig(), parts)
        cap_opt = torch.optim.AdamW([p for p in cap.parameters() if p.requires_grad], lr=1e-3)
        hidden = cap.vision_hidden(pix)
        seq = torch.cat([torch.tensor(captioner_prompt(16)).repeat(128, 1), ids[:, 1:-1]], dim=1)

        def cap_step():
            logits = cap(seq, cap.image_tokens(hidden))
            loss = logits.float().logsumexp(-1).mean()
            cap_opt.zero_grad()
            loss.backward()
            cap_opt.step()

        out[f"{threads} thread(s)"] = interleaved({"TinyCLIP step": clip_step, "captioner step": cap_step}, repeat)
    return out


def main() -> int:
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "load_average_at_start": os.getloadavg()[0]},
              "vit_embeddings": bench_vit(), "training_steps": bench_steps()}
    path = ROOT / "benchmarks" / "results" / "multimodal.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
