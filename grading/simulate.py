"""Course trees and submissions for tests and benchmarks.

``chapter_source(name)`` is the nbgrader source notebook of a chapter: the real one built
by ``coursetools`` when ``content/<slug>.md`` exists, otherwise a minimal one built the same
way from the catalogue (setup cell, provided helpers, one answer and one test cell per
exercise), so that grading can be tested for every chapter of the catalogue.
``make_course`` writes an nbgrader course directory and generates the release;
``submission`` fills a release notebook with answers.
"""
from __future__ import annotations

import copy
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import nbformat

from autograder import core

ROOT = Path(__file__).resolve().parent.parent


def venv_env() -> dict:
    """The environment with this venv's bin/ first on PATH (nbgrader runs `alembic` from PATH)."""
    import os

    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def chapter_slug(chapter: str) -> str:
    """``ch01`` -> ``ch01_next_token`` (from the catalogue's solution paths)."""
    if "_" in chapter:
        return chapter
    for row in core.catalogue(chapter):
        return core.get(row["id"]).solution.partition(":")[0].split(".")[-1]
    raise KeyError(f"no exercises for chapter {chapter!r}")


def chapters() -> list[str]:
    return sorted({row["chapter"] for row in core.catalogue()})


def chapter_source(chapter: str) -> nbformat.NotebookNode:
    from coursetools import notebooks
    from coursetools.source import CONTENT, Block, Chapter, parse

    slug = chapter_slug(chapter)
    md = CONTENT / f"{slug}.md"
    if md.exists():
        return notebooks.build(parse(md), "nbgrader")
    short = slug.split("_")[0]
    exercises = [core.get(r["id"]) for r in core.catalogue(short)]
    module = importlib.import_module(f"solutions.{slug}")
    ex_names = {e.name for e in exercises}
    import ast

    constants = [t.id for node in ast.parse(inspect.getsource(module)).body if isinstance(node, (ast.Assign, ast.AnnAssign))
                 for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                 if isinstance(t, ast.Name) and t.id.isupper()]
    provided = constants + [n for n, obj in vars(module).items()
                            if n not in ex_names and (inspect.isfunction(obj) or inspect.isclass(obj))
                            and getattr(obj, "__module__", "") == module.__name__]
    blocks = [Block("markdown", f"# {slug} (grading test edition)")]
    if provided:
        blocks.append(Block("provided", arg=" ".join(provided)))
    for e in exercises:
        blocks.append(Block("exercise", arg=e.id))
    ch = Chapter(path=md, slug=slug, chapter=short, title=slug, level=1, solutions=f"solutions.{slug}",
                 blocks=blocks)
    return notebooks.build(ch, "nbgrader")


def make_course(course_dir: Path, chapter: str, release: bool = True, course_id: str = "llm-course") -> Path:
    """An nbgrader course directory with one assignment; returns the release notebook path."""
    from coursetools.nbgrader_course import nbgrader_cmd, vendor, write_config

    slug = chapter_slug(chapter)
    course_dir = Path(course_dir).resolve()
    course_dir.mkdir(parents=True, exist_ok=True)
    write_config(course_dir, course_id)
    src = course_dir / "source" / slug
    src.mkdir(parents=True, exist_ok=True)
    nbformat.write(chapter_source(chapter), src / f"{slug}.ipynb")
    vendor(src, int(slug[2:4]))
    if release:
        r = subprocess.run(nbgrader_cmd() + ["generate_assignment", slug, "--force"], cwd=course_dir,
                           capture_output=True, text=True, env=venv_env())
        if r.returncode != 0:
            raise RuntimeError(f"generate_assignment failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        from coursetools.nbgrader_course import publish

        publish(course_dir / "release" / slug, slug[:4])  # what students receive: the public part only
    return course_dir / "release" / slug / f"{slug}.ipynb"


def reference_answer(exercise_id: str) -> str:
    """The answer cell a learner who solved the exercise would hand in."""
    from coursetools.notebooks import answer_source

    ex = core.get(exercise_id)
    module_name, _, attr = ex.solution.partition(":")
    return answer_source(getattr(importlib.import_module(module_name), attr), "solution")


def answer_cells(nb: dict) -> dict:
    """exercise id -> the answer cell dict of a (release) notebook."""
    out = {}
    for cell in nb["cells"]:
        course = cell.get("metadata", {}).get("course", {})
        if course.get("role") == "answer":
            out[course["exercise"]] = cell
    return out


def submission(release: Path | dict, answers: dict | None = None, extra: list | None = None,
               all_correct: bool = True) -> dict:
    """A filled-in copy of the release notebook (as a dict).

    ``answers``: exercise id -> code for its answer cell (None keeps the stub); the other
    exercises get the reference answer when ``all_correct``. ``extra``: code cells to
    append at the end.
    """
    nb = copy.deepcopy(release if isinstance(release, dict) else json.loads(Path(release).read_text()))
    answers = answers or {}
    for ex_id, cell in answer_cells(nb).items():
        if ex_id in answers:
            if answers[ex_id] is not None:
                cell["source"] = answers[ex_id]
        elif all_correct:
            cell["source"] = reference_answer(ex_id)
    for code in extra or []:
        nb["cells"].append(nbformat.v4.new_code_cell(code))
    return nb


def write_submission(course_dir: Path, assignment: str, student: str, nb: dict | bytes | str,
                     timestamp: str = "2026-01-15 10:00:00.000000 UTC") -> Path:
    """Put a notebook where ``nbgrader collect`` would: submitted/<student>/<assignment>/."""
    d = Path(course_dir) / "submitted" / student / assignment
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{assignment}.ipynb"
    if isinstance(nb, dict):
        path.write_text(json.dumps(nb, indent=1))
    elif isinstance(nb, bytes):
        path.write_bytes(nb)
    else:
        path.write_text(nb)
    (d / "timestamp.txt").write_text(timestamp)
    return path


if __name__ == "__main__":  # python -m grading.simulate COURSE_DIR CHAPTER
    print(make_course(Path(sys.argv[1]), sys.argv[2]))
