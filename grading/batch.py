"""Grade every submission of an assignment: in parallel, resumable, exported to CSV.

State lives in ``<course>/trusted/<assignment>/<student>.json`` (one file per student,
written atomically): the hash of each graded notebook, the trusted result and whether it
is in the gradebook yet. A run skips a student whose file matches the current submission
and is recorded, re-records one that was graded but not recorded (an interruption between
the two steps), and grades the rest. Gradebook scores are values, not increments, and the
CSV is rebuilt from the per-student files, so an interrupted and resumed run can neither
lose nor double-count a grade.

Parallelism is a process pool on this machine (``--jobs``); across machines, ``--shard i/n``
splits the class so that an existing engine (a Kubernetes indexed Job, Slurm array, ...)
runs the same command n times against a shared course directory and a PostgreSQL
gradebook. No scheduler of our own.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from . import sandbox
from .grader import SubmissionResult, TrustedGrader
from .nbgrader_step import Course, record_grades, write_autograded
from .program import load_source

_WORKER: dict = {}
MAX_STALLS = 2  # a submission whose grading stalled this often is skipped by later runs
POLL_S = 5.0  # how often the batch looks at the clock while it waits for workers


def state_dir(course: Course, assignment: str) -> Path:
    return course.root / "trusted" / assignment


def _write_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


def _init_worker(course_root: str, assignment: str, limits: dict, hidden: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    course = Course(Path(course_root))
    graders = {}
    for src in course.source_notebooks(assignment):
        graders[src.name] = TrustedGrader(src, limits=sandbox.Limits(**limits), hidden=hidden)
    _WORKER.update(course=course, graders=graders, assignment=assignment)
    from multiprocessing.util import Finalize
    Finalize(None, _close_worker, exitpriority=10)


def _grade_student(student: str) -> dict:
    course, graders, assignment = _WORKER["course"], _WORKER["graders"], _WORKER["assignment"]
    out = {"student": student, "notebooks": {}, "started": time.time()}
    for name, grader in graders.items():
        path = course.submission(student, assignment, name)
        digest = _digest(path)
        try:
            result = grader.grade(path)
        except Exception as exc:  # noqa: BLE001  (a grader bug on odd input: never leave an old grade)
            result = grader.not_graded(path, f"the grader failed on this notebook ({type(exc).__name__}: {exc})")
        write_autograded(course, assignment, student, grader.source, grader.source_path, result)
        out["notebooks"][name] = {"sha256": digest, "result": result.to_dict()}
    out["finished"] = time.time()
    return out


def _not_graded_state(course: Course, assignment: str, student: str, infos: dict, reason: str) -> dict:
    """A state whose every notebook is "not graded: reason" with zero points."""
    from autograder import core

    from .grader import ExerciseResult

    out = {"student": student, "notebooks": {}, "started": time.time(), "finished": time.time()}
    for name, info in infos.items():
        exercises = []
        for ex_id in info.exercises:
            ex = core.get(ex_id)
            exercises.append(ExerciseResult(ex.id, ex.title, 0.0, float(ex.points), "not-graded", [], [
                f"not graded: {reason}"], feedback=f"{ex.id}: not graded: {reason}"))
        result = SubmissionResult(notebook=name, chapter=info.chapter, slug=info.slug, sha256="",
                                  score=0.0, max_score=sum(e.max_score for e in exercises), exercises=exercises,
                                  notes=[f"not graded: {reason}"], isolation="", attempts=0, seconds=0.0,
                                  sandbox_cpu_s=0.0)
        path = course.submission(student, assignment, name)
        out["notebooks"][name] = {"sha256": _digest(path), "result": result.to_dict()}
    return out


def _close_worker() -> None:
    for g in _WORKER.get("graders", {}).values():
        g.close()


def grade_assignment(course_dir: Path, assignment: str, students: list[str] | None = None, jobs: int = 1,
                     csv_path: Path | None = None, shard: tuple[int, int] | None = None, force: bool = False,
                     limits: sandbox.Limits | None = None, hidden: bool = True, log=print,
                     stop_after: int | None = None, stall_after: float | None = None) -> dict:
    """Grade, record and export; returns a summary dict (counts, seconds).

    ``stall_after``: seconds a worker may spend on one student before the batch records
    "not graded" for it and moves on (default: the submission's total budget plus ten
    minutes); a submission that stalled twice is skipped by later runs."""
    t0 = time.monotonic()
    import torch

    # The comparisons are small; one thread also keeps OpenMP out of the parent of forked workers.
    torch.set_num_threads(1)
    course = Course(course_dir)
    sources = course.source_notebooks(assignment)
    if not sources:
        raise SystemExit(f"no source notebook in {course.path('source', '.', assignment)}")
    infos = {p.name: load_source(p) for p in sources}
    everyone = course.students(assignment)
    todo_students = sorted(students) if students else everyone
    if shard:
        i, n = shard
        todo_students = [s for k, s in enumerate(todo_students) if k % n == i]
    sdir = state_dir(course, assignment)
    sdir.mkdir(parents=True, exist_ok=True)
    iso = sandbox.isolation()
    log(f"sandbox: {iso['mode']}; network {iso['network']}; filesystem {iso['filesystem']}")
    for note in iso["notes"]:
        log(f"sandbox note: {note}")

    # what is already done
    to_grade, to_record, skipped, stalled = [], [], 0, []
    previous_stalls = {}
    for s in todo_students:
        state_path = sdir / f"{s}.json"
        state = None
        if state_path.exists() and not force:
            try:
                state = json.loads(state_path.read_text())
            except Exception:
                state = None
        current = {name: _digest(course.submission(s, assignment, name)) for name in infos}
        same = state and all(state.get("notebooks", {}).get(n, {}).get("sha256") == d for n, d in current.items())
        if same and state.get("stalls", 0) >= MAX_STALLS and state.get("recorded"):
            log(f"{s}: skipped: grading this submission stalled {state['stalls']} times (it stays \"not graded\"; "
                "look at it, then grade it alone with --force)")
            stalled.append(s)
            skipped += 1
        elif same and state.get("stalls"):  # stalled once: try again, counting
            previous_stalls[s] = state["stalls"]
            to_grade.append(s)
        elif same and state.get("recorded"):
            skipped += 1
        elif same:
            to_record.append(state)
        else:
            to_grade.append(s)
    log(f"{assignment}: {len(todo_students)} students; {skipped} already graded, {len(to_record)} to record, "
        f"{len(to_grade)} to grade with {jobs} job(s)")

    def record(state: dict) -> None:
        for name, nbstate in state["notebooks"].items():
            result = SubmissionResult.from_dict(nbstate["result"])
            record_grades(course, assignment, state["student"], infos[name], Path(name).stem, result, log=log)
        state["recorded"] = True
        _write_atomic(sdir / f"{state['student']}.json", state)

    # Create the gradebook's schema now, once, before any worker opens it (shards started
    # together on one PostgreSQL database would race to create it).
    from .nbgrader_step import open_gradebook

    with open_gradebook(course):
        pass
    for state in to_record:
        record(state)

    graded = 0
    limits_d = dict((limits or sandbox.Limits()).__dict__)
    if limits is None or limits.cpus == sandbox.Limits().cpus:  # not chosen by the caller: a fair share
        limits_d["cpus"] = max(0.5, (os.cpu_count() or 1) / max(1, jobs))
    stop = {"now": False}

    def on_term(signum, frame):
        stop["now"] = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    # Compute the expected answers once, here, so that forked workers inherit them.
    from .grader import warm
    if to_grade:
        for info in infos.values():
            warm(info.exercises, hidden)
    interrupted = False
    stall_after = stall_after if stall_after is not None else (limits or sandbox.Limits()).total_timeout + 600.0

    def finish(s: str, state: dict) -> None:
        nonlocal graded
        state["recorded"] = False
        _write_atomic(sdir / f"{s}.json", state)
        record(state)
        graded += 1
        total = sum(nb["result"]["score"] for nb in state["notebooks"].values())
        mx = sum(nb["result"]["max_score"] for nb in state["notebooks"].values())
        log(f"{s}: {total:g}/{mx:g} ({state['finished'] - state['started']:.1f} s)")
        if stop_after is not None and graded >= stop_after:
            raise KeyboardInterrupt  # a simulated interruption (tests)

    try:
        if to_grade:
            import multiprocessing as mp

            queue = list(to_grade)
            while queue and not interrupted:
                pool = ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=mp.get_context("fork"),
                                           initializer=_init_worker,
                                           initargs=(str(course.root), assignment, limits_d, hidden))
                running: dict = {}
                deadline: dict = {}
                broken = False
                try:
                    while (queue or running) and not broken:
                        while queue and len(running) < max(1, jobs) * 2 and not stop["now"]:
                            s = queue.pop(0)
                            fut = pool.submit(_grade_student, s)
                            running[fut] = s
                            deadline[fut] = None  # the clock starts when a worker takes it
                        if not running:
                            break
                        done, _ = wait(list(running), timeout=POLL_S, return_when=FIRST_COMPLETED)
                        now = time.monotonic()
                        for fut in running:
                            if deadline[fut] is None and fut.running():
                                deadline[fut] = now + stall_after
                        for fut in done:
                            s = running.pop(fut)
                            try:
                                state = fut.result()
                            except Exception as exc:  # the worker died: record "not graded", keep going
                                log(f"{s}: grading failed: {type(exc).__name__}: {exc}")
                                state = _not_graded_state(course, assignment, s, infos,
                                                          f"the grading worker failed ({type(exc).__name__})")
                            finish(s, state)
                        overdue = [f for f in running if deadline[f] is not None and now > deadline[f]]
                        for fut in overdue:
                            # A worker that never answers (a grader bug, a hung read): the batch does
                            # not wait for it. The student is "not graded" now; a resumed batch tries
                            # again, and skips a submission that stalled twice.
                            s = running.pop(fut)
                            n = previous_stalls.get(s, 0) + 1
                            log(f"{s}: grading stalled (no result after {stall_after:.0f} s; stall {n} of "
                                f"{MAX_STALLS}): recorded as not graded")
                            state = _not_graded_state(course, assignment, s, infos,
                                                      f"grading stalled (no result after {stall_after:.0f} s)")
                            state["stalls"] = n
                            stalled.append(s)
                            finish(s, state)
                        if overdue:
                            # The stuck worker cannot be told apart from the others: start a fresh pool,
                            # and put back what the old one had not finished.
                            queue[:0] = [s for f, s in running.items()]
                            broken = True
                except KeyboardInterrupt:
                    interrupted = True
                    queue.clear()
                    for fut in running:
                        fut.cancel()
                    log("interrupted: finishing nothing more; completed grades are saved, run again to resume")
                finally:
                    if interrupted or broken:
                        for p in list(getattr(pool, "_processes", {}).values()):
                            try:
                                p.kill()
                            except Exception:
                                pass
                    pool.shutdown(wait=not (interrupted or broken), cancel_futures=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = {"students": len(todo_students), "graded": graded, "skipped": skipped, "recorded_late": len(to_record),
               "stalled": stalled,
               "seconds": round(time.monotonic() - t0, 2), "jobs": jobs, "interrupted": interrupted}
    if csv_path:
        summary["csv_rows"] = export_csv(course, assignment, Path(csv_path), infos)
        log(f"wrote {csv_path} ({summary['csv_rows']} rows)")
    return summary


def export_csv(course: Course, assignment: str, csv_path: Path, infos: dict | None = None) -> int:
    """One row per student from the per-student state files (never from a running tally)."""
    if infos is None:
        infos = {p.name: load_source(p) for p in course.source_notebooks(assignment)}
    exercise_ids = [ex for info in infos.values() for ex in info.exercises]
    sdir = state_dir(course, assignment)
    rows = []
    for path in sorted(sdir.glob("*.json")):
        try:
            state = json.loads(path.read_text())
        except Exception:
            continue
        scores, total, mx, statuses, seconds = {}, 0.0, 0.0, [], 0.0
        for nbstate in state.get("notebooks", {}).values():
            r = nbstate["result"]
            total += r["score"]
            mx += r["max_score"]
            seconds += r.get("seconds", 0.0)
            for e in r["exercises"]:
                scores[e["exercise_id"]] = e["score"]
                if e["status"] != "passed":
                    statuses.append(f"{e['exercise_id']}:{e['status']}")
        rows.append({"student": state["student"], "assignment": assignment, "score": f"{total:g}",
                     "max_score": f"{mx:g}", **{k: f"{scores.get(k, 0.0):g}" for k in exercise_ids},
                     "not_passed": " ".join(statuses), "recorded": state.get("recorded", False),
                     "seconds": f"{seconds:.1f}"})
    tmp = csv_path.with_name(csv_path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["student", "assignment", "score", "max_score", *exercise_ids,
                                          "not_passed", "recorded", "seconds"])
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, csv_path)
    return len(rows)
