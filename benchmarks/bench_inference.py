"""Generation speed on a CPU: batching and speculative decoding, the course's code and HF's.

One process, one thread (models this small run faster and more steadily on one). The
target is the chapter-7 pretrained Shakespeare model (``models/``, 0.81 M parameters).

- Batching: the course's ``generate_batch`` (left padding, KV cache) on 64 prompts (first
  lines of speeches from the held-out text), 48 new tokens each, one prompt at a time vs
  batches of 4, 16 and 64; the same with Hugging Face ``generate`` on the same weights
  (``GPT2LMHeadModel``). Every batched output is checked equal to the sequential one.
- Speculative decoding, greedy, on 6 prompts x 64 new tokens: the course's
  ``speculative_generate`` vs its plain cached greedy decoding, and HF assisted generation
  (``generate(assistant_model=...)``) vs HF greedy, on the SAME model pair: the target and
  an early-exit draft made of the target's first two blocks (its embeddings, blocks 0-1,
  final norm and output layer; no training). The course's code also runs with a 6-gram
  table draft built from the training text (HF has no equivalent). Outputs are checked
  equal to plain greedy decoding before anything is timed.

Each time is the best of a few runs (the least disturbed by other processes).

Run:  .venv/bin/python benchmarks/bench_inference.py  ->  benchmarks/results/inference.json
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_NEW_BATCH, N_NEW_SPEC, GAMMA, REPEAT = 48, 64, 4, 3


def best(fn, repeat=REPEAT) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def early_exit_draft(target, n_blocks: int):
    from solutions.ch18_inference import CachedGPT

    draft = CachedGPT(target.config._replace(n_layer=n_blocks))
    state = {k: v for k, v in target.state_dict().items()
             if not k.startswith("blocks.") or int(k.split(".")[1]) < n_blocks}
    draft.load_state_dict(state)
    return draft.eval()


def main() -> dict:
    import transformers

    from solutions.ch07_pretraining import _models_dir
    from solutions.ch18_inference import (NgramDraft, acceptance_rate, generate_batch, pretrained_cached,
                                          shakespeare_split, speculative_generate, to_hf_gpt2)

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)
    target, encode, decode = pretrained_cached()
    vocab = json.loads((_models_dir() / "shakespeare_char.json").read_text())["vocab"]
    train_ids, val_ids = shakespeare_split(vocab)
    text = decode(val_ids[:200_000].tolist())
    prompts = [encode(l + "\n") for l in text.split("\n") if 10 <= len(l) <= 60][:64]
    hf_target = to_hf_gpt2(target)
    out = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                       "transformers": transformers.__version__, "cpu": torch.backends.cpu.get_cpu_capability(),
                       "threads": 1},
           "model": {"parameters": target.num_parameters(), "config": target.config._asdict()}}

    # -- batching ---------------------------------------------------------------------------
    def hf_batch(batch):
        L = max(len(p) for p in batch)
        ids = torch.tensor([[0] * (L - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            return hf_target.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=N_NEW_BATCH)[:, L:]

    sequential = torch.stack([generate_batch(target, [p], N_NEW_BATCH, 0)[0] for p in prompts])
    batching = {"prompts": len(prompts), "new_tokens": N_NEW_BATCH, "course": {}, "hf": {}}
    for B in (1, 4, 16, 64):
        chunks = [prompts[i:i + B] for i in range(0, len(prompts), B)]
        got = torch.cat([generate_batch(target, c, N_NEW_BATCH, 0) for c in chunks])
        assert torch.equal(got, sequential), f"batch {B} differs from one prompt at a time"
        hf_got = torch.cat([hf_batch(c) for c in chunks])
        assert torch.equal(hf_got, sequential), f"HF batch {B} differs"
        total = len(prompts) * N_NEW_BATCH
        t = best(lambda: [generate_batch(target, c, N_NEW_BATCH, 0) for c in chunks], 1)
        t_hf = best(lambda: [hf_batch(c) for c in chunks], 1)
        batching["course"][B] = {"seconds": round(t, 3), "tokens_per_s": round(total / t, 1)}
        batching["hf"][B] = {"seconds": round(t_hf, 3), "tokens_per_s": round(total / t_hf, 1)}
        print(f"batch {B:3d}: course {total / t:8.0f} tok/s, HF {total / t_hf:8.0f} tok/s", flush=True)
    for who in ("course", "hf"):
        b = batching[who]
        b["speedup_64_vs_1"] = round(b[64]["tokens_per_s"] / b[1]["tokens_per_s"], 2)
    out["batching"] = batching

    # -- speculative decoding ---------------------------------------------------------------
    spec_prompts = prompts[:6]
    draft = early_exit_draft(target, 2)
    hf_draft = to_hf_gpt2(draft)
    table = NgramDraft(train_ids[:1_500_000], len(vocab), n=6)
    plain = [generate_batch(target, [p], N_NEW_SPEC, 0)[0].tolist() for p in spec_prompts]

    def hf_generate(p, assistant=None):
        ids = torch.tensor([p])
        kwargs = {"assistant_model": assistant} if assistant is not None else {}
        with torch.no_grad():
            return hf_target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=N_NEW_SPEC, **kwargs)[0, len(p):].tolist()

    for p, ref in zip(spec_prompts, plain):
        assert hf_generate(p) == ref and hf_generate(p, hf_draft) == ref, "HF output differs from greedy"
    t_plain = sum(best(lambda: generate_batch(target, [p], N_NEW_SPEC, 0)) for p in spec_prompts)
    t_hf_plain = sum(best(lambda: hf_generate(p)) for p in spec_prompts)
    t_hf_assisted = sum(best(lambda: hf_generate(p, hf_draft)) for p in spec_prompts)
    spec = {"prompts": len(spec_prompts), "new_tokens": N_NEW_SPEC, "gamma": GAMMA,
            "course_plain_greedy_s": round(t_plain, 3), "hf_plain_greedy_s": round(t_hf_plain, 3),
            "hf_assisted_early_exit_s": round(t_hf_assisted, 3),
            "hf_assisted_speedup": round(t_hf_plain / t_hf_assisted, 2)}
    for name, d in (("early_exit_2_blocks", draft), ("table_6gram", table)):
        alphas = []
        for p, ref in zip(spec_prompts, plain):
            got, acc = speculative_generate(target, d, p, N_NEW_SPEC, GAMMA)
            assert got == ref, f"speculative decoding with {name} differs from greedy"
            alphas.append(acceptance_rate(acc, GAMMA, N_NEW_SPEC))
        t = sum(best(lambda: speculative_generate(target, d, p, N_NEW_SPEC, GAMMA)) for p in spec_prompts)
        spec[f"course_{name}"] = {"seconds": round(t, 3), "speedup": round(t_plain / t, 2),
                                  "acceptance_rate": round(sum(alphas) / len(alphas), 3)}
        print(f"course speculative, {name}: speed-up {t_plain / t:.2f}, acceptance {spec[f'course_{name}']['acceptance_rate']}",
              flush=True)
    print(f"HF assisted, early exit: speed-up {spec['hf_assisted_speedup']:.2f}")
    out["speculative"] = spec
    return out


if __name__ == "__main__":
    t0 = time.perf_counter()
    result = main()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    path = ROOT / "benchmarks" / "results" / "inference.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)} in {result['seconds']} s")
