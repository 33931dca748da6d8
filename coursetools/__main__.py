"""python -m coursetools COMMAND

    generate [CHAPTER ...] [--run [--force]] [--quick]
                                               write chapters/, nbgrader/source/, build/solutions/, _toc.yml
    check                                      list generated files that are stale (exit 1 if any)
    book [--quick] [--force]                   execute every chapter (cached), then build the static book
    nbgrader CHAPTER ... [--course-dir DIR] [--exchange DIR]   nbgrader course tree, release, validation
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m coursetools", description="Build the course's artifacts.")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="regenerate notebooks and the table of contents")
    g.add_argument("chapters", nargs="*")
    g.add_argument("--run", action="store_true", help="execute the chapters and keep the outputs")
    g.add_argument("--quick", action="store_true", help="with --run: the short version (COURSE_QUICK=1)")
    g.add_argument("--force", action="store_true", help="with --run: execute even the chapters whose run is cached")
    sub.add_parser("check", help="fail when a generated file is stale")
    b = sub.add_parser("book", help="execute every chapter and build the book into _build/html")
    b.add_argument("--quick", action="store_true", help="the short version of every chapter (COURSE_QUICK=1)")
    b.add_argument("--force", action="store_true", help="execute every chapter, even those whose run is cached")
    n = sub.add_parser("nbgrader", help="nbgrader course tree and release for chapters")
    n.add_argument("chapters", nargs="+")
    n.add_argument("--course-dir", type=Path, default=Path("course"))
    n.add_argument("--course-id", default="llm-course")
    n.add_argument("--exchange", type=Path, default=None,
                   help="nbgrader's exchange directory (c.Exchange.root), shared with the students")
    args = p.parse_args(argv)

    from . import build
    if args.cmd == "generate":
        if args.quick:
            os.environ["COURSE_QUICK"] = "1"
        build.generate(args.chapters or None, run=args.run, force=args.force)
        return 0
    if args.cmd == "check":
        problems = build.stale()
        for line in problems:
            print(f"stale: {line}")
        if problems:
            print("run `python -m coursetools generate --run` and commit the result")
        return 1 if problems else 0
    if args.cmd == "book":
        return build.build_book(quick=args.quick, force=args.force)
    if args.cmd == "nbgrader":
        from .nbgrader_course import make_course
        make_course(args.chapters, args.course_dir, args.course_id, exchange=args.exchange)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
