"""What runs inside the sandbox (copied there read-only; started with ``python -I``).

1. Loads the public part of the course's autograder under a private name (``_ag``) from
   the read-only bundle (the core, the codec and the chapters' drivers: no declaration,
   reference, mistake or hidden case is in the bundle) and reads the checks the grader
   sent: each case's name, its inputs as data and the name of its public driver.
2. Hides the bundle: removes it from ``sys.path`` and ``sys.modules`` and puts a stub
   ``autograder`` (check: no-op, fallback, quick) in its place for the learner's cells.
3. Runs the program cells (course setup/provided cells, then the learner's cells) in an
   IPython shell, one at a time, each under a timer, with a guard that records calls to
   forbidden functions and to the autograder's own code.
4. For each exercise, calls the learner's function on every case and writes the returned
   values as JSON + safetensors into the output directory.

It reports progress to ``status.jsonl`` so that the grader, outside, knows which cell or
exercise was running if this process dies. Nothing here is trusted by the grader: a
learner's code shares this process and may change any of it; the grader only reads the
returned values as answers and never executes anything it reads.
"""
from __future__ import annotations

import copy
import importlib.util
import io
import json
import os
import signal
import sys
import threading
import time
import traceback

BUNDLE = os.path.dirname(os.path.abspath(__file__))


class CaseTimeout(BaseException):
    pass


class ForbiddenCall(BaseException):
    pass


# --------------------------------------------------------------------------------------
# Output capture
# --------------------------------------------------------------------------------------
class CappedWriter(io.TextIOBase):
    """Keeps the first ``cap`` characters, counts the rest."""

    def __init__(self, cap: int):
        self.cap, self.kept, self.total = cap, [], 0
        self._len = 0

    def writable(self):
        return True

    def write(self, s):
        s = str(s)
        self.total += len(s)
        if self._len < self.cap:
            part = s[: self.cap - self._len]
            self.kept.append(part)
            self._len += len(part)
        return len(s)

    def flush(self):
        pass

    def isatty(self):
        return False

    def take(self) -> tuple[str, int]:
        text, total = "".join(self.kept), self.total
        self.kept, self.total, self._len = [], 0, 0
        return text, total


# --------------------------------------------------------------------------------------
# Guard
# --------------------------------------------------------------------------------------
class Guard:
    """A profile hook that records calls to forbidden objects while a case runs.

    ``forbidden`` maps a path ("torch.nn.functional:cross_entropy") to its object. It is a
    convenience that names the call in the feedback, not a boundary: the learner's code
    shares this process and can remove it. What keeps grades honest lies outside: the
    grader's static analysis of the cells, and answers compared with references that never
    enter this process.
    """

    def __init__(self, forbidden: dict, ag_dir: str, runner_file: str):
        self.log = []
        self.configure(forbidden, strict=True)
        self.ag_dir = ag_dir + os.sep
        self.trusted_files = {runner_file}
        self.lib_dirs = tuple(p + os.sep for p in {sys.prefix, sys.base_prefix, sys.exec_prefix} if p)
        self.active = False

    def configure(self, forbidden: dict, strict: bool) -> None:
        """``strict``: a forbidden call raises (while a case runs); else it is only logged."""
        self.codes, self.ids, self.strict = {}, {}, strict
        for path, obj in forbidden.items():
            self._add(path, obj)

    def _add(self, path, obj):
        self.ids[id(obj)] = (path, obj)
        fn = getattr(obj, "__func__", obj)
        code = getattr(fn, "__code__", None)
        if code is not None:
            self.codes[code] = path
        if isinstance(obj, type):
            for member in vars(obj).values():
                m = getattr(member, "__func__", member)
                c = getattr(m, "__code__", None)
                if c is not None:
                    self.codes[c] = path

    def hook(self, frame, event, arg):
        if event == "call":
            code = frame.f_code
            path = self.codes.get(code)
            if path is not None:
                self.log.append(path)
                if self.strict:
                    raise ForbiddenCall(path)
                return
        elif event == "c_call":
            hit = self.ids.get(id(arg))
            if hit is not None and hit[1] is arg:
                self.log.append(hit[0])
                if self.strict:
                    raise ForbiddenCall(hit[0])

    depth = 0

    def __enter__(self):
        self.depth += 1
        if self.depth == 1:
            sys.setprofile(self.hook)
            threading.setprofile(self.hook)
        return self

    def __exit__(self, *exc):
        self.depth -= 1
        if self.depth == 0:
            sys.setprofile(None)
            threading.setprofile(None)
        return False

    def wrap(self, submission):
        """The submission with the guard on during every call into it (and only then: a
        case's own set-up may use the references): the autograder's ``guard_calls``,
        kept from the bundle before it is hidden."""
        return self.guard_calls(submission, self)


class Timer:
    """Raises CaseTimeout after ``seconds`` of CPU time (user + system) of this process.

    CPU time, not wall-clock time, so that a busy grading machine does not fail correct
    code; a process that blocks without using CPU is stopped by the grader's wall-clock
    watchdog outside.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds

    def _fire(self, signum, frame):
        raise CaseTimeout()

    def __enter__(self):
        self.previous = signal.signal(signal.SIGPROF, self._fire)
        signal.setitimer(signal.ITIMER_PROF, self.seconds)
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, self.previous)
        return False


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def _load_private_autograder():
    """Import the bundle's ``autograder`` package as ``_ag`` (the learner's code never sees it)."""
    init = os.path.join(BUNDLE, "autograder", "__init__.py")
    spec = importlib.util.spec_from_file_location("_ag", init, submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["_ag"] = module
    spec.loader.exec_module(module)
    importlib.import_module("_ag.core")
    importlib.import_module("_ag.public")
    return module


def _install_stub_autograder():
    """What ``from autograder import check, fallback, quick`` gives the learner's cells."""
    import types

    import importlib.machinery

    stub = types.ModuleType("autograder")
    stub.__path__ = []
    # A real spec, so that ``importlib.util.find_spec("autograder")`` (the set-up cell asks)
    # finds the stub instead of raising.
    stub.__spec__ = importlib.machinery.ModuleSpec("autograder", None, is_package=True)
    stub.__doc__ = "The course autograder is not available while the trusted grader runs your code."

    def check(*args, **kwargs):
        return None

    def fallback(submission, exercise_id=None):
        return submission

    def quick():
        return os.environ.get("COURSE_QUICK", "") not in ("", "0")

    stub.check, stub.fallback, stub.quick = check, fallback, quick
    sys.modules["autograder"] = stub


def _describe(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    user = [f for f in tb if not f.filename.startswith(BUNDLE)]
    # The learner's own frame (a notebook cell), not the library line where the error surfaced.
    own = [f for f in user if "site-packages" not in f.filename and "/lib/python3" not in f.filename]
    where = ""
    if own or user:
        f = (own or user)[-1]
        of = " of your code" if own else ""
        where = f" (line {f.lineno}{of}: {f.line.strip()})" if f.line else f" (line {f.lineno}{of})"
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable>"
    return f"{type(exc).__name__}: {text[:300]}{where}"


def _write_json_atomic(path: str, data) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------
def main(job_path: str, out_dir: str) -> int:
    with open(job_path) as f:
        job = json.load(f)
    status = open(os.path.join(out_dir, "status.jsonl"), "a", buffering=1)

    def report(**event):
        event["t"] = round(time.time(), 3)
        status.write(json.dumps(event) + "\n")
        status.flush()

    report(e="start")
    main_pid = os.getpid()

    def forked_copy_exits():
        # A learner's os.fork() returns twice: the copy must not go on grading (it would write
        # the same result files as the real runner).
        if os.getpid() != main_pid:
            os._exit(0)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, BUNDLE)
    extra = job.get("extra_path")
    if extra:  # the earlier chapters' solution modules, which a release ships (cases may use them too)
        sys.path.insert(1, extra)
    ag = _load_private_autograder()
    core = sys.modules["_ag.core"]
    public = sys.modules["_ag.public"]
    codec = sys.modules["_ag.codec"]

    # -- the cases, as the grader sent them (names, inputs, public drivers) ---------------
    # The bundle holds no declaration, reference or hidden case: the grader built the
    # cases in its own process and sent their inputs with the names of the drivers.
    plans = []
    for index, ex_id in enumerate(job["exercises"]):
        packed = (job.get("plans") or {}).get(ex_id) or {"error": "the grader sent no checks"}
        cases, error, name, forbidden_paths = [], None, "", []
        if "error" in packed:
            error = str(packed["error"])
        else:
            try:
                plan = codec.unpack(packed)
                name, forbidden_paths = str(plan["name"]), list(plan["forbidden"])
                for c in plan["cases"]:
                    cases.append(core.Case(str(c["name"]), tuple(c["args"]), dict(c["kwargs"]),
                                           run=public.resolve_callable(c["run"], package="_ag"),
                                           check_mutation=bool(c["check_mutation"])))
            except Exception as exc:  # noqa: BLE001
                cases, error = [], f"the checks sent by the grader could not be read: {_describe(exc)}"
        forbidden = {}
        for path in forbidden_paths:
            try:
                forbidden[path] = core.resolve(path)
            except Exception:
                pass
        plans.append({"index": index, "id": ex_id, "name": name, "cases": cases, "forbidden": forbidden,
                      "error": error})
    all_forbidden = {}
    for p in plans:
        all_forbidden.update(p["forbidden"])
    ag_dir = os.path.dirname(ag.__file__)
    guard = Guard(all_forbidden, ag_dir, os.path.abspath(__file__))
    guard.guard_calls = core.guard_calls
    # While the cells load, only the autograder's own answers are off limits: the course's
    # cells and the libraries may call the references (the learner's own code is checked
    # statically, outside, wherever it calls them).
    guard.configure({}, strict=False)
    deepcopy = copy.deepcopy

    # -- become the sandbox user: no learner code ever runs with privileges --------------
    uid = job.get("drop_to_uid")
    if uid is not None:
        try:
            for base in job.get("own_paths", ["/sandbox", "/tmp", "/dev/shm"]):  # caches the set-up made as root
                for root, dirs, files in os.walk(base):
                    # not into read-only mounts (a venv that lives under /tmp is bound there)
                    dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(root, d))]
                    for name in [root] + [os.path.join(root, f) for f in files]:
                        os.lchown(name, uid, uid)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        except OSError as exc:
            report(e="error", message=f"could not drop privileges: {exc}")
            os._exit(3)
        if os.getuid() != uid or os.geteuid() != uid:
            os._exit(3)
    elif os.geteuid() == 0 and job.get("require_drop"):
        os._exit(3)

    # -- hide the bundle -------------------------------------------------------------
    for name in list(sys.modules):
        if name == "_ag" or name.startswith("_ag.") or name == "autograder" \
                or name.startswith("autograder."):
            del sys.modules[name]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != BUNDLE]
    _install_stub_autograder()
    del ag, core

    # -- load the program ---------------------------------------------------------------
    cap = int(job.get("output_cap", 65536))
    out, err = CappedWriter(cap), CappedWriter(cap)
    real_stdout, real_stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.enabled = False
    config.InteractiveShell.colors = "nocolor"
    config.InteractiveShell.xmode = "Plain"
    shell = InteractiveShell.instance(config=config)
    shell.user_ns["__name__"] = "__main__"
    skip = set(job.get("skip_cells", []))
    cell_timeout = float(job.get("cell_timeout", 60))
    for i, cell in enumerate(job["cells"]):
        if i in skip:
            continue
        report(e="cell", i=i)
        error = None
        try:
            with Timer(cell_timeout), guard:
                result = shell.run_cell(cell["source"], store_history=False, silent=False)
            exc = result.error_in_exec or result.error_before_exec
            if exc is not None:
                error = _describe(exc)
        except CaseTimeout:
            error = f"still running after {cell_timeout:g} s of CPU time"
        except BaseException as exc:  # noqa: BLE001  (the learner's code may raise anything)
            error = _describe(exc)
        forked_copy_exits()
        text, total = out.take()
        etext, etotal = err.take()
        report(e="cell_end", i=i, error=error, printed=total + etotal, forbidden=sorted(set(guard.log)))
    load_violations = sorted(set(guard.log))
    guard.log.clear()

    # -- grade ----------------------------------------------------------------------------
    case_timeout = float(job.get("case_timeout", 10))
    ns = shell.user_ns
    for plan in plans:
        report(e="ex", id=plan["id"])
        guard.configure(plan["forbidden"], strict=True)
        result = {"exercise": plan["id"], "cases": [], "load_violations": load_violations, "printed": 0}
        tensors = {}
        if plan["error"]:
            result["submission"] = "cases-error"
            result["message"] = plan["error"]
        else:
            submission = ns.get(plan["name"])
            if submission is None:
                result["submission"] = "missing"
            elif not callable(submission):
                result["submission"] = "not-callable"
                result["type"] = type(submission).__name__
            else:
                result["submission"] = "ok"
                for k, case in enumerate(plan["cases"]):
                    report(e="case", id=plan["id"], k=k)
                    row = {"name": case.name, "status": "ok"}
                    guard.log.clear()
                    t0 = time.perf_counter()
                    try:
                        args, kwargs = deepcopy(case.args), deepcopy(case.kwargs)
                        if case.check_mutation:
                            # The inputs as this process built them, to compare with the same
                            # objects after the call: inputs rebuilt in another process may
                            # differ in the last bit (threads, load) without any mutation.
                            try:
                                tree, ts = codec.encode([list(args), kwargs], prefix=f"c{k}b")
                                row["args_before"] = tree
                                tensors.update(ts)
                            except BaseException:  # noqa: BLE001
                                pass
                        guarded = guard.wrap(submission)
                        with Timer(case_timeout), torch.enable_grad():  # as core.case_state()
                            if case.run is not None:
                                got = case.run(guarded, *args, **kwargs)
                            else:
                                got = guarded(*args, **kwargs)
                    except NotImplementedError as exc:
                        if exc.args:  # raised by a library ("... not implemented for 'Float'"): an error
                            row["status"], row["message"] = "raised", _describe(exc)
                        else:
                            row["status"] = "not-implemented"
                    except ForbiddenCall as exc:
                        row["status"], row["message"] = "forbidden", str(exc.args[0] if exc.args else exc)
                    except CaseTimeout:
                        row["status"] = "timeout"
                        row["message"] = f"still running after {case_timeout:g} s of CPU time"
                    except BaseException as exc:  # noqa: BLE001
                        row["status"], row["message"] = "raised", _describe(exc)
                    forked_copy_exits()
                    row["seconds"] = round(time.perf_counter() - t0, 4)
                    if guard.log and row["status"] in ("ok", "raised"):
                        row["status"], row["message"] = "forbidden", guard.log[0]
                    if row["status"] == "ok":
                        try:
                            tree, ts = codec.encode(got, prefix=f"c{k}v")
                            row["value"] = tree
                            tensors.update(ts)
                        except BaseException as exc:  # noqa: BLE001
                            row["status"] = "unencodable"
                            row["message"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                        if case.check_mutation and row["status"] == "ok":
                            try:
                                tree, ts = codec.encode([list(args), kwargs], prefix=f"c{k}a")
                                row["args_after"] = tree
                                tensors.update(ts)
                            except BaseException:  # noqa: BLE001
                                pass
                    result["cases"].append(row)
                    if row["status"] == "not-implemented":
                        break
        _, total = out.take()
        _, etotal = err.take()
        result["printed"] = total + etotal
        base = os.path.join(out_dir, f"ex-{plan['index']}")
        if tensors:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in tensors.items()}, base + ".safetensors.tmp")
            os.replace(base + ".safetensors.tmp", base + ".safetensors")
        _write_json_atomic(base + ".json", result)
        report(e="ex_end", id=plan["id"])
    sys.stdout, sys.stderr = real_stdout, real_stderr
    report(e="end")
    status.close()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1], sys.argv[2])
    sys.stdout.flush()
    os._exit(code)
