"""The README's instructor path, run as written: the commands of its "For instructors"
section, in order, in a fresh directory with a local exchange; two students fetch, work and
submit with the commands the README gives them (one complete, one with a typical
mistake); the trusted grader fills the gradebook and the CSV; the students fetch their
feedback. Only two things are substituted: the exchange folder (a temporary one) and the
venv's location (the one running the tests)."""
from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder import catalogue, get
from coursetools import build
from coursetools.source import ROOT, chapter

SLUG = "ch01_next_token"
MISTAKE_EXERCISE = "ch01.cross_entropy"
MISTAKE_CODE = '''def cross_entropy(logits, targets):
    """Softmax, then the log of the target's probability."""
    probs = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    return -torch.log(probs[torch.arange(len(targets)), targets]).mean()'''
README_EXCHANGE = "/srv/nbgrader/exchange"


def readme_blocks() -> tuple[list[str], list[str]]:
    """(the instructor's commands, a student's commands) from the README."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## For instructors", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) >= 2, "the instructor section has lost its two command blocks"
    return blocks[0].strip().splitlines(), blocks[1].strip().splitlines()


def bash(lines: list[str], cwd: Path, env: dict) -> str:
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, env=env, timeout=1800)
    assert proc.returncode == 0, f"failed:\n{script}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def fill(notebook: Path, answers: dict[str, str]) -> None:
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id")
        if gid in answers:
            cell.source = answers[gid]
    nbformat.write(nb, notebook)


def reference_answers() -> dict[str, str]:
    ch = chapter("ch01")
    path = build.SOLUTIONS_OUT / f"{ch.slug}.ipynb"
    if not path.exists():
        build.generate(["ch01"], log=lambda *a: None)
    solution = nbformat.read(path, as_version=4)
    source_nb = nbformat.read(build.nbgrader_path(ch), as_version=4)
    return {g.metadata["nbgrader"]["grade_id"]: s.source for s, g in zip(solution.cells, source_nb.cells)
            if g.metadata.get("nbgrader", {}).get("solution")}


def assert_public_only(folder: Path) -> None:
    """What a student fetched carries the public contract, never the private declarations."""
    package = folder / "autograder"
    assert (package / "core.py").is_file() and (package / "drivers").is_dir()
    assert not (package / "exercises").exists(), "the release ships the private exercise declarations"
    assert (package / "contract" / f"{SLUG}.json").is_file(), "the release lacks the chapter's contract"
    leaks = [p for p in folder.rglob("*.py") if "def _ref_" in p.read_text()
             or (p.name != "core.py" and "hidden_seed(" in p.read_text())]
    assert not leaks, f"reference code or hidden-case builders in the release: {leaks}"
    assert not (folder / "solutions" / f"{SLUG}.py").exists(), "the release ships the chapter's own solution"
    contract = (package / "contract" / f"{SLUG}.json").read_text()
    for row in catalogue("ch01"):
        cases = get(row["id"]).cases
        visible = {c.name for c in cases(False)}
        for name in {c.name for c in cases(True)} - visible:
            assert f'"{name}"' not in contract, f"the hidden case {name!r} of {row['id']} is in the release"


@pytest.mark.slow
def test_the_readme_instructor_path_works_as_written(tmp_path):
    instructor, student = readme_blocks()
    exchange = tmp_path / "exchange"
    venv = Path(sys.executable).parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    env.update(COURSE_QUICK="1", HF_HUB_OFFLINE="1")

    def literal(line: str) -> str:
        line = line.replace(README_EXCHANGE, str(exchange))
        # `make venv && . .venv/bin/activate`: the venv that runs these tests, already made.
        return line.replace("make venv && . .venv/bin/activate", f". {venv}/bin/activate")

    marker = next(i for i, ln in enumerate(instructor) if ln.lstrip().startswith("# ..."))
    before, after = [literal(ln) for ln in instructor[:marker]], [literal(ln) for ln in instructor[marker + 1:]]
    setup = [ln for ln in before if ln.startswith(". ") or " export " in f" {ln}"]
    out = bash(before, tmp_path, env)
    assert "nbgrader validate --invert" in out, "coursetools nbgrader reports its steps"
    course = tmp_path / "course"
    assert (course / "release" / SLUG / f"{SLUG}.ipynb").exists()
    assert any(exchange.rglob(f"{SLUG}.ipynb")), "the release did not go to the exchange the README names"

    complete = reference_answers()
    mistake = {**complete, MISTAKE_EXERCISE.replace(".", "-") + "-answer": MISTAKE_CODE}
    work = {"alice": complete, "bob": mistake}
    fetch = [literal(ln) for ln in student if ln.startswith("nbgrader fetch_assignment")]
    submit = [literal(ln) + f" --student={name}" for name in work
              for ln in student if ln.startswith("nbgrader submit")]
    assert fetch and submit, "the README no longer tells students how to fetch and submit"
    for i, (name, answers) in enumerate(work.items()):
        home = tmp_path / "home" / name
        home.mkdir(parents=True)
        own = {**env, "HOME": str(home)}  # each student has an account of their own (nbgrader's cache)
        bash(setup + fetch, home, own)
        if i == 0:
            assert_public_only(home / SLUG)
        fill(home / SLUG / f"{SLUG}.ipynb", answers)
        bash(setup + [submit[i]], home, own)

    bash(setup + after, course, env)
    total = sum(e["points"] for e in catalogue("ch01"))
    with open(course / "grades.csv") as f:
        rows = {r["student"]: r for r in csv.DictReader(f)}
    assert float(rows["alice"]["score"]) == total
    assert float(rows["bob"]["score"]) == total - get(MISTAKE_EXERCISE).points
    feedback = [literal(ln) for ln in student if ln.startswith("nbgrader fetch_feedback")]
    assert feedback, "the README no longer tells students how to fetch their feedback"
    home = tmp_path / "home" / "bob"
    bash(setup + [ln + " --student=bob" for ln in feedback], home, {**env, "HOME": str(home)})
    pages = list(home.rglob(f"{SLUG}.html"))
    assert len(pages) == 1, f"bob's feedback: {pages}"
    page = pages[0].read_text()
    assert "overflowed" in page and "cross_entropy" in page
