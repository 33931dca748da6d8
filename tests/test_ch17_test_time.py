"""Chapter 17: claims the chapter makes, checked against independent computations."""
from __future__ import annotations

import collections
import itertools
import math
import random
import re

import numpy as np
import pytest
import torch

import autograder.exercises.ch17_test_time as E
from autograder.drivers.ch17_test_time import NAN, compare_calls, each_call
from solutions import ch17_test_time as S


# -- pass@k ---------------------------------------------------------------------------------
def _pass_by_enumeration(n, c, k):
    """The definition: the share of the k-subsets of n samples (c correct) with a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in sub) for sub in subsets) / len(subsets)


def test_pass_at_k_equals_the_enumeration_of_subsets():
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert math.isclose(S.pass_at_k(n, c, k), _pass_by_enumeration(n, c, k), abs_tol=1e-12), (n, c, k)


def test_pass_at_k_equals_exact_binomials_and_the_codex_formula():
    from scipy.special import comb

    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 3000)
        c, k = rng.randint(0, n), rng.randint(1, n)
        exact = E._ref_pass_at_k(n, c, k)
        assert math.isclose(S.pass_at_k(n, c, k), exact, rel_tol=1e-9, abs_tol=1e-12)
        if n - c >= k:  # the form printed in Chen et al. (2021)
            codex = 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1))
            assert math.isclose(codex, exact, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(E._ref_pass_at_k(10, 3, 2), 1 - comb(7, 2, exact=True) / comb(10, 2, exact=True))


def test_pass_at_1_is_the_fraction_correct():
    for n, c in [(16, 5), (200, 13), (1, 1)]:
        assert math.isclose(S.pass_at_k(n, c, 1), c / n)


# -- voting, best-of-N, masks ---------------------------------------------------------------
def test_majority_vote_equals_counter_most_common():
    rng = random.Random(1)
    for _ in range(500):
        answers = [rng.choice([None, 0, 1, 2, 3, 17]) for _ in range(rng.randint(0, 12))]
        kept = collections.Counter(a for a in answers if a is not None)
        want = kept.most_common(1)[0][0] if kept else None
        assert S.majority_vote(answers) == want, answers


def test_best_of_n_equals_numpy_argmax():
    g = torch.Generator().manual_seed(2)
    for i in range(20):
        scores, valid = E._best_inputs(g, 6, 1 + i % 9, ["logprob", "verifier"][i % 2])
        assert torch.equal(S.best_of_n(scores, valid), E._ref_best(scores, valid))


def test_completion_mask_equals_the_loop():
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        ids = E._mask_inputs(g, 8, 20, 6, 17)
        assert torch.equal(S.completion_mask(ids, 6, 17), E._ref_mask(ids, 6, 17))


def test_masked_token_logprobs_equal_chapter_10_sequence_logprobs():
    from solutions.ch10_alignment import sequence_logprobs

    model = S.tiny_gpt(0).eval()
    ids = S.generate(model, [S.make_prompt(12, 345)] * 4, S.MAX_NEW, 1.0, torch.Generator().manual_seed(0))
    mask = S.completion_mask(ids, 8, S.EOS_ID)
    with torch.no_grad():
        ours = S.sequence_scores(model, ids, mask)
        theirs = sequence_logprobs(model(ids), ids, mask)
    assert torch.allclose(ours, theirs, atol=1e-5)


# -- the task -------------------------------------------------------------------------------
def test_scratchpad_answers_are_the_sum_and_columns_carry():
    rng = random.Random(4)
    for _ in range(2000):
        a, b = rng.randrange(1000), rng.randrange(1000)
        text = S.scratchpad(a, b)
        assert text == E._ref_scratchpad(a, b)
        columns, answer = text[:-1].split(";")
        assert int(answer) == a + b
        cols = columns.split(",")
        assert "".join(c[1] for c in reversed(cols)) == f"{a + b:04d}"[1:]   # units digits, reversed
        assert cols[-1][0] == f"{a + b:04d}"[0]                              # the last carry leads


def test_subtraction_scratchpad_ends_with_the_difference():
    rng = random.Random(5)
    for _ in range(500):
        a, b = sorted((rng.randrange(1000), rng.randrange(1000)), reverse=True)
        text = S.subtraction_scratchpad(a, b)
        assert S.parse_answer(text) == a - b
        digits = "".join(col[1] for col in reversed(text.split(";")[0].split(",")))
        assert digits == f"{a - b:03d}"
        assert text.split(";")[0].split(",")[-1][0] == "0"      # a >= b: no borrow left over


def test_held_out_is_one_problem_in_ten_whatever_the_sum():
    held = [(a, b) for a in range(0, 1000, 7) for b in range(1000) if S.held_out(a, b)]
    share = len(held) / (len(range(0, 1000, 7)) * 1000)
    assert 0.09 < share < 0.11
    by_units = collections.Counter((a + b) % 10 for a, b in held)
    assert max(by_units.values()) < 1.2 * min(by_units.values())


def test_training_examples_learn_only_what_the_model_writes():
    ids, targets = S.to_batch([S.example(357, 486, "tool", calculator=S.calculator)])
    text = S.decode(ids[0])
    assert text == "357+486=[357+486]843;0843\n"
    learned = "".join(S.VOCAB[t] for t in targets[0].tolist() if t >= 0)
    assert learned == "[357+486];0843\n"          # neither the prompt nor the calculator's 843


def test_calculator_never_evaluates_and_agrees_with_the_regex_on_random_text():
    rng = random.Random(6)
    alphabet = "0123456789+-*[]= x"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert S.calculator(text) == E._ref_calculator(text), text
    assert S.calculator("[2**10]") is None and S.calculator("[007+010]") == "17"


def test_parse_answer_agrees_with_the_regex_reference_on_random_text():
    rng = random.Random(7)
    alphabet = "0123456789;,\n+-_ "
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        assert S.parse_answer(text) == E._ref_parse(text), text


# -- the model in production ----------------------------------------------------------------
def test_the_tiny_gpt_converts_to_hugging_face_with_the_same_logits():
    from solutions.ch10_alignment import to_hf_gpt2

    model = S.tiny_gpt(1).eval()
    ids = torch.tensor([S.encode(S.make_prompt(357, 486) + "13,14,08;0843\n")])
    with torch.no_grad():
        assert torch.allclose(model(ids), to_hf_gpt2(model)(ids).logits, atol=1e-4)
    assert 100_000 < model.num_parameters() < 105_000


# -- the loops run (small) ------------------------------------------------------------------
def test_grpo_and_seal_loops_run_and_log():
    model = S.tiny_gpt(2)
    log = S.grpo_train(model, 2, S.verifiable_reward, S.completion_mask, prompts_per_step=2, group_size=4,
                       eval_fn=lambda m: 0.0, eval_every=1)
    assert len(log["reward"]) == 2 and log["eval_step"] == [0, 1, 2]
    assert all(l <= S.MAX_NEW for l in log["length"])
    old_rows = S.task_rows(16, "-", torch.Generator().manual_seed(0), S.scratchpad)
    dev = S.draw_problems(5, torch.Generator().manual_seed(1))
    old = S.draw_problems(5, torch.Generator().manual_seed(2), "-")
    seal = S.seal_loop(model, 1, S.verifiable_reward, S.completion_mask, S.replay_mix, dev, old, old_rows,
                       replay_fraction=0.5, n_new=8, n_tries=2, steps=2)
    assert seal["round"] == [0, 1] and len(seal["dev"]) == 2 and len(seal["old"]) == 2


# -- the drivers ----------------------------------------------------------------------------
def test_a_nan_answer_is_reported_and_comparable():
    calls = [[5000, 2500, 1000]]
    got = each_call(lambda n, c, k: float("nan"), calls)
    assert got == [NAN]
    assert "returned nan" in compare_calls([1.0], got, calls, name="pass_at_k")
    assert compare_calls([NAN], got, calls) is None      # the same mistake explains it


def test_an_int_answer_must_be_an_int():
    calls = [["0843\n"]]
    assert compare_calls([843], [843.0], calls) is not None
    assert compare_calls([843], [True], [["1\n"]]) is not None
    assert compare_calls([843], [np.int64(843)], calls) is None
