"""Generated files are in sync with their sources, and carry no solutions."""

import nbformat
import pytest

from coursetools import build
from coursetools.notebooks import answer_source
from coursetools.source import chapters

CHAPTERS = chapters()


def test_generated_files_are_not_stale():
    problems = build.stale()
    assert not problems, "stale generated files (run `python -m coursetools generate --run`): " + ", ".join(problems)


@pytest.mark.parametrize("ch", CHAPTERS, ids=[c.slug for c in CHAPTERS])
def test_student_notebook_has_no_solution_and_no_errors(ch):
    nb = nbformat.read(build.student_path(ch), as_version=4)
    text = nbformat.writes(nb)
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    answers = [c for c in nb.cells if c.metadata.get("course", {}).get("role") == "answer"]
    assert answers, "a chapter without exercises"
    for cell in answers:
        assert "raise NotImplementedError()" in cell.source
    assert not build.errors_in(nb)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                pytest.fail(f"stderr output saved in {ch.slug}: {out['text'][:300]}")


@pytest.mark.parametrize("ch", CHAPTERS, ids=[c.slug for c in CHAPTERS])
def test_nbgrader_source_marks_every_exercise(ch):
    nb = nbformat.read(build.nbgrader_path(ch), as_version=4)
    answers = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert len(answers) == len(tests) > 0
    for cell in answers:
        assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source
    for cell in tests:
        assert cell.metadata["nbgrader"]["points"] > 0
        assert "### BEGIN HIDDEN TESTS" in cell.source
    ids = [c.metadata["nbgrader"]["grade_id"] for c in answers + tests]
    assert len(ids) == len(set(ids))


def test_stale_detection_notices_an_edited_notebook(tmp_path, monkeypatch):
    ch = CHAPTERS[0]
    copy = tmp_path / "chapters"
    copy.mkdir()
    nb = nbformat.read(build.student_path(ch), as_version=4)
    nb.cells[0].source += "\nEdited by hand."
    nbformat.write(nb, copy / build.student_path(ch).name)
    monkeypatch.setattr(build, "CHAPTERS_DIR", copy)
    assert any(ch.slug in p for p in build.stale())


def test_solution_bodies_are_replaced_by_stubs():
    def f(x):
        """Doc."""
        y = x + 1
        return y
    student = answer_source(f, "student")
    source = answer_source(f, "nbgrader")
    assert "y = x + 1" not in student and "raise NotImplementedError()" in student and '"""Doc."""' in student
    assert "### BEGIN SOLUTION\n    y = x + 1\n    return y\n    ### END SOLUTION" in source


def test_stale_detection_reads_the_saved_check_reports():
    ch = CHAPTERS[0]
    nb = nbformat.read(build.student_path(ch), as_version=4)
    assert not build.stale_check_outputs(nb)
    check = next(c for c in nb.cells if c.metadata.get("course", {}).get("role") == "check")
    out = check.outputs[0]
    lines = out["text"].splitlines()
    out["text"] = "\n".join(lines[:1] + ["  PASS a case that no longer exists"] + lines[1:]) + "\n"
    problems = build.stale_check_outputs(nb)
    assert problems and "not declared: 'a case that no longer exists'" in problems[0]


def test_the_book_says_its_outputs_come_from_the_reference_run():
    for ch in CHAPTERS:
        nb = nbformat.read(build.student_path(ch), as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "markdown")
        assert "reference solutions" in first.source, ch.slug
