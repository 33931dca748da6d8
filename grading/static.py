"""Static check of the learner's source, in the grader (the sandbox cannot be trusted to
report on itself).

Three kinds of findings, each mapped to the exercises it costs:

* a reference to a forbidden function of an exercise (``torch.nn.functional.cross_entropy``
  for ``ch01.cross_entropy``), however it is imported or aliased, anywhere in the learner's
  code (a re-export such as ``torch.nn.modules.loss.F.cross_entropy`` is recognised by
  identity) -> that exercise;
* a reference to the chapter's own solution module -> the exercise(s) it solves; to the
  autograder's internals (anything but ``check``, ``fallback``, ``quick``) -> every exercise;
* tools that reach around both this check and the sandbox's runtime guard: ``eval``,
  ``exec``, ``compile``, a computed ``__import__``/``importlib``/``getattr`` on a module,
  ``gc``, ``inspect``, ``ctypes``, ``pickle``, ``sys.modules``, ``sys._getframe``, profile
  and trace hooks, frame and function internals (``__globals__``, ``f_back``, ...) ->
  every exercise; starting processes (``subprocess``, ``os.system``, ``multiprocessing``,
  ``os.fork``) -> the exercises whose functions reach that code (every exercise when it
  sits at the top level of a cell).
"""
from __future__ import annotations

import ast
import dataclasses
import sys

ALLOWED_AUTOGRADER = {"autograder", "autograder.check", "autograder.fallback", "autograder.quick"}
INTROSPECTION_MODULES = ("gc", "inspect", "ctypes", "cffi", "importlib", "builtins", "__builtin__", "pickle",
                         "_pickle", "marshal", "dill", "cloudpickle", "code", "codeop", "types", "_ag",
                         "_grading_codec", "sandbox_child", "atexit", "_thread", "faulthandler", "tracemalloc")
INTROSPECTION_NAMES = {"eval", "exec", "compile", "globals", "vars", "locals", "breakpoint", "__import__",
                       "sys.modules", "sys._getframe", "sys.setprofile", "sys.settrace", "sys.addaudithook",
                       "sys._current_frames", "sys.exc_info", "sys.meta_path", "sys.path_hooks",
                       "threading.setprofile", "threading.settrace", "operator.attrgetter", "operator.methodcaller",
                       "signal.signal", "signal.setitimer", "signal.alarm", "signal.pthread_sigmask"}
INTROSPECTION_ATTRS = {"__globals__", "__closure__", "__code__", "__builtins__", "__subclasses__", "__dict__",
                       "__self__", "__func__", "__wrapped__", "__loader__", "__spec__", "__getattribute__",
                       "f_back", "f_globals", "f_locals", "f_code", "f_builtins", "tb_frame", "tb_next", "gi_frame",
                       "cr_frame", "ag_frame", "co_code", "__reduce__", "__reduce_ex__", "__kwdefaults__",
                       "__defaults__", "__mro__", "__base__", "__bases__"}
PROCESS_MODULES = ("subprocess", "multiprocessing", "concurrent", "pty", "threading", "asyncio.subprocess")
PROCESS_NAMES = {"os.system", "os.popen", "os.fork", "os.forkpty", "os.execv", "os.execve", "os.execl",
                 "os.execlp", "os.execvp", "os.execvpe", "os.spawnl", "os.spawnv", "os.spawnve", "os.spawnlp",
                 "os.posix_spawn", "os.posix_spawnp", "os.kill", "os.killpg", "os.register_at_fork"}


@dataclasses.dataclass
class Finding:
    exercises: list[str]  # which exercises it costs ("*" = every exercise)
    message: str
    where: str


def _dotted(node, aliases: dict) -> str | None:
    """The dotted path an expression names: ``F.cross_entropy`` -> ``torch.nn.functional.cross_entropy``."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    if isinstance(node, ast.Call):
        fn = _dotted(node.func, aliases)
        consts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if fn == "getattr" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) \
                and isinstance(node.args[1].value, str):
            base = _dotted(node.args[0], aliases)
            return f"{base}.{node.args[1].value}" if base else None
        if fn in ("importlib.import_module", "__import__") and consts and node.args and node.args[0] is not None \
                and isinstance(node.args[0], ast.Constant):
            return consts[0] if fn == "importlib.import_module" else consts[0].split(".")[0]
    if isinstance(node, ast.Subscript):
        base = _dotted(node.value, aliases)
        if base == "sys.modules" and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            return node.slice.value
    return None


def _resolve_object(path: str):
    """Walk an already imported module tree by getattr (never imports anything)."""
    parts = path.split(".")
    obj = sys.modules.get(parts[0])
    if obj is None:
        return None, False
    for p in parts[1:]:
        try:
            obj = getattr(obj, p)
        except Exception:
            return None, False
    return obj, True


def _parse(source: str):
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        source = TransformerManager().transform_cell(source)
    except Exception:
        pass
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _collect_aliases(trees, aliases: dict) -> None:
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        aliases.setdefault(a.name.split(".")[0], a.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    if a.name != "*":
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    # assignments that alias a dotted path (x = F.cross_entropy), to a fixed point
    for _ in range(3):
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    path = _dotted(node.value, aliases)
                    if path and "." in path:
                        for t in targets:
                            if isinstance(t, ast.Name):
                                aliases[t.id] = path
                elif isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name):
                    path = _dotted(node.value, aliases)
                    if path and "." in path:
                        aliases[node.target.id] = path


def _defs(tree) -> dict:
    """Top-level names defined by a cell -> their nodes."""
    out: dict = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.setdefault(node.name, []).append(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        out.setdefault(n.id, []).append(node)
    return out


def _names_used(node) -> set:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def analyse(student_cells: list, course_cells: list, exercises: list, forbidden: dict, solution_paths: dict,
            solution_modules: set) -> list[Finding]:
    """Findings for the learner's cells.

    ``student_cells``: [(label, source)]; ``course_cells``: sources of the trusted cells
    (for imports only); ``exercises``: [(id, name)]; ``forbidden``: id -> [dotted path];
    ``solution_paths``: id -> dotted path of our own solution; ``solution_modules``: the
    chapter's solution module names.
    """
    findings: list[Finding] = []
    parsed = [(label, _parse(src)) for label, src in student_cells]
    parsed = [(label, t) for label, t in parsed if t is not None]
    course_trees = [t for t in (_parse(s) for s in course_cells) if t is not None]
    aliases: dict = {}
    _collect_aliases(course_trees + [t for _, t in parsed], aliases)

    # forbidden objects by identity, for re-exports
    by_identity: dict = {}
    for ex_id, paths in forbidden.items():
        for p in paths:
            obj, ok = _resolve_object(p)
            if ok:
                by_identity.setdefault(id(obj), (obj, []))[1].append((ex_id, p))

    def hits_for(path: str) -> list[tuple[str, str]]:
        out = []
        for ex_id, paths in forbidden.items():
            for p in paths:
                if path == p or path.startswith(p + "."):
                    out.append((ex_id, p))
        if not out and path.split(".")[0] in sys.modules:
            obj, ok = _resolve_object(path)
            if ok and id(obj) in by_identity and by_identity[id(obj)][0] is obj:
                out = list(by_identity[id(obj)][1])
        return out

    all_ex = [e for e, _ in exercises]

    # reachability: which top-level definitions each exercise's function uses
    defs: dict = {}
    for _, tree in parsed:
        for k, v in _defs(tree).items():
            defs.setdefault(k, []).extend(v)

    def reach(name: str) -> set:
        seen_nodes, todo, names = set(), [name], set()
        while todo:
            n = todo.pop()
            if n in names:
                continue
            names.add(n)
            for node in defs.get(n, []):
                if id(node) in seen_nodes:
                    continue
                seen_nodes.add(id(node))
                todo.extend(m for m in _names_used(node) if m in defs)
        return seen_nodes

    reach_by_ex = {ex_id: reach(name) for ex_id, name in exercises}

    def add(exs, message, label, node):
        line = getattr(node, "lineno", None)
        findings.append(Finding(list(exs), message, f"{label}" + (f", line {line}" if line else "")))

    for label, tree in parsed:
        # which top-level statement each node belongs to
        owner: dict = {}
        for stmt in tree.body:
            for n in ast.walk(stmt):
                owner[id(n)] = stmt
        for node in ast.walk(tree):
            paths = []
            if isinstance(node, (ast.Name, ast.Attribute, ast.Call, ast.Subscript)):
                p = _dotted(node, aliases)
                if p:
                    paths.append(p)
            if isinstance(node, ast.Import):
                paths += [a.name for a in node.names]
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                paths += [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
                if any(a.name == "*" for a in node.names):
                    paths.append(node.module)
                    starred = [(e, p) for e, ps in forbidden.items() for p in ps if p.startswith(node.module + ".")
                               and "." not in p[len(node.module) + 1:]]
                    for ex_id, p in starred:
                        add([ex_id], f"`from {node.module} import *` brings in {p}, which {ex_id} forbids", label, node)
            for p in paths:
                for ex_id, fp in hits_for(p):
                    add([ex_id], f"refers to {fp}, which {ex_id} asks you to build yourself", label, node)
                root = p.split(".")[0]
                if root in ("autograder", "_ag") and p not in ALLOWED_AUTOGRADER:
                    add(["*"], f"refers to the autograder's internals ({p}): the checks' own answers are off limits",
                        label, node)
                for ex_id, sp in solution_paths.items():
                    if p == sp or p.startswith(sp + "."):
                        add([ex_id], f"refers to the course's own solution ({sp})", label, node)
                if p in solution_modules:
                    add(all_ex, f"imports the course's solution module {p}", label, node)
                if root in INTROSPECTION_MODULES or p in INTROSPECTION_NAMES or \
                        any(p.startswith(n + ".") for n in INTROSPECTION_NAMES):
                    if isinstance(node, ast.Attribute) or isinstance(node, (ast.Import, ast.ImportFrom)) \
                            or (isinstance(node, ast.Name) and (p in INTROSPECTION_NAMES or root == p)):
                        add(["*"], f"uses {p}, which the trusted grader does not allow in submitted code "
                            "(it can reach around the grader's checks)", label, node)
                if (root in PROCESS_MODULES or p in PROCESS_NAMES) and not isinstance(node, (ast.Import, ast.ImportFrom)):
                    stmt = owner.get(id(node))
                    exs = [e for e in all_ex if stmt is not None and id(stmt) in reach_by_ex[e]]
                    if stmt is not None and not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                   ast.ClassDef)):
                        exs = ["*"]
                    if exs:
                        add(exs, f"starts processes or threads ({p}), which submitted code may not do", label, node)
            if isinstance(node, ast.Attribute) and node.attr in INTROSPECTION_ATTRS:
                add(["*"], f"uses .{node.attr}, which the trusted grader does not allow in submitted code", label, node)
            if isinstance(node, ast.Call):
                fn = _dotted(node.func, aliases)
                if fn in ("getattr", "setattr", "delattr", "hasattr") and len(node.args) >= 2 \
                        and not (isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
                    target = _dotted(node.args[0], aliases)
                    obj, ok = _resolve_object(target) if target else (None, False)
                    import types as _types
                    if target and (target.split(".")[0] in set(aliases.values()) | set(sys.modules)) and \
                            (not ok or isinstance(obj, _types.ModuleType)):
                        add(["*"], f"{fn}() with a computed name on a module ({target}): the grader cannot tell "
                            "what it reaches", label, node)
    # one finding per (message, exercises) is enough
    unique, seen = [], set()
    for f in findings:
        key = (tuple(f.exercises), f.message)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique
