"""Write trusted results where nbgrader looks for them.

For each graded submission:

* the gradebook (``CourseDirectory.db_url``: SQLite by default, PostgreSQL in a cluster):
  the submission is created or updated and every autograded test cell of the assignment
  gets ``auto_score`` = the trusted score of its exercise (a *value*, so writing twice never
  counts twice). Which cell belongs to which exercise comes from the instructor's source
  notebook; the points come from the grader's catalogue;
* ``autograded/<student>/<assignment>/<notebook>.ipynb``: the release notebook with the
  learner's answers in the answer cells and, in each test cell, the trusted feedback as the
  cell's output (stdout when it passed, stderr when not). Test cells and all nbgrader
  metadata come from the release, never from the submission, so ``nbgrader
  generate_feedback`` shows the trusted result whatever the learner did to their copy.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat

from .grader import SubmissionResult
from .program import SourceInfo, build_program, read_submission, source_role


def _ensure_path() -> None:
    # nbgrader's Gradebook runs `alembic` from PATH: make this venv's bin/ visible.
    bindir = str(Path(sys.executable).parent)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


class Course:
    """The nbgrader course directory, read through nbgrader's own configuration."""

    def __init__(self, course_dir: Path):
        from nbgrader.coursedir import CourseDirectory
        from traitlets.config.loader import PyFileConfigLoader

        _ensure_path()
        self.root = Path(course_dir).resolve()
        config_file = self.root / "nbgrader_config.py"
        config = PyFileConfigLoader(str(config_file)).load_config() if config_file.exists() else None
        self.coursedir = CourseDirectory(config=config) if config is not None else CourseDirectory()
        configured = config is not None and "root" in config.get("CourseDirectory", {})
        if configured and Path(self.coursedir.root).resolve() != self.root:
            # nbgrader's own commands follow the configured root: so do we, or the two would disagree
            self.root = Path(self.coursedir.root).resolve()
        self.coursedir.root = str(self.root)

    @property
    def db_url(self) -> str:
        return self.coursedir.db_url

    @property
    def course_id(self) -> str:
        return self.coursedir.course_id

    def path(self, kind: str, student: str, assignment: str) -> Path:
        return Path(self.coursedir.format_path(getattr(self.coursedir, f"{kind}_directory"), student, assignment))

    def source_notebooks(self, assignment: str) -> list[Path]:
        return sorted(self.path("source", ".", assignment).glob("*.ipynb"))

    def release_notebook(self, assignment: str, name: str) -> Path | None:
        p = Path(self.coursedir.format_path(self.coursedir.release_directory, ".", assignment)) / name
        return p if p.exists() else None

    def students(self, assignment: str) -> list[str]:
        base = self.root / self.coursedir.submitted_directory
        if not base.is_dir():
            return []
        return sorted(d.name for d in base.iterdir() if (d / assignment).is_dir())

    def submission(self, student: str, assignment: str, notebook: str) -> Path:
        return self.path("submitted", student, assignment) / notebook

    def timestamp(self, student: str, assignment: str) -> str | None:
        p = self.path("submitted", student, assignment) / "timestamp.txt"
        try:
            return p.read_text().strip() or None
        except OSError:
            return None


def open_gradebook(course: Course, attempts: int = 8):
    """nbgrader's ``Gradebook`` for the course, opened even while another shard opens it.

    Opening a gradebook creates its tables and types when they are missing; two shards that
    start together on one PostgreSQL database race to create them, and the loser gets a
    duplicate-key error. The schema is there by then: open again."""
    import random
    import time as _time

    from nbgrader.api import Gradebook
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            return Gradebook(course.db_url, course.course_id)
        except (IntegrityError, ProgrammingError, OperationalError):
            if attempt == attempts - 1:
                raise
            _time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)


def record_grades(course: Course, assignment: str, student: str, source: SourceInfo, notebook_id: str,
                  result: SubmissionResult, log=print) -> None:
    """Set the auto scores of the test cells of one submitted notebook in the gradebook."""
    from nbgrader.api import MissingEntry

    import warnings

    ts = course.timestamp(student, assignment)
    with warnings.catch_warnings(), open_gradebook(course) as gb:
        warnings.simplefilter("ignore")
        gb.update_or_create_student(student)
        kwargs = {"timestamp": ts} if ts else {}
        try:
            gb.update_or_create_submission(assignment, student, **kwargs)
        except Exception:
            gb.db.rollback()
            gb.update_or_create_submission(assignment, student)
        by_ex = {e.exercise_id: e for e in result.exercises}
        for ex_id, gid in source.test_grade_ids.items():
            try:
                grade = gb.find_grade(gid, notebook_id, assignment, student)
            except MissingEntry:
                log(f"warning: {assignment}/{notebook_id} has no grade cell {gid} in the gradebook "
                    "(run `nbgrader generate_assignment` again)")
                continue
            r = by_ex.get(ex_id)
            score = float(r.score) if r is not None else 0.0
            if r is not None and grade.max_score and abs(float(grade.max_score) - r.max_score) > 1e-9:
                log(f"warning: {gid} is worth {grade.max_score:g} in the gradebook and {r.max_score:g} in the "
                    "catalogue: the catalogue's points are used; regenerate the assignment")
            grade.auto_score = score
            grade.needs_manual_grade = grade.manual_score is not None
        for ex_id, gid in source.answer_grade_ids.items():
            try:
                comment = gb.find_comment(gid, notebook_id, assignment, student)
                comment.auto_comment = None
            except MissingEntry:
                pass
        gb.db.commit()


def autograded_notebook(course: Course, assignment: str, source: SourceInfo, source_path: Path,
                        submission_path: Path, result: SubmissionResult) -> nbformat.NotebookNode:
    """The notebook nbgrader's generate_feedback renders, with the trusted feedback in it."""
    release = course.release_notebook(assignment, source_path.name)
    template = json.loads((release or source_path).read_text())
    try:
        sub = read_submission(submission_path)
        cells, _ = build_program(source, sub)
    except Exception:
        sub, cells = None, []
    answers: dict[str, list[str]] = {}
    added: list[str] = []
    for c in cells:
        if c.kind == "answer":
            answers.setdefault(c.exercise, []).append(c.source)
        elif c.kind == "added":
            added.append(c.source)
    by_ex = {e.exercise_id: e for e in result.exercises}
    out_cells = []
    for cell in template["cells"]:
        role, ex_id = source_role(cell)
        cell = json.loads(json.dumps(cell))
        if role == "answer" and ex_id:
            cell["source"] = "\n\n".join(answers.get(ex_id, [])) or "# (no answer found in the submitted notebook)"
            cell["outputs"], cell["execution_count"] = [], None
        elif role == "check" and ex_id:
            r = by_ex.get(ex_id)
            text = (r.feedback if r else f"{ex_id}: not graded") + "\n"
            stream = "stdout" if r is not None and r.passed else "stderr"
            cell["source"] = source.test_sources.get(ex_id, cell["source"])
            cell["outputs"] = [{"output_type": "stream", "name": stream, "text": text}]
            cell["execution_count"] = None
        elif cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        out_cells.append(cell)
    notes = list(result.notes)
    if added or notes:
        intro = "## Trusted grading\n\n" + "\n".join(f"- {n}" for n in notes)
        if added:
            intro += "\n\nThe cells you added to the notebook follow."
        out_cells.append(nbformat.v4.new_markdown_cell(intro))
        for code in added:
            out_cells.append(nbformat.v4.new_code_cell(code))
    template["cells"] = out_cells
    return nbformat.from_dict(template)


def write_autograded(course: Course, assignment: str, student: str, source: SourceInfo, source_path: Path,
                     result: SubmissionResult) -> Path:
    dest_dir = course.path("autograded", student, assignment)
    dest_dir.mkdir(parents=True, exist_ok=True)
    nb = autograded_notebook(course, assignment, source, source_path,
                             course.submission(student, assignment, source_path.name), result)
    dest = dest_dir / source_path.name
    tmp = dest.with_suffix(".ipynb.tmp")
    nbformat.write(nb, str(tmp))
    os.replace(tmp, dest)
    # the files nbgrader's own autograde carries over (release_feedback needs the secret)
    for name in ("timestamp.txt", "submission_secret.txt"):
        src = course.path("submitted", student, assignment) / name
        if src.is_file() and src.stat().st_size < 4096:
            (dest_dir / name).write_text(src.read_text())
    return dest
