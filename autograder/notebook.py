"""Grade a whole chapter notebook: run it in a fresh kernel, then grade what it defined."""
from __future__ import annotations

import json
import re
from pathlib import Path

MARKER = "@@AUTOGRADER-REPORT@@"


def notebook_chapter(nb) -> str | None:
    meta = nb.metadata.get("course", {})
    if meta.get("chapter"):
        return meta["chapter"]
    return None


def grade_notebook(path: Path, hidden: bool = False, timeout: int = 600) -> dict:
    import nbformat
    from nbclient import NotebookClient

    from . import catalogue

    path = Path(path)
    report: dict = {"notebook": str(path), "chapter": None, "exercises": [], "score": 0.0,
                    "max_score": 0.0, "error": None}
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:
        report["error"] = f"not a readable notebook: {exc}"
        return report
    chapter = notebook_chapter(nb)
    if chapter is None:
        m = re.match(r"(ch\d\d)", path.name)
        chapter = m.group(1) if m else None
    report["chapter"] = chapter
    exercises = catalogue(chapter) if chapter else []
    if not exercises:
        report["error"] = "cannot tell which chapter this notebook belongs to"
        return report
    # Drop the check cells: grading happens once, at the end, for every exercise.
    nb.cells = [c for c in nb.cells if c.get("metadata", {}).get("course", {}).get("role") != "check"]
    ids = [e["id"] for e in exercises]
    nb.cells.append(nbformat.v4.new_code_cell(
        "import autograder.notebook as _agn\n"
        f"_agn.report_from_namespace({ids!r}, globals(), hidden={hidden!r})"))
    client = NotebookClient(nb, timeout=timeout, allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    try:
        client.execute()
    except Exception as exc:  # kernel died, timeout in a cell
        report["error"] = f"the notebook could not be run to the end: {type(exc).__name__}: {exc}"
    results = None
    for out in nb.cells[-1].get("outputs", []):
        text = out.get("text", "")
        if MARKER in text:
            results = json.loads(text.split(MARKER, 1)[1].strip().splitlines()[0])
    if results is None:
        results = [{"exercise_id": e["id"], "title": e["title"], "passed": False, "score": 0.0,
                    "max_score": e["points"], "feedback": f"{e['id']}: not graded ({report['error'] or 'no result'})"}
                   for e in exercises]
    report["exercises"] = results
    report["score"] = sum(r["score"] for r in results)
    report["max_score"] = sum(r["max_score"] for r in results)
    return report


def report_from_namespace(ids: list[str], namespace: dict, hidden: bool = False) -> None:
    """Runs inside the notebook's kernel: grade every exercise and print one JSON line."""
    from .core import get, grade

    rows = []
    for exercise_id in ids:
        ex = get(exercise_id)
        submission = namespace.get(ex.name)
        if submission is None:
            rows.append({"exercise_id": ex.id, "title": ex.title, "passed": False, "score": 0.0,
                         "max_score": ex.points, "feedback": f"{ex.id}: no function or class named {ex.name}"})
            continue
        r = grade(exercise_id, submission, hidden=hidden)
        rows.append({"exercise_id": r.exercise_id, "title": r.title, "passed": r.passed, "score": r.score,
                     "max_score": r.max_score, "feedback": r.feedback})
    print(MARKER + json.dumps(rows))
