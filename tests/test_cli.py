"""`python -m autograder grade NOTEBOOK` on a complete, an untouched and a broken notebook."""
import json
import subprocess
import sys

import nbformat
import pytest

import autograder
from coursetools import build, notebooks
from coursetools.source import chapter


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "autograder", *args], capture_output=True, text=True, timeout=900)
    return proc


def test_list_prints_the_catalogue():
    proc = run_cli("list", "--json")
    assert proc.returncode == 0
    rows = json.loads(proc.stdout)
    assert {r["id"] for r in rows} == {r["id"] for r in autograder.catalogue()}


@pytest.mark.slow
def test_grade_notebook_reports_each_exercise(tmp_path):
    ch = chapter("ch01")
    total = sum(e["points"] for e in autograder.catalogue("ch01"))
    complete = notebooks.build(ch, "solution")
    untouched = notebooks.build(ch, "student")
    # A learner whose sampler multiplies by the temperature, and whose cross_entropy crashes.
    broken = notebooks.build(ch, "solution")
    for cell in broken.cells:
        role = cell.metadata.get("course", {})
        if role.get("exercise") == "ch01.sample_next" and role.get("role") == "answer":
            cell.source = cell.source.replace("logits / temperature", "logits * temperature")
        if role.get("exercise") == "ch01.cross_entropy" and role.get("role") == "answer":
            cell.source = cell.source.replace('"""\n', '"""\n    raise ValueError("oops")\n', 1)
    paths = {}
    for name, nb in (("complete", complete), ("untouched", untouched), ("broken", broken)):
        paths[name] = build.CHAPTERS_DIR / f"_test_{name}_{ch.slug}.ipynb"
        nbformat.write(nb, paths[name])
    try:
        reports = {}
        for name, path in paths.items():
            proc = run_cli("grade", str(path), "--json")
            assert proc.returncode == 0, proc.stderr[-2000:]
            reports[name] = json.loads(proc.stdout)
    finally:
        for path in paths.values():
            path.unlink(missing_ok=True)
    assert reports["complete"]["score"] == total
    assert reports["untouched"]["score"] == 0
    by_id = {r["exercise_id"]: r for r in reports["broken"]["exercises"]}
    assert not by_id["ch01.sample_next"]["passed"] and "multiplied the logits" in by_id["ch01.sample_next"]["feedback"]
    assert not by_id["ch01.cross_entropy"]["passed"] and "ValueError: oops" in by_id["ch01.cross_entropy"]["feedback"]
    # perplexity calls the learner's own cross_entropy, so it fails with it: 2 + 1 + 1 points lost.
    assert not by_id["ch01.perplexity"]["passed"]
    assert reports["broken"]["score"] == total - 4
    from autograder.__main__ import format_report
    text = format_report(reports["broken"])
    assert "FAIL" in text and "Total: 3/7" in text


def test_grade_rejects_a_file_that_is_not_a_notebook(tmp_path):
    bad = tmp_path / "ch01_next_token.ipynb"
    bad.write_text("{ not json")
    proc = run_cli("grade", str(bad), "--json")
    assert proc.returncode == 2
    assert "not a readable notebook" in json.loads(proc.stdout)["error"]
