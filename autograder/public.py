"""The public part of the exercises: what a student release and the grading sandbox carry.

An exercise is declared once, in ``autograder/exercises/chNN_slug.py``. That module is
private: it holds the independent references, the typical mistakes (which reproduce the
reference with one thing wrong) and the builders of the hidden cases. It never leaves the
course author's and the instructor's machines.

What may travel is generated from the same declarations:

* the **drivers** (``autograder/drivers/chNN_slug.py``): the functions that call the
  learner's code for a case (``Case.run``) and compare its result (``Case.compare``).
  They run the learner's code and nothing else, so they are public;
* the **contract** of a chapter (``autograder/contract/chNN_slug.json``, made by
  ``build``): every exercise's public description, its visible cases as data (inputs, the
  expected answer, what each declared mistake returns on them) and references to drivers.

A student release checks the visible cases from the contract; the trusted grader builds
the hidden cases in its own process and sends the sandbox their inputs with the drivers'
names (``case_spec``). For that, every case must be describable: ``run`` and ``compare``
are module-level functions of a drivers module or of ``autograder.core`` (or a
``functools.partial`` of one over plain data), and inputs and expected answers are plain
data. ``python -m autograder.public audit [chNN ...]`` lists every case that is not.
"""
from __future__ import annotations

import ast
import copy
import functools
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Callable

from . import codec, core

HERE = Path(__file__).resolve().parent
CONTRACT_DIR = HERE / "contract"
DRIVERS_DIR = HERE / "drivers"
FORMAT = 1
# Modules whose functions may be named in a contract (and imported where it is read).
PUBLIC_MODULES = ("autograder.core", "autograder.drivers.")
# What a drivers module may not import: the private declarations and the solutions.
PRIVATE_IMPORTS = ("autograder.exercises", "solutions")


class NotPublic(ValueError):
    """A case that cannot be described by public code and plain data."""


# --------------------------------------------------------------------------------------
# Callables by name
# --------------------------------------------------------------------------------------
def _canonical(module: str) -> str:
    """``_ag.drivers.ch01`` (the sandbox's private alias) -> ``autograder.drivers.ch01``."""
    head, _, rest = module.partition(".")
    return "autograder" + ("." + rest if rest else "") if head == "_ag" else module


def plain(value: Any) -> bool:
    """Whether ``value`` travels as data (tensors, arrays, numbers, strings, containers)."""
    try:
        return not codec.contains_opaque(codec.unpack(codec.pack(value, prefix="p")))
    except Exception:
        return False


def callable_spec(fn: Callable | None) -> dict | None:
    """``fn`` as ``{"fn": "module:qualname", "args": [...], "kwargs": {...}}``.

    Raises ``NotPublic`` with the reason when ``fn`` is a lambda, a closure, a function of a
    private module, or a partial over something that is not plain data."""
    if fn is None:
        return None
    if isinstance(fn, functools.partial):
        inner = callable_spec(fn.func)
        args, kwargs = list(inner["args"]) + list(fn.args), {**inner["kwargs"], **(fn.keywords or {})}
        if not plain([args, kwargs]):
            raise NotPublic(f"functools.partial({inner['fn']}, ...) binds arguments that are not plain data")
        return {"fn": inner["fn"], "args": args, "kwargs": kwargs}
    module = _canonical(getattr(fn, "__module__", "") or "")
    qualname = getattr(fn, "__qualname__", "") or ""
    label = f"{module}:{qualname}" if module else repr(fn)
    if "<lambda>" in qualname:
        raise NotPublic(f"{label} is a lambda: make it a module-level function of the chapter's drivers module")
    if "<locals>" in qualname:
        raise NotPublic(f"{label} is a nested function (a closure): make it a module-level function of the "
                        "drivers module, with its captured values as partial arguments or case inputs")
    if not (module == "autograder.core" or module.startswith("autograder.drivers.")):
        raise NotPublic(f"{label} is not in a public module (autograder.drivers.<chapter> or autograder.core)")
    return {"fn": f"{module}:{qualname}", "args": [], "kwargs": {}}


def resolve_callable(spec: dict | None, package: str = "autograder") -> Callable | None:
    """The callable a spec names; ``package`` is the name the autograder is imported under."""
    if spec is None:
        return None
    module, _, qualname = spec["fn"].partition(":")
    if not any(module == p or module.startswith(p) for p in PUBLIC_MODULES):
        raise NotPublic(f"{spec['fn']} is not a public function")
    if package != "autograder":
        module = package + module[len("autograder"):]
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if spec.get("args") or spec.get("kwargs"):
        return functools.partial(obj, *spec.get("args", []), **spec.get("kwargs", {}))
    return obj


# --------------------------------------------------------------------------------------
# Audit
# --------------------------------------------------------------------------------------
def audit_drivers(path: Path) -> list[str]:
    """Static check of a drivers module: it imports nothing private."""
    problems = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: inside autograder/drivers/
                parent = ["autograder.drivers", "autograder"][min(node.level, 2) - 1]
                base = f"{parent}.{base}" if base else parent
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                names = [base]
        for name in names:
            if _earlier_solution(name, path.name):
                continue  # a release of chapter N ships the solutions of the chapters before N
            if any(name == p or name.startswith(p + ".") for p in PRIVATE_IMPORTS):
                problems.append(f"{path.name}:{node.lineno} imports {name}: a drivers module is public and may "
                                "not use the private declarations or the solutions")
    return problems


def _earlier_solution(module: str, drivers_file: str) -> bool:
    """``solutions.ch06_gpt`` imported by ``ch11_scaling.py``: an earlier chapter's solution."""
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "solutions" or not parts[1][:2] == "ch" or not parts[1][2:4].isdigit():
        return False
    return drivers_file[:2] == "ch" and drivers_file[2:4].isdigit() and int(parts[1][2:4]) < int(drivers_file[2:4])


def audit_exercise(ex) -> list[str]:
    """Every reason why a case of ``ex`` (visible or hidden) cannot be described publicly."""
    problems, visible = [], set()
    for hidden in (False, True):
        try:
            cases = list(ex.cases(hidden))
        except Exception as exc:
            return [f"{ex.id}: the cases could not be built: {exc}"]
        if not hidden:
            visible = {c.name for c in cases}
        for c in cases:
            if hidden and c.name in visible:
                continue
            where = f"{ex.id} [{c.name}]"
            for field in ("run", "compare"):
                try:
                    callable_spec(getattr(c, field))
                except NotPublic as exc:
                    problems.append(f"{where} {field}: {exc}")
            if not plain([list(c.args), dict(c.kwargs)]):
                problems.append(f"{where}: its inputs are not plain data (send a model as config + state dict)")
            if not hidden and c.expected is not None:
                try:
                    with core.case_state():
                        value = c.expected()
                except Exception as exc:
                    problems.append(f"{where}: the expected answer could not be computed: {exc}")
                    continue
                if not plain(value):
                    problems.append(f"{where}: the expected answer is not plain data ({type(value).__name__})")
    return problems


def audit(chapters: list[str] | None = None) -> list[str]:
    from . import core

    core._load_all()
    problems = []
    for path in sorted(DRIVERS_DIR.glob("ch[0-9][0-9]_*.py")):
        if not chapters or path.name[:4] in chapters:
            problems += audit_drivers(path)
    for row in core.catalogue():
        if chapters and row["chapter"] not in chapters:
            continue
        problems += audit_exercise(core.get(row["id"]))
    return problems


# --------------------------------------------------------------------------------------
# The contract of a chapter
# --------------------------------------------------------------------------------------
def case_spec(case) -> dict:
    """What the sandbox needs to run one case: its name, inputs, driver and mutation flag."""
    return {"name": case.name, "args": list(case.args), "kwargs": dict(case.kwargs),
            "run": callable_spec(case.run), "check_mutation": bool(case.check_mutation)}


def _describe_case(ex, case) -> dict:
    from .core import CaseTimeout, _Timeout

    row = case_spec(case)
    with core.case_state():
        expected = case.expected() if case.expected is not None else None
    row.update(compare=callable_spec(case.compare), group=case.group, names=case.names,
               has_expected=case.expected is not None, expected=expected)
    produced = {}
    for i, mistake in enumerate(ex.mistakes):
        args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
        try:
            with _Timeout(30.0), core.case_state():
                value = case.run(mistake.produce, *args, **kwargs) if case.run else mistake.produce(*args, **kwargs)
        except (Exception, CaseTimeout):
            continue
        if plain(value):
            produced[str(i)] = value
    row["produced"] = produced
    return row


def describe_exercise(ex, with_cases: bool) -> dict:
    row = {"summary": ex.summary(), "solution": ex.solution, "forbidden": list(ex.forbidden),
           "mistakes": [{"name": m.name, "message": m.message} for m in ex.mistakes]}
    if with_cases:
        row["cases"] = codec.pack([_describe_case(ex, c) for c in ex.cases(False)], prefix="c")
    return row


def build(chapter: str, dest: Path | None = None, earlier: bool = True) -> Path:
    """Write the contract of ``chapter`` (its exercises with their visible cases, and the
    earlier chapters' exercises described without cases) to ``dest/chNN_slug.json``."""
    from . import core

    core._load_all()
    rows = [r for r in core.catalogue() if r["chapter"] == chapter or (earlier and r["chapter"] < chapter)]
    problems = [p for r in rows if r["chapter"] == chapter for p in audit_exercise(core.get(r["id"]))]
    if problems:
        raise NotPublic("cases that cannot be published:\n  " + "\n  ".join(problems))
    slug = _slug(chapter)
    data = {"format": FORMAT, "chapter": chapter,
            "exercises": [describe_exercise(core.get(r["id"]), r["chapter"] == chapter) for r in rows]}
    dest = Path(dest or CONTRACT_DIR)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{slug}.json"
    path.write_text(json.dumps(data, separators=(",", ":")))
    return path


def _slug(chapter: str) -> str:
    for path in DRIVERS_DIR.glob(f"{chapter}_*.py"):
        return path.stem
    from . import exercises  # the private package names the chapter's modules

    for path in Path(exercises.__file__).parent.glob(f"{chapter}_*.py"):
        return path.stem
    raise KeyError(f"no chapter {chapter}")


# --------------------------------------------------------------------------------------
# Reading a contract (a student release: no private declarations)
# --------------------------------------------------------------------------------------
def _unavailable(*args, **kwargs):
    raise RuntimeError("a mistake's reproduction is not part of a release")


def load_contracts(directory: Path = CONTRACT_DIR) -> list:
    """The exercises described by the contracts in ``directory``, as ``Exercise`` objects
    whose visible cases come from the data (hidden cases exist only in the grader)."""
    from .core import Case, Exercise, Mistake

    found: dict[str, Any] = {}
    for path in sorted(Path(directory).glob("ch[0-9][0-9]_*.json")):
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path.name}: contract format {data.get('format')}, expected {FORMAT}")
        for row in data["exercises"]:
            s = row["summary"]
            if s["id"] in found and "cases" not in row:
                continue
            cases = None
            if "cases" in row:
                cases = []
                for c in codec.unpack(row["cases"]):
                    cases.append(Case(c["name"], tuple(c["args"]), dict(c["kwargs"]),
                                      expected=(lambda v=c["expected"]: copy.deepcopy(v)) if c["has_expected"] else None,
                                      compare=resolve_callable(c["compare"]), run=resolve_callable(c["run"]),
                                      check_mutation=c["check_mutation"], group=c["group"], names=c["names"],
                                      produced={int(k): v for k, v in c["produced"].items()}))
            found[s["id"]] = Exercise(
                id=s["id"], chapter=s["chapter"], title=s["title"], points=s["points"], name=s["name"],
                signature=s["signature"], reference=s["reference"], solution=row["solution"],
                cases=_ContractCases(s["id"], cases), difficulty=s.get("difficulty", "*"),
                forbidden=list(row["forbidden"]),
                mistakes=[Mistake(m["name"], m["message"], _unavailable) for m in row["mistakes"]])
    return list(found.values())


class _ContractCases:
    """``Exercise.cases`` of a published exercise: the visible cases; no hidden ones."""

    def __init__(self, exercise_id: str, cases: list | None):
        self.exercise_id, self.cases = exercise_id, cases

    def __call__(self, hidden: bool):
        if hidden:
            raise LookupError("the hidden checks are not part of a release: only the trusted grader has them")
        if self.cases is None:
            raise LookupError(f"{self.exercise_id} belongs to an earlier chapter: its checks are not in this release")
        return [copy.copy(c) for c in self.cases]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m autograder.public")
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("audit", help="list the cases that cannot be published")
    a.add_argument("chapters", nargs="*")
    b = sub.add_parser("build", help="write a chapter's contract")
    b.add_argument("chapter")
    b.add_argument("--dest", type=Path)
    args = parser.parse_args(argv)
    if args.command == "audit":
        problems = audit(args.chapters or None)
        for p in problems:
            print(p)
        print(f"{len(problems)} problem(s)" if problems else "every case can be published")
        return 1 if problems else 0
    print(build(args.chapter, args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
