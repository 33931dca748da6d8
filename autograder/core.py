"""The exercise contract and the grading loop.

An exercise is declared once (see ``autograder/exercises/``): a stable id, the chapter,
the title, the points, the signature the learner implements, the independent reference it
is compared with, the cases, the typical mistakes it can name, and the calls it forbids.
``grade`` runs every case against the learner's submission and never raises because of it.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import inspect
import math
import os
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
    group: str = ""  # checks of one group earn their share of the points together ("" = the whole exercise)
    names: str = ""  # for a yes/no check of one property: the mistake its failure means by itself
    produced: dict | None = None  # a published case: what each mistake (by index) returns on it


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


# --------------------------------------------------------------------------------------
# Hidden cases: drawn from a secret, per grading run
# --------------------------------------------------------------------------------------
_DEV_SECRET = "course-development"  # what the project's own tests and a learner's kernel use


_SECRET_OVERRIDE: list[str] = []


@contextlib.contextmanager
def using_secret(secret: str):
    """Build hidden cases from ``secret`` inside the block (the trusted grader's run secret)."""
    _SECRET_OVERRIDE.append(secret)
    try:
        yield
    finally:
        _SECRET_OVERRIDE.pop()


def hidden_secret() -> str:
    """The secret the hidden cases are drawn from.

    Only the instructor's machine holds the real one: ``COURSE_HIDDEN_SECRET`` (set by the
    trusted grader from ``grading secret`` or the instructor's environment). Anywhere else
    the hidden cases fall back to a development secret, so that the project's tests are
    reproducible; a student release never carries the instructor's secret.
    """
    if _SECRET_OVERRIDE:
        return _SECRET_OVERRIDE[-1]
    return os.environ.get("COURSE_HIDDEN_SECRET", "") or _DEV_SECRET


def hidden_seed(*parts: object) -> int:
    """A 31-bit seed for the randomness of a hidden case, derived from the secret.

    Call it with anything that tells the cases of one exercise apart, e.g.
    ``gen(hidden_seed("ch10.dpo_loss", 3))``. Builders of hidden cases must take every
    random choice (values, shapes, lengths) from such seeds, never from a constant, so that
    the inputs of a grading run cannot be computed from a release.
    """
    key = "\x1f".join([hidden_secret(), *map(str, parts)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little") & 0x7FFFFFFF


# --------------------------------------------------------------------------------------
# Composite exercises inherit the diagnoses of their parts
# --------------------------------------------------------------------------------------
def inherit(part_id: str, compose: Callable[[Callable[..., Any]], Callable[..., Any]],
            where: str | None = None) -> list[Mistake]:
    """The mistakes of exercise ``part_id``, reproduced inside a composite exercise.

    ``compose(part)`` returns what the composite computes when its part is ``part`` (a
    function with the part exercise's signature); it is called once per mistake of the
    part, with that mistake's ``produce``. The part must be declared before the composite
    (an earlier chapter, or earlier in the same module). Example: multi-head attention
    built on a scaled dot-product attention that forgot the 1/sqrt(d_k) is diagnosed as
    "in your scaled_dot_product_attention: ...".
    """
    part = _REGISTRY.get(part_id)
    if part is None:
        raise ValueError(f"inherit: exercise {part_id!r} must be declared before the composite that uses it")
    where = where or part.name
    return [Mistake(f"{part_id}:{m.name}", f"in {where}: {m.message}", compose(m.produce)) for m in part.mistakes]


def register(exercise: Exercise) -> Exercise:
    if exercise.id in _REGISTRY:
        raise ValueError(f"exercise id {exercise.id!r} is declared twice")
    _REGISTRY[exercise.id] = exercise
    return exercise


_LOADED: list[bool] = []


def _load_all() -> None:
    if _LOADED:
        return
    if importlib.util.find_spec(f"{__package__}.exercises") is not None:
        from . import exercises  # noqa: F401  (importing registers every chapter)
    else:
        # A student release: the private declarations are not here, the public contract is.
        from .public import load_contracts

        for ex in load_contracts():
            _REGISTRY.setdefault(ex.id, ex)
    _LOADED.append(True)


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
    hint: str = ""  # what the numbers suggest when no known mistake matches
    group: str = ""


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
    """Raises ``CaseTimeout`` in the main thread when a budget runs out.

    With ``wall_factor``, ``seconds`` is a budget of CPU time (scaled by the threads torch
    may use) and wall-clock time gets ``wall_factor`` times more: a correct but slow answer
    is not failed because the machine is busy, while a loop that burns CPU, or one that
    sleeps, is still stopped.
    """

    def __init__(self, seconds: float, wall_factor: float | None = None):
        self.seconds, self.wall_factor = seconds, wall_factor
        self.active = False

    def _handler(self, signum, frame):
        raise CaseTimeout()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
            self.previous = signal.signal(signal.SIGALRM, self._handler)
            wall = self.seconds * (self.wall_factor or 1.0)
            signal.setitimer(signal.ITIMER_REAL, wall)
            if self.wall_factor:
                self.previous_prof = signal.signal(signal.SIGPROF, self._handler)
                signal.setitimer(signal.ITIMER_PROF, self.seconds * max(1, torch.get_num_threads()))
            self.active = True
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
            if self.wall_factor:
                signal.setitimer(signal.ITIMER_PROF, 0)
                signal.signal(signal.SIGPROF, self.previous_prof)
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
        self.pending = []
        for path in self.paths:
            module_name, _, attr = path.partition(":")
            if module_name.split(".")[0] not in sys.modules:
                # Not imported yet, so the learner's code cannot have a reference to it; if the
                # call imports it, the case runs again with it resolved (see _run_case). This
                # keeps a first check from importing transformers for a torch-only exercise.
                self.pending.append(module_name)
                continue
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


def _pair(e: float, g: float) -> str:
    """'expected E, got G' with enough digits to show that they differ, and the difference."""
    if math.isnan(e) or math.isnan(g) or math.isinf(e) or math.isinf(g):
        return f"expected {e:.6g}, got {g:.6g}"
    for digits in (6, 9, 12, 17):
        a, b = f"{e:.{digits}g}", f"{g:.{digits}g}"
        if a != b:
            break
    return f"expected {a}, got {b} (difference {g - e:.3g})"


def compare_tensors(expected: torch.Tensor, got: Any, atol: float = 1e-5, rtol: float = 1e-4,
                    check_dtype: bool = False) -> str | None:
    """None when ``got`` is a tensor close to ``expected``; otherwise what differs.

    Infinities must match exactly (a masked logit is -inf); NaN never matches anything,
    not even NaN: an answer (or a reproduced mistake) that is NaN explains nothing.
    """
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
    if bool(torch.isnan(e).any()):
        idx = tuple(int(i) for i in torch.nonzero(torch.isnan(e))[0])
        return f"the value to compare with is NaN at index {idx}: it cannot be matched"
    g_nan = torch.isnan(g)
    if bool(g_nan.any()):
        idx = tuple(int(i) for i in torch.nonzero(g_nan)[0])
        where = f"has NaN at index {idx}" if idx else "is NaN"
        return f"your result {where} (expected {float(e[idx]):.6g})"
    g_inf = torch.isinf(g) & ~torch.isinf(e)
    if bool(g_inf.any()):
        idx = tuple(int(i) for i in torch.nonzero(g_inf)[0])
        at = f"at index {idx}" if idx else ""
        if float(g[idx]) < 0:
            return (f"your result has -inf {at} where a finite value was expected ({float(e[idx]):.6g}): "
                    f"{int(g_inf.sum())} position(s) masked or filtered out that should be kept")
        return f"your result has inf {at} (expected {float(e[idx]):.6g}): an overflow?"
    e_inf = torch.isinf(e) & ~(g == e)
    if bool(e_inf.any()):
        idx = tuple(int(i) for i in torch.nonzero(e_inf)[0])
        at = f"at index {idx}" if idx else ""
        return (f"expected {float(e[idx])} {at} (a position masked or filtered out), got {float(g[idx]):.6g}: "
                f"{int(e_inf.sum())} position(s) kept that should be removed")
    finite = torch.isfinite(e)
    diff = torch.where(finite, (g - e).abs(), torch.zeros_like(e))
    bad = (diff > atol + rtol * torch.where(finite, e.abs(), torch.zeros_like(e)))
    if not bool(bad.any()):
        return None
    idx = tuple(int(i) for i in torch.nonzero(bad)[0])
    worst = float(diff.max())
    n_bad, n = int(bad.sum()), bad.numel()
    where = f"index {idx}" if idx else "the value"
    return (f"values differ at {n_bad} of {n} positions; first at {where}: {_pair(float(e[idx]), float(g[idx]))}; "
            f"max abs difference {worst:.3g}, tolerance atol={atol:g}, rtol={rtol:g}")


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
    if math.isnan(expected):
        return f"the value to compare with is NaN: it cannot be matched (got {got:.6g})"
    if math.isinf(expected) or math.isinf(got):
        return None if got == expected else f"expected {expected:.6g}, got {got:.6g}"
    if not abs(got - expected) <= atol + rtol * abs(expected):
        return f"{_pair(float(expected), float(got))} (tolerance atol={atol:g}, rtol={rtol:g})"
    return None


def close_tensors(atol: float = 1e-5, rtol: float = 1e-4, check_dtype: bool = False):
    """A ``Case.compare`` that can be published: ``compare_tensors`` with these tolerances."""
    return functools.partial(compare_tensors, atol=atol, rtol=rtol, check_dtype=check_dtype)


def close_floats(atol: float = 1e-6, rtol: float = 1e-5):
    """A ``Case.compare`` that can be published: ``compare_float`` with these tolerances."""
    return functools.partial(compare_float, atol=atol, rtol=rtol)


@contextlib.contextmanager
def single_thread():
    """Run the block (or, as ``@single_thread()``, the function) on one PyTorch thread.

    The checks' tensors are tiny; on a busy machine a second intra-op thread turns each of
    thousands of small kernels into a wait for a descheduled peer (a check can go from 0.5 s
    to 10 s). One thread keeps each check well under its budget."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def one_thread(fn):
    """``fn`` run under ``single_thread()`` (None stays None)."""
    if fn is None:
        return None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with single_thread():
            return fn(*args, **kwargs)
    return wrapper


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
        if type(a).__module__ == "numpy" and hasattr(a, "shape") and hasattr(a, "dtype"):
            import numpy as np

            return isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype and bool(
                np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
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
    # The learner's own frame (a notebook cell), not the library line where the error surfaced.
    own = [f for f in user if "site-packages" not in f.filename and "/lib/python3" not in f.filename]
    where = ""
    if own or user:
        f = (own or user)[-1]
        where = f" (line {f.lineno}: {f.line.strip()})" if f.line else f" (line {f.lineno})"
    return f"{type(exc).__name__}: {exc}{where}"


def case_state():
    """The state every case runs in, whatever ran before it left behind: autograd on.

    Code earlier in a notebook (``torch.set_grad_enabled(False)`` in an experiment cell, a
    ``no_grad`` block left open in a suspended generator) must not turn the checks that
    need gradients into failures; a driver that wants no gradients says so itself."""
    import torch

    return torch.enable_grad()


def _run_case(ex: Exercise, case: Case, submission: Any, diagnoser: "Diagnoser | None" = None) -> CheckResult:
    with case_state():
        return _run_case_in_state(ex, case, submission, diagnoser)


def _run_case_in_state(ex: Exercise, case: Case, submission: Any, diagnoser: "Diagnoser | None") -> CheckResult:
    t0 = time.perf_counter()
    args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
    before = (_snapshot(args), _snapshot(kwargs)) if case.check_mutation else None
    # Resolve the forbidden objects (which may import a large library) before the clock starts.
    for attempt in range(2):
        forbid = _Forbid(ex.forbidden + [ex.solution], submission).prepare()
        guarded = forbid.wrap(submission)
        try:
            with _Timeout(CASE_TIMEOUT_S, wall_factor=6.0):
                if case.run is not None:
                    got = case.run(guarded, *args, **kwargs)
                else:
                    got = guarded(*args, **kwargs)
        except BaseException as exc:
            outcome = exc
        else:
            outcome = None
        if attempt == 0 and any(m.split(".")[0] in sys.modules for m in forbid.pending):
            # The call imported a library that holds a forbidden function: run it again, guarded.
            args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
            before = (_snapshot(args), _snapshot(kwargs)) if case.check_mutation else None
            continue
        break
    try:
        if outcome is not None:
            raise outcome
    except NotImplementedError as exc:
        if exc.args:  # torch's "... not implemented for 'Float'" is an error of the code, not a stub
            return CheckResult(case.name, False, f"raised {_describe_exception(exc)}", seconds=time.perf_counter() - t0)
        return CheckResult(case.name, False, "not implemented yet (the function still raises NotImplementedError)",
                           seconds=time.perf_counter() - t0)
    except ForbiddenCall as exc:
        return CheckResult(case.name, False, f"your code calls {exc.args[0]}, which this exercise asks you to "
                           "build yourself: write it without that call", seconds=time.perf_counter() - t0)
    except CaseTimeout:
        return CheckResult(case.name, False, f"still running after {CASE_TIMEOUT_S:g} s of CPU time: an infinite "
                           "loop, or far too slow an algorithm", seconds=time.perf_counter() - t0)
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
    # The reference's own failure is the grader's bug, not the learner's: it is not caught here.
    expected = case.expected() if case.expected is not None else None
    compare = case.compare or default_compare
    try:
        problem = compare(expected, got)
    except Exception as exc:  # the returned object broke the comparison (wrong type, odd __eq__)
        problem = f"could not compare your result ({type(got).__name__}): {_describe_exception(exc)}"
    if problem is None:
        return CheckResult(case.name, True, seconds=time.perf_counter() - t0, group=case.group)
    compare = compare if case.expected else default_compare

    def produce_for(i):
        if case.produced is not None:  # a published case carries the mistakes' answers as data
            return copy.deepcopy(case.produced[i]) if i in case.produced else _FAILED
        a, k = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
        produce = ex.mistakes[i].produce
        return case.run(produce, *a, **k) if case.run else produce(*a, **k)

    diagnosis = diagnoser.name(compare, expected, got, produce_for) if diagnoser else ""
    diagnosis = diagnosis or named_by_case(ex, case)
    hint = "" if diagnosis else numeric_hint(expected, got)
    return CheckResult(case.name, False, problem, diagnosis, seconds=time.perf_counter() - t0, hint=hint,
                       group=case.group)


DIAGNOSIS_BUDGET_S = 4.0  # CPU time one exercise may spend reproducing mistakes, beyond the checks themselves
DIAGNOSIS_WALL_FACTOR = 2.0  # ... and wall-clock time, at most this many times more


def _has_nan(x: Any, depth: int = 0) -> bool:
    if depth > 20:
        return False
    if isinstance(x, torch.Tensor):
        return x.is_floating_point() and bool(torch.isnan(x).any())
    if isinstance(x, float):
        return math.isnan(x)
    if isinstance(x, (list, tuple)):
        return any(_has_nan(v, depth + 1) for v in x)
    if isinstance(x, dict):
        return any(_has_nan(v, depth + 1) for v in x.values())
    return False


def explains(compare, expected: Any, produced: Any, got: Any) -> bool:
    """Whether a mistake that returns ``produced`` explains the learner's ``got``.

    Only an informative reproduction counts: not NaN (NaN explains nothing), not a bare
    yes/no (every failure of a consistency check is a "no"), and not indistinguishable from
    the right answer on this case.
    """
    if produced is None or isinstance(produced, bool):
        return False
    try:
        if _has_nan(produced):
            return _nan_match(compare, produced, got)
        if expected is not None and compare(expected, produced) is None:
            return False
        return compare(produced, got) is None
    except Exception:
        return False


def _nan_match(compare, produced: Any, got: Any) -> bool:
    """A reproduction with NaN explains an answer only with NaN at exactly the same places
    and the same finite values elsewhere (never a finite wrong answer)."""
    if isinstance(produced, float):
        return isinstance(got, float) and math.isnan(got)
    if not (isinstance(produced, torch.Tensor) and isinstance(got, torch.Tensor)) or produced.shape != got.shape:
        return False
    if not got.is_floating_point():
        return False
    p_nan, g_nan = torch.isnan(produced), torch.isnan(got)
    if not torch.equal(p_nan, g_nan):
        return False
    keep = ~p_nan
    return not bool(keep.any()) or compare(produced[keep], got[keep]) is None


class Diagnoser:
    """Names the mistake behind a wrong answer, across the checks of one exercise.

    Reproducing mistakes costs time (a slow trainer run once per mistake), so it runs within
    ``DIAGNOSIS_BUDGET_S`` of CPU time per exercise; a mistake that already explained one check is tried
    first on the next, and one that failed to run is not tried again.
    """

    def __init__(self, mistakes: list[Mistake], budget: float = DIAGNOSIS_BUDGET_S):
        self.mistakes, self.budget = list(mistakes), budget
        self.spent, self.broken, self.named = 0.0, set(), []

    def name(self, compare, expected: Any, got: Any, produce_for: Callable[[int], Any]) -> str:
        order = sorted(range(len(self.mistakes)), key=lambda i: (i not in self.named, i))
        for i in order:
            if i in self.broken:
                continue
            left = self.budget - self.spent
            if left <= 0:
                return ""
            # Charged in CPU time, so that a busy machine does not use up the budget, but at
            # least half the wall-clock time, so that a mistake that waits is stopped too.
            c0, w0 = time.process_time(), time.perf_counter()
            try:
                with _Timeout(left, wall_factor=DIAGNOSIS_WALL_FACTOR):
                    produced = produce_for(i)
            except (Exception, CaseTimeout):
                self.broken.add(i)
                produced = None
            finally:
                self.spent += max(time.process_time() - c0, (time.perf_counter() - w0) / DIAGNOSIS_WALL_FACTOR)
            if produced is _FAILED:
                self.broken.add(i)
                continue
            if explains(compare, expected, produced, got):
                if i not in self.named:
                    self.named.append(i)
                return self.mistakes[i].message
        return ""


_FAILED = object()


def named_by_case(ex: Exercise, case: Case) -> str:
    """The message of the mistake a failed yes/no check names by itself (``Case.names``)."""
    if not case.names:
        return ""
    for m in ex.mistakes:
        if m.name == case.names:
            return m.message
    raise ValueError(f"{ex.id}: case {case.name!r} names an undeclared mistake {case.names!r}")


# --------------------------------------------------------------------------------------
# Hints from the numbers, when no known mistake matches
# --------------------------------------------------------------------------------------
def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    return a.shape == b.shape and bool(torch.isfinite(a).all()) and bool(
        ((a - b).abs() <= atol + rtol * b.abs()).all())


def numeric_hint(expected: Any, got: Any) -> str:
    """A sentence saying how ``got`` relates to ``expected`` when the relation is simple:
    a power, a constant factor that the shapes suggest, a sign, a transposition, a shift by
    one position, or agreement on a slice. Empty when nothing simple fits."""
    try:
        return _numeric_hint(expected, got)
    except Exception:
        return ""


def _as_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor) and not x.is_complex():
        return x.detach().to(torch.float64).cpu()
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return torch.tensor(float(x), dtype=torch.float64)
    return None


def _numeric_hint(expected: Any, got: Any) -> str:
    e, g = _as_tensor(expected), _as_tensor(got)
    if e is None or g is None or e.numel() == 0 or not bool(torch.isfinite(e).all()):
        return ""
    if not bool(torch.isfinite(g).all()):
        return ""
    if e.shape != g.shape:
        if e.dim() >= 2 and g.shape == e.transpose(-2, -1).shape and _close(g, e.transpose(-2, -1)):
            return "your result is the expected one transposed (the last two dimensions swapped)"
        if g.numel() == e.numel() and _close(g.reshape(-1), e.reshape(-1)):
            return f"the values are right but arranged in shape {tuple(g.shape)}; expected {tuple(e.shape)}"
        return ""
    if e.dim() >= 2 and e.shape[-1] == e.shape[-2] and _close(g, e.transpose(-2, -1)):
        return "your result is the expected one transposed (the last two dimensions swapped)"
    if _close(g, -e):
        return "your result has the opposite sign everywhere"
    if _close(g, e * e):
        return "your result is the expected value squared (a square root missing?)"
    if bool((e >= 0).all()) and _close(g, e.sqrt()):
        return "your result is the square root of the expected value (a square too few, or one sqrt too many?)"
    nz = e.abs() > 1e-12
    if bool(nz.any()):
        ratios = (g[nz] / e[nz])
        r = float(ratios.median())
        if r != 0 and math.isfinite(r) and abs(r - 1) > 1e-3 and _close(g, e * r):
            return f"your result is the expected one multiplied by {r:.6g}{_name_factor(r, e.shape)}"
    if e.dim() >= 1:
        for d in range(e.dim()):
            n = e.shape[d]
            if n < 3:
                continue
            a_ = g.narrow(d, 1, n - 1)
            b_ = e.narrow(d, 0, n - 1)
            if _close(a_, b_):
                return f"your values are shifted by one position along dimension {d} (one step late: an off-by-one)"
            if _close(g.narrow(d, 0, n - 1), e.narrow(d, 1, n - 1)):
                return f"your values are shifted by one position along dimension {d} (one step early: an off-by-one)"
        ok = (g - e).abs() <= 1e-6 + 1e-4 * e.abs()
        n_ok = int(ok.sum())
        if 0 < n_ok < ok.numel():
            for d in range(e.dim()):
                per = ok.transpose(0, d).reshape(e.shape[d], -1).all(dim=1)
                if bool(per.any()) and not bool(per.all()):
                    right = [int(i) for i in torch.nonzero(per).flatten()[:6]]
                    more = "..." if int(per.sum()) > 6 else ""
                    return (f"your values are right for index {right}{more} along dimension {d} and wrong for the "
                            f"other {int((~per).sum())}: look at what differs between those slices")
            return f"your values are right at {n_ok} of {ok.numel()} positions"
    return ""


def _name_factor(r: float, shape) -> str:
    """' (= sqrt(64): ...)' when the factor is one the shapes suggest."""
    candidates = [(2.0, "2"), (0.5, "1/2"), (math.log(2), "ln 2: nats vs bits?"), (1 / math.log(2), "1/ln 2: bits vs nats?")]
    for n in sorted(set(int(x) for x in shape if int(x) > 1)):
        candidates += [(float(n), f"{n}, a dimension of the result"), (1 / n, f"1/{n}, one over a dimension"),
                       (math.sqrt(n), f"sqrt({n})"), (1 / math.sqrt(n), f"1/sqrt({n})"),
                       (n / (n - 1), f"{n}/{n - 1}: the unbiased (n-1) vs biased (n) convention?"),
                       ((n - 1) / n, f"{n - 1}/{n}: the biased (n) vs unbiased (n-1) convention?")]
    for value, label in candidates:
        if abs(r - value) <= 1e-4 * abs(value):
            return f" (= {label})"
    return ""


def grade(exercise_id: str, submission: Any, hidden: bool = False) -> GradeResult:
    """Grade ``submission`` (the learner's function or class) for one exercise.

    Never raises because of the submission: every problem becomes a failed check with
    feedback. ``hidden=True`` runs the extra cases kept for nbgrader's hidden tests.
    """
    return grade_exercise(get(exercise_id), submission, hidden=hidden)


def grade_exercise(ex: Exercise, submission: Any, hidden: bool = False) -> GradeResult:
    """``grade`` for an ``Exercise`` object (a declaration, or one read from a contract)."""
    exercise_id = ex.id
    checks: list[CheckResult] = []
    if not callable(submission):
        checks.append(CheckResult("submission", False, f"expected a function or class named {ex.name}, got "
                                  f"{type(submission).__name__}"))
    else:
        try:
            cases = list(ex.cases(hidden))
        except Exception as exc:  # a broken declaration is our bug, not the learner's: say so
            raise RuntimeError(f"the cases of {exercise_id} could not be built: {exc}") from exc
        diagnoser = Diagnoser(ex.mistakes)
        for case in cases:
            checks.append(_run_case(ex, case, submission, diagnoser))
            checks[-1].group = case.group
            if checks[-1].message.startswith("not implemented yet"):
                break
    passed = bool(checks) and all(c.passed for c in checks)
    status = "not-implemented" if checks and checks[-1].message.startswith("not implemented") else "graded"
    score = 0.0 if status == "not-implemented" else score_by_groups(ex.points, [(c.group, c.passed) for c in checks])
    result = GradeResult(ex.id, ex.title, passed, score, ex.points, checks, status=status)
    result.feedback = format_feedback(ex, result)
    return result


def score_by_groups(points: float, checks: list[tuple[str, bool]]) -> float:
    """The scoring policy: an exercise's points are shared equally by its check groups, and
    a group earns its share only when every check in it passes. Checks without a group form
    one group, so an exercise that declares no groups is all or nothing."""
    if not checks:
        return 0.0
    groups: dict[str, bool] = {}
    for group, ok in checks:
        groups[group] = groups.get(group, True) and bool(ok)
    share = points / len(groups)
    return round(sum(share for ok in groups.values() if ok), 6)


def title_line(ex: Exercise, suffix: str = "") -> str:
    """The first line of an exercise's report."""
    return f"{ex.id}: {ex.title} ({ex.points:g} point{'s' if ex.points != 1 else ''}){suffix}"


def check_lines(ex: Exercise, status: str, checks: list) -> list[str]:
    """The report's lines for the checks: one per check, and under a failed one the mistake
    it likely is or what the numbers say. Shared by the notebook's check and the trusted
    grader (whose checks have the same fields)."""
    if status == "not-implemented":
        return [f"  - {ex.name} is not implemented yet: replace `raise NotImplementedError()` with your code."]
    lines = []
    for c in checks:
        lines.append(f"  {'PASS' if c.passed else 'FAIL'} {c.name}" + ("" if c.passed else f": {c.message}"))
        if c.diagnosis:
            lines.append(f"       likely mistake: {c.diagnosis}")
        elif c.hint:
            lines.append(f"       what the numbers say: {c.hint}")
    return lines


def format_feedback(ex: Exercise, result: GradeResult) -> str:
    lines = [title_line(ex)] + check_lines(ex, result.status, result.checks)
    lines.append(verdict_line(ex, result.passed, result.score, [(c.group, c.passed) for c in result.checks]))
    return "\n".join(lines)


def verdict_line(ex: Exercise, passed: bool, score: float, checks: list[tuple[str, bool]]) -> str:
    """The last line of a report: checks passed, points, and the rule that gave them."""
    n_ok = sum(ok for _, ok in checks)
    if passed:
        return f"  => all checks passed: {score:g}/{ex.points:g} points"
    groups = sorted({g for g, _ in checks})
    rule = ("points come only when every check passes" if len(groups) <= 1 else
            f"the points are shared by {len(groups)} groups of checks; a group counts when all its checks pass")
    return (f"  => {n_ok} of {len(checks)} checks passed: {score:g}/{ex.points:g} points ({rule}; checked against "
            f"{ex.reference})")
