"""The feedback a learner reads: comparisons, named mistakes, hints from the numbers, budgets
and the scoring policy. Each test is about a class of wrong answers, built on a small
exercise declared here (not registered in the catalogue) so that it does not depend on a
chapter's details."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from autograder import core
from autograder.core import Case, Exercise, Mistake


def _exercise(cases, mistakes=(), exercise_id="test.ex", name="fn"):
    return Exercise(id=exercise_id, chapter="test", title="a test exercise", points=3, name=name,
                    signature="fn(x)", reference="torch", solution="math:sqrt", cases=lambda hidden: list(cases),
                    mistakes=list(mistakes))


def _grade(ex: Exercise, submission) -> core.GradeResult:
    """core.grade for an exercise that is not in the catalogue."""
    core._REGISTRY[ex.id] = ex
    try:
        return core.grade(ex.id, submission)
    finally:
        core._REGISTRY.pop(ex.id, None)


X = torch.tensor([[1.0, 4.0, 9.0], [16.0, 25.0, 36.0]])


# ------------------------------------------------------------------------------------------
# NaN never compares equal; a NaN reproduction names only a NaN answer
# ------------------------------------------------------------------------------------------
def test_nan_never_compares_equal():
    nan = torch.tensor([float("nan"), 1.0])
    assert core.compare_tensors(nan, torch.tensor([5.0, 1.0])) is not None
    assert core.compare_tensors(nan, nan.clone()) is not None
    assert core.compare_float(float("nan"), 3.0) is not None
    assert core.compare_float(1.0, float("nan")) is not None


def test_a_nan_producing_mistake_does_not_name_a_finite_wrong_answer():
    overflow = Mistake("overflow", "OVERFLOW", lambda x: torch.full_like(x, float("nan")))
    missing_sqrt = Mistake("no-sqrt", "NO-SQRT", lambda x: x.clone())
    ex = _exercise([Case("c", (X,), expected=lambda: X.sqrt())], [overflow, missing_sqrt])
    finite_wrong = _grade(ex, lambda x: x + 1)
    assert "OVERFLOW" not in finite_wrong.feedback
    named = _grade(ex, lambda x: x * 1.0)
    assert "NO-SQRT" in named.feedback and "OVERFLOW" not in named.feedback
    nan_answer = _grade(ex, lambda x: x * float("nan"))
    assert "OVERFLOW" in nan_answer.feedback


def test_a_nan_mistake_matches_only_nan_at_the_same_places():
    half = Mistake("half-nan", "HALF-NAN", lambda x: torch.where(x > 10, float("nan"), x.sqrt()))
    ex = _exercise([Case("c", (X,), expected=lambda: X.sqrt())], [half])
    assert "HALF-NAN" in _grade(ex, lambda x: torch.where(x > 10, float("nan"), x ** 0.5)).feedback
    assert "HALF-NAN" not in _grade(ex, lambda x: torch.where(x > 3, float("nan"), x ** 0.5)).feedback


def test_a_mistake_equal_to_the_right_answer_on_a_case_names_nothing_there():
    # On this input the "mistake" happens to be right: it cannot explain a wrong answer.
    same = Mistake("same", "SAME", lambda x: x.sqrt())
    ex = _exercise([Case("c", (X,), expected=lambda: X.sqrt())], [same])
    assert "SAME" not in _grade(ex, lambda x: x.sqrt() + 1).feedback


# ------------------------------------------------------------------------------------------
# Yes/no checks
# ------------------------------------------------------------------------------------------
def test_a_yes_no_check_names_no_mistake_unless_it_says_which():
    def consistent(fn, x):
        return bool(torch.equal(fn(x), fn(x.clone())))

    mistakes = [Mistake("a", "MISTAKE-A", lambda x: torch.rand(x.shape)),
                Mistake("b", "MISTAKE-B", lambda x: x)]
    plain = _exercise([Case("consistent", (X,), run=consistent, expected=lambda: True)], mistakes)
    out = _grade(plain, lambda x: torch.rand(x.shape)).feedback
    assert "MISTAKE-A" not in out and "MISTAKE-B" not in out
    specific = _exercise([Case("consistent", (X,), run=consistent, expected=lambda: True, names="a")], mistakes)
    assert "MISTAKE-A" in _grade(specific, lambda x: torch.rand(x.shape)).feedback


# ------------------------------------------------------------------------------------------
# Composite exercises inherit the diagnoses of their parts
# ------------------------------------------------------------------------------------------
def test_a_composite_names_the_mistakes_of_its_parts():
    def norm(x):
        return (x - x.mean(-1, keepdim=True)) / x.std(-1, unbiased=False, keepdim=True)

    part = _exercise([Case("c", (X,), expected=lambda: norm(X))],
                     [Mistake("unbiased", "UNBIASED-STD", lambda x: (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)),
                      Mistake("no-centre", "NOT-CENTRED", lambda x: x / x.std(-1, unbiased=False, keepdim=True))],
                     exercise_id="test.part", name="norm")
    core._REGISTRY[part.id] = part
    try:
        def block(x, norm_fn=norm):
            return x + 2 * norm_fn(x)

        inherited = core.inherit("test.part", lambda n: (lambda x: block(x, n)))
        assert [m.name for m in inherited] == ["test.part:unbiased", "test.part:no-centre"]
        composite = _exercise([Case("c", (X,), expected=lambda: block(X))], inherited, exercise_id="test.block")
        out = _grade(composite, lambda x: x + 2 * (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)).feedback
        assert "in norm: UNBIASED-STD" in out
        out = _grade(composite, lambda x: x + 2 * x / x.std(-1, unbiased=False, keepdim=True)).feedback
        assert "in norm: NOT-CENTRED" in out
    finally:
        core._REGISTRY.pop(part.id, None)
    with pytest.raises(ValueError):
        core.inherit("test.not-declared", lambda n: n)


# ------------------------------------------------------------------------------------------
# Hints from the numbers
# ------------------------------------------------------------------------------------------
E = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)).abs() + 0.5


@pytest.mark.parametrize("got, words", [
    (E * E, "squared"),
    (E.sqrt(), "square root"),
    (-E, "opposite sign"),
    (E * 2, "= 2"),
    (E * math.sqrt(6), "sqrt(6)"),
    (E / math.sqrt(6), "1/sqrt(6)"),
    (E * 6 / 5, "unbiased"),
    (E * 6, "a dimension of the result"),
    (E * math.log(2), "nats vs bits"),
    (torch.cat([E[:, :1], E[:, :-1]], 1), "shifted by one position along dimension 1"),
    (torch.cat([E[1:], E[-1:]], 0), "shifted by one position along dimension 0"),
    (torch.cat([E[:2], E[2:] + 1]), "right for index [0, 1] along dimension 0"),
])
def test_unnamed_mistakes_get_a_hint_from_the_numbers(got, words):
    hint = core.numeric_hint(E, got)
    assert words in hint, hint


def test_hints_for_transposed_and_reshaped_results_and_none_for_noise():
    square = torch.randn(5, 5, generator=torch.Generator().manual_seed(1))
    assert "transposed" in core.numeric_hint(square, square.T)
    assert "transposed" in core.numeric_hint(E, E.T)
    assert "arranged in shape" in core.numeric_hint(E, E.reshape(6, 4))
    assert core.numeric_hint(E, torch.randn(4, 6, generator=torch.Generator().manual_seed(2))) == ""
    assert "squared" in core.numeric_hint(16.6388, 16.6388 ** 2)


def test_the_hint_reaches_the_feedback_when_no_mistake_matches():
    ex = _exercise([Case("c", (X,), expected=lambda: X.sqrt())])
    out = _grade(ex, lambda x: x.sqrt() ** 2).feedback
    assert "what the numbers say" in out and "squared" in out


# ------------------------------------------------------------------------------------------
# Messages that do not mislead
# ------------------------------------------------------------------------------------------
def test_close_values_print_enough_digits_and_the_difference():
    msg = core.compare_float(-0.415012, -0.4150124, atol=1e-9, rtol=1e-9)
    assert "-0.4150124" in msg and "difference" in msg
    t = core.compare_tensors(torch.tensor([-0.415012]), torch.tensor([-0.4150124]), atol=1e-9, rtol=1e-9)
    assert "difference" in t
    exp, got = t.split("expected ")[1].split(", got ")[0], t.split(", got ")[1].split(" ")[0]
    assert exp != got


def test_minus_inf_is_not_called_an_overflow():
    expected = torch.tensor([1.0, 2.0, float("-inf")])
    msg = core.compare_tensors(expected, torch.tensor([1.0, float("-inf"), float("-inf")]))
    assert "overflow" not in msg and "masked or filtered out" in msg
    msg = core.compare_tensors(expected, torch.tensor([1.0, 2.0, 0.0]))
    assert "kept that should be removed" in msg
    assert "overflow" in core.compare_tensors(expected, torch.tensor([float("inf"), 2.0, float("-inf")]))
    assert core.compare_tensors(expected, expected.clone()) is None


# ------------------------------------------------------------------------------------------
# Budgets
# ------------------------------------------------------------------------------------------
def test_diagnosis_runs_within_its_budget():
    def slow(x):
        time.sleep(30)
        return x

    mistakes = [Mistake(f"slow{i}", f"SLOW{i}", slow) for i in range(3)] + [Mistake("fast", "FAST", lambda x: x * 3)]
    cases = [Case(f"c{i}", (X,), expected=lambda: X.sqrt()) for i in range(3)]
    ex = _exercise(cases, mistakes)
    t0 = time.perf_counter()
    out = _grade(ex, lambda x: x * 3).feedback
    assert time.perf_counter() - t0 < core.DIAGNOSIS_BUDGET_S + 10
    assert "SLOW" not in out


def test_the_case_budget_counts_cpu_time_and_still_stops_a_sleeper():
    t0 = time.perf_counter()
    with pytest.raises(core.CaseTimeout):
        with core._Timeout(0.3, wall_factor=4.0):
            time.sleep(10)
    assert 1.0 <= time.perf_counter() - t0 < 5.0  # the wall budget (4 x 0.3 s) stopped it, not the CPU one
    with pytest.raises(core.CaseTimeout):
        with core._Timeout(0.3, wall_factor=100.0):
            while True:
                pass


def test_a_first_check_of_a_torch_only_exercise_does_not_import_transformers():
    code = textwrap.dedent("""
        import math, sys, time
        import torch
        import autograder

        def mine(q, k, v, mask=None, is_causal=False):
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            allowed = torch.ones(scores.shape[-2:], dtype=torch.bool)
            if is_causal:
                allowed = allowed.tril(diagonal=k.shape[-2] - q.shape[-2])
            if mask is not None:
                allowed = allowed & mask
            return torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v

        t0 = time.perf_counter()
        r = autograder.grade("ch04.scaled_dot_product_attention", mine)
        assert r.passed, r.feedback
        print("transformers" in sys.modules, round(time.perf_counter() - t0, 2))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    imported, seconds = out.stdout.split()
    assert imported == "False", "grading a torch-only exercise imported transformers"


def test_a_forbidden_function_imported_during_the_call_is_still_refused():
    def sneaky(q, k, v, mask=None, is_causal=False):
        from transformers.models.llama.modeling_llama import repeat_kv  # noqa: F401 (imports the library)
        import torch.nn.functional as F
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)

    result = core.grade("ch04.scaled_dot_product_attention", sneaky)
    assert not result.passed and "scaled_dot_product_attention" in result.feedback


# ------------------------------------------------------------------------------------------
# Scoring policy
# ------------------------------------------------------------------------------------------
def test_points_are_shared_by_check_groups():
    assert core.score_by_groups(3, [("", True), ("", False)]) == 0
    assert core.score_by_groups(3, [("", True), ("", True)]) == 3
    assert core.score_by_groups(4, [("a", True), ("a", True), ("b", False)]) == 2
    ex = _exercise([Case("a1", (X,), expected=lambda: X.sqrt(), group="shapes"),
                    Case("b1", (X,), expected=lambda: X.sqrt() * 0, group="values")])
    r = _grade(ex, lambda x: x.sqrt())
    assert r.score == 1.5 and not r.passed
    assert "shared by 2 groups" in r.feedback
    ex = _exercise([Case("a1", (X,), expected=lambda: X.sqrt()), Case("b1", (X,), expected=lambda: X * 0)])
    r = _grade(ex, lambda x: x.sqrt())
    assert r.score == 0 and "points come only when every check passes" in r.feedback


def test_a_library_not_implemented_error_is_an_error_not_a_stub():
    ex = _exercise([Case("c1", (X,), expected=lambda: X.sqrt()), Case("c2", (X,), expected=lambda: X.sqrt())])
    r = _grade(ex, lambda x: torch.bincount(x.flatten()))  # bincount refuses floats with NotImplementedError
    assert r.status == "graded" and "not implemented yet" not in r.feedback
    assert "NotImplementedError" in r.feedback and r.feedback.count("FAIL") == 2

    def stub(x):
        raise NotImplementedError()

    assert _grade(ex, stub).status == "not-implemented"


def test_numpy_inputs_are_not_taken_for_changed_ones():
    import numpy as np

    a = np.linspace(0, 1, 5)
    assert core._same(a, a.copy())
    b = a.copy()
    b[0] = 7
    assert not core._same(a, b)
    nan = np.array([np.nan, 1.0])
    assert core._same(nan, nan.copy())
