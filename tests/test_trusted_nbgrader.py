"""The trusted grader inside a real nbgrader course: gradebook, feedback, export, batch resume."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest

from grading.batch import grade_assignment, state_dir
from grading.nbgrader_step import Course
from grading.simulate import submission, venv_env, write_submission
from tests.adversarial.support import SLUG, TEST_LIMITS, release, shared_course

pytestmark = pytest.mark.slow

WRONG_COUNTS = ("import torch\ndef bigram_counts(ids, vocab_size):\n"
                "    return torch.zeros(vocab_size, vocab_size, dtype=torch.int64)\n"
                "def check(*args, **kwargs):  # beats nbgrader's in-kernel test cells, not the trusted grader\n"
                "    print('all checks passed')\n")


def nbgrader(course, *args):
    cmd = [str(Path_bin("nbgrader")), *args]
    r = subprocess.run(cmd, cwd=course, capture_output=True, text=True, env=venv_env(), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


def Path_bin(name):
    from pathlib import Path
    return Path(sys.executable).with_name(name)


def typeset_offline(page_path):
    """Open a feedback page in headless chromium with every request refused: its formulas
    must come out typeset (MathJax's SVG output), not as raw LaTeX."""
    from tests.helpers import CHROMIUM, CHROMIUM_ARGS

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not os.path.exists(CHROMIUM):
        return  # the HTML assertions above still hold; test_book_browser.py says why it skips

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            fetched = []
            page.route("**/*", lambda route: (fetched.append(route.request.url), route.abort())
                       if not route.request.url.startswith("file:") else route.continue_())
            page.goto(page_path.as_uri())
            page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise",
                                   timeout=60_000)
            page.evaluate("MathJax.startup.promise")
            typeset = page.locator("mjx-container svg").count()
            raw = page.evaluate("document.body.innerText.match(/\\$[^$\\n]*\\\\[a-z]+[^$\\n]*\\$/)")
        finally:
            browser.close()
    assert typeset > 5, f"only {typeset} formulas typeset"
    assert raw is None, f"raw LaTeX left on the page: {raw}"
    assert not fetched, f"the page fetched {fetched[:3]}"


@pytest.fixture(scope="module")
def course():
    return shared_course()


def test_autograde_fills_the_gradebook_and_feedback_shows_the_trusted_result(course):
    rel = release(course)
    write_submission(course, SLUG, "alice", submission(rel))
    bob = submission(rel, {"ch01.bigram_counts": WRONG_COUNTS})
    for cell in bob["cells"]:  # bob also edits every test cell
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade"):
            cell["source"] = "print('bob edited this test cell')"
    write_submission(course, SLUG, "bob", bob)
    cmd = [sys.executable, "-m", "grading", "autograde", SLUG, "--course-dir", str(course), "--student", "alice",
           "--student", "bob", "--force", "--case-timeout", "3"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=venv_env(), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["graded"] == 2

    from nbgrader.api import Gradebook
    c = Course(course)
    with Gradebook(c.db_url, c.course_id) as gb:
        assert gb.find_submission_notebook(SLUG, SLUG, "alice").score == 7.0
        assert gb.find_submission_notebook(SLUG, SLUG, "bob").score == 6.0
        g = gb.find_grade("ch01-bigram_counts-tests", SLUG, SLUG, "bob")
        assert g.auto_score == 0.0 and g.max_score == 1.0

    nbgrader(course, "generate_feedback", SLUG, "--student", "bob", "--force")
    html = (course / "feedback" / "bob" / SLUG / f"{SLUG}.html").read_text()
    text = re.sub(r"<[^>]+>", "", html)
    assert "[trusted grader]" in text
    assert "FAIL" in text and "bigram_counts" in text
    assert re.search(r"Score:\s*6(\.0)?\s*/\s*7", text)
    assert "bob edited this test cell" not in text
    assert "HIDDEN TESTS" not in text and "hidden=True" not in text
    # The page carries its math renderer: no script is fetched from anywhere.
    assert "cdnjs" not in html and not re.search(r"<script[^>]*\bsrc=", html)
    assert "window.MathJax" in html and "$" in text
    typeset_offline(course / "feedback" / "bob" / SLUG / f"{SLUG}.html")

    nbgrader(course, "export", "--to", str(course / "nbgrader-grades.csv"))
    rows = {r["student_id"]: r for r in csv.DictReader(open(course / "nbgrader-grades.csv"))}
    assert float(rows["alice"]["score"]) == 7.0 and float(rows["bob"]["score"]) == 6.0


def test_batch_is_resumable_and_never_double_counts(course, tmp_path):
    rel = release(course)
    students = ["resume-a", "resume-b", "resume-c"]
    for s in students:
        write_submission(course, SLUG, s, submission(rel, all_correct=False))
    for s in students:
        (state_dir(Course(course), SLUG) / f"{s}.json").unlink(missing_ok=True)
    out = tmp_path / "grades.csv"
    first = grade_assignment(course, SLUG, students=students, jobs=2, limits=TEST_LIMITS, csv_path=out,
                             stop_after=1, log=lambda m: None)
    assert first["graded"] >= 1 and first["graded"] < 3
    second = grade_assignment(course, SLUG, students=students, jobs=2, limits=TEST_LIMITS, csv_path=out,
                              log=lambda m: None)
    assert second["skipped"] == first["graded"] and second["graded"] == 3 - first["graded"]
    # a result that was saved but never reached the gradebook (killed in between) is recorded, not regraded
    path = state_dir(Course(course), SLUG) / "resume-a.json"
    state = json.loads(path.read_text())
    state["recorded"] = False
    path.write_text(json.dumps(state))
    third = grade_assignment(course, SLUG, students=students, jobs=2, limits=TEST_LIMITS, csv_path=out,
                             log=lambda m: None)
    assert third["graded"] == 0 and third["recorded_late"] == 1 and third["skipped"] == 2
    # a new submission is graded again
    write_submission(course, SLUG, "resume-b", submission(rel))
    fourth = grade_assignment(course, SLUG, students=students, jobs=2, limits=TEST_LIMITS, csv_path=out,
                              log=lambda m: None)
    assert fourth["graded"] == 1
    rows = [r for r in csv.DictReader(open(out)) if r["student"] in students]
    assert sorted(r["student"] for r in rows) == students
    assert {r["student"]: float(r["score"]) for r in rows} == {"resume-a": 0.0, "resume-b": 7.0, "resume-c": 0.0}
    from nbgrader.api import Gradebook
    c = Course(course)
    with Gradebook(c.db_url, c.course_id) as gb:
        for r in rows:
            assert gb.find_submission_notebook(SLUG, SLUG, r["student"]).score == float(r["score"])


def _hangs_for_one_student(student):
    """A grading worker that never answers for one student (a stand-in for a grader bug)."""
    import time

    from grading import batch

    if student == "stall-hang":
        time.sleep(3600)
    return batch._ORIGINAL_GRADE_STUDENT(student)


def test_a_stalled_grading_is_not_waited_for_and_is_skipped_after_two_stalls(course, monkeypatch):
    from grading import batch

    rel = release(course)
    students = ["stall-hang", "stall-ok"]
    for s in students:
        write_submission(course, SLUG, s, submission(rel))
        (state_dir(Course(course), SLUG) / f"{s}.json").unlink(missing_ok=True)
    monkeypatch.setattr(batch, "_ORIGINAL_GRADE_STUDENT", batch._grade_student, raising=False)
    monkeypatch.setattr(batch, "_grade_student", _hangs_for_one_student)
    monkeypatch.setattr(batch, "POLL_S", 1.0)
    logs = []
    first = grade_assignment(course, SLUG, students=students, jobs=2, limits=TEST_LIMITS, stall_after=20,
                             log=logs.append)
    assert first["stalled"] == ["stall-hang"], logs
    states = {s: json.loads((state_dir(Course(course), SLUG) / f"{s}.json").read_text()) for s in students}
    hang = states["stall-hang"]["notebooks"][f"{SLUG}.ipynb"]["result"]
    assert states["stall-hang"]["stalls"] == 1 and hang["score"] == 0
    assert "not graded: grading stalled" in json.dumps(hang)
    assert states["stall-ok"]["notebooks"][f"{SLUG}.ipynb"]["result"]["score"] == 7, "the honest student lost points"
    second = grade_assignment(course, SLUG, students=students, jobs=2, limits=TEST_LIMITS, stall_after=20,
                              log=logs.append)
    assert second["stalled"] == ["stall-hang"] and second["graded"] == 1 and second["skipped"] == 1
    third = grade_assignment(course, SLUG, students=students, jobs=2, limits=TEST_LIMITS, stall_after=20,
                             log=logs.append)
    assert third["graded"] == 0 and third["stalled"] == ["stall-hang"]
    assert any("stalled 2 times" in line for line in logs)
