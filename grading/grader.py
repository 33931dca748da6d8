"""The trusted grader: one submitted notebook in, a score per exercise out.

The learner's code runs only in the sandbox (``sandbox.py``); this process builds the same
case inputs itself, computes the expected answers with the independent references,
compares, names typical mistakes, and takes the points from the catalogue. What comes
back from the sandbox is read as data (``codec.py``) and only ever used as an answer.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import re
import secrets
import tempfile
import time
from pathlib import Path

import torch

from autograder import core

from autograder import codec, public

from . import sandbox
from .program import NotebookError, build_program, load_source, read_submission, source_role
from .static import analyse

MAX_RESULT_JSON = 32 << 20
MAX_RESULT_TENSORS = 256 << 20


@dataclasses.dataclass
class Check:
    name: str
    passed: bool
    message: str = ""
    diagnosis: str = ""
    hint: str = ""
    group: str = ""


@dataclasses.dataclass
class ExerciseResult:
    exercise_id: str
    title: str
    score: float
    max_score: float
    status: str  # passed | failed | not-implemented | missing | forbidden | crashed | error
    checks: list
    notes: list
    feedback: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclasses.dataclass
class SubmissionResult:
    notebook: str
    chapter: str
    slug: str
    sha256: str
    score: float
    max_score: float
    exercises: list
    notes: list
    isolation: str
    attempts: int
    seconds: float
    sandbox_cpu_s: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SubmissionResult":
        d = dict(d)
        d["exercises"] = [ExerciseResult(**{**e, "checks": [Check(**c) for c in e["checks"]]}) for e in d["exercises"]]
        return cls(**d)

    def feedback(self) -> str:
        lines = [f"Trusted grading of {Path(self.notebook).name} ({self.slug}): {self.score:g}/{self.max_score:g} points"]
        for note in self.notes:
            lines.append(f"  note: {note}")
        for e in self.exercises:
            lines.append("")
            lines.append(e.feedback)
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Trusted side caches: cases, expected answers, mistakes (per process)
# --------------------------------------------------------------------------------------
_CASES: dict = {}
_EXPECTED: dict = {}
_MISTAKES: dict = {}
_FAILED = object()


def case_plan(ex_id: str, hidden: bool) -> dict:
    """What the sandbox needs to run the checks of one exercise, packed as data.

    The grader builds the cases (hidden ones from the secret that only this process holds)
    and sends, for each, its name, its inputs and the name of the public driver that calls
    the learner's code (``autograder.public.case_spec``): never a reference, an expected
    answer or a mistake. ``{"error": ...}`` when a case cannot be described that way (a
    declaration that breaks the contract: our bug, reported as such).
    """
    key = ("plan", ex_id, hidden)
    if key not in _CASES:
        ex = core.get(ex_id)
        try:
            plan = {"name": ex.name, "forbidden": list(ex.forbidden),
                    "cases": [public.case_spec(c) for c in trusted_cases(ex_id, hidden)]}
            _CASES[key] = codec.pack(plan, prefix="in")
            if codec.contains_opaque(codec.unpack(_CASES[key])):
                raise public.NotPublic("an input is not plain data")
        except public.NotPublic as exc:
            _CASES[key] = {"error": f"the checks of {ex_id} cannot be sent to the sandbox: {exc}"}
    return _CASES[key]


# The secret the hidden cases of this grading run are drawn from. It never leaves this
# process: the sandbox receives the inputs it produced, as data. Set COURSE_HIDDEN_SECRET
# to grade again on the same hidden inputs (docs/instructors.md).
RUN_SECRET = os.environ.get("COURSE_HIDDEN_SECRET", "") or secrets.token_hex(16)


def _experiment_globals(source) -> set[str]:
    """Names that the chapter's own code cells (experiments, not answers) define at top level."""
    import ast

    names: set[str] = set()
    for cell in source.notebook.get("cells", []):
        if source_role(cell)[0] != "code":
            continue
        try:
            tree = ast.parse("".join(cell.get("source", "")) if isinstance(cell.get("source"), list)
                             else str(cell.get("source", "")))
        except (SyntaxError, ValueError, RecursionError):
            continue
        for node in tree.body:
            targets = []
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def trusted_cases(ex_id: str, hidden: bool) -> list:
    key = (ex_id, hidden)
    if key not in _CASES:
        with core.using_secret(RUN_SECRET):
            _CASES[key] = list(core.get(ex_id).cases(hidden))
    return _CASES[key]


def expected_value(ex_id: str, hidden: bool, k: int):
    key = (ex_id, hidden, k)
    if key not in _EXPECTED:
        case = trusted_cases(ex_id, hidden)[k]
        with core.case_state():
            _EXPECTED[key] = case.expected() if case.expected is not None else None
    return _EXPECTED[key]


def mistake_value(ex_id: str, hidden: bool, k: int, m: int):
    key = (ex_id, hidden, k, m)
    if key not in _MISTAKES:
        ex = core.get(ex_id)
        case = trusted_cases(ex_id, hidden)[k]
        mistake = ex.mistakes[m]
        try:
            args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
            with core.case_state():
                _MISTAKES[key] = (case.run(mistake.produce, *args, **kwargs) if case.run
                                  else mistake.produce(*args, **kwargs))
        except Exception:
            _MISTAKES[key] = _FAILED
    return _MISTAKES[key]


def warm(exercise_ids: list[str], hidden: bool = True, mistakes: bool = True) -> None:
    """Compute every expected answer (and mistake) once, e.g. before forking workers."""
    for ex_id in exercise_ids:
        ex = core.get(ex_id)
        for k, _ in enumerate(trusted_cases(ex_id, hidden)):
            expected_value(ex_id, hidden, k)
            if mistakes:
                for m in range(len(ex.mistakes)):
                    mistake_value(ex_id, hidden, k, m)


def _roundtrip(value):
    tree, tensors = codec.encode(value)
    return codec.decode(tree, tensors)


def _same_data(a, b) -> bool:
    if isinstance(a, codec.Opaque) or isinstance(b, codec.Opaque):
        return type(a).__name__ == type(b).__name__
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and bool(
            torch.equal(a, b) or (a.is_floating_point() and bool((torch.isnan(a) & torch.isnan(b) | (a == b)).all())))
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same_data(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_data(a[k], b[k]) for k in a)
    if type(a).__module__ == "numpy":
        import numpy as np
        return isinstance(b, np.ndarray) and a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


# --------------------------------------------------------------------------------------
# The grader
# --------------------------------------------------------------------------------------
class TrustedGrader:
    def __init__(self, source_notebook: Path, limits: sandbox.Limits | None = None, hidden: bool = True,
                 solutions_dirs: list[Path] | None = None, tmp_root: Path | None = None, log=None):
        self.source_path = Path(source_notebook)
        self.source = load_source(self.source_path)
        self._experiment_names = _experiment_globals(self.source)
        self.limits = limits or sandbox.Limits()
        self.hidden = hidden
        self.tmp_root = tmp_root
        self.log = log or (lambda msg: None)
        self.exercises = []
        self.unknown = []
        for ex_id in self.source.exercises:
            try:
                self.exercises.append(core.get(ex_id))
            except KeyError:
                self.unknown.append(ex_id)
        if solutions_dirs is None:
            solutions_dirs = [self.source_path.parent / "solutions", Path(core.__file__).resolve().parent.parent / "solutions"]
        self._bundle_dir = Path(tempfile.mkdtemp(prefix="grading-bundle-", dir=tmp_root))
        number = int(self.source.chapter[2:4]) if self.source.chapter[2:4].isdigit() else 0
        self.bundle = sandbox.build_bundle(self._bundle_dir / "b", number, [d for d in solutions_dirs if d.is_dir()])
        import atexit

        atexit.register(self.close)
        self._forbidden = {e.id: [p.replace(":", ".") for p in e.forbidden] for e in self.exercises}
        self._solution_paths = {e.id: e.solution.replace(":", ".") for e in self.exercises}
        self._solution_modules = {e.solution.partition(":")[0] for e in self.exercises}

    def close(self) -> None:
        import os
        import shutil

        for root, dirs, files in os.walk(self._bundle_dir):
            os.chmod(root, 0o755)
        shutil.rmtree(self._bundle_dir, ignore_errors=True)

    def warm(self, mistakes: bool = True) -> None:
        warm([e.id for e in self.exercises], self.hidden, mistakes)

    # ----------------------------------------------------------------------------------
    def grade(self, notebook: Path) -> SubmissionResult:
        t0 = time.monotonic()
        notebook = Path(notebook)
        iso = sandbox.isolation()
        digest = hashlib.sha256(notebook.read_bytes()).hexdigest() if notebook.is_file() else ""
        notes: list[str] = []
        results: dict[str, ExerciseResult] = {}
        attempts = 0
        self._cpu = 0.0
        try:
            nb = read_submission(notebook)
        except NotebookError as exc:
            for ex in self.exercises:
                results[ex.id] = self._result(ex, "error", [], [f"not graded: {exc}"])
            return self._finish(notebook, digest, results, [str(exc)], iso, 0, t0)
        cells, prog_notes = build_program(self.source, nb)
        notes += prog_notes
        if not any(c.kind != "course" for c in cells):
            notes.append("the notebook holds no code of yours")

        # static check of the learner's cells
        student = [(c.label, c.source) for c in cells if c.kind != "course"]
        findings = analyse(student, [c.source for c in cells if c.kind == "course"],
                           [(e.id, e.name) for e in self.exercises], self._forbidden, self._solution_paths,
                           self._solution_modules)
        static_by_ex: dict[str, list[str]] = {}
        unreadable = {f.where for f in findings if f.skip_cell}
        for f in findings:
            if f.skip_cell:
                notes.append(f"{f.where} {f.message}")
                continue
            targets = [e.id for e in self.exercises] if "*" in f.exercises else f.exercises
            for ex_id in targets:
                static_by_ex.setdefault(ex_id, []).append(f"your code {f.message} ({f.where})")

        # run in the sandbox, retrying around whatever kills it
        pending = [e.id for e in self.exercises]
        raw: dict[str, dict] = {}
        crashed: dict[str, str] = {}
        cell_errors: dict[int, str] = {}
        fatal_cells: dict[int, str] = {}
        unread = {i for i, c in enumerate(cells) if c.kind != "course" and c.label in unreadable}
        load_violations: set = set()
        n_cases = {e.id: len(trusted_cases(e.id, self.hidden)) for e in self.exercises}
        job_cells = [{"source": c.source, "label": c.label} for c in cells]
        max_attempts = len(cells) + len(self.exercises) + 2
        while pending and attempts < max_attempts:
            # One budget for the whole submission: a notebook of many slow cells cannot buy a
            # fresh allowance with every attempt.
            spent_wall = time.monotonic() - t0
            if attempts and (spent_wall > self.limits.total_timeout or self._cpu > self.limits.total_cpu_s):
                why = (f"the submission used up its time budget ({spent_wall:.0f} s of wall-clock time, "
                       f"{self._cpu:.0f} s of CPU over {attempts} attempts; the limits are "
                       f"{self.limits.total_timeout:g} s and {self.limits.total_cpu_s:g} s)")
                for ex_id in pending:
                    crashed.setdefault(ex_id, why)
                pending = []
                break
            attempts += 1
            job = {"cells": job_cells, "exercises": pending, "plans": {x: case_plan(x, self.hidden) for x in pending},
                   "skip_cells": sorted(set(fatal_cells) | unread), "case_timeout": self.limits.case_timeout,
                   "cell_timeout": self.limits.cell_timeout, "output_cap": self.limits.output_cap}
            attempt = sandbox.run_attempt(self.bundle, job, self.limits, n_cases, len(cells), self.tmp_root)
            self._cpu += attempt.cpu_s
            try:
                for ev in attempt.events:
                    if ev.get("e") == "cell_end" and ev.get("error") and isinstance(ev.get("error"), str):
                        cell_errors[ev["i"]] = ev["error"][:500]
                    if ev.get("e") == "cell_end" and isinstance(ev.get("forbidden"), list):
                        load_violations.update(str(v)[:200] for v in ev["forbidden"][:20])
                done = []
                for index, ex_id in enumerate(pending):
                    ended = any(ev.get("e") == "ex_end" and ev.get("id") == ex_id for ev in attempt.events)
                    data = self._read_result(attempt.out_dir, index, ex_id) if ended else None
                    if data is not None:
                        raw[ex_id] = data
                        done.append(ex_id)
                pending = [x for x in pending if x not in done]
                if attempt.finished or not pending:
                    break
                unit = attempt.unit or ("start",)
                why = attempt.failure()
                self.log(f"{notebook}: attempt {attempts} stopped in {unit}: {why}")
                if unit[0] == "cell":
                    fatal_cells[unit[1]] = why
                elif unit[0] == "ex" and unit[1] in pending:
                    crashed[unit[1]] = why
                    pending.remove(unit[1])
                elif unit[0] == "start":
                    if attempts >= 2:
                        for ex_id in pending:
                            crashed[ex_id] = f"the sandbox could not start ({why}): {attempt.log_tail[-300:]}"
                        pending = []
                else:  # between units: try again once more
                    pass
            finally:
                sandbox.cleanup(attempt)
        for ex_id in pending:
            crashed.setdefault(ex_id, "could not be graded: the notebook stopped the grading process too often")

        # compare, in this process
        for i, cell in enumerate(cells):
            if i in fatal_cells:
                notes.append(f"{cell.label} stopped the grading process when it ran ({fatal_cells[i]}); "
                             "it was skipped")
        for ex in self.exercises:
            ex_notes = list(static_by_ex.get(ex.id, []))
            for v in sorted(load_violations):
                if v.startswith("autograder internals") or v in ex.forbidden:
                    ex_notes.append(f"your notebook called {v} while it loaded, which is not allowed for {ex.id}")
            for i, cell in enumerate(cells):
                if cell.exercise == ex.id and i in cell_errors:
                    ex_notes.append(f"{cell.label} raised {cell_errors[i]}")
                if cell.exercise == ex.id and i in fatal_cells:
                    ex_notes.append(f"{cell.label} stopped the grading process ({fatal_cells[i]}) and was skipped")
            if ex.id in crashed:
                results[ex.id] = self._result(ex, "crashed", [Check("running your code", False,
                                              f"while checking {ex.name}, {crashed[ex.id]}")], ex_notes)
                continue
            results[ex.id] = self._compare(ex, raw.get(ex.id), ex_notes)
        for ex_id in self.unknown:
            notes.append(f"the assignment lists exercise {ex_id}, which the grader's catalogue does not know")
        return self._finish(notebook, digest, results, notes, iso, attempts, t0)

    # ----------------------------------------------------------------------------------
    def _read_result(self, out_dir: Path, index: int, ex_id: str):
        path = out_dir / f"ex-{index}.json"
        try:
            raw = sandbox.read_regular(path, MAX_RESULT_JSON + 1)
            if len(raw) > MAX_RESULT_JSON:
                return {"corrupt": "the result file is too large"}
            data = json.loads(raw.decode("utf-8", "replace"))
            if not isinstance(data, dict) or data.get("exercise") != ex_id:
                return {"corrupt": "the result file does not belong to this exercise"}
            tpath = out_dir / f"ex-{index}.safetensors"
            try:
                blob = sandbox.read_regular(tpath, MAX_RESULT_TENSORS + 1)
            except FileNotFoundError:
                blob = None
            data["_tensors"] = codec.load_tensor_bytes(blob, MAX_RESULT_TENSORS) if blob is not None else {}
            return data
        except FileNotFoundError:
            return None
        except sandbox.HostileFile as exc:
            return {"corrupt": f"the result was not a plain file ({exc}): tampering, review"}
        except Exception as exc:
            return {"corrupt": f"the result could not be read ({type(exc).__name__}: {str(exc)[:200]})"}

    def _compare(self, ex: core.Exercise, data: dict | None, notes: list[str]) -> ExerciseResult:
        if data is None:
            return self._result(ex, "error", [Check("result", False, "no result came back from the sandbox")], notes)
        if "corrupt" in data:
            return self._result(ex, "error", [Check("result", False, data["corrupt"])], notes)
        sub = data.get("submission")
        if sub == "missing":
            return self._result(ex, "missing", [Check("submission", False,
                                f"no function or class named {ex.name} in your notebook")], notes)
        if sub == "not-callable":
            return self._result(ex, "missing", [Check("submission", False,
                                f"expected a function or class named {ex.name}, got "
                                f"{str(data.get('type', '?'))[:60]}")], notes)
        if sub == "cases-error":
            return self._result(ex, "error", [Check("cases", False, "the checks of this exercise could not be "
                                "built (a bug in the course, not in your code): "
                                f"{str(data.get('message', ''))[:300]}")], notes)
        if sub != "ok":
            return self._result(ex, "error", [Check("result", False, "unreadable result")], notes)
        printed = data.get("printed")
        if type(printed) is int and printed > 100_000:
            notes = notes + [f"while it was checked, your code printed {printed / 1e6:.1f} million characters "
                             f"(the grader keeps the first {self.limits.output_cap // 1024} KB and ignores the rest)"]
        rows = data.get("cases") if isinstance(data.get("cases"), list) else []
        tensors = data.get("_tensors", {})
        cases = trusted_cases(ex.id, self.hidden)
        checks: list[Check] = []
        status = None
        diagnoser = core.Diagnoser(ex.mistakes)
        for k, case in enumerate(cases):
            row = rows[k] if k < len(rows) and isinstance(rows[k], dict) else None
            if row is None:
                if checks and status == "not-implemented":
                    break
                checks.append(Check(case.name, False, "no result for this check"))
                continue
            st = row.get("status")
            msg = str(row.get("message", ""))[:600]
            if row.get("name") != case.name:
                checks.append(Check(case.name, False, "the result does not belong to this check"))
            elif st == "not-implemented":
                checks.append(Check(case.name, False, "not implemented yet (the function still raises "
                                    "NotImplementedError)"))
                status = "not-implemented"
                break
            elif st == "forbidden":
                checks.append(Check(case.name, False, f"your code calls {msg}, which this exercise asks you to "
                                    "build yourself: write it without that call"))
            elif st == "timeout":
                checks.append(Check(case.name, False, f"{msg}: an infinite loop, or far too slow an algorithm"))
            elif st == "raised":
                checks.append(Check(case.name, False, f"raised {msg}" + self._explain_name_error(msg)))
            elif st == "unencodable":
                checks.append(Check(case.name, False, f"returned something the grader cannot receive ({msg}); "
                                    "return tensors, numbers, strings, lists, tuples or dicts"))
            elif st == "ok":
                checks.append(self._check_value(ex, k, case, row, tensors, diagnoser))
            else:
                checks.append(Check(case.name, False, "unreadable result"))
            checks[-1].group = case.group
        passed = bool(checks) and all(c.passed for c in checks)
        if status is None:
            status = "passed" if passed else "failed"
        if notes and any(n.startswith("your code") or "not allowed" in n for n in notes):
            status = "forbidden"
        return self._result(ex, status, checks, notes)

    def _check_value(self, ex, k, case, row, tensors, diagnoser) -> Check:
        try:
            got = codec.decode(row.get("value"), tensors)
        except (codec.DecodeError, RecursionError, ValueError, TypeError) as exc:
            return Check(case.name, False, f"the returned value could not be read ({exc})")
        if case.check_mutation and "args_after" in row and "args_before" in row:
            try:
                after = codec.decode(row["args_after"], tensors)
                before = codec.decode(row["args_before"], tensors)
                if not _same_data(before, after):
                    return Check(case.name, False, "your function changed its inputs in place; leave them "
                                 "untouched (work on a copy)")
            except Exception:
                pass
        compare = case.compare or core.default_compare
        try:
            expected = expected_value(ex.id, self.hidden, k)
        except Exception as exc:
            return Check(case.name, False, f"the grader could not compute the expected answer ({exc}): a bug "
                         "in the course, not in your code")
        try:
            problem = compare(expected, got)
        except Exception as exc:
            problem = f"could not compare your result ({type(got).__name__}): {type(exc).__name__}: {exc}"
        if problem is None:
            return Check(case.name, True)
        def produce_for(m):
            value = mistake_value(ex.id, self.hidden, k, m)
            return core._FAILED if value is _FAILED else value

        diagnosis = diagnoser.name(compare, expected, got, produce_for) or core.named_by_case(ex, case)
        hint = "" if diagnosis else core.numeric_hint(expected, got)
        return Check(case.name, False, str(problem)[:600], diagnosis, hint[:300])

    def _result(self, ex, status: str, checks: list[Check], notes: list[str]) -> ExerciseResult:
        passed = status == "passed" and not any(n.startswith("your code") or "not allowed" in n for n in notes)
        if not passed and status == "passed":
            status = "forbidden"
        cheated = any(n.startswith("your code") or "not allowed" in n for n in notes)
        if status in ("passed", "failed") and not cheated:
            score = core.score_by_groups(float(ex.points), [(c.group, c.passed) for c in checks])
        else:
            score = 0.0
        r = ExerciseResult(ex.id, ex.title, score, float(ex.points), status, checks, notes)
        r.feedback = format_feedback(ex, r)
        return r

    def _explain_name_error(self, message: str) -> str:
        m = re.search(r"NameError: name '([A-Za-z_][A-Za-z0-9_]*)' is not defined", message)
        if not m or m.group(1) not in self._experiment_names:
            return ""
        return (f"; `{m.group(1)}` is defined in one of the chapter's experiment cells, which the grader does not "
                "run: define what your function needs inside it, or in its answer cell")

    def not_graded(self, notebook: Path, reason: str) -> SubmissionResult:
        """The result of a submission the grader could not grade: zero points, with the reason
        on every exercise, so that no earlier score stays standing in the gradebook."""
        notebook = Path(notebook)
        try:
            digest = hashlib.sha256(notebook.read_bytes()).hexdigest()
        except OSError:
            digest = ""
        reason = str(reason)[:300]
        results = {ex.id: self._result(ex, "not-graded", [Check("grading", False, f"not graded: {reason}")], [])
                   for ex in self.exercises}
        return self._finish(notebook, digest, results, [f"not graded: {reason}"], sandbox.isolation(), 0,
                            time.monotonic())

    def _finish(self, notebook, digest, results, notes, iso, attempts, t0) -> SubmissionResult:
        ordered = [results[e.id] for e in self.exercises if e.id in results]
        return SubmissionResult(
            notebook=str(notebook), chapter=self.source.chapter, slug=self.source.slug, sha256=digest,
            score=sum(r.score for r in ordered), max_score=sum(float(e.points) for e in self.exercises),
            exercises=ordered, notes=notes, isolation=iso["mode"], attempts=attempts,
            seconds=round(time.monotonic() - t0, 3), sandbox_cpu_s=round(getattr(self, "_cpu", 0.0), 3))


def format_feedback(ex: core.Exercise, r: ExerciseResult) -> str:
    lines = [core.title_line(ex, " [trusted grader]")] + [f"  ! {n}" for n in r.notes]
    lines += core.check_lines(ex, r.status, r.checks)
    n_ok = sum(c.passed for c in r.checks)
    if r.status == "failed":
        lines.append(core.verdict_line(ex, False, r.score, [(c.group, c.passed) for c in r.checks]))
        return "\n".join(lines)
    verdict = "all checks passed" if r.status == "passed" else (
        f"{n_ok} of {len(r.checks)} checks passed" if r.status in ("failed", "not-implemented") else
        {"forbidden": "a forbidden call or construct was found", "crashed": "your code stopped the grader",
         "missing": "nothing to grade", "error": "not graded", "not-graded": "not graded"}.get(r.status, r.status))
    lines.append(f"  => {verdict}: {r.score:g}/{r.max_score:g} points"
                 + ("" if r.status == "passed" else f" (checked against {ex.reference})"))
    return "\n".join(lines)
