"""Wrong answers to chapter 16, as learners write them."""
import math
import string
from collections import Counter

import torch
import torch.nn.functional as F

from . import wrong


# -- merge_splits ---------------------------------------------------------------------------
@wrong("ch16.merge_splits", diagnosis="no-overlap")
def merge_without_overlap(pieces, separator, chunk_size, chunk_overlap):
    chunks, current = [], []
    for piece in pieces:
        candidate = separator.join(current + [piece])
        if current and len(candidate) > chunk_size:
            chunks.append(separator.join(current).strip())
            current = []
        current.append(piece)
    if current:
        chunks.append(separator.join(current).strip())
    return [c for c in chunks if c]


@wrong("ch16.merge_splits", diagnosis="separator-not-counted")
def merge_counts_pieces_only(pieces, separator, chunk_size, chunk_overlap):
    chunks, run = [], []
    for piece in pieces:
        if run and sum(map(len, run)) + len(piece) > chunk_size:
            chunks.append(separator.join(run).strip())
            while run and (sum(map(len, run)) > chunk_overlap or sum(map(len, run)) + len(piece) > chunk_size):
                run.pop(0)
        run.append(piece)
    chunks.append(separator.join(run).strip())
    return [c for c in chunks if c]


@wrong("ch16.merge_splits", diagnosis="overlap-only")
def merge_trims_to_overlap_only(pieces, separator, chunk_size, chunk_overlap):
    def length(run):
        return len(separator.join(run))

    chunks, run = [], []
    for piece in pieces:
        if run and length(run + [piece]) > chunk_size:
            chunks.append(separator.join(run).strip())
            while run and length(run) > chunk_overlap:
                run = run[1:]
        run.append(piece)
    if run:
        chunks.append(separator.join(run).strip())
    return [c for c in chunks if c]


@wrong("ch16.merge_splits", diagnosis="drops-piece")
def merge_loses_boundary_piece(pieces, separator, chunk_size, chunk_overlap):
    chunks, run = [], []
    for piece in pieces:
        if run and len(separator.join(run + [piece])) > chunk_size:
            chunks.append(separator.join(run).strip())
            run = []
            continue  # oops: `piece` never makes it into a chunk
        run.append(piece)
    if run:
        chunks.append(separator.join(run).strip())
    return [c for c in chunks if c]


# -- recursive_split ------------------------------------------------------------------------
def _merge(pieces, separator, chunk_size, chunk_overlap):
    chunks, run, total = [], [], 0
    sep = len(separator)
    for piece in pieces:
        if run and total + len(piece) + sep > chunk_size:
            text = separator.join(run).strip()
            if text:
                chunks.append(text)
            while total > chunk_overlap or (run and total + len(piece) + sep > chunk_size):
                total -= len(run[0]) + (sep if len(run) > 1 else 0)
                run = run[1:]
        total += len(piece) + (sep if run else 0)
        run.append(piece)
    text = separator.join(run).strip()
    if text:
        chunks.append(text)
    return chunks


@wrong("ch16.recursive_split", diagnosis="no-recursion")
def split_once(text, separators, chunk_size, chunk_overlap):
    sep = next((s for s in separators if s and s in text), "")
    if sep:
        parts = text.split(sep)
        pieces = parts[:1] + [sep + p for p in parts[1:]]
    else:
        pieces = list(text)
    return _merge([p for p in pieces if p], "", chunk_size, chunk_overlap)


@wrong("ch16.recursive_split", diagnosis="separator-dropped")
def split_with_str_split(text, separators, chunk_size, chunk_overlap):
    for i, sep in enumerate(separators):
        if sep == "" or sep in text:
            break
    pieces = [p for p in (text.split(sep) if sep else list(text)) if p]
    chunks, good = [], []
    for p in pieces:
        if len(p) < chunk_size:
            good.append(p)
        else:
            if good:
                chunks += _merge(good, sep, chunk_size, chunk_overlap)
                good = []
            rest = separators[i + 1:]
            chunks += split_with_str_split(p, rest, chunk_size, chunk_overlap) if rest else [p]
    if good:
        chunks += _merge(good, sep, chunk_size, chunk_overlap)
    return chunks


@wrong("ch16.recursive_split", diagnosis="separator-at-end")
def split_separator_at_end(text, separators, chunk_size, chunk_overlap):
    sep = next((s for s in separators if s == "" or s in text), "")
    rest = separators[separators.index(sep) + 1:] if sep else []
    if sep:
        parts = text.split(sep)
        pieces = [p + sep for p in parts[:-1]] + [parts[-1]]   # separator stays with the left piece
    else:
        pieces = list(text)
    chunks, good = [], []
    for p in [p for p in pieces if p]:
        if len(p) < chunk_size:
            good.append(p)
            continue
        if good:
            chunks += _merge(good, "", chunk_size, chunk_overlap)
            good = []
        chunks += split_separator_at_end(p, rest, chunk_size, chunk_overlap) if rest else [p]
    if good:
        chunks += _merge(good, "", chunk_size, chunk_overlap)
    return chunks


@wrong("ch16.recursive_split", diagnosis="skips-text")
def split_with_gaps(text, separators, chunk_size, chunk_overlap):
    """Fixed windows that step by chunk_size + chunk_overlap: the gaps are never seen."""
    step = chunk_size + chunk_overlap
    return [c for c in (text[i:i + chunk_size].strip() for i in range(0, len(text), step)) if c]


# -- mean_pool --------------------------------------------------------------------------------
@wrong("ch16.mean_pool", diagnosis="cls")
def pool_cls(hidden, attention_mask):
    return F.normalize(hidden[:, 0, :], p=2, dim=1)


@wrong("ch16.mean_pool", diagnosis="padding-counted")
def pool_plain_mean(hidden, attention_mask):
    v = hidden.mean(dim=1)
    return v / v.norm(dim=-1, keepdim=True)


@wrong("ch16.mean_pool", diagnosis="not-normalised")
def pool_mean_only(hidden, attention_mask):
    m = attention_mask[..., None].float()
    return (hidden * m).sum(1) / m.sum(1)


@wrong("ch16.mean_pool", diagnosis="max-pool")
def pool_max(hidden, attention_mask):
    h = hidden.clone()
    h[attention_mask == 0] = float("-inf")
    return F.normalize(h.max(dim=1).values, dim=-1)


# -- embed_texts ------------------------------------------------------------------------------
@wrong("ch16.embed_texts", diagnosis="max-length-128")
def embed_default_truncation(texts, tokenizer, model, batch_size=32, max_length=256):
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return F.normalize((h * m).sum(1) / m.sum(1), dim=-1)


@wrong("ch16.embed_texts", diagnosis="ch16.mean_pool:cls")
def embed_cls(texts, tokenizer, model, batch_size=32, max_length=256):
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        with torch.no_grad():
            out.append(F.normalize(model(**enc).last_hidden_state[:, 0], dim=-1))
    return torch.cat(out)


@wrong("ch16.embed_texts", diagnosis="ch16.mean_pool:padding-counted")
def embed_mean_with_padding(texts, tokenizer, model, batch_size=32, max_length=256):
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        with torch.no_grad():
            out.append(F.normalize(model(**enc).last_hidden_state.mean(1), dim=-1))
    return torch.cat(out)


@wrong("ch16.embed_texts", diagnosis="ch16.mean_pool:not-normalised")
def embed_unnormalised(texts, tokenizer, model, batch_size=32, max_length=256):
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1)


# -- dense_search -----------------------------------------------------------------------------
@wrong("ch16.dense_search", diagnosis="not-normalised")
def search_dot(queries, docs, k):
    scores = queries @ docs.T
    top = torch.topk(scores, k, dim=1)
    return top.values, top.indices


@wrong("ch16.dense_search", diagnosis="queries-only")
def search_normalise_queries(queries, docs, k):
    q = queries / queries.norm(dim=1, keepdim=True)
    return torch.topk(q @ docs.T, k)


@wrong("ch16.dense_search", diagnosis="ascending")
def search_sorted_wrong_way(queries, docs, k):
    sim = F.normalize(queries, dim=-1) @ F.normalize(docs, dim=-1).T
    order = sim.argsort(dim=-1)[:, :k]
    return sim.gather(1, order), order


@wrong("ch16.dense_search", diagnosis=None)
def search_euclidean(queries, docs, k):
    dist = torch.cdist(queries, docs)
    ids = dist.argsort(dim=-1)[:, :k]
    sim = F.normalize(queries, dim=-1) @ F.normalize(docs, dim=-1).T
    return sim.gather(1, ids), ids


# -- BM25 -------------------------------------------------------------------------------------
class _LoopBM25:
    plus_one = False
    floor = "epsilon"
    dedupe = False

    def __init__(self, corpus, k1=1.5, b=0.75, epsilon=0.25):
        self.k1, self.b, self.eps = k1, b, epsilon
        self.tf = [Counter(d) for d in corpus]
        self.dl = [len(d) for d in corpus]
        self.avgdl = sum(self.dl) / len(corpus)
        N = len(corpus)
        df = Counter()
        for d in corpus:
            df.update(set(d))
        self.idf = {}
        for w, n in df.items():
            self.idf[w] = math.log(1 + (N - n + 0.5) / (n + 0.5)) if self.plus_one else math.log((N - n + 0.5) / (n + 0.5))
        mean = sum(self.idf.values()) / len(self.idf)
        for w in self.idf:
            if self.idf[w] < 0:
                if self.floor == "epsilon":
                    self.idf[w] = epsilon * mean
                elif self.floor == "zero":
                    self.idf[w] = 0.0

    def get_scores(self, query):
        if self.dedupe:
            query = set(query)
        scores = torch.zeros(len(self.tf), dtype=torch.float64)
        for i, (tf, dl) in enumerate(zip(self.tf, self.dl)):
            for w in query:
                f = tf[w]
                scores[i] += self.idf.get(w, 0.0) * f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * dl / self.avgdl))
        return scores


@wrong("ch16.BM25", diagnosis="plus-one")
class BM25PlusOne(_LoopBM25):
    plus_one = True


@wrong("ch16.BM25", diagnosis="no-floor")
class BM25NoFloor(_LoopBM25):
    floor = "none"


@wrong("ch16.BM25", diagnosis="floor-zero")
class BM25FloorZero(_LoopBM25):
    floor = "zero"


@wrong("ch16.BM25", diagnosis="query-set")
class BM25UniqueQuery(_LoopBM25):
    dedupe = True


# -- reciprocal_rank_fusion -------------------------------------------------------------------
@wrong("ch16.reciprocal_rank_fusion", diagnosis="rank-from-zero")
def rrf_zero_based(results, k=60):
    fused = {}
    for _, ids in results:
        for rank, doc in enumerate(ids.tolist()):
            fused[doc] = fused.get(doc, 0) + 1 / (k + rank)
    items = sorted(fused.items(), key=lambda x: -x[1])
    return torch.tensor([s for _, s in items], dtype=torch.float64), torch.tensor([d for d, _ in items])


@wrong("ch16.reciprocal_rank_fusion", diagnosis="scores-not-ranks")
def rrf_sum_of_scores(results, k=60):
    fused = Counter()
    for scores, ids in results:
        for s, doc in zip(scores.tolist(), ids.tolist()):
            fused[doc] += s
    items = fused.most_common()
    return torch.tensor([s for _, s in items], dtype=torch.float64), torch.tensor([d for d, _ in items])


@wrong("ch16.reciprocal_rank_fusion", diagnosis="no-k")
def rrf_without_k(results, k=60):
    fused = {}
    for _, ids in results:
        for rank, doc in enumerate(ids.tolist(), start=1):
            fused[doc] = fused.get(doc, 0) + 1 / rank
    items = sorted(fused.items(), key=lambda x: -x[1])
    return torch.tensor([s for _, s in items], dtype=torch.float64), torch.tensor([d for d, _ in items])


# -- recall_mrr -------------------------------------------------------------------------------
@wrong("ch16.recall_mrr", diagnosis="over-retrieved")
def metrics_precision(retrieved, relevant, k):
    rec, rr = [], []
    for got, gold in zip(retrieved, relevant):
        top = got[:k]
        rec.append(len([d for d in top if d in gold]) / len(top))
        ranks = [i for i, d in enumerate(top, 1) if d in gold]
        rr.append(1 / ranks[0] if ranks else 0)
    return sum(rec) / len(rec), sum(rr) / len(rr)


@wrong("ch16.recall_mrr", diagnosis="hit-rate")
def metrics_hit_rate(retrieved, relevant, k):
    rec, rr = 0, 0
    for got, gold in zip(retrieved, relevant):
        hits = [i for i, d in enumerate(got[:k], 1) if d in gold]
        rec += 1 if hits else 0
        rr += 1 / hits[0] if hits else 0
    return rec / len(retrieved), rr / len(retrieved)


@wrong("ch16.recall_mrr", diagnosis="mrr-not-cut")
def metrics_rank_anywhere(retrieved, relevant, k):
    rec, rr = 0.0, 0.0
    for got, gold in zip(retrieved, relevant):
        rec += len(set(got[:k]) & set(gold)) / len(set(gold))
        for i, d in enumerate(got):
            if d in gold:
                rr += 1 / (i + 1)
                break
    return rec / len(retrieved), rr / len(retrieved)


# -- support_score ----------------------------------------------------------------------------
@wrong("ch16.support_score", diagnosis="case-sensitive")
def support_keeps_case(answer, passage):
    strip = str.maketrans("", "", string.punctuation)
    words = [w for w in answer.translate(strip).split() if w not in ("a", "an", "the")]
    if not words:
        return 0.0
    vocab = set(passage.translate(strip).split())
    return sum(w in vocab for w in words) / len(words)


@wrong("ch16.support_score", diagnosis="punctuation-kept")
def support_split_only(answer, passage):
    words = [w for w in answer.lower().split() if w not in ("a", "an", "the")]
    if not words:
        return 0.0
    vocab = set(passage.lower().split())
    return sum(w in vocab for w in words) / len(words)


@wrong("ch16.support_score", diagnosis="substring")
def support_in_text(answer, passage):
    strip = str.maketrans("", "", string.punctuation)
    words = [w for w in answer.lower().translate(strip).split() if w not in ("a", "an", "the")]
    if not words:
        return 0.0
    return sum(w in passage.lower() for w in words) / len(words)


@wrong("ch16.support_score", diagnosis="empty-supported")
def support_vacuous(answer, passage):
    strip = str.maketrans("", "", string.punctuation)
    words = [w for w in answer.lower().translate(strip).split() if w not in ("a", "an", "the")]
    vocab = set(passage.lower().translate(strip).split())
    missing = [w for w in words if w not in vocab]
    return 1.0 - len(missing) / max(len(words), 1)
