"""Wrong answers to chapter 19, as learners write them."""
import math
import re
import string
from collections import Counter

import torch
import torch.nn.functional as F

from solutions.ch19_evaluation import tokenize_13a

from . import wrong


# -- strided_perplexity ---------------------------------------------------------------------
@wrong("ch19.strided_perplexity", diagnosis="rescored")
def ppl_scores_whole_windows(model, ids, max_length, stride):
    nll, n = 0.0, 0
    for begin in range(0, len(ids), stride):
        window = ids[begin:begin + max_length]
        logits = model(window.unsqueeze(0))[0]
        loss = F.cross_entropy(logits[:-1], window[1:], reduction="sum")
        nll += loss.item()
        n += len(window) - 1
        if begin + max_length >= len(ids):
            break
    return math.exp(nll / n)


@wrong("ch19.strided_perplexity", diagnosis="no-overlap")
def ppl_disjoint_chunks(model, ids, max_length, stride):
    total, count = 0.0, 0
    for start in range(0, len(ids), max_length):
        chunk = ids[start:start + max_length]
        if len(chunk) < 2:
            continue
        logp = torch.log_softmax(model(chunk[None])[0], dim=-1)
        total -= logp[torch.arange(len(chunk) - 1), chunk[1:]].sum().item()
        count += len(chunk) - 1
    return math.exp(total / count)


@wrong("ch19.strided_perplexity", diagnosis="mean-window-ppl")
def ppl_mean_over_windows(model, ids, max_length, stride):
    ppls, prev_end = [], 0
    N = len(ids)
    for begin in range(0, N, stride):
        end = min(begin + max_length, N)
        logp = model(ids[None, begin:end])[0].log_softmax(-1)
        first = max(prev_end, begin + 1)
        t = torch.arange(first, end)
        if len(t):
            ppls.append(math.exp(-logp[t - begin - 1, ids[t]].mean().item()))
        prev_end = end
        if end == N:
            break
    return sum(ppls) / len(ppls)


@wrong("ch19.strided_perplexity", diagnosis="no-shift")
def ppl_without_shift(model, ids, max_length, stride):
    nll, n, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        logp = model(ids[None, begin:end])[0].log_softmax(-1)
        for t in range(max(prev_end, begin + 1), end):
            nll -= logp[t - begin, ids[t]].item()  # the logits at t... for token t
            n += 1
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll / n)


@wrong("ch19.strided_perplexity", diagnosis="unweighted-windows")
def ppl_window_means(model, ids, max_length, stride):
    losses, prev_end = [], 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        logits = model(ids[None, begin:end])[0]
        first = max(prev_end, begin + 1)
        targets = ids[first:end]
        if len(targets):
            losses.append(F.cross_entropy(logits[first - begin - 1:end - begin - 1], targets).item())
        prev_end = end
        if end == len(ids):
            break
    return math.exp(sum(losses) / len(losses))


# -- bleu_stats -----------------------------------------------------------------------------
def _grams(toks, n):
    return Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))


@wrong("ch19.bleu_stats", diagnosis="unclipped")
def bleu_stats_no_clip(hypothesis, references, max_n=4):
    hyp = tokenize_13a(hypothesis).split()
    refs = [tokenize_13a(r).split() for r in references]
    matches, totals = [], []
    for n in range(1, max_n + 1):
        ref_grams = set()
        for r in refs:
            ref_grams |= set(_grams(r, n))
        hyp_grams = [tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1)]
        matches.append(sum(1 for g in hyp_grams if g in ref_grams))
        totals.append(len(hyp_grams))
    ref_len = min(refs, key=lambda r: (abs(len(r) - len(hyp)), len(r)))
    return {"matches": matches, "totals": totals, "hyp_len": len(hyp), "ref_len": len(ref_len)}


@wrong("ch19.bleu_stats", diagnosis="longest-ref")
def bleu_stats_longest_reference(hypothesis, references, max_n=4):
    hyp = tokenize_13a(hypothesis).split()
    refs = [tokenize_13a(r).split() for r in references]
    matches, totals = [], []
    for n in range(1, max_n + 1):
        h = _grams(hyp, n)
        best = Counter()
        for r in refs:
            for g, c in _grams(r, n).items():
                best[g] = max(best[g], c)
        matches.append(sum(min(c, best[g]) for g, c in h.items()))
        totals.append(sum(h.values()))
    return {"matches": matches, "totals": totals, "hyp_len": len(hyp), "ref_len": max(len(r) for r in refs)}


@wrong("ch19.bleu_stats", diagnosis="clip-sum")
def bleu_stats_sum_of_references(hypothesis, references, max_n=4):
    hyp = tokenize_13a(hypothesis).split()
    refs = [tokenize_13a(r).split() for r in references]
    matches, totals = [], []
    for n in range(1, max_n + 1):
        allrefs = Counter()
        for r in refs:
            allrefs += _grams(r, n)     # adds the counts of the references together
        h = _grams(hyp, n)
        matches.append(sum(min(c, allrefs[g]) for g, c in h.items()))
        totals.append(sum(h.values()))
    ref_len = sorted((abs(len(r) - len(hyp)), len(r)) for r in refs)[0][1]
    return {"matches": matches, "totals": totals, "hyp_len": len(hyp), "ref_len": ref_len}


@wrong("ch19.bleu_stats", diagnosis="no-tokenize")
def bleu_stats_plain_split(hypothesis, references, max_n=4):
    hyp = hypothesis.split()
    refs = [r.split() for r in references]
    out = {"matches": [], "totals": [], "hyp_len": len(hyp)}
    for n in range(1, max_n + 1):
        h = _grams(hyp, n)
        best = Counter()
        for r in refs:
            best = best | _grams(r, n)
        out["matches"].append(sum((h & best).values()))
        out["totals"].append(sum(h.values()))
    out["ref_len"] = min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
    return out


# -- corpus_bleu ----------------------------------------------------------------------------
def _stats(h, refs):
    from solutions.ch19_evaluation import bleu_stats

    return bleu_stats(h, refs)


def _one_bleu(h, refs, effective_order):
    s = _stats(h, refs)
    if sum(s["matches"]) == 0:
        return 0.0
    logs, k, order = [-9999999999.0] * 4, 0, 4
    for i in range(4):
        if s["totals"][i] == 0:
            break
        if effective_order:
            order = i + 1
        if s["matches"][i] == 0:
            k += 1
            logs[i] = math.log(100 / (2 ** k * s["totals"][i]))
        else:
            logs[i] = math.log(100 * s["matches"][i] / s["totals"][i])
    c, r = s["hyp_len"], s["ref_len"]
    bp = 1.0 if c >= r else (math.exp(1 - r / c) if c else 0.0)
    return bp * math.exp(sum(logs[:order]) / order)


@wrong("ch19.corpus_bleu", diagnosis="mean-of-sentences")
def corpus_bleu_average(hypotheses, references, effective_order=False):
    scores = [_one_bleu(h, r, effective_order) for h, r in zip(hypotheses, references)]
    return sum(scores) / len(scores)


@wrong("ch19.corpus_bleu", diagnosis="no-smoothing")
def corpus_bleu_unsmoothed(hypotheses, references, effective_order=False):
    st = [_stats(h, r) for h, r in zip(hypotheses, references)]
    m = [sum(s["matches"][i] for s in st) for i in range(4)]
    t = [sum(s["totals"][i] for s in st) for i in range(4)]
    c, r = sum(s["hyp_len"] for s in st), sum(s["ref_len"] for s in st)
    orders = [i for i in range(4) if t[i] > 0] if effective_order else range(4)
    if any(m[i] == 0 for i in orders) or not orders:
        return 0.0
    log_p = sum(math.log(100 * m[i] / t[i]) for i in orders) / len(orders)
    bp = 1.0 if c >= r else math.exp(1 - r / c)
    return bp * math.exp(log_p)


@wrong("ch19.corpus_bleu", diagnosis="bp-inverted")
def corpus_bleu_bp_upside_down(hypotheses, references, effective_order=False):
    st = [_stats(h, r) for h, r in zip(hypotheses, references)]
    m = [sum(s["matches"][i] for s in st) for i in range(4)]
    t = [sum(s["totals"][i] for s in st) for i in range(4)]
    c, r = sum(s["hyp_len"] for s in st), sum(s["ref_len"] for s in st)
    if sum(m) == 0:
        return 0.0
    logs, k, order = [-9999999999.0] * 4, 0, 4
    for i in range(4):
        if t[i] == 0:
            break
        if effective_order:
            order = i + 1
        if m[i] == 0:
            k += 1
            logs[i] = math.log(100 / (2 ** k * t[i]))
        else:
            logs[i] = math.log(100 * m[i] / t[i])
    bp = math.exp(1 - c / r) if c < r else 1.0
    return bp * math.exp(sum(logs[:order]) / order)


@wrong("ch19.corpus_bleu", diagnosis="effective-order-always")
def corpus_bleu_drops_empty_orders(hypotheses, references, effective_order=False):
    st = [_stats(h, r) for h, r in zip(hypotheses, references)]
    m = [sum(s["matches"][i] for s in st) for i in range(4)]
    t = [sum(s["totals"][i] for s in st) for i in range(4)]
    c, r = sum(s["hyp_len"] for s in st), sum(s["ref_len"] for s in st)
    if sum(m) == 0:
        return 0.0
    logs, k = [], 0
    for i in range(4):
        if t[i] == 0:
            break                       # no n-grams of this order: leave it out
        if m[i] == 0:
            k += 1
            logs.append(math.log(100 / (2 ** k * t[i])))
        else:
            logs.append(math.log(100 * m[i] / t[i]))
    bp = 1.0 if c >= r else math.exp(1 - r / c)
    return bp * math.exp(sum(logs) / len(logs))


@wrong("ch19.corpus_bleu", diagnosis="ch19.bleu_stats:longest-ref")
def corpus_bleu_on_longest_reference(hypotheses, references, effective_order=False):
    longest = [[max(r, key=lambda s: len(tokenize_13a(s).split()))] for r in references]
    # the brevity penalty against the longest reference: keep every ref for the n-grams
    st = [_stats(h, r) for h, r in zip(hypotheses, references)]
    for s, r in zip(st, longest):
        s["ref_len"] = len(tokenize_13a(r[0]).split())
    m = [sum(s["matches"][i] for s in st) for i in range(4)]
    t = [sum(s["totals"][i] for s in st) for i in range(4)]
    c, rl = sum(s["hyp_len"] for s in st), sum(s["ref_len"] for s in st)
    if sum(m) == 0:
        return 0.0
    logs, k, order = [-9999999999.0] * 4, 0, 4
    for i in range(4):
        if t[i] == 0:
            break
        if effective_order:
            order = i + 1
        if m[i] == 0:
            k += 1
            logs[i] = math.log(100 / (2 ** k * t[i]))
        else:
            logs[i] = math.log(100 * m[i] / t[i])
    bp = 1.0 if c >= rl else math.exp(1 - rl / c)
    return bp * math.exp(sum(logs[:order]) / order)


# -- sentence_bleu --------------------------------------------------------------------------
@wrong("ch19.sentence_bleu", diagnosis="no-effective-order")
def sentence_bleu_as_corpus(hypothesis, references):
    return _one_bleu(hypothesis, references, effective_order=False)


@wrong("ch19.sentence_bleu", diagnosis="skip-zero-orders")
def sentence_bleu_skips_zero_orders(hypothesis, references):
    s = _stats(hypothesis, references)
    logs = [math.log(100 * m / t) for m, t in zip(s["matches"], s["totals"]) if t > 0 and m > 0]
    if not logs:
        return 0.0
    c, r = s["hyp_len"], s["ref_len"]
    bp = 1.0 if c >= r else math.exp(1 - r / c)
    return bp * math.exp(sum(logs) / len(logs))


@wrong("ch19.sentence_bleu", diagnosis="ch19.corpus_bleu:bp-always")
def sentence_bleu_penalises_long(hypothesis, references):
    s = _stats(hypothesis, references)
    if sum(s["matches"]) == 0:
        return 0.0
    logs, k = [], 0
    for m, t in zip(s["matches"], s["totals"]):
        if t == 0:
            break
        if m == 0:
            k += 1
            logs.append(math.log(100 / (2 ** k * t)))
        else:
            logs.append(math.log(100 * m / t))
    bp = math.exp(1 - s["ref_len"] / s["hyp_len"]) if s["hyp_len"] else 0.0
    return bp * math.exp(sum(logs) / len(logs))


# -- rouge_l --------------------------------------------------------------------------------
def _lcs_len(a, b):
    dp = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            dp[i + 1][j + 1] = dp[i][j] + 1 if x == y else max(dp[i][j + 1], dp[i + 1][j])
    return dp[-1][-1]


def _prf(lcs, n_pred, n_target):
    if not n_pred or not n_target:
        return {"precision": 0.0, "recall": 0.0, "fmeasure": 0.0}
    p, r = lcs / n_pred, lcs / n_target
    return {"precision": p, "recall": r, "fmeasure": 2 * p * r / (p + r) if p + r else 0.0}


@wrong("ch19.rouge_l", diagnosis="characters")
def rouge_on_characters(target, prediction):
    t = re.sub(r"[^a-z0-9]", "", target.lower())
    p = re.sub(r"[^a-z0-9]", "", prediction.lower())
    return _prf(_lcs_len(t, p), len(p), len(t))


@wrong("ch19.rouge_l", diagnosis="swapped")
def rouge_precision_recall_swapped(target, prediction):
    t = re.sub(r"[^a-z0-9]+", " ", target.lower()).split()
    p = re.sub(r"[^a-z0-9]+", " ", prediction.lower()).split()
    out = _prf(_lcs_len(t, p), len(t), len(p))  # divided by the wrong lengths
    return out


@wrong("ch19.rouge_l", diagnosis="unigram-overlap")
def rouge_common_words(target, prediction):
    t = re.sub(r"[^a-z0-9]+", " ", target.lower()).split()
    p = re.sub(r"[^a-z0-9]+", " ", prediction.lower()).split()
    common = sum((Counter(t) & Counter(p)).values())
    return _prf(common, len(p), len(t))


@wrong("ch19.rouge_l", diagnosis="whitespace-tokens")
def rouge_split_only(target, prediction):
    t, p = target.split(), prediction.split()
    return _prf(_lcs_len(t, p), len(p), len(t))


# -- squad_scores ---------------------------------------------------------------------------
def _norm(s):
    s = s.lower()
    s = "".join(c for c in s if c not in string.punctuation)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _f1(p, g):
    p, g = _norm(p).split(), _norm(g).split()
    if not p or not g:
        return float(p == g)
    same = sum((Counter(p) & Counter(g)).values())
    if not same:
        return 0.0
    pr, rc = same / len(p), same / len(g)
    return 2 * pr * rc / (pr + rc)


@wrong("ch19.squad_scores", diagnosis="no-normalisation")
def squad_raw_exact_match(predictions, answers):
    em = [max(float(p.strip() == g.strip()) for g in gs) for p, gs in zip(predictions, answers)]
    f1 = [max(_f1(p, g) for g in gs) for p, gs in zip(predictions, answers)]
    return {"exact_match": 100 * sum(em) / len(em), "f1": 100 * sum(f1) / len(f1)}


@wrong("ch19.squad_scores", diagnosis="set-f1")
def squad_f1_with_sets(predictions, answers):
    def f1(p, g):
        p, g = set(_norm(p).split()), set(_norm(g).split())
        if not p or not g:
            return float(p == g)
        same = len(p & g)
        if same == 0:
            return 0.0
        pr, rc = same / len(p), same / len(g)
        return 2 * pr * rc / (pr + rc)
    em = [max(float(_norm(p) == _norm(g)) for g in gs) for p, gs in zip(predictions, answers)]
    f = [max(f1(p, g) for g in gs) for p, gs in zip(predictions, answers)]
    return {"exact_match": 100 * sum(em) / len(em), "f1": 100 * sum(f) / len(f)}


@wrong("ch19.squad_scores", diagnosis="mean-over-golds")
def squad_average_over_golds(predictions, answers):
    em = [sum(float(_norm(p) == _norm(g)) for g in gs) / len(gs) for p, gs in zip(predictions, answers)]
    f = [sum(_f1(p, g) for g in gs) / len(gs) for p, gs in zip(predictions, answers)]
    return {"exact_match": 100 * sum(em) / len(em), "f1": 100 * sum(f) / len(f)}


@wrong("ch19.squad_scores", diagnosis="punctuation-to-space")
def squad_punctuation_as_space(predictions, answers):
    def norm(s):
        s = re.sub(f"[{re.escape(string.punctuation)}]", " ", s.lower())
        s = re.sub(r"\b(a|an|the)\b", " ", s)
        return " ".join(s.split())

    def f1(p, g):
        p, g = norm(p).split(), norm(g).split()
        if not p or not g:
            return float(p == g)
        same = sum((Counter(p) & Counter(g)).values())
        return 0.0 if not same else 2 * same / (len(p) + len(g))
    em = [max(float(norm(p) == norm(g)) for g in gs) for p, gs in zip(predictions, answers)]
    f = [max(f1(p, g) for g in gs) for p, gs in zip(predictions, answers)]
    return {"exact_match": 100 * sum(em) / len(em), "f1": 100 * sum(f) / len(f)}


@wrong("ch19.squad_scores", diagnosis="articles-anywhere")
def squad_strips_articles_everywhere(predictions, answers):
    def norm(s):
        s = "".join(c for c in s.lower() if c not in string.punctuation)
        for art in ("the", "an", "a"):
            s = s.replace(art, " ")
        return " ".join(s.split())

    def f1(p, g):
        p, g = norm(p).split(), norm(g).split()
        if not p or not g:
            return float(p == g)
        same = sum((Counter(p) & Counter(g)).values())
        return 0.0 if not same else 2 * same / (len(p) + len(g))
    em = [max(float(norm(p) == norm(g)) for g in gs) for p, gs in zip(predictions, answers)]
    f = [max(f1(p, g) for g in gs) for p, gs in zip(predictions, answers)]
    return {"exact_match": 100 * sum(em) / len(em), "f1": 100 * sum(f) / len(f)}


# -- continuation_loglik --------------------------------------------------------------------
@wrong("ch19.continuation_loglik", diagnosis="prompt-included")
def loglik_whole_sequence(model, context_ids, continuation_ids):
    ids = torch.tensor(context_ids + continuation_ids)
    logits = model(ids[None])[0]
    logp = F.log_softmax(logits[:-1], dim=-1)
    token_lp = logp.gather(1, ids[1:, None]).squeeze(1)
    greedy = bool((logits[:-1].argmax(-1)[-len(continuation_ids):] == ids[-len(continuation_ids):]).all())
    return token_lp.sum().item(), greedy


@wrong("ch19.continuation_loglik", diagnosis="no-shift")
def loglik_same_position(model, context_ids, continuation_ids):
    ids = torch.tensor(context_ids + continuation_ids)
    logp = model(ids[None])[0].log_softmax(-1)
    n = len(continuation_ids)
    pos = torch.arange(len(ids) - n, len(ids))
    lp = logp[pos, ids[pos]]
    return lp.sum().item(), bool((logp[pos].argmax(-1) == ids[pos]).all())


@wrong("ch19.continuation_loglik", diagnosis="mean")
def loglik_mean(model, context_ids, continuation_ids):
    ids = torch.tensor(context_ids + continuation_ids)
    logp = model(ids[None, :-1])[0].log_softmax(-1)[-len(continuation_ids):]
    target = torch.tensor(continuation_ids)
    return logp[torch.arange(len(target)), target].mean().item(), bool((logp.argmax(-1) == target).all())


@wrong("ch19.continuation_loglik", diagnosis="raw-logits")
def loglik_of_logits(model, context_ids, continuation_ids):
    ids = torch.tensor(context_ids + continuation_ids)
    logits = model(ids[None, :-1])[0][-len(continuation_ids):]
    target = torch.tensor(continuation_ids)
    return logits[torch.arange(len(target)), target].sum().item(), bool((logits.argmax(-1) == target).all())


# -- multiple_choice ------------------------------------------------------------------------
def _ll(model, ctx, cont):
    ids = torch.tensor(ctx + cont)
    logp = model(ids[None, :-1])[0].log_softmax(-1)[-len(cont):]
    return logp[torch.arange(len(cont)), torch.tensor(cont)].sum().item()


@wrong("ch19.multiple_choice", diagnosis="token-normalised")
def mc_per_token(model, context_ids, choices_ids, choices_text):
    ll = torch.tensor([_ll(model, context_ids, c) for c in choices_ids], dtype=torch.float64)
    per_token = ll / torch.tensor([len(c) for c in choices_ids])
    return {"loglik": ll, "pred": int(ll.argmax()), "pred_norm": int(per_token.argmax())}


@wrong("ch19.multiple_choice", diagnosis="argmin")
def mc_lowest_nll_confused(model, context_ids, choices_ids, choices_text):
    ll = [_ll(model, context_ids, c) for c in choices_ids]
    norm = [x / len(t) for x, t in zip(ll, choices_text)]
    return {"loglik": torch.tensor(ll, dtype=torch.float64), "pred": min(range(len(ll)), key=ll.__getitem__),
            "pred_norm": min(range(len(norm)), key=norm.__getitem__)}


@wrong("ch19.multiple_choice", diagnosis="ch19.continuation_loglik:prompt-included")
def mc_scores_whole_sequence(model, context_ids, choices_ids, choices_text):
    ll = []
    for c in choices_ids:
        ids = torch.tensor(context_ids + c)
        logp = model(ids[None])[0][:-1].log_softmax(-1)
        ll.append(logp[torch.arange(len(ids) - 1), ids[1:]].sum().item())
    ll = torch.tensor(ll, dtype=torch.float64)
    lengths = torch.tensor([len(t) for t in choices_text], dtype=torch.float64)
    return {"loglik": ll, "pred": int(ll.argmax()), "pred_norm": int((ll / lengths).argmax())}


# -- detection_metrics ----------------------------------------------------------------------
@wrong("ch19.detection_metrics", diagnosis="swapped")
def metrics_swapped(flagged, harmful):
    tp = (flagged & harmful).sum().item()
    fp = (flagged & ~harmful).sum().item()
    fn = (~flagged & harmful).sum().item()
    tn = (~flagged & ~harmful).sum().item()
    precision = tp / (tp + fn) if tp + fn else 0.0
    recall = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "fpr": fp / (fp + tn) if fp + tn else 0.0}


@wrong("ch19.detection_metrics", diagnosis="fpr-over-all")
def metrics_fpr_over_everything(flagged, harmful):
    tp = int((flagged & harmful).sum())
    fp = int((flagged & ~harmful).sum())
    fn = int((~flagged & harmful).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "fpr": fp / len(flagged)}


@wrong("ch19.detection_metrics", diagnosis="false-discovery")
def metrics_fpr_as_fdr(flagged, harmful):
    tp = int((flagged & harmful).sum())
    fp = int((flagged & ~harmful).sum())
    fn = int((~flagged & harmful).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
            "fpr": fp / (tp + fp) if tp + fp else 0.0}


@wrong("ch19.detection_metrics", diagnosis="f1-mean")
def metrics_f1_average(flagged, harmful):
    tp = int((flagged & harmful).sum())
    fp = int((flagged & ~harmful).sum())
    fn = int((~flagged & harmful).sum())
    tn = int((~flagged & ~harmful).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": r, "f1": (p + r) / 2, "fpr": fp / (fp + tn) if fp + tn else 0.0}


# -- weat_effect_size -----------------------------------------------------------------------
def _s(W, A, B):
    W, A, B = F.normalize(W, dim=1), F.normalize(A, dim=1), F.normalize(B, dim=1)
    return (W @ A.T).mean(1) - (W @ B.T).mean(1)


@wrong("ch19.weat_effect_size", diagnosis="one-group-std")
def weat_std_of_x(X, Y, A, B):
    sx, sy = _s(X, A, B), _s(Y, A, B)
    return ((sx.mean() - sy.mean()) / sx.std()).item()


@wrong("ch19.weat_effect_size", diagnosis="ddof0")
def weat_population_std(X, Y, A, B):
    import numpy as np

    sx, sy = _s(X, A, B).numpy(), _s(Y, A, B).numpy()
    return float((sx.mean() - sy.mean()) / np.std(np.concatenate([sx, sy])))


@wrong("ch19.weat_effect_size", diagnosis="unnormalised")
def weat_dot_products(X, Y, A, B):
    def s(W):
        return (W @ A.T).mean(1) - (W @ B.T).mean(1)
    sx, sy = s(X), s(Y)
    return ((sx.mean() - sy.mean()) / torch.cat([sx, sy]).std()).item()


@wrong("ch19.weat_effect_size", diagnosis="pooled-std")
def weat_cohens_d(X, Y, A, B):
    sx, sy = _s(X, A, B), _s(Y, A, B)
    pooled = ((sx.var() + sy.var()) / 2) ** 0.5
    return ((sx.mean() - sy.mean()) / pooled).item()


# -- weat_p_value ---------------------------------------------------------------------------
def _p_value(X, Y, A, B, test):
    import itertools

    s = torch.cat([_s(X, A, B), _s(Y, A, B)]).double()
    n = len(X)
    obs = s[:n].sum() - s[n:].sum()
    hits = total = 0
    for xi in itertools.combinations(range(2 * n), n):
        mask = torch.zeros(2 * n, dtype=torch.bool)
        mask[list(xi)] = True
        stat = s[mask].sum() - s[~mask].sum()
        hits += int(test(stat, obs))
        total += 1
    return hits / total


@wrong("ch19.weat_p_value", diagnosis="counts-ties")
def weat_p_greater_or_equal(X, Y, A, B):
    return _p_value(X, Y, A, B, lambda stat, obs: stat >= obs - 1e-12)


@wrong("ch19.weat_p_value", diagnosis="two-sided")
def weat_p_two_sided(X, Y, A, B):
    return _p_value(X, Y, A, B, lambda stat, obs: abs(stat) > abs(obs) + 1e-12)


@wrong("ch19.weat_p_value", diagnosis="wrong-tail")
def weat_p_smaller(X, Y, A, B):
    return _p_value(X, Y, A, B, lambda stat, obs: stat < obs - 1e-12)


# -- exposure -------------------------------------------------------------------------------
@wrong("ch19.exposure", diagnosis="zero-based")
def exposure_rank_from_zero(log_perplexities, canary_index):
    order = torch.argsort(log_perplexities)
    rank = int((order == canary_index).nonzero()[0])        # 0 for the best candidate
    return math.log2(len(log_perplexities)) - math.log2(max(rank, 1e-300))


@wrong("ch19.exposure", diagnosis="counts-self")
def exposure_counts_itself(log_perplexities, canary_index):
    c = log_perplexities[canary_index]
    rank = 1 + int((log_perplexities <= c).sum())
    return math.log2(len(log_perplexities)) - math.log2(rank)


@wrong("ch19.exposure", diagnosis="natural-log")
def exposure_in_nats(log_perplexities, canary_index):
    rank = 1 + int((log_perplexities < log_perplexities[canary_index]).sum())
    return math.log(len(log_perplexities)) - math.log(rank)


@wrong("ch19.exposure", diagnosis="descending")
def exposure_ranked_from_the_top(log_perplexities, canary_index):
    order = torch.argsort(log_perplexities, descending=True)
    rank = int((order == canary_index).nonzero()[0]) + 1
    return math.log2(len(log_perplexities)) - math.log2(rank)


# -- grounding_scores -----------------------------------------------------------------------
@wrong("ch19.grounding_scores", diagnosis="unnormalised")
def grounding_dot_product(claims, passages, threshold):
    sim = claims @ passages.T
    best, idx = sim.max(dim=1)
    return best, idx, best >= threshold


@wrong("ch19.grounding_scores", diagnosis="euclidean")
def grounding_nearest_point(claims, passages, threshold):
    idx = torch.cdist(claims, passages).argmin(dim=1)
    sim = F.cosine_similarity(claims, passages[idx], dim=1)
    return sim, idx, sim >= threshold


@wrong("ch19.grounding_scores", diagnosis=None)
def grounding_strict_threshold_and_mean(claims, passages, threshold):
    sim = F.normalize(claims, dim=1) @ F.normalize(passages, dim=1).T
    score = sim.mean(dim=1)                                   # average support, not the best passage
    return score, sim.argmax(dim=1), score > threshold
