"""Every chapter beyond the first through a real nbgrader course, graded by the trusted grader.

Chapter 1 has its own round trips (``test_nbgrader_roundtrip.py`` in the kernel,
``test_trusted_nbgrader.py`` with the trusted grader). Here one course holds every other
chapter found in ``content/``; each gets two students:

* ``complete``: every answer cell holds the reference solution;
* ``one-mistake``: the same, except one exercise, which holds a typical learner mistake
  from ``tests/mistakes/chNN_slug.py`` (its source, renamed to the exercise's name).

``python -m grading``'s batch step grades each assignment; the gradebook must show the
chapter's full score for the first student and the full score minus that exercise for
the second, and nbgrader's feedback page must name the exercise and the mistake without
showing the hidden tests.
"""
from __future__ import annotations

import ast
import builtins
import html
import inspect
import json
import os
import re
import subprocess
import symtable
import sys
import textwrap
from pathlib import Path

import pytest

import autograder
from autograder import core
from coursetools.source import chapters
from grading.batch import grade_assignment, state_dir
from grading.nbgrader_step import Course
from grading.program import load_source, source_role
from grading.simulate import make_course, reference_answer, submission, venv_env, write_submission
from tests.adversarial.support import TEST_LIMITS
from tests.mistakes import load_all

pytestmark = pytest.mark.slow

COVERED_ELSEWHERE = {"ch01"}  # test_nbgrader_roundtrip.py, test_trusted_nbgrader.py
# COURSE_CHAPTERS="ch12 ch13" limits the course to those chapters (an author checking one).
SELECTED = set(os.environ.get("COURSE_CHAPTERS", "").replace(",", " ").split())
CHAPTERS = [ch for ch in chapters() if ch.chapter not in COVERED_ELSEWHERE and (not SELECTED or ch.chapter in SELECTED)]
COMPLETE, MISTAKE = "complete", "one-mistake"
BUILTINS = set(dir(builtins))


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [str(Path(sys.executable).with_name("nbgrader")), *args]
    r = subprocess.run(cmd, cwd=course, capture_output=True, text=True, env=venv_env(), timeout=900)
    assert r.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


# ------------------------------------------------------------------------------------------
# A typical mistake as the text of an answer cell
# ------------------------------------------------------------------------------------------
def top_level_names(code: str) -> set[str]:
    """Names a cell binds at its top level (imports, defs, classes, assignments)."""
    names = set()
    for node in ast.parse(code).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        else:
            names |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names


def global_reads(code: str) -> set[str]:
    """Global names the code reads (in any function, class or comprehension scope)."""
    found = set()

    def walk(table):
        for sym in table.get_symbols():
            module_level_read = table.get_type() == "module" and sym.is_referenced() and not sym.is_assigned() \
                and not sym.is_imported()
            if sym.is_referenced() and (sym.is_global() or module_level_read):
                found.add(sym.get_name())
        for child in table.get_children():
            walk(child)

    walk(symtable.symtable(code, "<answer>", "exec"))
    return found


def mistake_source(obj, name: str) -> str:
    """The source of a wrong answer without its ``@wrong`` decorator, renamed to ``name``."""
    code = textwrap.dedent(inspect.getsource(obj))
    tree = ast.parse(code)
    if len(tree.body) != 1 or not isinstance(tree.body[0], (ast.FunctionDef, ast.ClassDef)):
        raise ValueError("not a single def or class")
    node = tree.body[0]
    lines = code.splitlines()
    for dec in reversed(node.decorator_list):
        if isinstance(dec, ast.Call) and getattr(dec.func, "id", None) == "wrong":
            del lines[dec.lineno - 1: dec.end_lineno]
    return re.sub(rf"\b{re.escape(node.name)}\b", name, "\n".join(lines)).rstrip() + "\n"


def course_cells(source_nb: dict, role: str) -> list[str]:
    """The texts of the source notebook's cells of one role ("setup", "provided")."""
    out = []
    for cell in source_nb["cells"]:
        if source_role(cell)[0] == role:
            src = cell["source"]
            out.append("".join(src) if isinstance(src, list) else src)
    return out


def pick_mistake(chapter: str, source_nb: dict):
    """(exercise id, answer text, diagnosis message or None) for one usable typical mistake.

    Usable: its source can be read; every global name it reads is a builtin or is defined
    by the notebook (setup, provided helpers, the answers); no other answer or provided
    helper calls the exercise (a wrong answer there would cost more than one exercise);
    and run in a namespace built from those cells, the in-kernel autograder fails it (with
    its named diagnosis, when it has one). Wrong answers with a diagnosis come first.
    """
    exercise_ids = [row["id"] for row in autograder.catalogue(chapter)]
    answers = {ex_id: reference_answer(ex_id) for ex_id in exercise_ids}
    provided = course_cells(source_nb, "provided")
    setup = course_cells(source_nb, "setup") + provided  # what the sandbox runs before the answers
    defined = set().union(*(top_level_names(c) for c in setup + list(answers.values())))
    candidates = sorted((w for w in load_all() if w.exercise_id in answers), key=lambda w: w.diagnosis is None)
    base = None
    rejected = []
    for w in candidates:
        ex = core.get(w.exercise_id)
        try:
            code = mistake_source(w.submission, ex.name)
        except (OSError, TypeError, ValueError) as exc:
            rejected.append(f"{w.label}: no usable source ({exc})")
            continue
        missing = global_reads(code) - BUILTINS - defined - top_level_names(code)
        if missing:
            rejected.append(f"{w.label}: not self-contained (reads {sorted(missing)})")
            continue
        users = [other for other, text in answers.items() if other != w.exercise_id and ex.name in global_reads(text)]
        users += ["a provided cell" for text in provided if ex.name in global_reads(text)]
        if users:
            rejected.append(f"{w.label}: {ex.name} is used by {users}")
            continue
        if base is None:
            base = {"__name__": "__main__"}
            for text in setup + list(answers.values()):
                exec(compile(text, "<course cell>", "exec", dont_inherit=True), base)
        ns = dict(base)
        exec(compile(code, f"<{w.label}>", "exec", dont_inherit=True), ns)
        result = autograder.grade(w.exercise_id, ns[ex.name])
        message = {m.name: m.message for m in ex.mistakes}.get(w.diagnosis) if w.diagnosis else None
        if result.passed or (message and message not in result.feedback):
            rejected.append(f"{w.label}: the in-kernel autograder did not fail it as declared")
            continue
        return w.exercise_id, code, message
    pytest.fail(f"no usable typical mistake for {chapter} in tests/mistakes:\n  " + "\n  ".join(rejected))


# ------------------------------------------------------------------------------------------
# One course for every chapter: build, submit, grade, feedback
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("chapters") / "course"
    for ch in CHAPTERS:
        make_course(root, ch.chapter, release=False)  # source/<slug>/ from content/<slug>.md
    nbgrader(root, "generate_assignment", "*", "--force")  # a glob: every assignment in one run

    outcome = {}
    for ch in CHAPTERS:
        info = {"chapter": ch}
        outcome[ch.slug] = info
        rel = json.loads((root / "release" / ch.slug / f"{ch.slug}.ipynb").read_text())
        source_nb = json.loads((root / "source" / ch.slug / f"{ch.slug}.ipynb").read_text())
        info["source"] = load_source(root / "source" / ch.slug / f"{ch.slug}.ipynb")
        try:
            ex_id, code, message = pick_mistake(ch.chapter, source_nb)
        except pytest.fail.Exception as exc:
            info["error"] = str(exc)
            continue
        info.update(exercise=ex_id, code=code, message=message)
        write_submission(root, ch.slug, COMPLETE, submission(rel))
        write_submission(root, ch.slug, MISTAKE, submission(rel, {ex_id: code}))
        logs = []
        info["summary"] = grade_assignment(root, ch.slug, jobs=2, limits=TEST_LIMITS, log=logs.append)
        info["log"] = logs
    if any("summary" in info for info in outcome.values()):
        nbgrader(root, "generate_feedback", "*", "--student", MISTAKE, "--force")
    return root, outcome


@pytest.mark.parametrize("slug", [ch.slug for ch in CHAPTERS])
def test_chapter_is_graded_in_nbgrader_by_the_trusted_grader(course, slug):
    from nbgrader.api import Gradebook

    root, outcome = course
    info = outcome[slug]
    ch = info["chapter"]
    if "error" in info:
        pytest.fail(info["error"])
    rows = autograder.catalogue(ch.chapter)
    points = {r["id"]: float(r["points"]) for r in rows}
    full = sum(points.values())
    ex_id = info["exercise"]
    assert sorted(info["source"].exercises) == sorted(points), "the chapter's exercises are not the catalogue's"
    summary = info["summary"]
    log = "\n".join(info["log"])
    assert summary["graded"] == 2 and not summary["interrupted"], log

    results = {s: json.loads((state_dir(Course(root), slug) / f"{s}.json").read_text())["notebooks"]
               [f"{slug}.ipynb"]["result"] for s in (COMPLETE, MISTAKE)}
    not_passed = {s: {e["exercise_id"]: e["feedback"] for e in r["exercises"] if e["status"] != "passed"}
                  for s, r in results.items()}
    assert not not_passed[COMPLETE], "the reference answers lost points:\n" + "\n\n".join(
        not_passed[COMPLETE].values())
    assert list(not_passed[MISTAKE]) == [ex_id], "\n\n".join(not_passed[MISTAKE].values())

    with Gradebook(Course(root).db_url, Course(root).course_id) as gb:
        assert gb.find_submission_notebook(slug, slug, COMPLETE).score == full
        assert gb.find_submission_notebook(slug, slug, MISTAKE).score == full - points[ex_id]
        for other, p in points.items():
            gid = f"{other.replace('.', '-')}-tests"
            for student in (COMPLETE, MISTAKE):
                grade = gb.find_grade(gid, slug, slug, student)
                assert grade.max_score == p, (gid, grade.max_score, p)
                want = 0.0 if (student, other) == (MISTAKE, ex_id) else p
                assert grade.auto_score == want, (student, gid, grade.auto_score, want)

    page = root / "feedback" / MISTAKE / slug / f"{slug}.html"
    text = html.unescape(re.sub(r"<[^>]+>", "", page.read_text()))
    assert f"{ex_id}: {core.get(ex_id).title}" in text and "[trusted grader]" in text
    assert re.search(rf"Score:\s*{full - points[ex_id]:g}(\.0)?\s*/\s*{full:g}", text)
    if info["message"]:
        assert f"likely mistake: {info['message']}" in text, f"the diagnosis of {ex_id} is not in the feedback"
    else:
        assert re.search(r"\bFAIL\b", text)
    assert "HIDDEN TESTS" not in text and "hidden=True" not in text
