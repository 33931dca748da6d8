"""python -m grading COMMAND  (see docs/instructors.md)

    grade NOTEBOOK --source SOURCE.ipynb [--json]     grade one notebook, print the report
    autograde ASSIGNMENT --course-dir DIR [--student S ...] [--jobs N] [--force]
                                                      trusted grades into nbgrader's gradebook
                                                      and autograded/ (then: nbgrader generate_feedback)
    batch ASSIGNMENT --course-dir DIR [--jobs N] [--csv FILE] [--shard I/N] [--force]
                                                      every submission, parallel, resumable, CSV
    export ASSIGNMENT --course-dir DIR --csv FILE     the CSV from the saved results
    selfcheck [CHAPTER ...]                           the reference solutions get full marks here
    isolation                                         what the sandbox can use on this machine
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def _limits(args):
    from .sandbox import Limits

    lim = Limits()
    for name in ("memory_mb", "cpu_s", "case_timeout", "cell_timeout", "submission_timeout"):
        v = getattr(args, name, None)
        if v is not None:
            setattr(lim, name, type(getattr(lim, name))(v))
    return lim


def _add_limits(p):
    p.add_argument("--memory-mb", type=int, help="address-space limit of the sandbox (default 3072)")
    p.add_argument("--cpu-s", type=int, help="CPU seconds per sandbox process (default 300)")
    p.add_argument("--case-timeout", type=float, help="CPU seconds per check (default 10)")
    p.add_argument("--cell-timeout", type=float, help="CPU seconds per notebook cell (default 60)")
    p.add_argument("--submission-timeout", type=float, help="absolute cap per sandbox run (default 900)")
    p.add_argument("--no-hidden", action="store_true", help="only the visible cases")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m grading", description="Trusted, sandboxed grading.")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grade", help="grade one notebook")
    g.add_argument("notebook", type=Path)
    g.add_argument("--source", type=Path, required=True, help="the instructor's nbgrader source notebook")
    g.add_argument("--json", action="store_true")
    _add_limits(g)
    for name in ("autograde", "batch"):
        a = sub.add_parser(name, help="grade submitted/ into the gradebook" if name == "autograde"
                           else "grade a whole class (parallel, resumable, CSV)")
        a.add_argument("assignment")
        a.add_argument("--course-dir", type=Path, default=Path("."))
        a.add_argument("--student", action="append", help="only this student (repeatable)")
        a.add_argument("--jobs", type=int, default=1 if name == "autograde" else max(1, (os.cpu_count() or 1)))
        a.add_argument("--csv", type=Path)
        a.add_argument("--shard", help="I/N: grade only every N-th student starting at I (0-based)")
        a.add_argument("--force", action="store_true", help="grade again even when a result is saved")
        _add_limits(a)
    e = sub.add_parser("export", help="write the CSV from saved results")
    e.add_argument("assignment")
    e.add_argument("--course-dir", type=Path, default=Path("."))
    e.add_argument("--csv", type=Path, required=True)
    s = sub.add_parser("selfcheck", help="grade the reference solution of chapters through the sandbox")
    s.add_argument("chapters", nargs="*")
    sub.add_parser("isolation", help="print what the sandbox can use here")
    args = p.parse_args(argv)

    if args.cmd == "isolation":
        from .sandbox import isolation
        print(json.dumps(isolation(), indent=2))
        return 0
    if args.cmd == "grade":
        from .grader import TrustedGrader
        grader = TrustedGrader(args.source, limits=_limits(args), hidden=not args.no_hidden)
        try:
            result = grader.grade(args.notebook)
        finally:
            grader.close()
        print(json.dumps(result.to_dict(), indent=1) if args.json else result.feedback())
        return 0
    if args.cmd in ("autograde", "batch"):
        from .batch import grade_assignment
        shard = None
        if args.shard:
            i, n = (int(x) for x in args.shard.split("/"))
            if not 0 <= i < n:
                p.error("--shard I/N needs 0 <= I < N")
            shard = (i, n)
        elif os.environ.get("JOB_COMPLETION_INDEX") and os.environ.get("GRADING_SHARDS"):
            shard = (int(os.environ["JOB_COMPLETION_INDEX"]), int(os.environ["GRADING_SHARDS"]))
        summary = grade_assignment(args.course_dir, args.assignment, students=args.student, jobs=args.jobs,
                                   csv_path=args.csv, shard=shard, force=args.force, limits=_limits(args),
                                   hidden=not args.no_hidden)
        print(json.dumps(summary))
        return 130 if summary.get("interrupted") else 0
    if args.cmd == "export":
        from .batch import export_csv
        from .nbgrader_step import Course
        n = export_csv(Course(args.course_dir), args.assignment, args.csv)
        print(f"wrote {args.csv} ({n} rows)")
        return 0
    if args.cmd == "selfcheck":
        return selfcheck(args.chapters)
    return 2


def selfcheck(chapters: list[str]) -> int:
    """Every chapter's reference solution, as a notebook, gets full marks through the sandbox."""
    import nbformat

    from .grader import TrustedGrader
    from .simulate import chapter_source, chapters as all_chapters, submission

    bad = 0
    for ch in chapters or all_chapters():
        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / f"{ch}.ipynb"
            nbformat.write(chapter_source(ch), src)
            nb = submission(json.loads(src.read_text()))
            sub = Path(d) / "submission.ipynb"
            sub.write_text(json.dumps(nb))
            grader = TrustedGrader(src)
            try:
                r = grader.grade(sub)
            finally:
                grader.close()
            ok = r.score == r.max_score
            bad += not ok
            print(f"{'OK  ' if ok else 'FAIL'} {ch}: {r.score:g}/{r.max_score:g} in {r.seconds:.1f} s")
            if not ok:
                print(r.feedback())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
