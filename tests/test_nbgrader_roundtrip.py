"""The instructor's flow end to end with nbgrader and a local exchange, three students:
one complete, one who submits the untouched release, one with a typical mistake."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder import get
from coursetools import build
from coursetools.nbgrader_course import make_course, tool_env
from coursetools.source import chapter

CHAPTER = "ch01"
MISTAKE_EXERCISE = "ch01.cross_entropy"
MISTAKE_CODE = '''def cross_entropy(logits, targets):
    """Softmax, then the log of the target's probability."""
    probs = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    return -torch.log(probs[torch.arange(len(targets)), targets]).mean()'''

NBGRADER = str(Path(sys.executable).with_name("nbgrader"))


def nbgrader(*args, cwd, check=True):
    env = tool_env(COURSE_QUICK="1")
    proc = subprocess.run([NBGRADER, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"nbgrader {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc


def fill(release_nb: Path, answers: dict[str, str]) -> None:
    """Put code into answer cells, found by their nbgrader grade_id."""
    nb = nbformat.read(release_nb, as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell.source = answers[gid]
    nbformat.write(nb, release_nb)


@pytest.mark.slow
def test_three_students_round_trip(tmp_path):
    ch = chapter(CHAPTER)
    course = tmp_path / "course"
    exchange = tmp_path / "exchange"
    exchange.mkdir()
    make_course([CHAPTER], course, course_id="llm-course")
    release_dir = course / "release" / ch.slug
    # A release ships the autograder and no reference solution of its own chapter.
    assert (release_dir / "autograder" / "core.py").exists()
    assert not (release_dir / "solutions" / f"{ch.slug}.py").exists()
    released = nbformat.writes(nbformat.read(release_dir / f"{ch.slug}.ipynb", as_version=4))
    assert "BEGIN SOLUTION" not in released and "HIDDEN TESTS" not in released

    with open(course / "nbgrader_config.py", "a") as f:
        f.write(f'c.Exchange.root = r"{exchange}"\n')
    nbgrader("release_assignment", ch.slug, cwd=course)

    solution = nbformat.read(build.SOLUTIONS_OUT / f"{ch.slug}.ipynb", as_version=4) \
        if (build.SOLUTIONS_OUT / f"{ch.slug}.ipynb").exists() else None
    if solution is None:
        build.generate([CHAPTER])
        solution = nbformat.read(build.SOLUTIONS_OUT / f"{ch.slug}.ipynb", as_version=4)
    source_nb = nbformat.read(build.nbgrader_path(ch), as_version=4)
    complete = {}
    for s_cell, g_cell in zip(solution.cells, source_nb.cells):
        meta = g_cell.metadata.get("nbgrader", {})
        if meta.get("solution"):
            complete[meta["grade_id"]] = s_cell.source
    mistake_id = MISTAKE_EXERCISE.replace(".", "-") + "-answer"
    with_mistake = {**complete, mistake_id: MISTAKE_CODE}

    students = {"alice": complete, "bob": {}, "carol": with_mistake}
    for student, answers in students.items():
        home = tmp_path / "home" / student
        home.mkdir(parents=True)
        student_cfg = f'c = get_config()\nc.Exchange.root = r"{exchange}"\nc.CourseDirectory.course_id = "llm-course"\n'
        (home / "nbgrader_config.py").write_text(student_cfg)
        nbgrader("fetch_assignment", ch.slug, "--course", "llm-course", cwd=home)
        fill(home / ch.slug / f"{ch.slug}.ipynb", answers)
        nbgrader("submit", ch.slug, "--course", "llm-course", f"--student={student}", cwd=home)

    nbgrader("collect", ch.slug, cwd=course)
    for student in students:
        nbgrader("db", "student", "add", student, cwd=course)
    nbgrader("autograde", ch.slug, cwd=course, check=False)  # exits 1 when a submission has failures
    nbgrader("generate_feedback", ch.slug, cwd=course)
    nbgrader("export", "--to", str(tmp_path / "grades.csv"), cwd=course)

    total = sum(e["points"] for e in __import__("autograder").catalogue(CHAPTER))
    expected = {"alice": total, "bob": 0.0, "carol": total - get(MISTAKE_EXERCISE).points}
    with open(tmp_path / "grades.csv") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    got = {s: float(rows[s]["raw_score"]) for s in students}
    assert got == expected, got

    for student in students:
        feedback = course / "feedback" / student / ch.slug / f"{ch.slug}.html"
        assert feedback.exists(), f"no feedback file for {student}"
    carol = (course / "feedback" / "carol" / ch.slug / f"{ch.slug}.html").read_text()
    assert "overflowed" in carol  # the diagnosis of the typical mistake reaches the student
    bob = (course / "feedback" / "bob" / ch.slug / f"{ch.slug}.html").read_text()
    assert "not implemented yet" in bob
