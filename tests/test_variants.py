"""Correct answers written in other styles than the reference solutions pass with full marks."""
from __future__ import annotations

import pytest

import autograder
from autograder.core import get
from tests.variants import load_all

RIGHT = load_all()
# Every chapter whose variants live here (chapters 12 and 13 keep theirs in test_chNN_variants.py).
CHAPTERS = sorted({a.exercise_id.split(".")[0] for a in RIGHT})
EXERCISES = [row["id"] for row in autograder.catalogue() if row["chapter"] in CHAPTERS]


def _param(answer):
    marks = [pytest.mark.xfail(strict=True, reason=answer.rejected)] if answer.rejected else []
    return pytest.param(answer, id=answer.label, marks=marks)


@pytest.mark.parametrize("answer", [_param(a) for a in RIGHT])
def test_correct_answer_in_another_style_passes(answer):
    result = autograder.grade(answer.exercise_id, answer.submission, hidden=True)
    print(result.feedback)
    assert result.passed, f"{answer.label} ({answer.style}) was rejected:\n{result.feedback}"
    assert result.score == result.max_score == get(answer.exercise_id).points, result.feedback


def test_labels_are_unique():
    labels = [a.label for a in RIGHT]
    assert len(labels) == len(set(labels)), sorted(l for l in labels if labels.count(l) > 1)


def test_every_variant_names_a_known_exercise():
    unknown = sorted({a.exercise_id for a in RIGHT} - {r["id"] for r in autograder.catalogue()})
    assert not unknown, f"variants for unknown exercises: {unknown}"


@pytest.mark.parametrize("exercise_id", EXERCISES)
def test_every_exercise_has_two_correct_variants(exercise_id):
    mine = [a for a in RIGHT if a.exercise_id == exercise_id and not a.rejected]
    assert len(mine) >= 2, f"{exercise_id} has {len(mine)} passing correct variants in tests/variants (want >= 2)"
