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
import re
import sys

ALLOWED_AUTOGRADER = {"autograder", "autograder.check", "autograder.fallback", "autograder.quick"}
INTROSPECTION_MODULES = ("gc", "inspect", "ctypes", "cffi", "importlib", "builtins", "__builtin__", "pickle",
                         "_pickle", "marshal", "dill", "cloudpickle", "code", "codeop", "types", "_ag", "sandbox_child", "atexit", "_thread", "faulthandler", "tracemalloc",
                         "timeit", "runpy", "doctest", "pdb", "bdb", "trace", "cProfile", "profile", "IPython",
                         "ipykernel", "jupyter_client", "zipimport", "pkgutil", "copyreg", "weakref", "_weakref")
# Parts of torch that run or swap code behind a call (dispatch hooks, operator registries).
INTROSPECTION_PREFIXES = ("torch.library", "torch.overrides", "torch.utils._python_dispatch", "torch._C._dispatch",
                          "torch._C._set", "torch._C._push", "torch._library", "torch.fx", "torch.compiler",
                          "torch._dynamo", "torch.jit", "torch.utils.hooks")
# Hooks a class can define to take over what torch does with its objects.
DISPATCH_HOOKS = {"__torch_function__", "__torch_dispatch__"}
# IPython magics that only configure the kernel, and those whose argument is Python code.
HARMLESS_MAGICS = {"matplotlib", "config", "pinfo", "pinfo2", "precision", "pprint", "xmode", "colors"}
CODE_MAGICS = {"time", "timeit", "capture", "prun"}
INTROSPECTION_NAMES = {"eval", "exec", "compile", "globals", "vars", "locals", "breakpoint", "__import__",
                       "get_ipython", "sys.setrecursionlimit", "sys.setswitchinterval", "sys.settrace",
                       "sys.modules", "sys._getframe", "sys.setprofile", "sys.settrace", "sys.addaudithook",
                       "sys._current_frames", "sys.exc_info", "sys.meta_path", "sys.path_hooks",
                       "threading.setprofile", "threading.settrace", "operator.attrgetter", "operator.methodcaller",
                       "signal.signal", "signal.setitimer", "signal.alarm", "signal.pthread_sigmask"}
INTROSPECTION_ATTRS = {"__globals__", "__closure__", "__code__", "__builtins__", "__subclasses__", "__dict__",
                       "__self__", "__func__", "__wrapped__", "__loader__", "__spec__", "__getattribute__",
                       "f_back", "f_globals", "f_locals", "f_code", "f_builtins", "tb_frame", "tb_next", "gi_frame",
                       "cr_frame", "ag_frame", "co_code", "__reduce__", "__reduce_ex__", "__kwdefaults__",
                       "__defaults__", "__mro__", "__base__", "__bases__"}
# Module attributes a learner may set: display, plotting and determinism switches.
HARMLESS_SETTINGS = ("torch.backends.", "matplotlib.", "pandas.options.", "tqdm.")
PROCESS_MODULES = ("subprocess", "multiprocessing", "concurrent", "pty", "threading", "asyncio.subprocess")
PROCESS_NAMES = {"os.system", "os.popen", "os.fork", "os.forkpty", "os.execv", "os.execve", "os.execl",
                 "os.execlp", "os.execvp", "os.execvpe", "os.spawnl", "os.spawnv", "os.spawnve", "os.spawnlp",
                 "os.posix_spawn", "os.posix_spawnp", "os.kill", "os.killpg", "os.register_at_fork"}


@dataclasses.dataclass
class Finding:
    exercises: list[str]  # which exercises it costs ("*" = every exercise)
    message: str
    where: str
    skip_cell: bool = False  # the cell must not run (the checker could not read it)


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


def _magic_name(text: str) -> str:
    return text.lstrip("%").split(None, 1)[0] if text.lstrip("%").split() else ""


def _strip_options(arg: str) -> str:
    """``-n 10 -r 3 f(x)`` -> ``f(x)``: the code a timing magic runs."""
    words = arg.split()
    while words and words[0].startswith("-"):
        flag = words.pop(0)
        if flag in ("-n", "-r", "-p", "-s", "-T", "-D", "-l") and words:
            words.pop(0)
    return " ".join(words)


def _unmagic(source: str) -> tuple[str, list[str]]:
    """The Python a cell runs, with its IPython syntax resolved, and the magics that run
    code the checker cannot see (shell escapes, ``%run``, ``%%bash``, ``%%writefile``, ...).

    Configuration magics are dropped; timing and capture magics become the code they run
    (that code is checked like any other)."""
    lines, refused = source.splitlines(), []
    if lines and lines[0].lstrip().startswith("%%"):
        name = _magic_name(lines[0].strip()[2:])
        if name in CODE_MAGICS:
            return "\n".join(lines[1:]), refused
        return "", [f"%%{name}"]
    out = []
    for line in lines:
        stripped = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if stripped.startswith("!") or (stripped.startswith("%") and not stripped.startswith("%%")):
            if stripped.startswith("!"):
                refused.append("!" + stripped[1:].split(" ", 1)[0])
                out.append(indent + "pass")
                continue
            name = _magic_name(stripped[1:])
            arg = stripped[1:][len(name):].strip()
            if name in HARMLESS_MAGICS:
                out.append(indent + "pass")
            elif name in CODE_MAGICS:
                out.append(indent + (_strip_options(arg) or "pass"))
            else:
                refused.append(f"%{name}")
                out.append(indent + "pass")
            continue
        if stripped.endswith("?") and not stripped.startswith("#"):  # ``obj?``: IPython's help
            out.append(indent + "pass")
            continue
        captured = re.match(r"^[\w.,\s]+=\s*([!%])", stripped)
        if captured:  # ``files = !ls``, ``t = %timeit -o f(x)``
            refused.append(captured.group(1) + stripped.split(captured.group(1), 1)[1].split(" ", 1)[0])
            out.append(indent + "pass")
            continue
        out.append(line)
    return "\n".join(out), refused


def _parse(source: str):
    """The cell's syntax tree, or None when it cannot be read (which is itself a finding)."""
    python, _ = _unmagic(source)
    try:
        return ast.parse(python)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        pass
    try:  # other IPython syntax (``obj?``): what IPython would run
        from IPython.core.inputtransformer2 import TransformerManager

        return ast.parse(TransformerManager().transform_cell(python))
    except Exception:
        return None


def _collect_aliases(trees, aliases: dict, rebound: dict) -> None:
    """``aliases``: name -> the dotted path it names (the first binding); ``rebound``: name
    -> every other path it is ever bound to, anywhere (dead code included), so that a
    name that is re-pointed in a branch never hides what it names in another."""
    def bind(name, path):
        if name not in aliases:
            aliases[name] = path
        elif aliases[name] != path:
            rebound.setdefault(name, set()).add(path)

    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        bind(a.asname, a.name)
                    else:
                        bind(a.name.split(".")[0], a.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    if a.name != "*":
                        bind(a.asname or a.name, f"{node.module}.{a.name}")
    # assignments that alias a dotted path (x = F.cross_entropy), to a fixed point
    for _ in range(3):
        for tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for path in _dotted_all(node.value, aliases, rebound):
                        if path and "." in path:
                            for t in targets:
                                if isinstance(t, ast.Name):
                                    bind(t.id, path)
                elif isinstance(node, ast.NamedExpr) and isinstance(node.target, ast.Name):
                    for path in _dotted_all(node.value, aliases, rebound):
                        if path and "." in path:
                            bind(node.target.id, path)


def _dotted_all(node, aliases: dict, rebound: dict) -> set:
    """Every dotted path ``node`` may name, given every binding of its names."""
    first = _dotted(node, aliases)
    out = {first} if first else set()
    names = [n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in rebound]
    for name in names[:4]:
        for alt in rebound[name]:
            p = _dotted(node, {**aliases, name: alt})
            if p:
                out.add(p)
    return out


def _canonical(path: str) -> str:
    """A path through a module's attribute that is itself a module, written from that
    module's own name: ``os.sys.modules`` -> ``sys.modules``, ``F.torch.log_softmax`` ->
    ``torch.log_softmax`` (never imports anything)."""
    import types as _types

    parts = path.split(".")
    obj = sys.modules.get(parts[0])
    if obj is None:
        return path
    best = (parts[0], 1)
    for i, p in enumerate(parts[1:], start=2):
        try:
            obj = getattr(obj, p)
        except Exception:
            break
        if isinstance(obj, _types.ModuleType):
            best = (obj.__name__, i)
    name, used = best
    return ".".join([name] + parts[used:])


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


def _import_roots(trees) -> set:
    """The top-level modules the notebook imports (``import torch.nn as nn`` -> ``torch``)."""
    roots = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                roots.add(node.module.split(".")[0])
    return roots


def _names_a_module(node, path: str, aliases: dict, import_roots: set) -> bool:
    """Whether a name or attribute chain refers to what ``path`` names (a module, or a
    builtin), rather than to a variable that shares its name (``code = torch.tensor(...)``):
    its leftmost name must lead, through imports and aliases, to an imported module."""
    if path in INTROSPECTION_NAMES and "." not in path:
        return True  # a builtin: eval, exec, globals, __import__, get_ipython, ...
    base = node
    while isinstance(base, ast.Attribute):
        base = base.value
    if not isinstance(base, ast.Name) or base.id not in aliases:
        return False
    return aliases[base.id].split(".")[0] in import_roots


def _module_stores(node, aliases: dict) -> list:
    """(expression, verb) for each attribute ``node`` writes or deletes that may belong to
    a module: ``torch.Tensor.backward = f``, ``F.softmax += 0``, ``del np.allclose``,
    ``setattr(torch, "allclose", f)``; the caller keeps those that lead to a module."""
    out = []

    def flatten(t):
        if isinstance(t, (ast.Tuple, ast.List)):
            for e in t.elts:
                flatten(e)
        elif isinstance(t, ast.Starred):
            flatten(t.value)
        elif isinstance(t, ast.Attribute):
            out.append((t, "deletes" if isinstance(t.ctx, ast.Del) else "changes"))

    if isinstance(node, ast.Assign):
        for t in node.targets:
            flatten(t)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        flatten(node.target)
    elif isinstance(node, ast.Delete):
        for t in node.targets:
            flatten(t)
    elif isinstance(node, (ast.For, ast.AsyncFor, ast.With, ast.AsyncWith, ast.comprehension)):
        for t in ([node.target] if hasattr(node, "target") else
                  [i.optional_vars for i in node.items if i.optional_vars is not None]):
            flatten(t)
    elif isinstance(node, ast.Call) and _dotted(node.func, aliases) in ("setattr", "delattr") and \
            len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
        verb = "changes" if _dotted(node.func, aliases) == "setattr" else "deletes"
        out.append((ast.Attribute(value=node.args[0], attr=node.args[1].value, ctx=ast.Store()), verb))
    return out


def _is_call_target(name_node, tree) -> bool:
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and n.func is name_node:
            return True
    return False


def _forbidden_attribute_names(forbidden: dict) -> dict:
    """The names under which torch exposes a forbidden torch function elsewhere.

    torch offers one operation under many paths: ``F.log_softmax`` is also the Tensor method
    ``x.log_softmax``, ``torch.special.log_softmax``, the aten operator
    ``torch.ops.aten._log_softmax`` and C functions such as ``torch._C._nn.cross_entropy_loss``.
    So for a forbidden torch function named ``n``:

    * ``exact``: ``n`` itself, flagged as a string constant anywhere (``getattr(x, "n")``);
    * ``tensor``: ``n`` when it is a Tensor method, flagged as an attribute of anything;
    * ``torch``: any attribute whose name contains ``n`` on a path under ``torch``.
    """
    import torch

    exact: dict = {}
    tensor: dict = {}
    under_torch: dict = {}
    for ex_id, paths in forbidden.items():
        for p in paths:
            if not p.startswith("torch"):
                continue
            name = p.rsplit(".", 1)[-1]
            if len(name) < 4 or name[0].isupper():  # classes are found by path and identity
                continue
            exact.setdefault(name, []).append((ex_id, p))
            under_torch.setdefault(name, []).append((ex_id, p))
            if hasattr(torch.Tensor, name) or hasattr(torch.Tensor, name + "_"):
                tensor.setdefault(name, []).append((ex_id, p))
    return {"exact": exact, "tensor": tensor, "torch": under_torch}


def _attribute_hits(node: ast.Attribute, aliases: dict, names: dict) -> list:
    attr = node.attr
    hits = []
    base = _dotted(node.value, aliases)
    base = _canonical(base) if base else None
    if base is not None and base.split(".")[0] == "torch":
        for name, owners in names["torch"].items():
            if name in attr:
                hits += [(e, p, f"{base}.{attr}, another of torch's names for") for e, p in owners]
        return hits
    for name, owners in names["tensor"].items():
        if attr in (name, name + "_"):
            hits += [(e, p, f"x.{attr}, the Tensor method form of") for e, p in owners]
    return hits


def analyse(student_cells: list, course_cells: list, exercises: list, forbidden: dict, solution_paths: dict,
            solution_modules: set) -> list[Finding]:
    """Findings for the learner's cells.

    ``student_cells``: [(label, source)]; ``course_cells``: sources of the trusted cells
    (for imports only); ``exercises``: [(id, name)]; ``forbidden``: id -> [dotted path];
    ``solution_paths``: id -> dotted path of our own solution; ``solution_modules``: the
    chapter's solution module names.
    """
    findings: list[Finding] = []
    parsed = []
    for label, src in student_cells:
        tree = _parse(src)
        refused = _unmagic(src)[1]
        if refused:
            findings.append(Finding(["*"], f"runs {', '.join(sorted(set(refused)))}: IPython magics and shell escapes "
                                    "run code the grader cannot check (keep them out of the cells you submit; "
                                    "%matplotlib, %time and %timeit are fine)", label))
        if tree is None:
            # What the checker cannot read does not run: a cell that only parses under
            # settings an earlier cell changed (a __future__ flag, a raised recursion limit)
            # could otherwise hide anything.
            findings.append(Finding([], "could not be read by the grader's checker (a syntax error, or syntax "
                                    "that depends on settings made elsewhere), so it was not run", label,
                                    skip_cell=True))
        else:
            parsed.append((label, tree))
    course_trees = [t for t in (_parse(s) for s in course_cells) if t is not None]
    aliases: dict = {}
    rebound: dict = {}
    _collect_aliases(course_trees + [t for _, t in parsed], aliases, rebound)
    forbidden_names = _forbidden_attribute_names(forbidden)
    import_roots = _import_roots(course_trees + [t for _, t in parsed])

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

        def reaches(ex_id, node):
            """Whether ``node`` is in code the exercise's function can run: its own
            definitions and what they use, or a cell's top level."""
            stmt = owner.get(id(node))
            if stmt is None or not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                return True
            return id(stmt) in reach_by_ex.get(ex_id, set())

        for node in ast.walk(tree):
            paths = []
            if isinstance(node, (ast.Name, ast.Attribute, ast.Call, ast.Subscript)):
                for p in _dotted_all(node, aliases, rebound):
                    paths.append(p)
                    c = _canonical(p)
                    if c != p:
                        paths.append(c)
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
                        any(p.startswith(n + ".") for n in INTROSPECTION_NAMES) or \
                        any(p == n or p.startswith(n + ".") or p.startswith(n + "_") for n in INTROSPECTION_PREFIXES):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) or (
                            isinstance(node, (ast.Attribute, ast.Name)) and _names_a_module(node, p, aliases, import_roots)):
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
            if isinstance(node, ast.Attribute):
                for ex_id, fp, how in _attribute_hits(node, aliases, forbidden_names):
                    if reaches(ex_id, node):
                        add([ex_id], f"refers to {how} {fp}, which {ex_id} asks you to build yourself",
                            label, node)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in forbidden_names["exact"]:
                for ex_id, fp in forbidden_names["exact"][node.value]:
                    if reaches(ex_id, node):
                        add([ex_id], f"names {node.value!r} in a string (a way to reach {fp}, which {ex_id} asks "
                            "you to build yourself)", label, node)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in DISPATCH_HOOKS:
                add(["*"], f"defines {node.name}, which takes over what torch does with your objects: the grader "
                    "does not allow it in submitted code", label, node)
            for target, how in _module_stores(node, aliases):
                path = _dotted(target, aliases)
                if path and not path.startswith(HARMLESS_SETTINGS) and \
                        _names_a_module(target, path, aliases, import_roots):
                    add(["*"], f"{how} {path}: tampering, review. The checks run beside your code and use these "
                        "modules; submitted code may read a module, not rewrite it", label, node)
            if isinstance(node, ast.Name) and node.id in ("getattr", "setattr", "delattr") and \
                    not _is_call_target(node, tree):
                add(["*"], f"passes {node.id} around as a value: the grader cannot tell what it reaches", label, node)
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
        key = (tuple(f.exercises), f.message, f.where if f.skip_cell else "")
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique
