"""Chapter 19 - Evaluation, safety and bias.

References, all independent of the course's solutions:
- strided perplexity, continuation log-likelihood, multiple choice: Hugging Face
  ``GPT2LMHeadModel`` called with ``labels`` (-100 on the positions not scored), its mean
  loss times the number of scored labels (the recipe of the transformers documentation,
  "Perplexity of fixed-length models", with the exact count); ``acc``/``acc_norm`` as
  lm-evaluation-harness's ``process_results`` (argmax of lls, of lls / len(choice));
- BLEU: ``sacrebleu`` 2.6 (``BLEU().corpus_score`` statistics, ``corpus_bleu``,
  ``sentence_bleu``);
- ROUGE-L: rouge-score's algorithm re-derived here (a full LCS table), proven equal to
  ``rouge_score.rouge_scorer.RougeScorer(["rougeL"])`` in tests/test_ch19_evaluation.py
  (importing rouge-score costs seconds: too slow for a check);
- SQuAD EM/F1: the official evaluation script's rules re-derived here, proven equal to
  ``torchmetrics.functional.text.squad`` in the tests (same reason);
- detection metrics: ``sklearn.metrics`` (precision/recall/f1 with ``zero_division=0``,
  ``confusion_matrix``);
- WEAT effect size and permutation test: Caliskan et al. (2017), re-derived with numpy in
  plain loops (no package fits the pinned versions); std with ddof=1 (SEAT's convention);
- exposure: ``scipy.stats.rankdata(method="min")`` for the rank (Carlini et al. 2019);
- grounding: ``faiss.IndexFlatIP`` on ``faiss.normalize_L2``-ed vectors.
"""
from __future__ import annotations

import functools
import itertools
import math
import re
import string
from collections import Counter

import torch
import torch.nn.functional as F

from ..core import Case, Exercise, Mistake, close_floats, hidden_seed, inherit, register, single_thread
from ..drivers.ch19_evaluation import (build_gpt2, compare_choices, compare_fields, compare_grounding,
                                       compare_loglik, compare_number, with_model)

CH = "ch19"
SOL = "solutions.ch19_evaluation"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pick(g: torch.Generator, options):
    return options[int(torch.randint(len(options), (1,), generator=g))]


# ========================================================================================
# A tiny GPT-2 travels as (config, state dict)
# ========================================================================================
@functools.lru_cache(maxsize=None)
def _tiny_gpt2(seed: int, vocab: int = 40, n_positions: int = 64):
    """A random GPT-2 (2 layers, 32 wide) whose logits are far from uniform."""
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers.logging.set_verbosity_error()
    config = dict(vocab_size=vocab, n_positions=n_positions, n_embd=32, n_layer=2, n_head=2,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                  initializer_range=0.3)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**config, attn_implementation="eager"))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return config, state


def _model_args(seed: int, vocab: int = 40):
    config, state = _tiny_gpt2(seed, vocab)
    return dict(config), {k: v.clone() for k, v in state.items()}


@functools.lru_cache(maxsize=16)
def _hf(seed: int, vocab: int = 40):
    config, state = _tiny_gpt2(seed, vocab)
    return build_gpt2(config, state)


# ========================================================================================
# strided_perplexity
# ========================================================================================
@torch.no_grad()
@single_thread()
def _ref_strided(seed, vocab, ids, max_length, stride):
    model = _hf(seed, vocab)
    N = ids.numel()
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, N, stride):
        end = min(begin + max_length, N)
        trg_len = end - prev_end
        inp = ids[begin:end][None]
        labels = inp.clone()
        labels[:, :-trg_len] = -100
        n = int((labels[:, 1:] != -100).sum())
        if n:
            nll += model(input_ids=inp, labels=labels).loss.double().item() * n
        count += n
        prev_end = end
        if end == N:
            break
    return math.exp(nll / count)


def _strided_cases(hidden: bool):
    specs = [("N=40 tokens, windows of 16 every 8", 0, 40, 16, 8),
             ("stride 1: every token with the longest context", 1, 24, 8, 1),
             ("stride = max_length: disjoint windows", 2, 37, 10, 10),
             ("stride 5 does not divide N - max_length", 3, 43, 12, 5),
             ("the text fits in one window", 4, 9, 16, 4)]
    if hidden:
        for i in range(3):
            g = _gen(hidden_seed("ch19.strided_perplexity", i))
            L = _pick(g, [8, 12, 16])
            specs.append((f"hidden case {i + 1}", hidden_seed("ch19.strided_perplexity", i, "model"),
                          int(torch.randint(L + 5, 60, (1,), generator=g)), L, _pick(g, [1, 3, L // 2, L - 1])))
    for name, seed, N, L, stride in specs:
        ids = torch.randint(40, (N,), generator=_gen(seed + 100))
        config, state = _model_args(seed)
        yield Case(name, (config, state, ids, L, stride), run=with_model,
                   expected=lambda s=seed, i=ids, L=L, st=stride: _ref_strided(s, 40, i, L, st),
                   compare=functools.partial(compare_number, atol=1e-6, rtol=2e-5))


def _strided_wrong(kind):
    @torch.no_grad()
    def fn(model, ids, max_length, stride):
        N = ids.numel()
        step = max_length if kind == "no-overlap" else stride
        nlls, counts, prev_end = [], [], 0
        for begin in range(0, N, step):
            end = min(begin + max_length, N)
            logp = model(ids[None, begin:end])[0].double().log_softmax(-1)
            first = begin + 1 if kind == "rescored" else max(prev_end, begin + 1)
            pos = torch.arange(first, end)
            rows = pos - begin if kind == "no-shift" else pos - begin - 1
            nlls.append(-logp[rows, ids[pos]].sum().item())
            counts.append(len(pos))
            prev_end = end
            if end == N:
                break
        pairs = [(a, b) for a, b in zip(nlls, counts) if b]
        if kind == "mean-window-ppl":
            return sum(math.exp(a / b) for a, b in pairs) / len(pairs)
        if kind == "unweighted-windows":
            return math.exp(sum(a / b for a, b in pairs) / len(pairs))
        return math.exp(sum(nlls) / sum(counts))
    return fn


register(Exercise(
    id="ch19.strided_perplexity", chapter=CH, title="Perplexity with a sliding window", points=2,
    name="strided_perplexity", difficulty="**",
    signature="strided_perplexity(model, ids: LongTensor[N], max_length: int, stride: int) -> float",
    reference="Hugging Face GPT2LMHeadModel with labels (-100 on the positions already scored), the recipe of "
              "the transformers docs with the exact count of scored tokens",
    solution=f"{SOL}:strided_perplexity", cases=_strided_cases,
    mistakes=[
        Mistake("rescored", "you scored every token of every window: with overlapping windows a token is then "
                "counted several times. Score only the tokens after the previous window's end",
                _strided_wrong("rescored")),
        Mistake("no-overlap", "you cut the text into disjoint windows of max_length (the stride is ignored): the "
                "first tokens of each window get almost no context", _strided_wrong("no-overlap")),
        Mistake("mean-window-ppl", "you averaged the perplexities of the windows: average the negative "
                "log-likelihoods over all scored tokens first, then take exp once", _strided_wrong("mean-window-ppl")),
        Mistake("unweighted-windows", "you averaged the windows' mean losses with equal weights: windows score "
                "different numbers of tokens (the first one max_length - 1, the last one fewer), so weight by "
                "token: total NLL / total count", _strided_wrong("unweighted-windows")),
        Mistake("no-shift", "you scored token t with the logits at its own position: the logits at position t "
                "predict token t + 1", _strided_wrong("no-shift")),
    ]))


# ========================================================================================
# BLEU: statistics, corpus, sentence (sacrebleu 2.6)
# ========================================================================================
WORDS = ("the king is dead , long live the king . my lord , the queen is come ; "
         "and all the world 's a stage ! what 's in a name ? 3.5 1,000 x-ray").split()

BLEU_SPECS = [
    ("one reference, punctuation to split", "The cat sat on the mat.", ["The cat sat on a mat."]),
    ("clipping: 'the' seven times", "the the the the the the the", ["the cat is on the mat", "there is a cat on the mat"]),
    ("two references, the closest length wins", "my lord, the queen is come",
     ["the queen, my lord, is come to court today", "my good lord, the queen"]),
    ("a tie of lengths goes to the shorter reference", "a b c d", ["a b c", "a b c d e"]),
    ("numbers and dashes (13a keeps 3.5 and 1,000 whole)", "It costs 1,000.5 pounds - or 3-4 x-rays.",
     ["It costs 1,000.5 pounds, or 3-4 x-rays!"]),
    ("case matters", "The King Is Dead", ["the king is dead"]),
    ("a short hypothesis", "long live", ["long live the king", "live long and prosper"]),
]


def _random_sentence(g, lo=1, hi=14):
    n = int(torch.randint(lo, hi, (1,), generator=g))
    return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=g))


def _hidden_bleu_specs(ex_id, n, n_sent=1):
    out = []
    for i in range(n):
        g = _gen(hidden_seed(ex_id, i))
        hyps, refs = [], []
        for _ in range(n_sent):
            h = _random_sentence(g)
            k = int(torch.randint(1, 4, (1,), generator=g))
            rs = []
            for _ in range(k):  # references share words with the hypothesis
                w = h.split()
                keep = [x for x in w if float(torch.rand(1, generator=g)) < 0.7]
                rs.append(" ".join(keep + _random_sentence(g, 0, 5).split()) or "the")
            hyps.append(h)
            refs.append(rs)
        out.append((f"hidden case {i + 1}", hyps, refs))
    return out


def _ref_bleu_stats(hyp, refs):
    from sacrebleu.metrics import BLEU

    s = BLEU().corpus_score([hyp], [[r] for r in refs])
    return {"matches": list(s.counts), "totals": list(s.totals), "hyp_len": int(s.sys_len), "ref_len": int(s.ref_len)}


def _bleu_stats_cases(hidden: bool):
    specs = list(BLEU_SPECS) + [("an empty hypothesis", "", ["nothing here"])]
    if hidden:
        specs += [(n, h[0], r[0]) for n, h, r in _hidden_bleu_specs("ch19.bleu_stats", 4)]
    for name, hyp, refs in specs:
        yield Case(name, (hyp, refs), expected=lambda h=hyp, r=refs: _ref_bleu_stats(h, r), compare=compare_fields)


def _tok13a(s):
    from solutions.ch19_evaluation import tokenize_13a  # a provided helper (the learner has it too)

    return tokenize_13a(s).split()


def _ngrams(t, n):
    return Counter(tuple(t[i:i + n]) for i in range(len(t) - n + 1))


def _bleu_stats_wrong(kind):
    def fn(hypothesis, references, max_n=4):
        tok = (lambda s: s.split()) if kind == "no-tokenize" else (
            (lambda s: _tok13a(s.lower())) if kind == "lowercase" else _tok13a)
        hyp, refs = tok(hypothesis), [tok(r) for r in references]
        matches, totals = [], []
        for n in range(1, max_n + 1):
            h = _ngrams(hyp, n)
            rc = [_ngrams(r, n) for r in refs]
            if kind == "unclipped":
                matches.append(sum(c for g, c in h.items() if any(g in r for r in rc)))
            elif kind == "clip-sum":
                matches.append(sum(min(c, sum(r[g] for r in rc)) for g, c in h.items()))
            else:
                matches.append(sum(min(c, max(r[g] for r in rc)) for g, c in h.items()))
            totals.append(sum(h.values()))
        lens = [len(r) for r in refs]
        if kind == "longest-ref":
            ref_len = max(lens)
        elif kind == "shortest-ref":
            ref_len = min(lens)
        else:
            ref_len = min((abs(x - len(hyp)), x) for x in lens)[1]
        return {"matches": matches, "totals": totals, "hyp_len": len(hyp), "ref_len": ref_len}
    return fn


register(Exercise(
    id="ch19.bleu_stats", chapter=CH, title="BLEU's clipped n-gram counts", points=1, name="bleu_stats",
    signature="bleu_stats(hypothesis: str, references: list[str], max_n: int = 4) -> "
              "{'matches': [int]*4, 'totals': [int]*4, 'hyp_len': int, 'ref_len': int}",
    reference="sacrebleu 2.6 BLEU().corpus_score(...).counts/.totals/.sys_len/.ref_len",
    solution=f"{SOL}:bleu_stats", cases=_bleu_stats_cases,
    forbidden=["sacrebleu:corpus_bleu", "sacrebleu:sentence_bleu", "sacrebleu.metrics.bleu:BLEU"],
    mistakes=[
        Mistake("unclipped", "your n-gram matches are not clipped: an n-gram of the hypothesis counts at most as "
                "often as it occurs in a reference ('the the the' earns one 'the' against 'the cat')",
                _bleu_stats_wrong("unclipped")),
        Mistake("clip-sum", "you clipped by the SUM of the n-gram's counts over the references: clip by the "
                "largest count in any ONE reference", _bleu_stats_wrong("clip-sum")),
        Mistake("longest-ref", "ref_len is the longest reference: BLEU's brevity penalty uses the reference "
                "whose length is closest to the hypothesis (the shorter one on a tie)", _bleu_stats_wrong("longest-ref")),
        Mistake("shortest-ref", "ref_len is the shortest reference: use the one closest in length to the "
                "hypothesis (the shorter one only on a tie)", _bleu_stats_wrong("shortest-ref")),
        Mistake("no-tokenize", "you split the raw strings on spaces: tokenize with tokenize_13a first "
                "(punctuation becomes separate tokens)", _bleu_stats_wrong("no-tokenize")),
        Mistake("lowercase", "you lowercased the text: sacrebleu's BLEU is case-sensitive by default",
                _bleu_stats_wrong("lowercase")),
    ]))


def _ref_corpus_bleu(hyps, refs, effective_order=False):
    import sacrebleu
    from sacrebleu.metrics import BLEU

    k = max(len(r) for r in refs)  # a variable number of references: None fills the streams
    streams = [[r[j] if j < len(r) else None for r in refs] for j in range(k)]
    if effective_order:
        return float(BLEU(effective_order=True).corpus_score(hyps, streams).score)
    return float(sacrebleu.corpus_bleu(hyps, streams).score)


def _bleu_from(stats_fn, hyps, refs, effective_order=False, smoothing="exp", bp_kind="closest",
               mean_of_sentences=False):
    """The corpus formula with a given statistics function and variations (for mistakes)."""
    if mean_of_sentences:
        scores = [_bleu_from(stats_fn, [h], [r], effective_order) for h, r in zip(hyps, refs)]
        return sum(scores) / len(scores)
    st = [stats_fn(h, r) for h, r in zip(hyps, refs)]
    m = [sum(s["matches"][n] for s in st) for n in range(4)]
    t = [sum(s["totals"][n] for s in st) for n in range(4)]
    c, r = sum(s["hyp_len"] for s in st), sum(s["ref_len"] for s in st)
    if not any(m):
        return 0.0
    if bp_kind == "inverted":
        bp = 1.0 if c >= r else math.exp(1 - c / r)
    elif bp_kind == "always":
        bp = math.exp(1 - r / c) if c > 0 else 0.0
    else:
        bp = 1.0 if c >= r else (math.exp(1 - r / c) if c > 0 else 0.0)
    logs, smooth, order = [-9999999999.0] * 4, 1.0, 4
    used = []
    for n in range(4):
        if t[n] == 0:
            break
        if effective_order:
            order = n + 1
        if m[n] == 0:
            if smoothing == "exp":
                smooth *= 2
                logs[n] = math.log(100.0 / (smooth * t[n]))
            elif smoothing == "skip":
                continue
        else:
            logs[n] = math.log(100.0 * m[n] / t[n])
        used.append(logs[n])
    if smoothing == "skip":
        return bp * math.exp(sum(used) / len(used)) if used else 0.0
    return bp * math.exp(sum(logs[:order]) / order)


def _ref_stats_fn(h, r):
    from solutions.ch19_evaluation import bleu_stats  # only inside mistakes: the right statistics

    return bleu_stats(h, r)


def _corpus_cases(hidden: bool):
    specs = [("three sentences, one or two references each",
              ["The cat sat on the mat.", "my lord, the queen is come", "long live"],
              [["The cat sat on a mat.", "A cat was on the mat."], ["my good lord, the queen", "the queen is here"],
               ["long live the king", "live long"]], False),
             ("no 3-gram or 4-gram match (exp smoothing)", ["long live the king", "the queen is come"],
              [["the king long live"], ["is come the queen"]], False),
             ("a two-word corpus whose 2-gram does not match", ["the cat"], [["cat the"]], False),
             ("hypotheses shorter than the references (brevity penalty)", ["the king", "a stage"],
              [["the king is dead"], ["all the world 's a stage"]], False),
             ("longer than the references (no penalty)", ["the king is dead , long live the king and the queen"],
              [["the king is dead , long live the king"]], False),
             ("no match at all scores 0", ["what 's in a name"], [["the king is dead"]], False),
             ("a two-word corpus: the 3- and 4-gram orders are empty", ["the cat"], [["the cat sat"]], False),
             ("effective_order=True", ["the cat", "my lord"], [["the cat sat"], ["my lord , the queen"]], True)]
    if hidden:
        for (name, hyps, refs), eff in zip(_hidden_bleu_specs("ch19.corpus_bleu", 3, n_sent=4), (False, False, True)):
            specs.append((name, hyps, refs, eff))
    for name, hyps, refs, eff in specs:
        yield Case(name, (hyps, refs), {"effective_order": eff} if eff else {},
                   expected=lambda h=hyps, r=refs, e=eff: _ref_corpus_bleu(h, r, e),
                   compare=functools.partial(compare_number, atol=1e-6, rtol=1e-6))


def _corpus_wrong(**kw):
    def fn(hypotheses, references, effective_order=False):
        return _bleu_from(_ref_stats_fn, hypotheses, references, effective_order, **kw)
    return fn


register(Exercise(
    id="ch19.corpus_bleu", chapter=CH, title="Corpus BLEU", points=2, name="corpus_bleu", difficulty="**",
    signature="corpus_bleu(hypotheses: list[str], references: list[list[str]], effective_order: bool = False) -> float",
    reference="sacrebleu 2.6 corpus_bleu (13a tokens, exp smoothing; BLEU(effective_order=True) for the option)",
    solution=f"{SOL}:corpus_bleu", cases=_corpus_cases,
    forbidden=["sacrebleu:corpus_bleu", "sacrebleu:sentence_bleu", "sacrebleu.metrics.bleu:BLEU"],
    mistakes=[
        Mistake("mean-of-sentences", "you averaged sentence scores: corpus BLEU adds up the n-gram counts and "
                "lengths of all sentences first, then applies the formula once", _corpus_wrong(mean_of_sentences=True)),
        Mistake("no-smoothing", "an order with no match makes your score 0: sacrebleu's 'exp' smoothing gives it "
                "the precision 100 / (2^k * total) instead (k = 1 for the first such order, 2 for the next...)",
                _corpus_wrong(smoothing="none")),
        Mistake("skip-zero-orders", "you left the orders with no match out of the mean: they stay in, with the "
                "'exp' smoothed precision 100 / (2^k * total)", _corpus_wrong(smoothing="skip")),
        Mistake("bp-inverted", "your brevity penalty is exp(1 - c/r): it is exp(1 - r/c) when the hypotheses are "
                "shorter (c < r)", _corpus_wrong(bp_kind="inverted")),
        Mistake("bp-always", "you applied the brevity penalty to longer hypotheses too: BP = 1 when c >= r",
                _corpus_wrong(bp_kind="always")),
        Mistake("effective-order-always", "you dropped the n-gram orders the hypotheses are too short to have: "
                "that is the effective order, used only when effective_order=True (sentence BLEU); corpus BLEU "
                "keeps all 4 orders", lambda hypotheses, references, effective_order=False: _bleu_from(
                    _ref_stats_fn, hypotheses, references, effective_order=True)),
        *inherit("ch19.bleu_stats", lambda part: (
            lambda hypotheses, references, effective_order=False: _bleu_from(part, hypotheses, references, effective_order))),
    ]))


def _sentence_cases(hidden: bool):
    specs = [("a good hypothesis", "The cat sat on the mat.", ["The cat sat on a mat.", "There is a cat on the mat."]),
             ("two words: only orders 1 and 2 count", "the cat", ["the cat sat on the mat"]),
             ("no 3-gram match: smoothed, not zero", "long live the king", ["the king long live"]),
             ("a 2-gram order with no match", "the cat", ["cat the"]),
             ("no match at all", "what 's in a name", ["the king is dead"]),
             ("a single word", "king", ["the king"])]
    if hidden:
        specs += [(n, h[0], r[0]) for n, h, r in _hidden_bleu_specs("ch19.sentence_bleu", 3)]
    for name, hyp, refs in specs:
        yield Case(name, (hyp, refs), expected=lambda h=hyp, r=refs: _ref_sentence_bleu(h, r),
                   compare=functools.partial(compare_number, atol=1e-6, rtol=1e-6))


def _ref_sentence_bleu(h, r):
    import sacrebleu

    return float(sacrebleu.sentence_bleu(h, r).score)


register(Exercise(
    id="ch19.sentence_bleu", chapter=CH, title="Sentence BLEU", points=1, name="sentence_bleu",
    signature="sentence_bleu(hypothesis: str, references: list[str]) -> float",
    reference="sacrebleu 2.6 sentence_bleu (effective order, exp smoothing)",
    solution=f"{SOL}:sentence_bleu", cases=_sentence_cases,
    forbidden=["sacrebleu:corpus_bleu", "sacrebleu:sentence_bleu", "sacrebleu.metrics.bleu:BLEU"],
    mistakes=[
        Mistake("no-effective-order", "you scored the sentence like a corpus: a hypothesis shorter than 4 words "
                "then has empty orders that zero the score. Sentence BLEU uses the effective order "
                "(effective_order=True)", lambda hypothesis, references: _bleu_from(_ref_stats_fn, [hypothesis], [references])),
        Mistake("skip-zero-orders", "you left the orders with no match out of the mean: with 'exp' smoothing they "
                "stay in, with precision 100 / (2^k * total)",
                lambda hypothesis, references: _bleu_from(_ref_stats_fn, [hypothesis], [references], True, smoothing="skip")),
        Mistake("no-smoothing", "an order with no match makes your score 0: use 'exp' smoothing",
                lambda hypothesis, references: _bleu_from(_ref_stats_fn, [hypothesis], [references], True, smoothing="none")),
        *inherit("ch19.corpus_bleu", lambda part: (
            lambda hypothesis, references: part([hypothesis], [references], effective_order=True))),
    ]))


# ========================================================================================
# ROUGE-L (rouge-score 0.1.2, re-derived; see the module docstring)
# ========================================================================================
def _rouge_tokens(text):
    return [t for t in re.split(r"\s+", re.sub(r"[^a-z0-9]+", " ", text.lower())) if re.fullmatch(r"[a-z0-9]+", t)]


def _lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def _ref_rouge_l(target, prediction, tokens=_rouge_tokens, lcs=_lcs):
    t, p = tokens(target), tokens(prediction)
    if not t or not p:
        return {"precision": 0.0, "recall": 0.0, "fmeasure": 0.0}
    n = lcs(t, p)
    prec, rec = n / len(p), n / len(t)
    return {"precision": prec, "recall": rec, "fmeasure": 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0}


ROUGE_SPECS = [
    ("a paraphrase", "The king is dead; long live the king!", "Long live the new king, the old king is dead."),
    ("word order matters (a subsequence, not a bag)", "police killed the gunman", "the gunman killed police"),
    ("case and punctuation are ignored", "To be, or not to be: that is the question.", "to be or not to be that is the question"),
    ("non-ASCII letters are dropped (café -> caf)", "Café au lait, s'il vous plaît", "cafe au lait sil vous plait"),
    ("prediction longer than the target", "the cat sat", "the big black cat sat on the mat all day"),
    ("no common word", "all the world's a stage", "what is in a name"),
    ("an empty prediction", "the cat sat", "!!!"),
]


def _rouge_cases(hidden: bool):
    specs = list(ROUGE_SPECS)
    if hidden:
        for i in range(3):
            g = _gen(hidden_seed("ch19.rouge_l", i))
            t = _random_sentence(g, 4, 16)
            p = " ".join(w for w in t.split() if float(torch.rand(1, generator=g)) < 0.6) + " " + _random_sentence(g, 1, 6)
            specs.append((f"hidden case {i + 1}", t, p))
    for name, t, p in specs:
        yield Case(name, (t, p), expected=lambda t=t, p=p: _ref_rouge_l(t, p),
                   compare=functools.partial(compare_fields, atol=1e-9, rtol=1e-9))


def _chars(text):
    return [c for c in text.lower() if c.isalnum()]


def _overlap(a, b):
    return sum((Counter(a) & Counter(b)).values())


register(Exercise(
    id="ch19.rouge_l", chapter=CH, title="ROUGE-L", points=1, name="rouge_l",
    signature="rouge_l(target: str, prediction: str) -> {'precision': float, 'recall': float, 'fmeasure': float}",
    reference="rouge-score 0.1.2 RougeScorer(['rougeL'], use_stemmer=False).score(target, prediction), re-derived "
              "(equal to the library in the project's tests)",
    solution=f"{SOL}:rouge_l", cases=_rouge_cases,
    forbidden=["rouge_score.rouge_scorer:RougeScorer", "rouge_score.rouge_scorer:_score_lcs"],
    mistakes=[
        Mistake("characters", "you computed the LCS over characters: ROUGE-L works on word tokens",
                lambda target, prediction: _ref_rouge_l(target, prediction, tokens=_chars)),
        Mistake("unigram-overlap", "you counted the common words (a bag, ROUGE-1): ROUGE-L is the longest common "
                "SUBSEQUENCE, which respects word order", lambda target, prediction: _ref_rouge_l(target, prediction, lcs=_overlap)),
        Mistake("swapped", "precision and recall are swapped: precision divides by the PREDICTION's length, recall "
                "by the target's (rouge-score takes the target first)",
                lambda target, prediction: _ref_rouge_l(prediction, target)),
        Mistake("whitespace-tokens", "you split on whitespace only: rouge-score lowercases and turns every character "
                "other than a-z and 0-9 into a space",
                lambda target, prediction: _ref_rouge_l(target, prediction, tokens=lambda s: s.split())),
    ]))


# ========================================================================================
# SQuAD EM / F1 (the official script's rules, re-derived; see the module docstring)
# ========================================================================================
def _squad_normalize(s, punct_space=False, articles=r"\b(a|an|the)\b"):
    s = s.lower()
    punct = set(string.punctuation)
    s = "".join((" " if punct_space else "") if ch in punct else ch for ch in s)
    s = re.sub(articles, " ", s)
    return " ".join(s.split())


def _squad_f1(pred, gold, norm=_squad_normalize, bag=True):
    p, g = norm(pred).split(), norm(gold).split()
    if len(p) == 0 or len(g) == 0:
        return float(p == g)
    if not bag:  # a learner who turned both token lists into sets
        p, g = sorted(set(p)), sorted(set(g))
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)


def _ref_squad(preds, answers, norm=_squad_normalize, em_norm=None, bag=True, agg=max):
    em_norm = em_norm or norm
    em = f1 = 0.0
    for p, golds in zip(preds, answers):
        em += agg([float(em_norm(p) == em_norm(g)) for g in golds]) if agg is not max else max(
            float(em_norm(p) == em_norm(g)) for g in golds)
        f1 += agg([_squad_f1(p, g, norm, bag) for g in golds]) if agg is not max else max(
            _squad_f1(p, g, norm, bag) for g in golds)
    return {"exact_match": 100.0 * em / len(preds), "f1": 100.0 * f1 / len(preds)}


SQUAD_SPECS = [
    ("articles, case and punctuation", ["The Eiffel Tower!", "an apple", "Denver Broncos"],
     [["Eiffel Tower"], ["apple", "green apple"], ["the Denver Broncos", "Broncos"]]),
    ("partial answers: F1 on a bag of tokens", ["Broncos Denver Broncos", "in the year 1976", "New York City"],
     [["Denver Broncos"], ["1976"], ["New York"]]),
    ("punctuation is deleted, not spaced (don't -> dont)", ["dont stop", "1000", "saint denis"],
     [["don't stop"], ["1,000"], ["Saint-Denis"]]),
    ("the max over several gold answers", ["the cat", "a dog"], [["cat", "the black cat", "feline"], ["hound", "dog"]]),
    ("an empty answer", ["", "nothing"], [["", "none"], ["something"]]),
    ("'a' inside words stays (banana, theatre)", ["a banana theatre", "an answer"], [["banana theatre"], ["answer"]]),
]


def _squad_cases(hidden: bool):
    specs = list(SQUAD_SPECS)
    if hidden:
        answers = ["the Eiffel Tower", "Denver Broncos", "Saint-Denis", "1,000", "don't stop", "an apple", "New York City",
                   "A. B. C.", "$5", "the king of Denmark", "rock 'n' roll"]
        noise = ["The", "a", "!", ".", "city", "broncos", "of", "  "]
        for i in range(3):
            g = _gen(hidden_seed("ch19.squad_scores", i))
            preds, golds = [], []
            for _ in range(6):
                gold = [_pick(g, answers) for _ in range(int(torch.randint(1, 3, (1,), generator=g)))]
                words = gold[0].split()
                if float(torch.rand(1, generator=g)) < 0.5:
                    words = words + [_pick(g, noise)]
                if float(torch.rand(1, generator=g)) < 0.3:
                    words = words[1:]
                preds.append(" ".join(words).upper() if float(torch.rand(1, generator=g)) < 0.3 else " ".join(words))
                golds.append(gold)
            specs.append((f"hidden case {i + 1}", preds, golds))
    for name, preds, golds in specs:
        for key, group in (("exact_match", "exact match"), ("f1", "F1")):
            yield Case(f"{name} ({group})", (preds, golds), group=group,
                       expected=lambda p=preds, a=golds: _ref_squad(p, a),
                       compare=functools.partial(compare_fields, keys=[key], atol=1e-9, rtol=1e-9))


register(Exercise(
    id="ch19.squad_scores", chapter=CH, title="SQuAD exact match and F1", points=2, name="squad_scores",
    signature="squad_scores(predictions: list[str], answers: list[list[str]]) -> {'exact_match': float, 'f1': float}",
    reference="the official SQuAD evaluation rules (as in torchmetrics' squad, to which the project's tests "
              "compare them), re-derived",
    solution=f"{SOL}:squad_scores", cases=_squad_cases,
    forbidden=["torchmetrics.functional.text.squad:squad"],
    mistakes=[
        Mistake("no-normalisation", "your exact match compares the raw strings: normalise both first (lowercase, "
                "delete punctuation, drop a/an/the, collapse spaces)",
                lambda predictions, answers: _ref_squad(predictions, answers, em_norm=lambda s: s)),
        Mistake("set-f1", "your F1 counts common tokens as a SET: SQuAD compares bags, a token counts as many times "
                "as it occurs in both", lambda predictions, answers: _ref_squad(predictions, answers, bag=False)),
        Mistake("mean-over-golds", "you averaged over the gold answers: each question takes the MAX over its gold "
                "answers", lambda predictions, answers: _ref_squad(predictions, answers, agg=lambda v: sum(v) / len(v))),
        Mistake("punctuation-to-space", "you replaced punctuation by spaces: SQuAD deletes it ('don't' -> 'dont', "
                "'1,000' -> '1000')", lambda predictions, answers: _ref_squad(
                    predictions, answers, norm=functools.partial(_squad_normalize, punct_space=True))),
        Mistake("articles-anywhere", "you removed 'a', 'an', 'the' inside words too: drop them only as whole words "
                "(\\b(a|an|the)\\b)", lambda predictions, answers: _ref_squad(
                    predictions, answers, norm=functools.partial(_squad_normalize, articles=r"(a|an|the)"))),
    ]))


# ========================================================================================
# continuation_loglik and multiple_choice (lm-evaluation-harness)
# ========================================================================================
@torch.no_grad()
@single_thread()
def _ref_loglik(seed, vocab, context, continuation):
    model = _hf(seed, vocab)
    inp = torch.tensor([context + continuation])
    labels = inp.clone()
    labels[:, :len(context)] = -100
    out = model(input_ids=inp, labels=labels)
    ll = -out.loss.double().item() * len(continuation)
    greedy = out.logits[0, len(context) - 1:-1].argmax(-1)
    return ll, bool(torch.equal(greedy, torch.tensor(continuation)))


def _greedy_continuation(seed, vocab, context, n):
    return list(_greedy_cached(seed, vocab, tuple(context), n))


@functools.lru_cache(maxsize=None)
@torch.no_grad()
@single_thread()
def _greedy_cached(seed, vocab, context, n):
    model = _hf(seed, vocab)
    ids = list(context)
    for _ in range(n):
        ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return tuple(ids[len(context):])


def _loglik_cases(hidden: bool):
    specs = [("context of 6, continuation of 3", 0, 6, 3, False),
             ("a one-token continuation", 1, 5, 1, False),
             ("the model's own greedy continuation (is_greedy True)", 2, 4, 4, True),
             ("a one-token context", 3, 1, 5, False)]
    if hidden:
        for i in range(3):
            g = _gen(hidden_seed("ch19.continuation_loglik", i))
            specs.append((f"hidden case {i + 1}", hidden_seed("ch19.continuation_loglik", i, "model") % 10_000,
                          int(torch.randint(2, 12, (1,), generator=g)), int(torch.randint(1, 8, (1,), generator=g)),
                          i == 1))
    for name, seed, nc, nk, greedy in specs:
        g = _gen(seed + 500)
        context = torch.randint(40, (nc,), generator=g).tolist()
        cont = _greedy_continuation(seed, 40, context, nk) if greedy else torch.randint(40, (nk,), generator=g).tolist()
        config, state = _model_args(seed)
        yield Case(name, (config, state, context, cont), run=with_model,
                   expected=lambda s=seed, c=context, k=cont: _ref_loglik(s, 40, c, k), compare=compare_loglik)


def _loglik_wrong(kind):
    @torch.no_grad()
    def fn(model, context_ids, continuation_ids):
        full = torch.tensor(context_ids + continuation_ids)
        logits = model(full[None])[0].double()
        logp = logits if kind == "raw-logits" else logits.log_softmax(-1)
        n, T = len(continuation_ids), full.numel()
        if kind == "prompt-included":
            pos = torch.arange(1, T)
        else:
            pos = torch.arange(T - n, T)
        rows = pos if kind == "no-shift" else pos - 1
        vals = logp[rows, full[pos]]
        ll = vals.mean().item() if kind == "mean" else vals.sum().item()
        greedy = bool((logp[rows].argmax(-1) == full[pos]).all())
        return ll, greedy
    return fn


register(Exercise(
    id="ch19.continuation_loglik", chapter=CH, title="The log-likelihood of a continuation", points=1,
    name="continuation_loglik",
    signature="continuation_loglik(model, context_ids: list[int], continuation_ids: list[int]) -> (float, bool)",
    reference="Hugging Face GPT2LMHeadModel with labels = -100 on the context: -loss * len(continuation)",
    solution=f"{SOL}:continuation_loglik", cases=_loglik_cases,
    mistakes=[
        Mistake("prompt-included", "you summed the log-probabilities over the context too: only the continuation's "
                "tokens are scored", _loglik_wrong("prompt-included")),
        Mistake("no-shift", "you read each token's log-probability at its own position: the logits at position t "
                "predict token t + 1", _loglik_wrong("no-shift")),
        Mistake("raw-logits", "you summed raw logits: take log_softmax over the vocabulary first",
                _loglik_wrong("raw-logits")),
        Mistake("mean", "you averaged over the continuation's tokens: the log-likelihood is the SUM (normalising "
                "by length is a separate choice, made by the multiple-choice metric)", _loglik_wrong("mean")),
    ]))


WORD_BANK = ["a", "of", "to", "the", "king", "lord", "night", "sweet", "madam", "gentle", "forsooth",
             "wherefore", "tomorrow", "dost", "thou", "o", "ay", "nay", "honourable", "peace"]


def _mc_reference(seed, vocab, context, choices, texts):
    ll = torch.tensor([_ref_loglik(seed, vocab, context, c)[0] for c in choices], dtype=torch.float64)
    import numpy as np

    lls = ll.numpy()
    completion_len = np.array([float(len(t)) for t in texts])
    return {"loglik": ll, "pred": int(np.argmax(lls)), "pred_norm": int(np.argmax(lls / completion_len))}


@functools.lru_cache(maxsize=None)
@single_thread()
def _mc_case(seed, n_choices, name):
    """Draw choices until raw, per-character and per-token scoring pick three different
    choices with clear margins (so that each convention is told apart)."""
    for attempt in range(200):
        g = _gen(seed * 1000 + attempt)
        context = torch.randint(40, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g).tolist()
        choices = [torch.randint(40, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
                   for _ in range(n_choices)]
        texts = [" ".join(_pick(g, WORD_BANK) for _ in c) for c in choices]
        ll = torch.tensor([_ref_loglik(seed % 7, 40, context, c)[0] for c in choices], dtype=torch.float64)
        per_char = ll / torch.tensor([float(len(t)) for t in texts], dtype=torch.float64)
        per_tok = ll / torch.tensor([float(len(c)) for c in choices], dtype=torch.float64)
        picks = [int(v.argmax()) for v in (ll, per_char, per_tok)]

        def margin(v):
            top = v.sort(descending=True).values
            return float(top[0] - top[1])

        if len(set(picks)) == 3 and min(margin(ll), margin(per_char), margin(per_tok)) > 1e-3:
            return tuple(context), tuple(map(tuple, choices)), tuple(texts)
    raise RuntimeError(f"{name}: could not draw a multiple-choice case with distinct winners")


def _mc_cases(hidden: bool):
    specs = [("4 choices, raw/per-character/per-token winners all differ", 1, 4),
             ("3 choices", 2, 3),
             ("5 choices", 3, 5)]
    if hidden:
        specs += [(f"hidden case {i + 1}", hidden_seed("ch19.multiple_choice", i) % 100_000 + 10, 4) for i in range(2)]
    for name, seed, n in specs:
        context, choices, texts = _mc_case(seed, n, name)
        context, choices, texts = list(context), [list(c) for c in choices], list(texts)
        config, state = _model_args(seed % 7)
        yield Case(name, (config, state, context, choices, texts), run=with_model,
                   expected=lambda s=seed % 7, c=context, k=choices, t=texts: _mc_reference(s, 40, c, k, t),
                   compare=compare_choices)


def _mc_with(loglik, norm="chars", pick="argmax"):
    def fn(model, context_ids, choices_ids, choices_text):
        ll = torch.tensor([float(loglik(model, context_ids, c)[0]) for c in choices_ids], dtype=torch.float64)
        if norm == "tokens":
            lengths = torch.tensor([float(len(c)) for c in choices_ids], dtype=torch.float64)
        elif norm == "with-space":
            lengths = torch.tensor([float(len(" " + t)) for t in choices_text], dtype=torch.float64)
        else:
            lengths = torch.tensor([float(len(t)) for t in choices_text], dtype=torch.float64)
        best = (lambda v: int(v.argmin())) if pick == "argmin" else (lambda v: int(v.argmax()))
        normed = ll.exp() / lengths if norm == "probability" else ll / lengths
        return {"loglik": ll, "pred": best(ll), "pred_norm": best(normed)}
    return fn


def _right_loglik(model, context_ids, continuation_ids):
    from solutions.ch19_evaluation import continuation_loglik

    return continuation_loglik(model, context_ids, continuation_ids)


register(Exercise(
    id="ch19.multiple_choice", chapter=CH, title="Multiple choice by log-likelihood", points=2,
    name="multiple_choice", difficulty="**",
    signature="multiple_choice(model, context_ids: list[int], choices_ids: list[list[int]], choices_text: list[str]) "
              "-> {'loglik': Tensor[C], 'pred': int, 'pred_norm': int}",
    reference="Hugging Face GPT2LMHeadModel log-likelihoods (labels -100 on the context); acc and acc_norm as "
              "lm-evaluation-harness's process_results (argmax of ll, of ll / len(choice text))",
    solution=f"{SOL}:multiple_choice", cases=_mc_cases,
    mistakes=[
        Mistake("token-normalised", "pred_norm divides by the number of TOKENS: lm-evaluation-harness's acc_norm "
                "divides by the number of CHARACTERS of the choice's text (it does not depend on the tokenizer)",
                _mc_with(_right_loglik, norm="tokens")),
        Mistake("argmin", "you picked the choice with the LOWEST log-likelihood: log-likelihoods are negative, the "
                "most likely choice has the largest (closest to 0)", _mc_with(_right_loglik, pick="argmin")),
        Mistake("probability-normalised", "you divided the probability exp(ll) by the length: normalise the "
                "log-likelihood, ll / len(text)", _mc_with(_right_loglik, norm="probability")),
        *inherit("ch19.continuation_loglik", lambda part: _mc_with(part)),
    ]))


# ========================================================================================
# detection_metrics (scikit-learn)
# ========================================================================================
def _ref_detection(flagged, harmful):
    import warnings

    from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score

    y, p = harmful.bool().numpy(), flagged.bool().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tn, fp, fn, tp = confusion_matrix(y, p, labels=[False, True]).ravel()
        return {"precision": float(precision_score(y, p, zero_division=0)),
                "recall": float(recall_score(y, p, zero_division=0)),
                "f1": float(f1_score(y, p, zero_division=0)),
                "fpr": float(fp / (fp + tn)) if fp + tn else 0.0}


def _detection_cases(hidden: bool):
    t, f = True, False
    specs = [("10 prompts", [t, t, f, t, f, f, t, f, t, f], [t, f, f, t, t, f, t, f, f, f]),
             ("a filter that blocks everything", [t] * 6, [t, f, f, t, f, f]),
             ("a filter that blocks nothing (precision 0 by convention)", [f] * 5, [t, f, t, f, f]),
             ("no harmful item at all", [t, f, f, f], [f, f, f, f]),
             ("perfect", [t, f, t, f, f], [t, f, t, f, f])]
    if hidden:
        for i in range(3):
            g = _gen(hidden_seed("ch19.detection_metrics", i))
            n = int(torch.randint(20, 60, (1,), generator=g))
            h = torch.rand(n, generator=g) < 0.4
            fl = torch.where(torch.rand(n, generator=g) < 0.75, h, ~h)
            specs.append((f"hidden case {i + 1}", fl.tolist(), h.tolist()))
    for name, fl, h in specs:
        fl, h = torch.tensor(fl), torch.tensor(h)
        yield Case(name, (fl, h), expected=lambda a=fl, b=h: _ref_detection(a, b),
                   compare=functools.partial(compare_fields, atol=1e-9, rtol=1e-9))


def _detection_wrong(kind):
    def fn(flagged, harmful):
        f, h = flagged.bool(), harmful.bool()
        tp, fp = int((f & h).sum()), int((f & ~h).sum())
        fn_, tn = int((~f & h).sum()), int((~f & ~h).sum())
        r = lambda a, b: a / b if b else 0.0  # noqa: E731
        p, rc = r(tp, tp + fp), r(tp, tp + fn_)
        if kind == "swapped":
            p, rc = rc, p
        f1 = (p + rc) / 2 if kind == "f1-mean" else r(2 * p * rc, p + rc)
        fpr = {"fpr-over-all": r(fp, len(f)), "false-discovery": r(fp, tp + fp)}.get(kind, r(fp, fp + tn))
        return {"precision": p, "recall": rc, "f1": f1, "fpr": fpr}
    return fn


register(Exercise(
    id="ch19.detection_metrics", chapter=CH, title="Precision, recall and false positives of a filter", points=1,
    name="detection_metrics",
    signature="detection_metrics(flagged: BoolTensor[N], harmful: BoolTensor[N]) -> "
              "{'precision', 'recall', 'f1', 'fpr'}",
    reference="scikit-learn precision_score / recall_score / f1_score (zero_division=0) and confusion_matrix",
    solution=f"{SOL}:detection_metrics", cases=_detection_cases,
    forbidden=["sklearn.metrics:precision_score", "sklearn.metrics:recall_score", "sklearn.metrics:f1_score",
               "sklearn.metrics:confusion_matrix", "sklearn.metrics:precision_recall_fscore_support"],
    mistakes=[
        Mistake("swapped", "precision and recall are swapped: precision = TP / (TP + FP), the share of BLOCKED "
                "items that were harmful; recall = TP / (TP + FN), the share of HARMFUL items that were blocked",
                _detection_wrong("swapped")),
        Mistake("fpr-over-all", "your false-positive rate divides by all items: divide by the harmless ones, "
                "FP / (FP + TN)", _detection_wrong("fpr-over-all")),
        Mistake("false-discovery", "your fpr is FP / (TP + FP), the false discovery rate (1 - precision): the "
                "false-positive rate is FP / (FP + TN), the share of harmless items blocked",
                _detection_wrong("false-discovery")),
        Mistake("f1-mean", "your F1 is the arithmetic mean of P and R: it is the harmonic mean, 2PR / (P + R)",
                _detection_wrong("f1-mean")),
    ]))


# ========================================================================================
# WEAT: effect size and permutation test (re-derived with numpy loops)
# ========================================================================================
def _np_assoc(w, A, B):
    import numpy as np

    def cos(u, v):
        return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
    return np.mean([cos(w, a) for a in A]) - np.mean([cos(w, b) for b in B])


def _ref_weat_effect(X, Y, A, B):
    import numpy as np

    X, Y, A, B = (t.double().numpy() for t in (X, Y, A, B))
    sx = [_np_assoc(x, A, B) for x in X]
    sy = [_np_assoc(y, A, B) for y in Y]
    return float((np.mean(sx) - np.mean(sy)) / np.std(sx + sy, ddof=1))


def _ref_weat_p(X, Y, A, B):
    X, Y, A, B = (t.double().numpy() for t in (X, Y, A, B))
    s = [_np_assoc(w, A, B) for w in list(X) + list(Y)]
    n = len(X)
    observed = sum(s[:n]) - sum(s[n:])
    greater = total = 0
    everything = set(range(2 * n))
    for xi in itertools.combinations(range(2 * n), n):
        yi = everything - set(xi)
        stat = sum(s[i] for i in xi) - sum(s[i] for i in yi)
        greater += stat > observed + 1e-12
        total += 1
    return greater / total


def _weat_inputs(g, n, nA, d, shift=0.6):
    """Targets and attributes with a built-in association and rows of varied norms."""
    a_dir = torch.randn(d, generator=g)
    A = torch.randn(nA, d, generator=g) + a_dir
    B = torch.randn(nA, d, generator=g) - a_dir
    X = torch.randn(n, d, generator=g) + shift * a_dir
    Y = torch.randn(n, d, generator=g) - shift * a_dir * 0.5
    scale = lambda t: t * (0.5 + 3 * torch.rand(t.shape[0], 1, generator=g))  # noqa: E731
    return scale(X), scale(Y), scale(A), scale(B)


def _weat_specs(ex_id, hidden, n_hidden=3):
    specs = [("8 targets per set, 8 attributes, d=16", 0, 8, 8, 16, 0.6),
             ("5 targets, 3 attributes, d=8", 1, 5, 3, 8, 0.3),
             ("no association built in", 2, 6, 6, 12, 0.0),
             ("2 targets per set", 3, 2, 4, 6, 0.5)]
    if hidden:
        for i in range(n_hidden):
            g = _gen(hidden_seed(ex_id, i, "shape"))
            specs.append((f"hidden case {i + 1}", hidden_seed(ex_id, i), int(torch.randint(3, 8, (1,), generator=g)),
                          int(torch.randint(3, 9, (1,), generator=g)), 16, float(torch.rand(1, generator=g))))
    for name, seed, n, nA, d, shift in specs:
        yield name, _weat_inputs(_gen(seed), n, nA, d, shift)


def _weat_effect_cases(hidden: bool):
    for name, (X, Y, A, B) in _weat_specs("ch19.weat_effect_size", hidden):
        yield Case(name, (X, Y, A, B), expected=lambda X=X, Y=Y, A=A, B=B: _ref_weat_effect(X, Y, A, B),
                   compare=close_floats(atol=1e-6, rtol=1e-6))


def _weat_effect_wrong(kind):
    def fn(X, Y, A, B):
        norm = (lambda t: t.double()) if kind == "unnormalised" else (lambda t: F.normalize(t.double(), dim=-1))
        X, Y, A, B = map(norm, (X, Y, A, B))
        sx = (X @ A.T).mean(1) - (X @ B.T).mean(1)
        sy = (Y @ A.T).mean(1) - (Y @ B.T).mean(1)
        if kind == "one-group-std":
            sd = sx.std(correction=1)
        else:
            sd = torch.cat([sx, sy]).std(correction=0 if kind == "ddof0" else 1)
        if kind == "pooled-std":
            sd = ((sx.var(correction=1) + sy.var(correction=1)) / 2).sqrt()
        return ((sx.mean() - sy.mean()) / sd).item()
    return fn


register(Exercise(
    id="ch19.weat_effect_size", chapter=CH, title="WEAT effect size", points=1, name="weat_effect_size",
    difficulty="**",
    signature="weat_effect_size(X: Tensor[nX, d], Y: Tensor[nY, d], A: Tensor[nA, d], B: Tensor[nB, d]) -> float",
    reference="Caliskan et al. (2017), re-derived with numpy loops; std over X u Y with ddof=1 (SEAT's convention)",
    solution=f"{SOL}:weat_effect_size", cases=_weat_effect_cases,
    mistakes=[
        Mistake("one-group-std", "you divided by the standard deviation over ONE target set: WEAT's denominator is "
                "the std of s(w, A, B) over all target words, X and Y together", _weat_effect_wrong("one-group-std")),
        Mistake("pooled-std", "you divided by a pooled within-group std (as in Cohen's d): WEAT's denominator is the "
                "std of s(w, A, B) over X u Y taken as one set", _weat_effect_wrong("pooled-std")),
        Mistake("ddof0", "you used the population std (ddof=0): this chapter states the sample std, ddof=1 "
                "(torch's default, SEAT's convention; WEFE uses ddof=0)", _weat_effect_wrong("ddof0")),
        Mistake("unnormalised", "you used dot products of raw embeddings: WEAT uses cosine similarity (normalise "
                "the vectors first)", _weat_effect_wrong("unnormalised")),
    ]))


def _clear_of_ties(X, Y, A, B, gap=1e-6):
    """No split other than the observed one has a statistic within ``gap`` of it."""
    W, A_, B_ = (F.normalize(t.double(), dim=-1) for t in (torch.cat([X, Y]), A, B))
    s = (W @ A_.T).mean(1) - (W @ B_.T).mean(1)
    n = X.shape[0]
    subsets = torch.tensor(list(itertools.combinations(range(2 * n), n)))
    stats = 2 * s[subsets].sum(1) - s.sum()
    observed = stats[0]  # combinations start with (0, ..., n-1): the observed split
    return bool(((stats[1:] - observed).abs() > gap).all())


def _weat_p_cases(hidden: bool):
    for name, (X, Y, A, B) in _weat_specs("ch19.weat_p_value", hidden, n_hidden=2):
        for k in range(1, 50):  # a near-tie would make float32 and float64 answers differ
            if _clear_of_ties(X, Y, A, B):
                break
            X = X + 1e-3 * torch.randn(X.shape, generator=_gen(k))
        yield Case(name, (X, Y, A, B), expected=lambda X=X, Y=Y, A=A, B=B: _ref_weat_p(X, Y, A, B),
                   compare=close_floats(atol=1e-9, rtol=1e-9))


def _weat_p_wrong(kind):
    def fn(X, Y, A, B):
        def assoc(W, A, B):
            W, A, B = (F.normalize(t.double(), dim=-1) for t in (W, A, B))
            return (W @ A.T).mean(1) - (W @ B.T).mean(1)

        n = X.shape[0]
        if kind == "permute-attributes":
            sx, sy = assoc(X, A, B), assoc(Y, A, B)
            observed = sx.sum() - sy.sum()
            AB = torch.cat([A, B])
            stats = []
            for ai in itertools.combinations(range(AB.shape[0]), A.shape[0]):
                bi = [i for i in range(AB.shape[0]) if i not in ai]
                stats.append(assoc(X, AB[list(ai)], AB[bi]).sum() - assoc(Y, AB[list(ai)], AB[bi]).sum())
            stats = torch.stack(stats)
            return (stats > observed + 1e-12).double().mean().item()
        s = torch.cat([assoc(X, A, B), assoc(Y, A, B)])
        total = s.sum()
        observed = 2 * s[:n].sum() - total
        subsets = torch.tensor(list(itertools.combinations(range(2 * n), n)))
        stats = 2 * s[subsets].sum(1) - total
        if kind == "counts-ties":
            return (stats >= observed - 1e-12).double().mean().item()
        if kind == "two-sided":
            return (stats.abs() > observed.abs() + 1e-12).double().mean().item()
        return (stats < observed - 1e-12).double().mean().item()  # wrong-tail
    return fn


register(Exercise(
    id="ch19.weat_p_value", chapter=CH, title="WEAT's permutation test", points=1, name="weat_p_value",
    difficulty="**",
    signature="weat_p_value(X: Tensor[n, d], Y: Tensor[n, d], A: Tensor[nA, d], B: Tensor[nB, d]) -> float",
    reference="Caliskan et al. (2017): exact one-sided test over all equal-size partitions, re-derived with "
              "itertools and numpy",
    solution=f"{SOL}:weat_p_value", cases=_weat_p_cases,
    mistakes=[
        Mistake("counts-ties", "you counted partitions with S(X_i, Y_i) >= S(X, Y): the observed partition then "
                "counts itself; Caliskan et al. count the STRICTLY greater ones", _weat_p_wrong("counts-ties")),
        Mistake("two-sided", "you compared absolute values (a two-sided test): WEAT's test is one-sided, "
                "S(X_i, Y_i) > S(X, Y)", _weat_p_wrong("two-sided")),
        Mistake("wrong-tail", "you counted the partitions with a SMALLER statistic: the p-value is the share "
                "with a larger one", _weat_p_wrong("wrong-tail")),
        Mistake("permute-attributes", "you shuffled the attribute words A and B: the test permutes the TARGET "
                "words X u Y into two halves", _weat_p_wrong("permute-attributes")),
    ]))


# ========================================================================================
# exposure (Carlini et al. 2019)
# ========================================================================================
def _ref_exposure(lp, i):
    from scipy.stats import rankdata

    rank = rankdata(lp.double().numpy(), method="min")[i]
    return float(math.log2(lp.numel()) - math.log2(rank))


def _exposure_cases(hidden: bool):
    g = _gen(0)
    base = torch.rand(1000, generator=g) * 10 + 20
    specs = [("1000 candidates, canary in the middle", base, int(base.argsort()[300])),
             ("the canary is the model's favourite (rank 1)", base, int(base.argmin())),
             ("the canary is the least likely (rank |R|)", base, int(base.argmax())),
             ("|R| = 10, rank 3", torch.tensor([5.0, 1.0, 7.0, 2.0, 9.0, 3.0, 8.0, 6.0, 4.0, 10.0]), 5),
             ("ties with the canary do not push it down", torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0, 5.0]), 2)]
    if hidden:
        for i in range(3):
            gh = _gen(hidden_seed("ch19.exposure", i))
            n = int(torch.randint(100, 5000, (1,), generator=gh))
            lp = torch.randperm(n, generator=gh).double() / 7 + 3   # distinct values
            specs.append((f"hidden case {i + 1}", lp, int(torch.randint(n, (1,), generator=gh))))
    for name, lp, i in specs:
        yield Case(name, (lp, i), expected=lambda lp=lp, i=i: _ref_exposure(lp, i),
                   compare=close_floats(atol=1e-9, rtol=1e-9))


def _exposure_wrong(kind):
    def fn(log_perplexities, canary_index):
        lp = log_perplexities.double()
        c = lp[canary_index]
        if kind == "zero-based":
            rank = int((lp < c).sum())
        elif kind == "counts-self":
            rank = 1 + int((lp <= c).sum())
        elif kind == "descending":
            rank = 1 + int((lp > c).sum())
        else:
            rank = 1 + int((lp < c).sum())
        log = math.log if kind == "natural-log" else math.log2
        return log(lp.numel()) - (log(rank) if rank > 0 else -math.inf)
    return fn


register(Exercise(
    id="ch19.exposure", chapter=CH, title="The exposure of a canary", points=1, name="exposure",
    signature="exposure(log_perplexities: Tensor[R], canary_index: int) -> float",
    reference="Carlini et al. (2019): log2|R| - log2 rank, the rank from scipy.stats.rankdata(method='min')",
    solution=f"{SOL}:exposure", cases=_exposure_cases,
    forbidden=["scipy.stats:rankdata"],
    mistakes=[
        Mistake("zero-based", "your rank is off by one: it starts at 1 (the canary that the model likes best has "
                "rank 1 and exposure log2|R|), so rank = 1 + the number of candidates strictly more likely",
                _exposure_wrong("zero-based")),
        Mistake("counts-self", "your rank is off by one: counting the candidates with log-perplexity <= the "
                "canary's counts the canary itself; count those strictly smaller, plus 1", _exposure_wrong("counts-self")),
        Mistake("descending", "you ranked from the least likely: rank 1 is the candidate with the SMALLEST "
                "log-perplexity", _exposure_wrong("descending")),
        Mistake("natural-log", "you used natural logarithms: exposure is in bits, log2", _exposure_wrong("natural-log")),
    ]))


# ========================================================================================
# grounding_scores (faiss)
# ========================================================================================
def _ref_grounding(claims, passages, threshold):
    import faiss

    c = claims.float().numpy().copy()
    p = passages.float().numpy().copy()
    faiss.normalize_L2(c)
    faiss.normalize_L2(p)
    index = faiss.IndexFlatIP(p.shape[1])
    index.add(p)
    D, I = index.search(c, 1)
    score = torch.from_numpy(D[:, 0].copy())
    return score, torch.from_numpy(I[:, 0].copy()).long(), score >= threshold


def _grounding_inputs(g, S, P, d):
    """Claims near some passages, with varied norms; the threshold sits in a clear gap
    between the best scores, and no claim has two passages tied for best."""
    while True:
        passages = torch.randn(P, d, generator=g) * (0.5 + 2 * torch.rand(P, 1, generator=g))
        near = torch.randint(P, (S,), generator=g)
        noise = torch.rand(S, 1, generator=g) * 3
        claims = passages[near] + noise * torch.randn(S, d, generator=g)
        sim = F.normalize(claims.double(), dim=-1) @ F.normalize(passages.double(), dim=-1).T
        top2 = sim.topk(min(2, P), dim=1).values
        best = top2[:, 0].sort().values
        gaps = best[1:] - best[:-1]
        clear = P == 1 or float((top2[:, 0] - top2[:, 1]).min()) > 1e-4
        if S > 1 and float(gaps.max()) > 0.02 and clear:
            k = int(gaps.argmax())
            return claims, passages, float((best[k] + best[k + 1]) / 2)


def _grounding_cases(hidden: bool):
    specs = [("6 claims, 10 passages, d=16", 0, 6, 10, 16), ("1 passage", 1, 4, 1, 8),
             ("more claims than passages", 2, 12, 5, 32)]
    if hidden:
        for i in range(3):
            g = _gen(hidden_seed("ch19.grounding_scores", i, "shape"))
            specs.append((f"hidden case {i + 1}", hidden_seed("ch19.grounding_scores", i),
                          int(torch.randint(2, 12, (1,), generator=g)), int(torch.randint(2, 20, (1,), generator=g)), 24))
    for name, seed, S, P, d in specs:
        claims, passages, thr = _grounding_inputs(_gen(seed), S, P, d)
        yield Case(name, (claims, passages, thr), expected=lambda c=claims, p=passages, t=thr: _ref_grounding(c, p, t),
                   compare=compare_grounding)


def _grounding_wrong(kind):
    def fn(claims, passages, threshold):
        if kind == "unnormalised":
            sim = claims.float() @ passages.float().T
        else:
            sim = F.normalize(claims.float(), dim=-1) @ F.normalize(passages.float(), dim=-1).T
        if kind == "euclidean":
            dist = torch.cdist(claims.float(), passages.float())
            index = dist.argmin(1)
            score = sim.gather(1, index[:, None]).squeeze(1)
            return score, index, score >= threshold
        if kind == "over-claims":
            score, index = sim.max(dim=0)
        else:
            score, index = sim.max(dim=1)
        return score, index, score >= threshold
    return fn


register(Exercise(
    id="ch19.grounding_scores", chapter=CH, title="Grounding: the best supporting passage", points=1,
    name="grounding_scores",
    signature="grounding_scores(claims: Tensor[S, d], passages: Tensor[P, d], threshold: float) -> "
              "(score: Tensor[S], index: LongTensor[S], supported: BoolTensor[S])",
    reference="faiss IndexFlatIP search (k=1) on faiss.normalize_L2-ed vectors",
    solution=f"{SOL}:grounding_scores", cases=_grounding_cases,
    forbidden=["faiss:IndexFlatIP"],
    mistakes=[
        Mistake("unnormalised", "you used raw dot products: a long vector wins whatever its direction. Normalise "
                "claims and passages (cosine similarity)", _grounding_wrong("unnormalised")),
        Mistake("over-claims", "you took the max over the claims (dim 0): each CLAIM looks for its best passage, "
                "the max runs over the passages (dim 1)", _grounding_wrong("over-claims")),
        Mistake("euclidean", "you chose the passage by Euclidean distance of the raw vectors: with vectors of "
                "different lengths that is not the most similar direction; use the cosine", _grounding_wrong("euclidean")),
    ]))
