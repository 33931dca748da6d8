"""Every check of the autograder passes a correct answer and fails realistic wrong ones."""
from __future__ import annotations

import pytest

import autograder
from autograder.core import get
from tests.helpers import reference_submission, stub_for
from tests.mistakes import load_all

EXERCISES = [row["id"] for row in autograder.catalogue()]
WRONG = load_all()


def test_catalogue_has_the_public_fields():
    rows = autograder.catalogue()
    assert rows, "the catalogue is empty"
    for row in rows:
        assert {"id", "chapter", "title", "points"} <= set(row)
        assert row["id"].startswith(row["chapter"] + ".")
        assert row["points"] > 0


@pytest.mark.parametrize("exercise_id", EXERCISES)
def test_reference_solution_passes(exercise_id):
    result = autograder.grade(exercise_id, reference_submission(exercise_id), hidden=True)
    assert result.passed, result.feedback
    assert result.score == result.max_score == get(exercise_id).points


@pytest.mark.parametrize("exercise_id", EXERCISES)
def test_stub_fails_with_a_readable_message(exercise_id):
    result = autograder.grade(exercise_id, stub_for(exercise_id))
    assert not result.passed and result.score == 0
    assert "not implemented yet" in result.feedback


@pytest.mark.parametrize("exercise_id", EXERCISES)
def test_calling_our_own_solution_is_refused(exercise_id):
    ex = get(exercise_id)
    from autograder.core import resolve
    ours = resolve(ex.solution)
    if isinstance(ours, type):
        submission = type(ex.name, (ours,), {})
    else:
        def submission(*args, **kwargs):
            return ours(*args, **kwargs)
    result = autograder.grade(exercise_id, submission)
    assert not result.passed
    assert ex.solution in result.feedback


@pytest.mark.parametrize("exercise_id", EXERCISES)
def test_every_exercise_has_three_typical_mistakes_in_the_tests(exercise_id):
    mine = [w for w in WRONG if w.exercise_id == exercise_id]
    assert len(mine) >= 3, f"{exercise_id} has {len(mine)} wrong answers in tests/mistakes (want >= 3)"


@pytest.mark.parametrize("wrong", WRONG, ids=[w.label for w in WRONG])
def test_wrong_answer_fails_and_is_diagnosed(wrong):
    result = autograder.grade(wrong.exercise_id, wrong.submission, hidden=True)
    assert not result.passed, f"{wrong.label} passed but is wrong"
    # All or nothing, unless the exercise shares its points by groups of checks (then a
    # mistake that breaks one group keeps the others' share).
    groups = {c.group for c in result.checks}
    assert result.score == 0 if len(groups) <= 1 else result.score < result.max_score
    assert "FAIL" in result.feedback
    if wrong.diagnosis is not None:
        ex = get(wrong.exercise_id)
        named = {m.name: m.message for m in ex.mistakes}
        assert wrong.diagnosis in named, f"unknown mistake name {wrong.diagnosis!r}"
        assert named[wrong.diagnosis] in result.feedback, result.feedback
