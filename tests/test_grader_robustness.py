"""The grader's own robustness: hostile files in the sandbox's output, one budget per
submission, "not graded" instead of a stale grade, hidden inputs sent as data."""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from autograder import codec
from grading import sandbox
from grading.batch import grade_assignment
from grading.grader import RUN_SECRET, TrustedGrader, case_plan, trusted_cases
from grading.nbgrader_step import Course
from grading.simulate import submission, write_submission
from tests.adversarial.support import SLUG, TEST_LIMITS, release, shared_course


# ---- the output directory is hostile bytes ----------------------------------------------------
def test_reading_a_fifo_neither_blocks_nor_succeeds(tmp_path):
    fifo = tmp_path / "status.jsonl"
    os.mkfifo(fifo)
    done = []

    def read():
        try:
            sandbox.read_regular(fifo, 100)
        except sandbox.HostileFile as exc:
            done.append(str(exc))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(5)
    assert done and "not a regular file" in done[0]


def test_links_and_devices_are_refused_and_reads_are_capped(tmp_path):
    link = tmp_path / "ex-0.json"
    link.symlink_to("/dev/zero")
    with pytest.raises(sandbox.HostileFile):
        sandbox.read_regular(link, 1 << 20)
    with pytest.raises(sandbox.HostileFile):
        sandbox.read_regular("/dev/zero", 1 << 20)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 5000)
    assert sandbox.read_regular(big, 100) == b"x" * 100
    assert sandbox.read_regular(big, 100, offset=4950) == b"x" * 50
    with pytest.raises(FileNotFoundError):
        sandbox.read_regular(tmp_path / "none", 10)


# ---- hidden inputs travel as data, drawn from the run's secret ---------------------------------
def test_the_sandbox_gets_inputs_and_driver_names_but_no_answer():
    """What the grader sends the sandbox for an exercise: its function's name, the forbidden
    calls, and per case the name, the inputs as data and the public driver - never the
    secret, an expected answer, a reference or a mistake."""
    from autograder import core

    for ex_id in ("ch04.scaled_dot_product_attention", "ch01.sample_next"):
        packed = case_plan(ex_id, True)
        assert "error" not in packed, packed
        text = json.dumps(packed)
        assert RUN_SECRET not in text
        plan = codec.unpack(json.loads(text))
        cases = trusted_cases(ex_id, True)
        assert plan["name"] == core.get(ex_id).name
        assert [c["name"] for c in plan["cases"]] == [c.name for c in cases]
        for sent, case in zip(plan["cases"], cases):
            assert set(sent) == {"name", "args", "kwargs", "run", "check_mutation"}
            assert len(sent["args"]) == len(case.args) and set(sent["kwargs"]) == set(case.kwargs)
            if sent["run"] is not None:
                assert sent["run"]["fn"].startswith("autograder.drivers."), sent["run"]
        assert "_ref_" not in text and "exercises" not in text


def test_a_case_that_cannot_be_published_is_reported_as_the_graders_bug(monkeypatch):
    from autograder import core
    from grading import grader

    ex = core.get("ch01.perplexity")
    broken = [core.Case("a lambda driver", (1,), run=lambda fn, x: fn(x))]
    # Work on a copy of the grader's cache: the broken plan must not outlive this test.
    monkeypatch.setattr(grader, "_CASES", {("ch01.perplexity", True): broken})
    packed = case_plan(ex.id, True)
    assert "cannot be sent to the sandbox" in packed["error"] and "lambda" in packed["error"]


def test_hidden_cases_follow_the_secret():
    from autograder import core

    with core.using_secret("one"):
        a = core.hidden_seed("ch10.x", 0)
    with core.using_secret("two"):
        b = core.hidden_seed("ch10.x", 0)
    assert a != b
    assert core.hidden_seed("ch10.x", 0) == core.hidden_seed("ch10.x", 0)


# ---- one budget per submission; never a stale grade ---------------------------------------------
def test_many_slow_cells_share_one_budget(tmp_path):
    course = shared_course()
    nb = submission(release(course), extra=[f"import time\ntime.sleep(60)  # cell {i}\n" for i in range(6)])
    path = tmp_path / f"{SLUG}.ipynb"
    path.write_text(json.dumps(nb))
    limits = sandbox.Limits(**{**TEST_LIMITS.__dict__, "cell_timeout": 1.0, "wall_factor": 1.0,
                               "total_timeout": 25.0})
    grader = TrustedGrader(course / "source" / SLUG / f"{SLUG}.ipynb", limits=limits)
    try:
        t0 = time.monotonic()
        result = grader.grade(path)
        seconds = time.monotonic() - t0
    finally:
        grader.close()
    # Each sleeping cell costs one attempt of about 11 s; six would cost over a minute.
    assert seconds < 25.0 + 2 * 11.0 + 30, seconds
    text = json.dumps(result.to_dict())
    assert "time budget" in text


def test_a_grader_failure_records_not_graded_instead_of_keeping_the_old_grade(monkeypatch):
    course = shared_course()
    student = "robust-old-grade"
    write_submission(course, SLUG, student, submission(release(course)))
    grade_assignment(course, SLUG, students=[student], jobs=1, limits=TEST_LIMITS, force=True, log=lambda *a: None)
    state_path = course / "trusted" / SLUG / f"{student}.json"
    assert json.loads(state_path.read_text())["notebooks"][f"{SLUG}.ipynb"]["result"]["score"] == 7.0

    def broken(self, notebook):
        raise RecursionError("maximum recursion depth exceeded while decoding")

    monkeypatch.setattr(TrustedGrader, "grade", broken)
    nb = submission(release(course), extra=["# a new version of the notebook\n"])
    write_submission(course, SLUG, student, nb)
    lines = []
    grade_assignment(course, SLUG, students=[student], jobs=1, limits=TEST_LIMITS, log=lines.append,
                     csv_path=course / "robust.csv")
    state = json.loads(state_path.read_text())
    result = state["notebooks"][f"{SLUG}.ipynb"]["result"]
    assert result["score"] == 0 and state["recorded"] is True
    assert all(e["status"] == "not-graded" for e in result["exercises"])
    assert "not graded" in result["exercises"][0]["feedback"] and "RecursionError" in result["exercises"][0]["feedback"]
    from nbgrader.api import Gradebook

    c = Course(course)
    with Gradebook(c.db_url, c.course_id) as gb:
        assert gb.find_submission_notebook(SLUG, SLUG, student).score == 0
    rows = (course / "robust.csv").read_text().splitlines()
    row = next(r for r in rows if r.startswith(student + ","))
    assert ",0,7," in row and "not-graded" in row


def test_saved_outputs_do_not_count_towards_the_size_limit(tmp_path):
    from grading.program import MAX_NOTEBOOK_BYTES, read_submission

    nb = submission(release(shared_course()))
    big = "x" * (MAX_NOTEBOOK_BYTES + 1000)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": big}]
            break
    path = tmp_path / "big.ipynb"
    path.write_text(json.dumps(nb))
    assert path.stat().st_size > MAX_NOTEBOOK_BYTES
    read = read_submission(path)
    assert all(not c.get("outputs") for c in read["cells"])


def test_basic_isolation_never_runs_the_learner_as_root(tmp_path, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("the drop needs root; without it basic isolation refuses to run (tested below)")
    if not all(sandbox.world_traversable(Path(d)) for d in (sys.base_prefix, sys.prefix)):
        # Python lives where other users cannot reach it (e.g. under /root): basic isolation
        # refuses to grade rather than run the learner's code as root.
        monkeypatch.setenv("GRADING_ISOLATION", "basic")
        sandbox.isolation(refresh=True)
        try:
            with pytest.raises(RuntimeError, match="must not run as root"):
                sandbox.run_attempt(tmp_path, {"cells": [], "exercises": []}, TEST_LIMITS, {}, 0, tmp_path)
        finally:
            monkeypatch.delenv("GRADING_ISOLATION")
            sandbox.isolation(refresh=True)
        return
    course = shared_course()
    gradebook = course / "gradebook.db"
    before = gradebook.read_bytes()
    answer = ("import os, torch\n"
              "def bigram_counts(ids, vocab_size):\n"
              "    try:\n"
              f"        open({str(gradebook)!r}, 'ab').write(b'x')\n"
              "        return None  # wrote the gradebook: no points\n"
              "    except OSError:\n"
              "        pass\n"
              "    if os.geteuid() == 0 or os.getuid() == 0:\n"
              "        return None\n"
              "    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.long)\n"
              "    for a, b in zip(ids[:-1], ids[1:]):\n"
              "        counts[a, b] += 1\n"
              "    return counts\n")
    nb = submission(release(course), {"ch01.bigram_counts": answer})
    path = tmp_path / f"{SLUG}.ipynb"
    path.write_text(json.dumps(nb))
    monkeypatch.setenv("GRADING_ISOLATION", "basic")
    sandbox.isolation(refresh=True)
    try:
        grader = TrustedGrader(course / "source" / SLUG / f"{SLUG}.ipynb", limits=TEST_LIMITS)
        try:
            result = grader.grade(path)
        finally:
            grader.close()
    finally:
        monkeypatch.delenv("GRADING_ISOLATION")
        sandbox.isolation(refresh=True)
    scores = {e.exercise_id: e.score for e in result.exercises}
    assert scores["ch01.bigram_counts"] == 1.0, result.feedback()
    assert gradebook.read_bytes() == before


def test_basic_isolation_without_root_refuses_to_share_the_grading_user(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("GRADING_ISOLATION", "basic")
    monkeypatch.delenv("GRADING_ALLOW_SHARED_USER", raising=False)
    sandbox.isolation(refresh=True)
    try:
        bundle = tmp_path / "b"
        bundle.mkdir()
        with pytest.raises(RuntimeError, match="GRADING_ALLOW_SHARED_USER"):
            sandbox.run_attempt(bundle, {"cells": [], "exercises": []}, TEST_LIMITS, {}, 0, tmp_path)
    finally:
        monkeypatch.delenv("GRADING_ISOLATION")
        monkeypatch.undo()
        sandbox.isolation(refresh=True)
