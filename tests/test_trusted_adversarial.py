"""The adversarial suite: every hostile or broken submission gets exactly its score.

All of them are graded in one batch (2 jobs) into a real nbgrader course, so the test
also shows that none of them stops the grading of the others, and that the gradebook
holds the same scores.
"""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from grading.batch import grade_assignment
from grading.nbgrader_step import Course
from grading.simulate import write_submission
from tests.adversarial.cases import CASES, Ctx
from tests.adversarial.support import SLUG, TEST_LIMITS, LocalServer, release, shared_course

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def graded():
    course = shared_course()
    server = LocalServer()
    ctx = Ctx(release=release(course), course_dir=str(course), port=server.port)
    gradebook = course / "gradebook.db"
    before = hashlib.sha256(gradebook.read_bytes()).hexdigest()
    students = []
    for case in CASES:
        student = f"adv-{case.name}"
        write_submission(course, SLUG, student, case.build(ctx))
        students.append(student)
    lines = []
    summary = grade_assignment(course, SLUG, students=students, jobs=2, limits=TEST_LIMITS, force=True,
                               log=lines.append)
    server.close()
    states = {}
    for case in CASES:
        path = course / "trusted" / SLUG / f"adv-{case.name}.json"
        states[case.name] = json.loads(path.read_text()) if path.exists() else None
    table = ["case | expected | got", "--- | --- | ---"]
    for case in CASES:
        st = states[case.name]
        got = st["notebooks"][f"{SLUG}.ipynb"]["result"]["score"] if st else None
        table.append(f"{case.name} | {case.total():g} | {got}")
    print("\n".join(table))
    print("\n".join(lines))
    return {"course": course, "states": states, "summary": summary, "log": lines, "server": server,
            "gradebook_changed": before != hashlib.sha256(gradebook.read_bytes()).hexdigest()}


def test_the_suite_covers_the_attacks_the_issue_lists():
    names = {c.name for c in CASES}
    assert len(CASES) >= 25
    for needed in ["patch-torch-helpers", "patch-numpy-testing", "patch-check", "always-equal-object",
                   "forbidden-direct", "read-solutions", "read-gradebook", "fake-result-file", "sys-exit", "os-exit",
                   "raise-systemexit-toplevel", "infinite-loop", "memory-bomb", "fork-bomb", "network",
                   "deleted-test-cells", "edited-test-cells", "retyped-test-cells", "changed-metadata",
                   "invalid-json", "empty-notebook", "other-chapter", "fifo-progress-file",
                   "result-links-to-dev-zero", "lone-surrogate-comment", "very-deep-expression",
                   "future-flag-hides-a-cell", "c-function-behind-forbidden", "code-run-from-a-string",
                   "dispatch-subclass", "look-for-references", "patch-after-the-call"]:
        assert needed in names, needed


def _unsupported(case) -> str | None:
    """Why this machine's sandbox cannot stop this attack (then its score is not asserted)."""
    from grading.sandbox import isolation

    iso = isolation()
    if case.name in ("read-solutions", "read-gradebook") and iso["filesystem"] == "shared":
        return "needs the filesystem isolation of bubblewrap, unavailable here: " + "; ".join(iso["notes"])
    if case.name == "network" and iso["network"] == "on":
        return "no network namespace here: " + "; ".join(iso["notes"])
    return None


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_adversarial_submission_gets_its_score(graded, case):
    reason = _unsupported(case)
    if reason:
        pytest.skip(reason)
    state = graded["states"][case.name]
    assert state is not None, f"{case.name} was not graded: " + "\n".join(graded["log"][-20:])
    result = state["notebooks"][f"{SLUG}.ipynb"]["result"]
    got = {e["exercise_id"]: e["score"] for e in result["exercises"]}
    feedback = "\n".join(e["feedback"] for e in result["exercises"])
    assert got == {k: float(v) for k, v in case.scores().items()}, f"{case.name}: {case.what}\n{feedback}"
    assert result["max_score"] == 7.0
    assert state["recorded"] is True


def test_the_gradebook_holds_the_trusted_scores(graded):
    from nbgrader.api import Gradebook

    course = Course(graded["course"])
    with Gradebook(course.db_url, course.course_id) as gb:
        for case in CASES:
            sub = gb.find_submission_notebook(SLUG, SLUG, f"adv-{case.name}")
            if not _unsupported(case):
                assert sub.score == pytest.approx(case.total()), case.name
            assert sub.max_score == 7.0


def test_no_leak_reached_the_outside(graded):
    from grading.sandbox import isolation

    if isolation()["network"] == "on":
        pytest.skip("no network namespace on this machine")
    assert graded["server"].connections == 0, "sandboxed code connected to 127.0.0.1 outside the sandbox"


def test_feedback_says_what_happened(graded):
    def fb(name, ex):
        r = graded["states"][name]["notebooks"][f"{SLUG}.ipynb"]["result"]
        return next(e["feedback"] for e in r["exercises"] if e["exercise_id"] == ex)

    assert "still running" in fb("infinite-loop", "ch01.sample_next")
    assert "exited early" in fb("os-exit", "ch01.perplexity")
    assert "SystemExit" in fb("sys-exit", "ch01.bigram_probs")
    assert "torch.nn.functional.cross_entropy" in fb("forbidden-direct", "ch01.cross_entropy")
    # RLIMIT_AS raises MemoryError; on a machine short of memory the kernel may kill the
    # process first (SIGKILL), and the feedback names the memory limit instead
    assert re.search(r"MemoryError|memory limit", fb("memory-bomb", "ch01.bigram_probs"))
    assert "NaN" in fb("returns-nan", "ch01.perplexity")
    assert "changed its inputs" in fb("mutates-input", "ch01.bigram_counts")
    assert "not valid JSON" in fb("invalid-json", "ch01.bigram_counts")
    assert "Anything" in fb("always-equal-object", "ch01.gpt2_param_count")
    assert "tampering, review" in fb("result-links-to-dev-zero", "ch01.bigram_counts")
    assert "experiment cells" in fb("uses-experiment-global", "ch01.bigram_counts")
