"""Which code of a submitted notebook runs in the sandbox.

The trusted side is the course's nbgrader *source* notebook (the instructor's, never the
learner's copy). From it we know the chapter, its exercises (in order), the answer cells,
the test cells, the setup cell and the provided helpers.

The program the sandbox runs is:

1. the setup and provided cells, taken from the source notebook (so a learner who edited
   or deleted them still gets the course's imports and helpers);
2. then every code cell of the submission, in the learner's order, except the cells that
   are the course's own (setup, provided, experiments, test cells). A cell is recognised as
   the course's by its cell id, its nbgrader ``grade_id`` or its exact text; every other
   cell (answers, helpers the learner added) runs.

Test cells never run, so deleting, editing or retyping them changes nothing, and the
chapter's experiments do not run either (they are not graded and can take minutes). Cell
metadata only decides *which* cells run, never a score: scores come from the catalogue.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

MAX_NOTEBOOK_BYTES = 20 << 20  # the notebook's text without saved outputs
MAX_FILE_BYTES = 256 << 20  # the file as submitted, outputs included


@dataclasses.dataclass
class Cell:
    index: int  # position in the submission (or -1 for course cells)
    source: str
    kind: str  # "course" | "answer" | "added"
    label: str
    exercise: str | None = None


@dataclasses.dataclass
class SourceInfo:
    chapter: str
    slug: str
    exercises: list[str]
    course_cells: list[Cell]
    roles_by_id: dict
    roles_by_grade_id: dict
    roles_by_text: dict
    answer_grade_ids: dict  # exercise id -> grade_id of its answer cell
    test_grade_ids: dict  # exercise id -> grade_id of its test cell
    test_sources: dict  # exercise id -> the release text of its test cell
    notebook: dict  # the source notebook itself


def _text(cell) -> str:
    src = cell.get("source", "")
    if isinstance(src, list):
        src = "".join(s for s in src if isinstance(s, str))
    return src if isinstance(src, str) else ""


def _norm(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _strip_hidden_tests(text: str) -> str:
    out, hidden = [], False
    for line in text.splitlines():
        if line.strip() == "### BEGIN HIDDEN TESTS":
            hidden = True
        elif line.strip() == "### END HIDDEN TESTS":
            hidden = False
        elif not hidden:
            out.append(line)
    return "\n".join(out).rstrip()


def _exercise_from_grade_id(gid: str, suffix: str) -> str | None:
    if not isinstance(gid, str) or not gid.endswith(suffix):
        return None
    stem = gid[: -len(suffix)]
    return stem.replace("-", ".", 1) if "-" in stem else None


def source_role(cell) -> tuple[str, str | None]:
    """(role, exercise id) of a cell of the trusted source notebook."""
    meta = cell.get("metadata", {}) or {}
    course = meta.get("course", {}) or {}
    nbg = meta.get("nbgrader", {}) or {}
    if cell.get("cell_type") != "code":
        return "markdown", None
    role = course.get("role")
    exercise = course.get("exercise")
    if role is None:
        if nbg.get("solution"):
            role = "answer"
        elif nbg.get("grade"):
            role = "check"
        elif "from autograder import" in _text(cell):
            role = "setup"
        else:
            role = "code"
    if exercise is None and role in ("answer", "check"):
        exercise = _exercise_from_grade_id(nbg.get("grade_id", ""), "-answer" if role == "answer" else "-tests")
    return role, exercise


def load_source(path: Path) -> SourceInfo:
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    meta = nb.get("metadata", {}).get("course", {})
    slug = meta.get("slug") or Path(path).stem
    chapter = meta.get("chapter") or slug.split("_")[0]
    exercises, course_cells = [], []
    by_id, by_gid, by_text = {}, {}, {}
    answer_gids, test_gids, test_sources = {}, {}, {}
    for cell in nb.get("cells", []):
        role, ex = source_role(cell)
        if role == "markdown":
            continue
        text = _text(cell)
        nbg = cell.get("metadata", {}).get("nbgrader", {}) or {}
        if cell.get("id"):
            by_id[cell["id"]] = role
        if nbg.get("grade_id"):
            by_gid[nbg["grade_id"]] = role
        if role != "answer":
            by_text[_norm(text)] = role
            if role == "check":
                by_text[_norm(_strip_hidden_tests(text))] = role
        if role in ("setup", "provided"):
            course_cells.append(Cell(-1, text, "course", "the course's setup cell" if role == "setup"
                                     else "a cell of code the course provides"))
        if role == "answer" and ex:
            if ex not in exercises:
                exercises.append(ex)
            answer_gids[ex] = nbg.get("grade_id", "")
        if role == "check" and ex:
            test_gids[ex] = nbg.get("grade_id", "")
            test_sources[ex] = _strip_hidden_tests(text)
    return SourceInfo(chapter, slug, exercises, course_cells, by_id, by_gid, by_text, answer_gids, test_gids,
                      test_sources, nb)


class NotebookError(Exception):
    """The submission is not a notebook we can read."""


def read_submission(path: Path) -> dict:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise NotebookError(f"the notebook could not be read: {exc.strerror}") from None
    if size == 0:
        raise NotebookError("the notebook file is empty (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise NotebookError(f"the notebook file is {size / 1e6:.1f} MB, over the {MAX_FILE_BYTES >> 20} MB limit "
                            "(outputs included): clear the outputs and save it again")
    raw = path.read_bytes()
    try:
        nb = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise NotebookError("the notebook is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise NotebookError(f"the notebook is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                            "open it in Jupyter and save it again") from None
    if not isinstance(nb, dict):
        raise NotebookError("the notebook is not a JSON object")
    if "worksheets" in nb:  # nbformat 3
        try:
            import nbformat
            nb = json.loads(nbformat.writes(nbformat.reads(raw.decode("utf-8"), as_version=4)))
        except Exception as exc:
            raise NotebookError(f"an old-format notebook that could not be converted: {exc}") from None
    # Lone UTF-16 surrogates ("\\ud800" in the JSON) cannot be written as UTF-8 anywhere later
    # (the feedback notebook, the logs): replace them once, here.
    text = json.dumps(nb, ensure_ascii=False)
    clean = text.encode("utf-8", "replace").decode("utf-8")
    if clean != text:
        nb = json.loads(clean)
    cells = nb.get("cells")
    if not isinstance(cells, list):
        raise NotebookError("the notebook has no list of cells")
    nb["cells"] = [c for c in cells if isinstance(c, dict)]
    # Saved outputs (plots, long prints) are not graded: drop them before the size limit,
    # which is about the code and text the grader has to handle.
    for c in nb["cells"]:
        if "outputs" in c:
            c["outputs"] = []
        c.pop("attachments", None)
    size = len(json.dumps(nb, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if size > MAX_NOTEBOOK_BYTES:
        raise NotebookError(f"the notebook's cells hold {size / 1e6:.1f} MB of text without their outputs, over the "
                            f"{MAX_NOTEBOOK_BYTES >> 20} MB limit")
    return nb


def build_program(source: SourceInfo, submission: dict) -> tuple[list[Cell], list[str]]:
    """(cells to run, notes for the feedback)."""
    notes: list[str] = []
    cells = list(source.course_cells)
    claimed = (submission.get("metadata") or {}).get("course", {}) if isinstance(submission.get("metadata"), dict) \
        else {}
    if isinstance(claimed, dict) and claimed.get("chapter") and claimed.get("chapter") != source.chapter:
        notes.append(f"this notebook says it is chapter {claimed.get('chapter')} "
                     f"({claimed.get('slug', '?')}), but the assignment is {source.slug}")
    answered = set()
    n_code = 0
    for i, cell in enumerate(submission.get("cells", [])):
        if cell.get("cell_type") != "code":
            continue
        n_code += 1
        text = _text(cell)
        if not text.strip():
            continue
        meta = cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {}
        nbg = meta.get("nbgrader") if isinstance(meta.get("nbgrader"), dict) else {}
        cid = cell.get("id") if isinstance(cell.get("id"), str) else None
        gid = nbg.get("grade_id") if isinstance(nbg.get("grade_id"), str) else None
        role = source.roles_by_id.get(cid) if cid else None
        if role is None and gid:
            role = source.roles_by_grade_id.get(gid)
        if role is None:
            role = source.roles_by_text.get(_norm(text))
        if role in ("setup", "provided", "code", "check", "markdown"):
            continue
        exercise = None
        if role == "answer":
            exercise = _answer_exercise(source, cid, gid)
        if exercise:
            answered.add(exercise)
            cells.append(Cell(i, text, "answer", f"your answer to {exercise}", exercise))
        else:
            # Named by what it holds: cell numbers that count markdown cells help nobody.
            first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
            first = first if len(first) <= 50 else first[:47] + "..."
            cells.append(Cell(i, text, "added", f"your code cell {n_code} (counting code cells; it starts "
                                                 f"with {first!r})"))
    return cells, notes


def _answer_exercise(source: SourceInfo, cid, gid) -> str | None:
    for ex, g in source.answer_grade_ids.items():
        if gid and g == gid:
            return ex
    if cid:
        for cell in source.notebook.get("cells", []):
            if cell.get("id") == cid:
                return source_role(cell)[1]
    return None
