"""The public/private split of the exercises (``autograder/public.py``).

A student release and the grading sandbox carry only the public part: the drivers and the
chapter's contract (visible cases as data). These tests hold every chapter to it: every
case can be described publicly, the contract holds no hidden case and no private code,
checks read from the contract give the same verdicts, scores and diagnoses as the
declarations, and a release without the private package grades on its own.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import autograder
from autograder import core, public
from tests.helpers import reference_submission, stub_for
from tests.mistakes import load_all

CHAPTERS = sorted({row["chapter"] for row in autograder.catalogue()})
WRONG = load_all()


@pytest.mark.parametrize("path", sorted(public.DRIVERS_DIR.glob("ch[0-9][0-9]_*.py")), ids=lambda p: p.stem)
def test_drivers_import_nothing_private(path):
    assert public.audit_drivers(path) == []


def test_every_chapter_with_exercises_has_a_drivers_module():
    have = {p.name[:4] for p in public.DRIVERS_DIR.glob("ch[0-9][0-9]_*.py")}
    assert set(CHAPTERS) <= have, f"chapters without autograder/drivers/: {sorted(set(CHAPTERS) - have)}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_case_can_be_published(chapter):
    problems = public.audit([chapter])
    assert not problems, "\n".join(problems[:20]) + (f"\n... {len(problems) - 20} more" if len(problems) > 20 else "")


def test_the_audit_names_what_cannot_travel():
    """The audit is not a rubber stamp: lambdas, closures, private functions and objects
    as inputs are each refused with the reason."""
    import functools

    from autograder.core import Case, Exercise, compare_tensors

    def local_run(fn, x):
        return fn(x)

    ex = Exercise(id="chXX.audit", chapter="chXX", title="t", points=1, name="f", signature="f(x)", reference="r",
                  solution="solutions.none:f", cases=lambda hidden: [
                      Case("lambda compare", (1,), compare=lambda e, g: None),
                      Case("closure run", (1,), run=local_run),
                      Case("private function", (1,), compare=public.audit),
                      Case("module input", (__import__("torch").nn.Linear(2, 2),)),
                      Case("partial over an object", (1,), compare=functools.partial(compare_tensors, atol=object())),
                      Case("fine", (1,), compare=core.close_floats(1e-3, 1e-3))])
    problems = public.audit_exercise(ex)
    text = "\n".join(problems)
    assert "[lambda compare] compare" in text and "is a lambda" in text
    assert "[closure run] run" in text and "nested function" in text
    assert "[private function] compare" in text and "not in a public module" in text
    assert "[module input]" in text and "not plain data" in text
    assert "[partial over an object]" in text
    assert "[fine]" not in text


@pytest.fixture(scope="module")
def contracts(tmp_path_factory):
    """Each chapter's contract, built once, and the exercises read back from it."""
    built = {}

    def get(chapter):
        if chapter not in built:
            d = tmp_path_factory.mktemp(f"contract-{chapter}")
            path = public.build(chapter, d, earlier=False)
            built[chapter] = (path, {e.id: e for e in public.load_contracts(d)})
        return built[chapter]
    return get


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_contract_holds_the_visible_cases_only(chapter, contracts):
    path, exercises = contracts(chapter)
    data = json.loads(path.read_text())
    cases_text = {ex["summary"]["id"]: json.dumps(ex["cases"]) for ex in data["exercises"]}
    for row in autograder.catalogue(chapter):
        declared = core.get(row["id"])
        visible = [c.name for c in declared.cases(False)]
        assert [c.name for c in exercises[row["id"]].cases(False)] == visible
        for name in {c.name for c in declared.cases(True)} - set(visible):
            # within the exercise: another exercise may have a visible case of the same name
            assert json.dumps(name) not in cases_text[row["id"]], f"{row['id']}: hidden case {name!r} is in the contract"
    for ex in data["exercises"]:
        assert set(ex) == {"summary", "solution", "forbidden", "mistakes", "cases"}
        for m in ex["mistakes"]:
            assert set(m) == {"name", "message"}, "a mistake travels as its name and message only"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_contract_checks_agree_with_the_declarations(chapter, contracts):
    """Our solution passes the contract's checks, a stub is "not implemented", every wrong
    answer of tests/mistakes fails, and each is named as the declarations name it on the
    visible cases."""
    _, exercises = contracts(chapter)
    for row in autograder.catalogue(chapter):
        ex_id = row["id"]
        ok = core.grade_exercise(exercises[ex_id], reference_submission(ex_id))
        assert ok.passed, ok.feedback
        stub = core.grade_exercise(exercises[ex_id], stub_for(ex_id))
        assert stub.status == "not-implemented" and stub.score == 0
    for w in [w for w in WRONG if w.exercise_id.startswith(chapter + ".")]:
        b = core.grade_exercise(exercises[w.exercise_id], w.submission)
        if b.passed:  # only a mistake that shows on a hidden case alone may pass the visible checks
            a = core.grade_exercise(core.get(w.exercise_id), w.submission)
            assert a.passed, f"{w.label} passes the contract but not the declarations' visible checks:\n{a.feedback}"
            continue
        if w.diagnosis is not None:
            message = {m.name: m.message for m in core.get(w.exercise_id).mistakes}[w.diagnosis]
            # Named from the contract, unless the declarations cannot name it on the visible
            # cases either (a mistake that shows only on a hidden case).
            assert message in b.feedback or not _named_on_visible(w), \
                f"{w.label}: the contract does not name {w.diagnosis!r}:\n{b.feedback}"


def _named_on_visible(w) -> bool:
    """Whether the declarations name the mistake on the visible cases alone (some wrong
    answers show only on a hidden case; the contract cannot name those)."""
    a = core.grade_exercise(core.get(w.exercise_id), w.submission)
    message = {m.name: m.message for m in core.get(w.exercise_id).mistakes}[w.diagnosis]
    return message in a.feedback


RELEASE_PROBE = r'''
import importlib, json, sys
# A student's Python: no course repository on the path, no editable-install finder for it.
sys.path[:] = [p for p in sys.path if p.rstrip("/") != REPO]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in (getattr(f, "__module__", "") or repr(f)).lower()]
import autograder
out = {}
for name in ("autograder.exercises", "solutions.ch01_next_token"):
    try:
        importlib.import_module(name)
        out[name] = "imported"
    except ModuleNotFoundError:
        out[name] = "missing"
def cross_entropy(logits, targets):
    import torch
    p = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    return -torch.log(p[torch.arange(len(targets)), targets]).mean()
r = autograder.grade("ch01.cross_entropy", cross_entropy)
out["feedback"] = r.feedback
out["score"] = r.score
try:
    autograder.grade("ch01.cross_entropy", cross_entropy, hidden=True)
except Exception as exc:
    out["hidden"] = str(exc)
print(json.dumps(out))
'''


def test_a_release_grades_from_its_contract_alone(tmp_path):
    """A folder with the public autograder and chapter 1's contract, and nothing of this
    repository on the path: the private package and the chapter's solution are not
    importable, and a check still names the learner's mistake."""
    package = tmp_path / "autograder"
    shutil.copytree(Path(autograder.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__", "exercises", "contract"))
    public.build("ch01", package / "contract")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    probe = f"REPO = {str(Path(public.HERE).parent)!r}\n" + RELEASE_PROBE
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["autograder.exercises"] == "missing"
    assert out["solutions.ch01_next_token"] == "missing", "the course package is importable from the release folder"
    assert "overflowed" in out["feedback"] and out["score"] == 0
    assert "only the trusted grader" in out["hidden"]
