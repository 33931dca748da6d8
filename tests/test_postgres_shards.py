"""Two shards grade one assignment at once into one nbgrader gradebook on a real PostgreSQL
server, as two pods of a Kubernetes Indexed Job would (docs/instructors.md). One shard is
killed mid-run and started again: every student ends with exactly one grade, the right one,
in the gradebook and in the CSV.

The server is Debian's postgresql, started here on 127.0.0.1 in a temporary directory
(`make test-tools` installs it; the test is skipped, saying why, where it is missing).
"""
from __future__ import annotations

import csv
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from grading.simulate import make_course, submission, venv_env, write_submission

pytestmark = pytest.mark.slow

SLUG = "ch01_next_token"
WRONG_COUNTS = ("import torch\ndef bigram_counts(ids, vocab_size):\n"
                "    return torch.zeros(vocab_size, vocab_size, dtype=torch.int64)\n")
STUDENTS = {f"pg-{i}": (7.0 if i % 2 == 0 else 6.0) for i in range(4)}


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (make test-tools installs Debian's postgresql)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed (make test-tools installs requirements-hub.txt)")
    # Not under pytest's own temporary folder: its parents are private to this user, and the
    # server runs as another one.
    home = Path(tempfile.mkdtemp(prefix="course-pg-"))
    os.chmod(home, 0o755)
    data = home / "data"
    data.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use its own account
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(as_user + [initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True, timeout=120)
    subprocess.run(as_user + [pg_ctl, "-D", str(data), "-w", "-t", "60", "-l", str(data / "log"), "-o",
                              f"-h 127.0.0.1 -p {port} -k {data}", "start"], check=True, capture_output=True,
                   timeout=120)
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE gradebook")
        conn.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/gradebook"
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                       timeout=120)
        shutil.rmtree(home, ignore_errors=True)


def _shard(course: Path, i: int, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "grading", "batch", SLUG, "--course-dir", str(course),
                             "--shard", f"{i}/{n}", "--jobs", "1", "--case-timeout", "3", "--cell-timeout", "15"],
                            cwd=course, env=venv_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def test_two_shards_fill_one_postgres_gradebook_and_survive_a_kill(postgres, tmp_path):
    course = tmp_path / "course"
    release = make_course(course, "ch01")
    with open(course / "nbgrader_config.py", "a") as f:
        f.write(f'c.CourseDirectory.db_url = "{postgres}"\n')
    # The assignment and its grade cells enter the PostgreSQL gradebook as an instructor's
    # generate_assignment puts them there.
    from coursetools.nbgrader_course import nbgrader_cmd, publish

    r = subprocess.run(nbgrader_cmd() + ["generate_assignment", SLUG, "--force"], cwd=course, capture_output=True,
                       text=True, env=venv_env(), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    publish(course / "release" / SLUG, "ch01")
    rel = json.loads(Path(release).read_text())
    for student, score in STUDENTS.items():
        answers = {} if score == 7.0 else {"ch01.bigram_counts": WRONG_COUNTS}
        write_submission(course, SLUG, student, submission(rel, answers))

    # Both shards at once; shard 0 is killed as soon as it has recorded its first grade.
    first, second = _shard(course, 0, 2), _shard(course, 1, 2)
    lines = []
    deadline = time.monotonic() + 900
    for line in first.stdout:
        lines.append(line)
        if "/7 (" in line:
            break
        assert time.monotonic() < deadline, "".join(lines)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    out2, _ = second.communicate(timeout=900)
    assert second.returncode == 0, out2[-3000:]

    # The killed shard, started again, grades only what it had not finished.
    again = subprocess.run([sys.executable, "-m", "grading", "batch", SLUG, "--course-dir", str(course),
                            "--shard", "0/2", "--jobs", "1", "--case-timeout", "3", "--cell-timeout", "15",
                            "--csv", str(tmp_path / "grades.csv")], cwd=course, env=venv_env(),
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    summary = json.loads(again.stdout.strip().splitlines()[-1])
    assert summary["skipped"] >= 1 and summary["graded"] + summary["skipped"] + summary["recorded_late"] == 2

    with open(tmp_path / "grades.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["student"] for r in rows) == sorted(STUDENTS), "a student is missing or counted twice"
    assert {r["student"]: float(r["score"]) for r in rows} == STUDENTS

    from nbgrader.api import Gradebook

    with Gradebook(postgres, "llm-course") as gb:
        for student, score in STUDENTS.items():
            subs = [s for s in gb.find_student(student).submissions if s.assignment.name == SLUG]
            assert len(subs) == 1, f"{student}: {len(subs)} submissions in the gradebook"
            assert subs[0].score == score, f"{student}: {subs[0].score} in the gradebook, expected {score}"
