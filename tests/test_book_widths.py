"""No line wider than the book's code box: 88 characters (the box holds 88 at 1280 pixels,
see _static/course.css and tests/test_book_browser.py). Checked on what a page shows: every
code cell of the student notebooks (the chapter's own cells, the set-up cell, the provided
code and the exercises' signatures and docstrings from the solution modules) and every
printed output of the reference run. A table that needs more room is a figure, or wraps."""
import nbformat
import pytest

from coursetools import build
from coursetools.source import chapters

WIDTH = 88
CHAPTERS = chapters()


def too_wide(text: str) -> list[str]:
    return [line for line in text.split("\n") if len(line) > WIDTH]


def output_text(out) -> str:
    if out.get("output_type") == "stream":
        return out.get("text", "")
    data = out.get("data", {})
    if any(k.startswith("image/") or k == "text/html" for k in data):
        return ""  # shown as an image or a table, not as text
    return data.get("text/plain", "")


@pytest.mark.parametrize("ch", CHAPTERS, ids=[c.slug for c in CHAPTERS])
def test_code_lines_fit_the_code_box(ch):
    nb = nbformat.read(build.student_path(ch), as_version=4)
    problems = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        role = cell.metadata.get("course", {}).get("role", "code")
        problems += [f"{role} cell: [{len(line)}] {line.strip()[:70]}" for line in too_wide(cell.source)]
    assert not problems, f"{len(problems)} lines wider than {WIDTH}:\n" + "\n".join(problems[:20])


@pytest.mark.parametrize("ch", CHAPTERS, ids=[c.slug for c in CHAPTERS])
def test_printed_lines_fit_the_code_box(ch):
    nb = nbformat.read(build.student_path(ch), as_version=4)
    problems = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            problems += [f"[{len(line)}] {line[:70]}" for line in too_wide(output_text(out))]
    assert not problems, (f"{len(problems)} printed lines wider than {WIDTH} (print fewer items "
                          f"per line, wrap with textwrap.fill, or make a figure):\n"
                          + "\n".join(problems[:20]))


def test_the_chapter_sources_keep_to_the_width():
    """The hand-written code cells, before any generation."""
    problems = []
    for ch in CHAPTERS:
        for block in ch.blocks:
            if block.kind == "code":
                problems += [f"{ch.slug}: [{len(line)}] {line.strip()[:70]}" for line in too_wide(block.text)]
    assert not problems, "\n".join(problems[:30])
