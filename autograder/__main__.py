"""Command line: ``python -m autograder grade NOTEBOOK [--json]`` and ``python -m autograder list``.

``grade`` executes a filled-in chapter notebook in a fresh kernel (its check cells are
skipped), then grades every exercise of the chapter against the definitions the notebook
left behind, and prints a per-exercise report.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import catalogue
from .notebook import grade_notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autograder", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("grade", help="grade a filled-in chapter notebook")
    g.add_argument("notebook", type=Path)
    g.add_argument("--json", action="store_true", help="print the report as JSON")
    g.add_argument("--hidden", action="store_true", help="also run the hidden cases")
    g.add_argument("--timeout", type=int, default=600, help="seconds per notebook cell")
    l = sub.add_parser("list", help="list the exercises")
    l.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if args.command == "list":
        rows = catalogue()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print(f"{r['id']:<32} {r['points']:>4g}  {r['title']}")
        return 0

    report = grade_notebook(args.notebook, hidden=args.hidden, timeout=args.timeout)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0 if report.get("error") is None else 2


def format_report(report: dict) -> str:
    lines = [f"Notebook: {report['notebook']}  (chapter {report.get('chapter') or '?'})"]
    if report.get("error"):
        lines.append(f"ERROR: {report['error']}")
    for r in report.get("exercises", []):
        mark = "PASS" if r["passed"] else "FAIL"
        lines.append(f"{mark}  {r['score']:>4g}/{r['max_score']:<4g} {r['exercise_id']}: {r['title']}")
        if not r["passed"]:
            for line in r["feedback"].splitlines()[1:]:
                lines.append("        " + line)
    lines.append(f"Total: {report.get('score', 0):g}/{report.get('max_score', 0):g}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
