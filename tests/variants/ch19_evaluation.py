"""Correct answers to chapter 19, in other styles than the reference."""
import itertools
import math
import re
import string
from collections import Counter, defaultdict
from fractions import Fraction

import numpy as np
import torch
import torch.nn.functional as F

from solutions.ch19_evaluation import tokenize_13a

from . import right


# -- strided_perplexity ---------------------------------------------------------------------
@right("ch19.strided_perplexity", style="a set of scored positions, F.cross_entropy per window")
def ppl_scored_set(model, ids, max_length, stride):
    scored, nll = set(), 0.0
    N = len(ids)
    begin = 0
    while True:
        end = min(begin + max_length, N)
        logits = model(ids[begin:end].unsqueeze(0)).squeeze(0)
        new = [t for t in range(begin + 1, end) if t not in scored]
        if new:
            rows = torch.tensor(new) - begin - 1
            nll += F.cross_entropy(logits[rows].double(), ids[new], reduction="sum").item()
            scored.update(new)
        if end == N:
            break
        begin += stride
    return math.exp(nll / len(scored))


@right("ch19.strided_perplexity", style="token by token in float64, the mean via log-sum")
def ppl_token_loop(model, ids, max_length, stride):
    losses = []
    prev_end = 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        logits = model(ids[begin:end][None])[0].to(torch.float64)
        for t in range(max(prev_end, begin + 1), end):
            row = logits[t - begin - 1]
            losses.append((torch.logsumexp(row, 0) - row[ids[t]]).item())
        prev_end = end
        if end >= len(ids):
            break
    return float(np.exp(np.mean(losses)))


# -- bleu_stats -----------------------------------------------------------------------------
@right("ch19.bleu_stats", style="dicts of counts, max over references by hand")
def bleu_stats_dicts(hypothesis, references, max_n=4):
    h = tokenize_13a(hypothesis).split()
    rs = [tokenize_13a(r).split() for r in references]
    matches, totals = [0] * max_n, [0] * max_n
    for n in range(1, max_n + 1):
        best = defaultdict(int)
        for r in rs:
            counts = defaultdict(int)
            for i in range(len(r) - n + 1):
                counts[" ".join(r[i:i + n])] += 1
            for k, v in counts.items():
                best[k] = max(best[k], v)
        mine = defaultdict(int)
        for i in range(len(h) - n + 1):
            mine[" ".join(h[i:i + n])] += 1
        totals[n - 1] = sum(mine.values())
        matches[n - 1] = sum(min(v, best.get(k, 0)) for k, v in mine.items())
    lens = sorted(len(r) for r in rs)
    ref_len = min(lens, key=lambda L: abs(L - len(h)))   # sorted: the shorter wins a tie
    return {"matches": matches, "totals": totals, "hyp_len": len(h), "ref_len": ref_len}


@right("ch19.bleu_stats", style="Counter intersections, numpy for the closest length")
def bleu_stats_counters(hypothesis, references, max_n=4):
    h = tokenize_13a(hypothesis).split()
    rs = [tokenize_13a(r).split() for r in references]

    def grams(t, n):
        return Counter(zip(*[t[i:] for i in range(n)]))
    matches, totals = [], []
    for n in range(1, max_n + 1):
        hg = grams(h, n)
        clipped = Counter()
        for r in rs:
            clipped = clipped | (hg & grams(r, n))
        matches.append(sum(clipped.values()))
        totals.append(sum(hg.values()))
    lens = np.array([len(r) for r in rs])
    diffs = np.abs(lens - len(h))
    ref_len = int(lens[diffs == diffs.min()].min())
    return {"matches": matches, "totals": totals, "hyp_len": len(h), "ref_len": ref_len}


# -- corpus_bleu ----------------------------------------------------------------------------
def _stats(h, refs):
    return bleu_stats_counters(h, refs)


@right("ch19.corpus_bleu", style="numpy arrays, the smoothing as a running power of two")
def corpus_bleu_numpy(hypotheses, references, effective_order=False):
    st = [_stats(h, r) for h, r in zip(hypotheses, references)]
    m = np.sum([s["matches"] for s in st], axis=0).astype(float)
    t = np.sum([s["totals"] for s in st], axis=0).astype(float)
    c = sum(s["hyp_len"] for s in st)
    r = sum(s["ref_len"] for s in st)
    if m.sum() == 0:
        return 0.0
    reached = int(np.argmin(t > 0)) if (t == 0).any() else 4
    logp = np.full(4, -9999999999.0)
    zeros = np.cumsum(m[:reached] == 0)
    for n in range(reached):
        logp[n] = np.log(100 * m[n] / t[n]) if m[n] > 0 else np.log(100 / (2.0 ** zeros[n] * t[n]))
    order = reached if effective_order else 4
    bp = 1.0 if c >= r else (np.exp(1 - r / c) if c else 0.0)
    return float(bp * np.exp(logp[:order].mean()))


@right("ch19.corpus_bleu", style="geometric mean as a product of powers")
def corpus_bleu_product(hypotheses, references, effective_order=False):
    m, t, c, r = [0] * 4, [0] * 4, 0, 0
    for h, refs in zip(hypotheses, references):
        s = _stats(h, refs)
        m = [a + b for a, b in zip(m, s["matches"])]
        t = [a + b for a, b in zip(t, s["totals"])]
        c, r = c + s["hyp_len"], r + s["ref_len"]
    if not any(m):
        return 0.0
    precisions, k = [], 0
    for mi, ti in zip(m, t):
        if ti == 0:
            break
        if mi == 0:
            k += 1
        precisions.append(mi / ti if mi else 1 / (2 ** k * ti))
    if not effective_order and len(precisions) < 4:
        return 0.0                                  # exp(-9999999999 / 4) underflows to 0
    score = 100.0
    for p in precisions:
        score *= p ** (1 / len(precisions))
    return score * (math.exp(1 - r / c) if c < r else 1.0)


# -- sentence_bleu --------------------------------------------------------------------------
@right("ch19.sentence_bleu", style="reuses corpus BLEU written another way")
def sentence_bleu_via_corpus(hypothesis, references):
    return corpus_bleu_numpy([hypothesis], [references], effective_order=True)


@right("ch19.sentence_bleu", style="self-contained, log-space with explicit orders")
def sentence_bleu_direct(hypothesis, references):
    s = bleu_stats_dicts(hypothesis, references)
    if sum(s["matches"]) == 0:
        return 0.0
    logs, k = [], 0
    for mi, ti in zip(s["matches"], s["totals"]):
        if ti == 0:
            break
        k += mi == 0
        logs.append(math.log(100 * mi / ti) if mi else math.log(100 / (2 ** k * ti)))
    c, r = s["hyp_len"], s["ref_len"]
    return math.exp(min(0.0, 1 - r / c) + sum(logs) / len(logs))


# -- rouge_l --------------------------------------------------------------------------------
@right("ch19.rouge_l", style="recursive LCS with memoisation, findall tokens")
def rouge_l_memo(target, prediction):
    import functools

    t = re.findall(r"[a-z0-9]+", target.lower())
    p = re.findall(r"[a-z0-9]+", prediction.lower())
    if not t or not p:
        return {"precision": 0.0, "recall": 0.0, "fmeasure": 0.0}

    @functools.lru_cache(maxsize=None)
    def lcs(i, j):
        if i == len(t) or j == len(p):
            return 0
        return 1 + lcs(i + 1, j + 1) if t[i] == p[j] else max(lcs(i + 1, j), lcs(i, j + 1))
    L = lcs(0, 0)
    P, R = L / len(p), L / len(t)
    return {"precision": P, "recall": R, "fmeasure": (2 * P * R / (P + R)) if L else 0.0}


@right("ch19.rouge_l", style="numpy DP table, exact fractions")
def rouge_l_numpy(target, prediction):
    t = re.sub(r"[^a-z0-9]", " ", target.lower()).split()
    p = re.sub(r"[^a-z0-9]", " ", prediction.lower()).split()
    if len(t) == 0 or len(p) == 0:
        return {"precision": 0.0, "recall": 0.0, "fmeasure": 0.0}
    table = np.zeros((len(t) + 1, len(p) + 1), dtype=int)
    for i in range(len(t)):
        for j in range(len(p)):
            table[i + 1, j + 1] = table[i, j] + 1 if t[i] == p[j] else max(table[i, j + 1], table[i + 1, j])
    L = int(table[-1, -1])
    P, R = Fraction(L, len(p)), Fraction(L, len(t))
    f = 2 * P * R / (P + R) if L else Fraction(0)
    return {"precision": float(P), "recall": float(R), "fmeasure": float(f)}


# -- squad_scores ---------------------------------------------------------------------------
def _normalize(s):
    s = s.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(w for w in s.split() if w not in ("a", "an", "the"))


@right("ch19.squad_scores", style="str.translate and word filtering")
def squad_translate(predictions, answers):
    em = f1 = 0.0
    for pred, golds in zip(predictions, answers):
        em += max(_normalize(pred) == _normalize(g) for g in golds)
        best = 0.0
        for g in golds:
            p, q = _normalize(pred).split(), _normalize(g).split()
            if not p or not q:
                score = float(p == q)
            else:
                same = sum((Counter(p) & Counter(q)).values())
                score = 0.0 if same == 0 else 2 * same / (len(p) + len(q))
            best = max(best, score)
        f1 += best
    return {"exact_match": 100 * em / len(predictions), "f1": 100 * f1 / len(predictions)}


@right("ch19.squad_scores", style="numpy means, regex normalisation in steps")
def squad_numpy(predictions, answers):
    def norm(s):
        s = s.lower()
        s = re.sub("[" + re.escape(string.punctuation) + "]", "", s)
        s = re.sub(r"\b(a|an|the)\b", " ", s)
        return s.split()

    def f1(p, g):
        if len(p) == 0 or len(g) == 0:
            return float(p == g)
        common = Counter(p) & Counter(g)
        k = sum(common.values())
        if k == 0:
            return 0.0
        prec, rec = k / len(p), k / len(g)
        return 2 * prec * rec / (prec + rec)
    em = np.array([max(float(norm(p) == norm(g)) for g in gs) for p, gs in zip(predictions, answers)])
    f = np.array([max(f1(norm(p), norm(g)) for g in gs) for p, gs in zip(predictions, answers)])
    return {"exact_match": float(em.mean() * 100), "f1": float(f.mean() * 100)}


# -- continuation_loglik --------------------------------------------------------------------
@right("ch19.continuation_loglik", style="cross_entropy with ignore_index on the context")
def loglik_cross_entropy(model, context_ids, continuation_ids):
    ids = torch.tensor([context_ids + continuation_ids])
    logits = model(ids)[0, :-1].double()
    labels = ids[0, 1:].clone()
    labels[: len(context_ids) - 1] = -100
    ll = -F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum").item()
    mask = labels != -100
    greedy = bool((logits[mask].argmax(-1) == labels[mask]).all())
    return ll, greedy


@right("ch19.continuation_loglik", style="one step at a time (a model call per token)")
def loglik_incremental(model, context_ids, continuation_ids):
    ids, ll, greedy = list(context_ids), 0.0, True
    for tok in continuation_ids:
        logits = model(torch.tensor([ids]))[0, -1].double()
        ll += (logits.log_softmax(-1)[tok]).item()
        greedy = greedy and int(logits.argmax()) == tok
        ids.append(tok)
    return ll, greedy


# -- multiple_choice ------------------------------------------------------------------------
@right("ch19.multiple_choice", style="plain lists and max(range(...))")
def mc_lists(model, context_ids, choices_ids, choices_text):
    lls = [loglik_cross_entropy(model, context_ids, c)[0] for c in choices_ids]
    norm = [ll / len(t) for ll, t in zip(lls, choices_text)]
    return {"loglik": torch.tensor(lls, dtype=torch.float64), "pred": max(range(len(lls)), key=lls.__getitem__),
            "pred_norm": max(range(len(norm)), key=norm.__getitem__)}


@right("ch19.multiple_choice", style="numpy argmax, lengths as bytes of ASCII text")
def mc_numpy(model, context_ids, choices_ids, choices_text):
    lls = np.array([loglik_incremental(model, context_ids, c)[0] for c in choices_ids])
    lengths = np.array([len(t) for t in choices_text], dtype=float)
    return {"loglik": torch.from_numpy(lls), "pred": int(np.argmax(lls)), "pred_norm": int(np.argmax(lls / lengths))}


# -- detection_metrics ----------------------------------------------------------------------
@right("ch19.detection_metrics", style="a confusion matrix with bincount")
def metrics_bincount(flagged, harmful):
    cm = torch.bincount(harmful.long() * 2 + flagged.long(), minlength=4).tolist()
    tn, fp, fn, tp = cm
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
            "fpr": fp / (fp + tn) if fp + tn else 0.0}


@right("ch19.detection_metrics", style="a Python loop over pairs")
def metrics_loop(flagged, harmful):
    tp = fp = fn = tn = 0
    for f, h in zip(flagged.tolist(), harmful.tolist()):
        if f and h:
            tp += 1
        elif f:
            fp += 1
        elif h:
            fn += 1
        else:
            tn += 1
    safe = lambda a, b: a / b if b > 0 else 0.0  # noqa: E731
    p, r = safe(tp, tp + fp), safe(tp, tp + fn)
    return {"precision": p, "recall": r, "f1": safe(2 * p * r, p + r), "fpr": safe(fp, fp + tn)}


# -- weat_effect_size -----------------------------------------------------------------------
@right("ch19.weat_effect_size", style="F.cosine_similarity with broadcasting")
def weat_cosine(X, Y, A, B):
    def s(W):
        ca = F.cosine_similarity(W[:, None].double(), A[None].double(), dim=-1).mean(1)
        cb = F.cosine_similarity(W[:, None].double(), B[None].double(), dim=-1).mean(1)
        return ca - cb
    sx, sy = s(X), s(Y)
    both = torch.cat([sx, sy])
    return float((sx.mean() - sy.mean()) / both.std())


@right("ch19.weat_effect_size", style="numpy, the sample std written out")
def weat_numpy(X, Y, A, B):
    def unit(M):
        M = M.double().numpy()
        return M / np.linalg.norm(M, axis=1, keepdims=True)
    X, Y, A, B = map(unit, (X, Y, A, B))
    sx = (X @ A.T).mean(1) - (X @ B.T).mean(1)
    sy = (Y @ A.T).mean(1) - (Y @ B.T).mean(1)
    allv = np.concatenate([sx, sy])
    sd = math.sqrt(((allv - allv.mean()) ** 2).sum() / (len(allv) - 1))
    return float((sx.mean() - sy.mean()) / sd)


# -- weat_p_value ---------------------------------------------------------------------------
def _assoc(W, A, B):
    W, A, B = (F.normalize(t.double(), dim=1) for t in (W, A, B))
    return (W @ A.T).mean(1) - (W @ B.T).mean(1)


@right("ch19.weat_p_value", style="itertools loop over subsets, sums by hand")
def weat_p_loop(X, Y, A, B):
    s = torch.cat([_assoc(X, A, B), _assoc(Y, A, B)]).tolist()
    n = len(X)
    obs = sum(s[:n]) - sum(s[n:])
    total = sum(s)
    count = hits = 0
    for sub in itertools.combinations(range(2 * n), n):
        stat = 2 * sum(s[i] for i in sub) - total
        hits += stat > obs + 1e-12
        count += 1
    return hits / count


@right("ch19.weat_p_value", style="a 0/1 membership matrix, one matrix product")
def weat_p_matrix(X, Y, A, B):
    s = torch.cat([_assoc(X, A, B), _assoc(Y, A, B)])
    n = len(X)
    combos = list(itertools.combinations(range(2 * n), n))
    member = torch.zeros(len(combos), 2 * n, dtype=torch.float64)
    for row, sub in enumerate(combos):
        member[row, list(sub)] = 1.0
    stats = (2 * member - 1) @ s             # +s for X_i, -s for Y_i
    observed = s[:n].sum() - s[n:].sum()
    return float((stats > observed + 1e-12).double().mean())


# -- exposure -------------------------------------------------------------------------------
@right("ch19.exposure", style="sorting, then the first position of the canary's value")
def exposure_sorted(log_perplexities, canary_index):
    values = sorted(log_perplexities.tolist())
    rank = values.index(log_perplexities[canary_index].item()) + 1
    return math.log2(len(values) / rank)


@right("ch19.exposure", style="numpy searchsorted")
def exposure_searchsorted(log_perplexities, canary_index):
    lp = np.sort(log_perplexities.numpy())
    rank = int(np.searchsorted(lp, log_perplexities[canary_index].item(), side="left")) + 1
    return float(np.log2(len(lp)) - np.log2(rank))


# -- grounding_scores -----------------------------------------------------------------------
@right("ch19.grounding_scores", style="F.cosine_similarity pairwise, float64")
def grounding_pairwise(claims, passages, threshold):
    sim = F.cosine_similarity(claims.double()[:, None, :], passages.double()[None, :, :], dim=-1)
    best, idx = sim.max(dim=1)
    return best.float(), idx, best >= threshold


@right("ch19.grounding_scores", style="a loop over claims with einsum")
def grounding_loop(claims, passages, threshold):
    P = passages / passages.norm(dim=1, keepdim=True)
    scores, index = [], []
    for c in claims:
        sims = torch.einsum("d,pd->p", c / c.norm(), P)
        index.append(int(sims.argmax()))
        scores.append(float(sims.max()))
    score = torch.tensor(scores)
    return score, torch.tensor(index), score >= threshold
