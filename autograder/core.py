"""The exercise contract and the grading loop.

An exercise is declared once (see ``autograder/exercises/``): a stable id, the chapter,
the title, the points, the signature the learner implements, the independent reference it
is compared with, the cases, the typical mistakes it can name, and the calls it forbids.
``grade`` runs every case against the learner's submission and never raises because of it.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import inspect
import math
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

CASE_TIMEOUT_S = 10.0  # a single case that runs longer than this is an infinite loop


# --------------------------------------------------------------------------------------
# Declarations
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class Mistake:
    """A typical wrong answer: ``produce(*args, **kwargs)`` computes what it would return."""

    name: str
    message: str
    produce: Callable[..., Any]


@dataclasses.dataclass
class Case:
    """One check: call the submission on ``args``/``kwargs`` and compare with ``expected``.

    ``expected`` is a thunk that computes the answer with the independent reference.
    ``compare(expected, got)`` returns ``None`` on agreement, else a sentence that says how
    they differ. ``run(submission, *args, **kwargs)`` replaces the plain call when the
    submission is a class or must be driven (e.g. sampled many times).
    """

    name: str
    args: tuple = ()
    kwargs: dict = dataclasses.field(default_factory=dict)
    expected: Callable[[], Any] | None = None
    compare: Callable[[Any, Any], str | None] | None = None
    run: Callable[..., Any] | None = None
    check_mutation: bool = True


@dataclasses.dataclass
class Exercise:
    id: str
    chapter: str
    title: str
    points: float
    name: str  # the function or class the learner writes
    signature: str
    reference: str  # what the answer is checked against, in words
    solution: str  # dotted path of our own solution ("solutions.ch01_next_token:bigram_counts")
    cases: Callable[[bool], Iterable[Case]]  # cases(hidden) -> visible or hidden cases
    mistakes: list[Mistake] = dataclasses.field(default_factory=list)
    forbidden: list[str] = dataclasses.field(default_factory=list)  # "module:attr" paths
    difficulty: str = "*"

    def summary(self) -> dict:
        return {
            "id": self.id,
            "chapter": self.chapter,
            "title": self.title,
            "points": self.points,
            "name": self.name,
            "signature": self.signature,
            "reference": self.reference,
            "difficulty": self.difficulty,
            "mistakes": [m.name for m in self.mistakes],
        }


_REGISTRY: dict[str, Exercise] = {}


def register(exercise: Exercise) -> Exercise:
    if exercise.id in _REGISTRY:
        raise ValueError(f"exercise id {exercise.id!r} is declared twice")
    _REGISTRY[exercise.id] = exercise
    return exercise


def _load_all() -> None:
    from . import exercises  # noqa: F401  (importing registers every chapter)


def get(exercise_id: str) -> Exercise:
    _load_all()
    try:
        return _REGISTRY[exercise_id]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise KeyError(f"no exercise {exercise_id!r}; known: {known}") from None


def catalogue(chapter: str | None = None) -> list[dict]:
    """Every exercise as a dict with at least id, chapter, title and points."""
    _load_all()
    rows = [e.summary() for e in _REGISTRY.values()]
    if chapter is not None:
        rows = [r for r in rows if r["chapter"] == chapter]
    return sorted(rows, key=lambda r: r["id"])


def resolve(path: str) -> Any:
    """``"pkg.module:attr.sub"`` -> the object."""
    module_name, _, attr = path.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class CheckResult:
    name: str
    passed: bool
    message: str = ""
    diagnosis: str = ""
    seconds: float = 0.0


@dataclasses.dataclass
class GradeResult:
    exercise_id: str
    title: str
    passed: bool
    score: float
    max_score: float
    checks: list[CheckResult]
    feedback: str = ""
    status: str = "graded"  # graded | not-implemented | error

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return d

    def __repr__(self) -> str:  # shown when a learner evaluates the result in a cell
        return self.feedback

    def _repr_html_(self) -> str:
        import html

        colour = "#1a7f37" if self.passed else "#b42318"
        return f'<pre style="color:{colour}">{html.escape(self.feedback)}</pre>'


# --------------------------------------------------------------------------------------
# Guards: timeout, forbidden calls
# --------------------------------------------------------------------------------------
class CaseTimeout(BaseException):
    """Raised inside the submission when a case runs too long."""


class ForbiddenCall(BaseException):
    """Raised when the submission calls the reference or our own solution."""


class _Timeout:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.active = False

    def _handler(self, signum, frame):
        raise CaseTimeout()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
            self.previous = signal.signal(signal.SIGALRM, self._handler)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
            self.active = True
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        return False


def _code_objects(obj) -> list:
    """The code object that runs the body of ``obj`` when it is called. For a decorated
    function (``@torch.no_grad()``, ``functools.wraps``) that is the innermost wrapped
    function's: the wrapper's own code is shared by every function with that decorator,
    so watching it would refuse the learner's own decorated functions too."""
    for _ in range(10):
        inner = getattr(getattr(obj, "__func__", obj), "__wrapped__", None)
        if inner is None:
            break
        obj = inner
    code = getattr(getattr(obj, "__func__", obj), "__code__", None)
    return [code] if code is not None else []


class _ForbiddenProxy:
    def __init__(self, path: str, original: Any, log: list):
        self._path, self._original, self._log = path, original, log

    def _refuse(self):
        self._log.append(self._path)
        raise ForbiddenCall(self._path)

    def __call__(self, *a, **k):
        self._refuse()

    def __getattr__(self, item):
        self._refuse()


def guard_calls(submission: Any, guard: Any) -> Any:
    """``submission`` (a function or a class) with the context manager ``guard`` entered
    during every call into it, and only then: a check's own set-up may use the references.
    For a class, a subclass whose own methods (not those of torch and friends) are guarded.
    Used by ``_Forbid`` here and by the trusted grader's sandbox."""

    def guarded(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            with guard:
                return fn(*args, **kwargs)
        return call

    if not isinstance(submission, type):
        return guarded(submission)
    attrs: dict[str, Any] = {}
    for klass in submission.__mro__:
        if klass.__module__.split(".")[0] in ("builtins", "torch", "transformers", "typing", "abc"):
            continue
        for name, member in vars(klass).items():
            if name in attrs or (name.startswith("__") and name not in ("__init__", "__call__")):
                continue
            if isinstance(member, staticmethod):
                attrs[name] = staticmethod(guarded(member.__func__))
            elif isinstance(member, classmethod):
                attrs[name] = classmethod(guarded(member.__func__))
            elif inspect.isfunction(member):
                attrs[name] = guarded(member)
    attrs["__module__"] = submission.__module__
    attrs["__qualname__"] = submission.__qualname__
    return type(submission.__name__, (submission,), attrs)


class _Forbid:
    """Replace forbidden objects wherever the submission can reach them, for one call.

    Three layers: the attribute on its module; any global or closure variable of the
    submission bound to the same object; and a profiler hook that catches calls into the
    code of our own solution however it was reached.
    """

    def __init__(self, paths: list[str], submission: Any):
        self.paths, self.submission = paths, submission
        self.log: list[str] = []
        self._undo: list[Callable[[], None]] = []
        self._codes: dict[Any, str] = {}

    def _targets(self):
        for path in self.paths:
            module_name, _, attr = path.partition(":")
            try:
                owner = resolve(f"{module_name}:{attr.rpartition('.')[0]}") if "." in attr else importlib.import_module(module_name)
                name = attr.rpartition(".")[2]
                yield path, owner, name, getattr(owner, name)
            except Exception:  # optional dependency missing: nothing to forbid
                continue

    def _submission_namespaces(self):
        seen = []
        objs = [self.submission]
        if isinstance(self.submission, type):
            objs += [v for v in vars(self.submission).values() if callable(v)]
        for obj in objs:
            fn = getattr(obj, "__func__", obj)
            g = getattr(fn, "__globals__", None)
            if isinstance(g, dict) and all(g is not s for s in seen):
                seen.append(g)
        return seen

    def prepare(self) -> "_Forbid":
        """Resolve the forbidden objects once (this may import a large library)."""
        self._resolved = list(self._targets())
        self.depth = 0
        return self

    def __enter__(self):
        # Re-entrant: the guard is switched on for each call into the learner's code and
        # off again when it returns, so that the checks' own set-up may use the references.
        self.depth += 1
        if self.depth > 1:
            return self
        self._undo = []
        for path, owner, name, original in self._resolved:
            proxy = _ForbiddenProxy(path, original, self.log)
            try:
                setattr(owner, name, proxy)
                self._undo.append(lambda o=owner, n=name, v=original: setattr(o, n, v))
            except (AttributeError, TypeError):
                pass
            for g in self._submission_namespaces():
                for key, value in list(g.items()):
                    if value is original:
                        g[key] = proxy
                        self._undo.append(lambda g=g, k=key, v=original: g.__setitem__(k, v))
            for code in _code_objects(original):
                self._codes[id(code)] = (code, path)
            if isinstance(original, type):
                for member in vars(original).values():
                    for c in _code_objects(member):
                        self._codes[id(c)] = (c, path)
        if self._codes:
            self._previous_profile = sys.getprofile()
            codes, log = self._codes, self.log

            def hook(frame, event, arg):
                # Identity, not equality: code objects with the same bytecode compare equal.
                if event == "call" and id(frame.f_code) in codes:
                    log.append(codes[id(frame.f_code)][1])
                    raise ForbiddenCall(codes[id(frame.f_code)][1])

            sys.setprofile(hook)
        return self

    def __exit__(self, *exc):
        self.depth -= 1
        if self.depth > 0:
            return False
        if self._codes:
            sys.setprofile(self._previous_profile)
        for undo in reversed(self._undo):
            undo()
        return False

    def wrap(self, submission: Any) -> Any:
        """The submission, with the guard switched on during every call into it."""
        return guard_calls(submission, self)


# --------------------------------------------------------------------------------------
# Comparison helpers (used by the exercise declarations)
# --------------------------------------------------------------------------------------
def _fmt(x: Any, limit: int = 80) -> str:
    if isinstance(x, torch.Tensor):
        if x.numel() <= 8:
            s = f"tensor({x.tolist()})"
        else:
            s = f"tensor of shape {tuple(x.shape)}, dtype {x.dtype}"
    else:
        s = repr(x)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def compare_tensors(expected: torch.Tensor, got: Any, atol: float = 1e-5, rtol: float = 1e-4,
                    check_dtype: bool = False) -> str | None:
    """None when ``got`` is a tensor close to ``expected``; otherwise what differs."""
    if not isinstance(got, torch.Tensor):
        return f"expected a torch.Tensor of shape {tuple(expected.shape)}, got {type(got).__name__}: {_fmt(got)}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"shape differs: expected {tuple(expected.shape)}, got {tuple(got.shape)}"
    if check_dtype and got.dtype != expected.dtype:
        return f"dtype differs: expected {expected.dtype}, got {got.dtype}"
    if got.is_complex() != expected.is_complex():
        return f"dtype differs: expected {expected.dtype}, got {got.dtype}"
    e = expected.detach().to(torch.float64).cpu()
    try:
        g = got.detach().to(torch.float64).cpu()
    except Exception as exc:  # e.g. a tensor subclass that refuses conversion
        return f"could not read the tensor you returned: {exc}"
    if e.numel() == 0:
        return None
    g_nan, e_nan = torch.isnan(g), torch.isnan(e)
    if bool((g_nan & ~e_nan).any()):
        idx = tuple(int(i) for i in torch.nonzero(g_nan & ~e_nan)[0])
        where = f"has NaN at index {idx}" if idx else "is NaN"
        return f"your result {where} (expected {float(e[idx]):.6g})"
    g_inf = torch.isinf(g) & ~torch.isinf(e)
    if bool(g_inf.any()):
        idx = tuple(int(i) for i in torch.nonzero(g_inf)[0])
        return f"your result has {float(g[idx])} at index {idx} (expected {float(e[idx]):.6g}): an overflow?"
    both_inf_ok = (torch.isinf(e) & (g == e)) | (e_nan & g_nan)
    diff = (g - e).abs()
    bad = (diff > atol + rtol * e.abs()) & ~both_inf_ok
    bad = bad | (torch.isinf(e) & (g != e))
    if not bool(bad.any()):
        return None
    idx = tuple(int(i) for i in torch.nonzero(bad)[0])
    finite = diff[~both_inf_ok & torch.isfinite(diff)]
    worst = float(finite.max()) if finite.numel() else float("inf")
    n_bad, n = int(bad.sum()), bad.numel()
    where = f"index {idx}" if idx else "the value"
    return (f"values differ at {n_bad} of {n} positions; first at {where}: expected "
            f"{float(e[idx]):.6g}, got {float(g[idx]):.6g} (max abs difference {worst:.3g}, "
            f"tolerance atol={atol:g}, rtol={rtol:g})")


def compare_equal(expected: Any, got: Any) -> str | None:
    """Exact equality for lists, tuples, dicts, ints and strings, reporting the first difference."""
    if type(got) is not type(expected) and not (isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple))):
        if not (isinstance(expected, int) and isinstance(got, int) and not isinstance(got, bool)):
            return f"expected a {type(expected).__name__}, got {type(got).__name__}: {_fmt(got)}"
    if isinstance(expected, (list, tuple)):
        got_list = list(got)
        for i, (a, b) in enumerate(zip(expected, got_list)):
            if type(a) is not type(b) and not (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))):
                return f"item {i} differs: expected {_fmt(a)}, got {_fmt(b)} ({type(b).__name__})"
            if isinstance(a, (list, tuple)):
                if list(a) != list(b):
                    return f"item {i} differs: expected {_fmt(a)}, got {_fmt(b)}"
            elif a != b:
                return f"item {i} differs: expected {_fmt(a)}, got {_fmt(b)}"
        if len(got_list) != len(expected):
            return (f"length differs: expected {len(expected)} items, got {len(got_list)}"
                    + (f"; first extra item {_fmt(got_list[len(expected)])}" if len(got_list) > len(expected)
                       else f"; first missing item {_fmt(expected[len(got_list)])}"))
        return None
    if isinstance(expected, dict):
        missing = [k for k in expected if k not in got]
        if missing:
            return f"{len(missing)} keys missing, e.g. {_fmt(missing[0])}"
        extra = [k for k in got if k not in expected]
        if extra:
            return f"{len(extra)} unexpected keys, e.g. {_fmt(extra[0])}"
        for k in expected:
            if expected[k] != got[k]:
                return f"value for key {_fmt(k)} differs: expected {_fmt(expected[k])}, got {_fmt(got[k])}"
        return None
    if expected != got:
        return f"expected {_fmt(expected)}, got {_fmt(got)}"
    return None


def compare_float(expected: float, got: Any, atol: float = 1e-6, rtol: float = 1e-5) -> str | None:
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            return f"expected a single number, got a tensor of shape {tuple(got.shape)}"
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return f"expected a number, got {type(got).__name__}: {_fmt(got)}"
    if math.isnan(got):
        return f"expected {expected:.6g}, got NaN"
    if not abs(got - expected) <= atol + rtol * abs(expected):
        return f"expected {expected:.6g}, got {got:.6g} (tolerance atol={atol:g}, rtol={rtol:g})"
    return None


def default_compare(expected: Any, got: Any) -> str | None:
    if isinstance(expected, torch.Tensor):
        return compare_tensors(expected, got)
    if isinstance(expected, float):
        return compare_float(expected, got)
    return compare_equal(expected, got)


# --------------------------------------------------------------------------------------
# Grading
# --------------------------------------------------------------------------------------
def _snapshot(x: Any) -> Any:
    try:
        return copy.deepcopy(x)
    except Exception:
        return None


def _same(a: Any, b: Any) -> bool:
    try:
        if isinstance(a, torch.Tensor):
            return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and bool(
                torch.equal(a, b) or (torch.isnan(a) & torch.isnan(b) | (a == b)).all())
        if isinstance(a, (list, tuple)):
            return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
        if isinstance(a, dict):
            return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
        return bool(a == b)
    except Exception:
        return False


def _describe_exception(exc: BaseException, limit: int = 3) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    here = str(Path(__file__).resolve().parent)
    user = [f for f in tb if not str(Path(f.filename).resolve()).startswith(here)]
    where = ""
    if user:
        f = user[-1]
        where = f" (line {f.lineno}: {f.line.strip()})" if f.line else f" (line {f.lineno})"
    return f"{type(exc).__name__}: {exc}{where}"


def _run_case(ex: Exercise, case: Case, submission: Any) -> CheckResult:
    t0 = time.perf_counter()
    args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
    before = (_snapshot(args), _snapshot(kwargs)) if case.check_mutation else None
    # Resolve the forbidden objects (which may import a large library) before the clock starts.
    forbid = _Forbid(ex.forbidden + [ex.solution], submission).prepare()
    guarded = forbid.wrap(submission)
    try:
        with _Timeout(CASE_TIMEOUT_S):
            if case.run is not None:
                got = case.run(guarded, *args, **kwargs)
            else:
                got = guarded(*args, **kwargs)
    except NotImplementedError:
        return CheckResult(case.name, False, "not implemented yet (the function still raises NotImplementedError)",
                           seconds=time.perf_counter() - t0)
    except ForbiddenCall as exc:
        return CheckResult(case.name, False, f"your code calls {exc.args[0]}, which this exercise asks you to "
                           "build yourself: write it without that call", seconds=time.perf_counter() - t0)
    except CaseTimeout:
        return CheckResult(case.name, False, f"still running after {CASE_TIMEOUT_S:g} s: an infinite loop, or far "
                           "too slow an algorithm", seconds=time.perf_counter() - t0)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit, RecursionError, MemoryError, anything the learner raised
        return CheckResult(case.name, False, f"raised {_describe_exception(exc)}", seconds=time.perf_counter() - t0)
    if forbid.log:
        return CheckResult(case.name, False, f"your code calls {forbid.log[0]}, which this exercise asks you to "
                           "build yourself: write it without that call", seconds=time.perf_counter() - t0)
    if before is not None and before[0] is not None and not (_same(before[0], args) and _same(before[1], kwargs)):
        return CheckResult(case.name, False, "your function changed its inputs in place; leave them untouched "
                           "(work on a copy)", seconds=time.perf_counter() - t0)
    try:
        expected = case.expected() if case.expected is not None else None
        compare = case.compare or default_compare
        problem = compare(expected, got)
    except Exception as exc:  # the returned object broke the comparison (wrong type, odd __eq__)
        problem = f"could not compare your result ({type(got).__name__}): {_describe_exception(exc)}"
    if problem is None:
        return CheckResult(case.name, True, seconds=time.perf_counter() - t0)
    diagnosis = _diagnose(ex, case, got, compare if case.expected else default_compare)
    return CheckResult(case.name, False, problem, diagnosis, seconds=time.perf_counter() - t0)


def _diagnose(ex: Exercise, case: Case, got: Any, compare) -> str:
    for mistake in ex.mistakes:
        try:
            args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
            produced = case.run(mistake.produce, *args, **kwargs) if case.run else mistake.produce(*args, **kwargs)
            if compare(produced, got) is None:
                return mistake.message
        except Exception:
            continue
    return ""


def grade(exercise_id: str, submission: Any, hidden: bool = False) -> GradeResult:
    """Grade ``submission`` (the learner's function or class) for one exercise.

    Never raises because of the submission: every problem becomes a failed check with
    feedback. ``hidden=True`` runs the extra cases kept for nbgrader's hidden tests.
    """
    ex = get(exercise_id)
    checks: list[CheckResult] = []
    if not callable(submission):
        checks.append(CheckResult("submission", False, f"expected a function or class named {ex.name}, got "
                                  f"{type(submission).__name__}"))
    else:
        try:
            cases = list(ex.cases(hidden))
        except Exception as exc:  # a broken declaration is our bug, not the learner's: say so
            raise RuntimeError(f"the cases of {exercise_id} could not be built: {exc}") from exc
        for case in cases:
            checks.append(_run_case(ex, case, submission))
            if checks[-1].message.startswith("not implemented yet"):
                break
    passed = bool(checks) and all(c.passed for c in checks)
    status = "not-implemented" if checks and checks[-1].message.startswith("not implemented") else "graded"
    result = GradeResult(ex.id, ex.title, passed, ex.points if passed else 0.0, ex.points, checks, status=status)
    result.feedback = format_feedback(ex, result)
    return result


def format_feedback(ex: Exercise, result: GradeResult) -> str:
    lines = [f"{ex.id}: {ex.title} ({ex.points:g} point{'s' if ex.points != 1 else ''})"]
    if result.status == "not-implemented":
        lines.append(f"  - {ex.name} is not implemented yet: replace `raise NotImplementedError()` with your code.")
    else:
        for c in result.checks:
            mark = "PASS" if c.passed else "FAIL"
            lines.append(f"  {mark} {c.name}" + ("" if c.passed else f": {c.message}"))
            if c.diagnosis:
                lines.append(f"       likely mistake: {c.diagnosis}")
    n_ok = sum(c.passed for c in result.checks)
    verdict = "all checks passed" if result.passed else f"{n_ok} of {len(result.checks)} checks passed"
    lines.append(f"  => {verdict}: {result.score:g}/{result.max_score:g} points"
                 + ("" if result.passed else f" (checked against {ex.reference})"))
    return "\n".join(lines)
