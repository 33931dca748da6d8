"""Correct answers to chapter 16, in other styles than the reference."""
import math
import re
import string
from collections import Counter, defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from . import right


# -- merge_splits ---------------------------------------------------------------------------
@right("ch16.merge_splits", style="recompute the joined length each time (no running total)")
def merge_by_join(pieces, separator, chunk_size, chunk_overlap):
    def size(run):
        return len(separator.join(run))

    chunks, run = [], []
    for piece in pieces:
        if run and size(run + [piece]) > chunk_size:
            text = separator.join(run).strip()
            if text:
                chunks.append(text)
            while run and (size(run) > chunk_overlap or size(run + [piece]) > chunk_size):
                run.pop(0)
        run.append(piece)
    text = separator.join(run).strip()
    if text:
        chunks.append(text)
    return chunks


@right("ch16.merge_splits", style="indices into the piece list instead of a run list")
def merge_by_indices(pieces, separator, chunk_size, chunk_overlap):
    lengths = [len(p) for p in pieces]
    s = len(separator)

    def span(i, j):  # length of pieces[i:j] joined
        return sum(lengths[i:j]) + s * max(j - i - 1, 0)

    chunks, first = [], 0
    for j in range(len(pieces)):
        if j > first and span(first, j + 1) > chunk_size:
            text = separator.join(pieces[first:j]).strip()
            if text:
                chunks.append(text)
            while first < j and (span(first, j) > chunk_overlap or span(first, j + 1) > chunk_size):
                first += 1
    text = separator.join(pieces[first:]).strip()
    if text:
        chunks.append(text)
    return chunks


# -- recursive_split ------------------------------------------------------------------------
def _merge(pieces, chunk_size, chunk_overlap):
    return merge_by_join(pieces, "", chunk_size, chunk_overlap)


@right("ch16.recursive_split", style="re.split with a capture group, like LangChain")
def split_regex(text, separators, chunk_size, chunk_overlap):
    chosen, rest = "", []
    for i, sep in enumerate(separators):
        if sep == "":
            break
        if re.search(re.escape(sep), text):
            chosen, rest = sep, separators[i + 1:]
            break
    if chosen:
        parts = re.split(f"({re.escape(chosen)})", text)
        pieces = [parts[0]] + [parts[i] + parts[i + 1] for i in range(1, len(parts), 2)]
    else:
        pieces = list(text)
    out, good = [], []
    for p in filter(None, pieces):
        if len(p) < chunk_size:
            good.append(p)
            continue
        if good:
            out.extend(_merge(good, chunk_size, chunk_overlap))
            good = []
        out.extend(split_regex(p, rest, chunk_size, chunk_overlap) if rest else [p])
    if good:
        out.extend(_merge(good, chunk_size, chunk_overlap))
    return out


@right("ch16.recursive_split", style="an explicit stack of (text, separators) instead of recursion")
def split_iterative(text, separators, chunk_size, chunk_overlap):
    out = []
    stack = [("piece", text, list(separators))]
    while stack:
        kind, item, seps = stack.pop()
        if kind == "chunks":
            out.extend(item)
            continue
        sep = next((s for s in seps if s == "" or s in item), seps[-1] if seps else "")
        rest = seps[seps.index(sep) + 1:] if sep else []
        if sep:
            bits = item.split(sep)
            pieces = [b for b in [bits[0]] + [sep + b for b in bits[1:]] if b]
        else:
            pieces = list(item)
        todo, good = [], []
        for p in pieces:
            if len(p) < chunk_size:
                good.append(p)
            else:
                if good:
                    todo.append(("chunks", _merge(good, chunk_size, chunk_overlap), None))
                    good = []
                todo.append(("piece", p, rest) if rest else ("chunks", [p], None))
        if good:
            todo.append(("chunks", _merge(good, chunk_size, chunk_overlap), None))
        stack.extend(reversed(todo))
    return out


# -- mean_pool --------------------------------------------------------------------------------
@right("ch16.mean_pool", style="einsum and float64 inside")
def pool_einsum(hidden, attention_mask):
    m = attention_mask.double()
    summed = torch.einsum("btd,bt->bd", hidden.double(), m)
    mean = summed / m.sum(1, keepdim=True).clamp(min=1e-9)
    return (mean / mean.norm(dim=-1, keepdim=True).clamp(min=1e-12)).to(hidden.dtype)


@right("ch16.mean_pool", style="a loop over sentences with boolean indexing")
def pool_loop(hidden, attention_mask):
    rows = []
    for h, m in zip(hidden, attention_mask):
        v = h[m.bool()].mean(0)
        rows.append(v / v.norm())
    return torch.stack(rows)


# -- embed_texts ------------------------------------------------------------------------------
@right("ch16.embed_texts", style="one text at a time, no padding")
def embed_one_by_one(texts, tokenizer, model, batch_size=32, max_length=256):
    rows = []
    with torch.no_grad():
        for t in texts:
            enc = tokenizer(t, truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(F.normalize(model(**enc).last_hidden_state[0].mean(0), dim=0))
    return torch.stack(rows)


@right("ch16.embed_texts", style="batches in input order, pooled with einsum")
def embed_batches(texts, tokenizer, model, batch_size=32, max_length=256):
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding="longest", truncation=True, max_length=max_length,
                        return_tensors="pt")
        with torch.inference_mode():
            h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                      token_type_ids=enc["token_type_ids"]).last_hidden_state
        m = enc["attention_mask"].float()
        v = torch.einsum("btd,bt->bd", h, m) / m.sum(1, keepdim=True)
        out.append(F.normalize(v, dim=-1))
    return torch.cat(out).clone()


# -- dense_search -----------------------------------------------------------------------------
@right("ch16.dense_search", style="numpy argsort on cosine similarities")
def search_numpy(queries, docs, k):
    q = queries.numpy() / np.linalg.norm(queries.numpy(), axis=1, keepdims=True)
    d = docs.numpy() / np.linalg.norm(docs.numpy(), axis=1, keepdims=True)
    sim = q @ d.T
    ids = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return torch.from_numpy(np.take_along_axis(sim, ids, axis=1)).float(), torch.from_numpy(ids).long()


@right("ch16.dense_search", style="F.cosine_similarity with broadcasting, then sort")
def search_cosine(queries, docs, k):
    sim = F.cosine_similarity(queries[:, None, :].double(), docs[None, :, :].double(), dim=-1)
    vals, ids = sim.sort(dim=-1, descending=True)
    return vals[:, :k].float(), ids[:, :k]


# -- BM25 -------------------------------------------------------------------------------------
@right("ch16.BM25", style="a dense (N, V) term-frequency matrix")
class BM25Dense:
    def __init__(self, corpus, k1=1.5, b=0.75, epsilon=0.25):
        self.vocab = {w: i for i, w in enumerate(dict.fromkeys(w for d in corpus for w in d))}
        tf = torch.zeros(len(corpus), len(self.vocab), dtype=torch.float64)
        for i, d in enumerate(corpus):
            for w in d:
                tf[i, self.vocab[w]] += 1
        N = len(corpus)
        dl = tf.sum(1)
        n = (tf > 0).sum(0).double()
        idf = torch.log(N - n + 0.5) - torch.log(n + 0.5)
        idf = torch.where(idf < 0, epsilon * idf.mean(), idf)
        denom = tf + k1 * (1 - b + b * dl[:, None] / dl.mean())
        self.w = idf * tf * (k1 + 1) / denom                    # (N, V)

    def get_scores(self, query):
        cols = [self.vocab[w] for w in query if w in self.vocab]
        if not cols:
            return torch.zeros(self.w.shape[0], dtype=torch.float64)
        return self.w[:, cols].sum(1)


@right("ch16.BM25", style="postings in dictionaries, numpy accumulation")
class BM25Postings:
    def __init__(self, corpus, k1=1.5, b=0.75, epsilon=0.25):
        N = len(corpus)
        lengths = np.array([len(d) for d in corpus], dtype=np.float64)
        avgdl = lengths.mean()
        postings = defaultdict(list)
        for i, d in enumerate(corpus):
            for w, f in Counter(d).items():
                postings[w].append((i, f))
        idf = {w: math.log(N - len(p) + 0.5) - math.log(len(p) + 0.5) for w, p in postings.items()}
        floor = epsilon * sum(idf.values()) / len(idf)
        self.n = N
        self.post = {}
        for w, p in postings.items():
            docs = np.array([i for i, _ in p])
            f = np.array([f for _, f in p], dtype=np.float64)
            weight = idf[w] if idf[w] >= 0 else floor
            self.post[w] = (docs, weight * f * (k1 + 1) / (f + k1 * (1 - b + b * lengths[docs] / avgdl)))

    def get_scores(self, query):
        scores = np.zeros(self.n)
        for w in query:
            if w in self.post:
                docs, values = self.post[w]
                np.add.at(scores, docs, values)
        return torch.from_numpy(scores)


# -- reciprocal_rank_fusion -------------------------------------------------------------------
@right("ch16.reciprocal_rank_fusion", style="scatter-add into a tensor over all ids")
def rrf_tensor(results, k=60):
    all_ids = torch.cat([ids for _, ids in results])
    size = int(all_ids.max()) + 1
    fused = torch.zeros(size, dtype=torch.float64)
    present = torch.zeros(size, dtype=torch.bool)
    for _, ids in results:
        ranks = torch.arange(1, len(ids) + 1, dtype=torch.float64)
        fused.index_add_(0, ids.long(), 1.0 / (k + ranks))
        present[ids.long()] = True
    ids = present.nonzero().flatten()
    order = fused[ids].argsort(descending=True, stable=True)
    return fused[ids][order], ids[order]


@right("ch16.reciprocal_rank_fusion", style="defaultdict and Python sorting (float)")
def rrf_dict(results, k=60):
    scores = defaultdict(float)
    for _, ids in results:
        for r, d in enumerate(ids.tolist()):
            scores[d] += 1 / (r + 1 + k)
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    return (torch.tensor([s for _, s in ranked], dtype=torch.float64),
            torch.tensor([d for d, _ in ranked], dtype=torch.long))


# -- recall_mrr -------------------------------------------------------------------------------
@right("ch16.recall_mrr", style="numpy boolean matrix")
def metrics_numpy(retrieved, relevant, k):
    recalls, rrs = [], []
    for got, gold in zip(retrieved, relevant):
        hit = np.isin(np.array(got[:k]), np.array(list(set(gold))))
        recalls.append(hit.sum() / len(set(gold)))
        first = np.flatnonzero(hit)
        rrs.append(1.0 / (first[0] + 1) if first.size else 0.0)
    return float(np.mean(recalls)), float(np.mean(rrs))


@right("ch16.recall_mrr", style="a dictionary of ranks per query, returned as 0-dim tensors")
def metrics_ranks(retrieved, relevant, k):
    recall = mrr = 0.0
    for got, gold in zip(retrieved, relevant):
        rank = {doc: r for r, doc in enumerate(got, start=1) if r <= k}
        found = [rank[g] for g in set(gold) if g in rank]
        recall += len(found) / len(set(gold))
        mrr += 1 / min(found) if found else 0.0
    n = len(retrieved)
    return torch.tensor(recall / n, dtype=torch.float64), torch.tensor(mrr / n, dtype=torch.float64)


# -- support_score ----------------------------------------------------------------------------
@right("ch16.support_score", style="regular expressions and a Counter")
def support_regex(answer, passage):
    def words(s):
        s = re.sub(f"[{re.escape(string.punctuation)}]", "", s.lower())
        return [w for w in re.split(r"\s+", s) if w and w not in {"a", "an", "the"}]

    said = words(answer)
    have = Counter(words(passage))
    return sum(1 for w in said if have[w]) / len(said) if said else 0.0


@right("ch16.support_score", style="str.translate and set membership")
def support_translate(answer, passage):
    table = str.maketrans("", "", string.punctuation)
    articles = {"a", "an", "the"}
    said = [w for w in answer.lower().translate(table).split() if w not in articles]
    vocab = {w for w in passage.lower().translate(table).split()} - articles
    if len(said) == 0:
        return 0.0
    return float(np.mean([w in vocab for w in said]))
