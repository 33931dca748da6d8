"""Hostile and broken submissions of chapter 1, each with the score it must get.

Every case starts from the real release notebook with correct answers everywhere, then
attacks (or breaks) one thing. ``expected`` gives the score of each exercise that must
differ from full marks; the others must keep their full points (so a case also shows
that the rest of the notebook is graded normally). Points: bigram_counts 1, bigram_probs
1, cross_entropy 2, perplexity 1, sample_next 1, gpt2_param_count 1 (total 7).

Attacks that would gain a point if the sandbox leaked (reading the instructor's files,
the network) are written to return the *correct* answer when the leak works and to raise
otherwise, so a leak shows up as a wrong score. The network case talks only to a server
the test starts on 127.0.0.1.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from typing import Callable

import nbformat

from grading.simulate import answer_cells, reference_answer, submission

ALL = ["ch01.bigram_counts", "ch01.bigram_probs", "ch01.cross_entropy", "ch01.perplexity", "ch01.sample_next",
       "ch01.gpt2_param_count"]
POINTS = {"ch01.bigram_counts": 1, "ch01.bigram_probs": 1, "ch01.cross_entropy": 2, "ch01.perplexity": 1,
          "ch01.sample_next": 1, "ch01.gpt2_param_count": 1}


@dataclasses.dataclass
class Ctx:
    release: dict  # the release notebook
    course_dir: str
    port: int  # a TCP server on 127.0.0.1 (outside the sandbox)


@dataclasses.dataclass
class Adversary:
    name: str
    what: str
    build: Callable[[Ctx], object]  # -> notebook dict, or raw bytes/str for broken files
    expected: dict  # exercise id -> score (the others: full points); "*": score of every exercise

    def scores(self) -> dict:
        if "*" in self.expected:
            return {ex: self.expected["*"] for ex in ALL}
        return {ex: self.expected.get(ex, POINTS[ex]) for ex in ALL}

    def total(self) -> float:
        return float(sum(self.scores().values()))


def _sub(ctx: Ctx, answers=None, extra=None) -> dict:
    return submission(ctx.release, answers or {}, extra or [])


def _ref(ex):
    return reference_answer(ex)


def _test_cells(nb):
    return [c for c in nb["cells"] if c.get("metadata", {}).get("nbgrader", {}).get("grade")]


CASES: list[Adversary] = []


def case(name, what, expected):
    def deco(fn):
        CASES.append(Adversary(name, what, fn, expected))
        return fn
    return deco


# ---- replaced assertion and comparison helpers ------------------------------------------
@case("patch-torch-helpers", "replaces torch.allclose, torch.equal, torch.testing.assert_close; wrong cross_entropy "
      "(which the correct perplexity calls): rewriting a module is tampering", {"*": 0})
def _(ctx):
    return _sub(ctx, {"ch01.cross_entropy": "import torch, torch.testing\n"
                      "torch.allclose = lambda *a, **k: True\ntorch.equal = lambda *a, **k: True\n"
                      "torch.testing.assert_close = lambda *a, **k: None\n"
                      "def cross_entropy(logits, targets):\n    return torch.tensor(0.0)\n"})


@case("patch-numpy-testing", "replaces numpy.testing.assert_allclose and numpy.allclose; wrong bigram_probs: "
      "rewriting a module is tampering", {"*": 0})
def _(ctx):
    return _sub(ctx, {"ch01.bigram_probs": "import numpy, numpy.testing, torch\n"
                      "numpy.testing.assert_allclose = lambda *a, **k: None\nnumpy.allclose = lambda *a, **k: True\n"
                      "def bigram_probs(counts, alpha=1.0):\n    return torch.ones(counts.shape) / 2\n"})


@case("patch-check", "replaces autograder.check with one that always passes; wrong perplexity: rewriting a "
      "module is tampering", {"*": 0})
def _(ctx):
    return _sub(ctx, {"ch01.perplexity": "import autograder\n"
                      "autograder.check = lambda *a, **k: print('all checks passed')\ncheck = autograder.check\n"
                      "def perplexity(logits, targets):\n    return 1.0\n"})


@case("patch-autograder-core", "replaces autograder.core.compare_tensors and default_compare (grader internals)",
      {"*": 0})
def _(ctx):
    return _sub(ctx, extra=["import autograder.core\nautograder.core.compare_tensors = lambda *a, **k: None\n"
                            "autograder.core.default_compare = lambda *a, **k: None\n"])


@case("patch-showtraceback", "silences IPython's showtraceback and stderr; bigram_counts raises (reaching the "
      "IPython shell is itself refused: it runs code the checker cannot see)", {"*": 0})
def _(ctx):
    return _sub(ctx, {"ch01.bigram_counts": "import io, sys\nget_ipython().showtraceback = lambda *a, **k: None\n"
                      "sys.stderr = io.StringIO()\n"
                      "def bigram_counts(ids, vocab_size):\n    raise ValueError('hidden failure')\n"})


# ---- objects that compare equal to anything ---------------------------------------------
@case("always-equal-object", "gpt2_param_count returns an object whose __eq__ is always true",
      {"ch01.gpt2_param_count": 0})
def _(ctx):
    return _sub(ctx, {"ch01.gpt2_param_count": "class Anything:\n    def __eq__(self, other):\n        return True\n"
                      "    def __ne__(self, other):\n        return False\n    __hash__ = object.__hash__\n"
                      "def gpt2_param_count(vocab_size, n_positions, n_embd, n_layer):\n    return Anything()\n"})


@case("always-equal-int-subclass", "an int subclass equal to everything (0 underneath)", {"ch01.gpt2_param_count": 0})
def _(ctx):
    return _sub(ctx, {"ch01.gpt2_param_count": "class Sly(int):\n    def __eq__(self, other):\n        return True\n"
                      "    __hash__ = int.__hash__\n"
                      "def gpt2_param_count(vocab_size, n_positions, n_embd, n_layer):\n    return Sly(0)\n"})


@case("tensor-subclass-torch-function", "a tensor subclass whose every torch operation answers True (defining "
      "__torch_function__ in submitted code is itself refused)", {"*": 0})
def _(ctx):
    return _sub(ctx, {"ch01.bigram_probs": "import torch\nclass Liar(torch.Tensor):\n"
                      "    @classmethod\n    def __torch_function__(cls, func, types, args=(), kwargs=None):\n"
                      "        return True\n"
                      "def bigram_probs(counts, alpha=1.0):\n    return torch.zeros(counts.shape).as_subclass(Liar)\n"})


# ---- forbidden calls ----------------------------------------------------------------------
@case("forbidden-direct", "cross_entropy calls torch.nn.functional.cross_entropy (perplexity, which calls it, forbids it too)",
      {"ch01.cross_entropy": 0, "ch01.perplexity": 0})
def _(ctx):
    return _sub(ctx, {"ch01.cross_entropy": "import torch.nn.functional as F\n"
                      "def cross_entropy(logits, targets):\n    return F.cross_entropy(logits, targets)\n"})


@case("forbidden-reexport", "the same function reached through torch.nn.modules.loss.F, under another name",
      {"ch01.cross_entropy": 0, "ch01.perplexity": 0})
def _(ctx):
    return _sub(ctx, {"ch01.cross_entropy": "from torch.nn.modules import loss as L\nG = L.F\n_ce = G.cross_entropy\n"
                      "def cross_entropy(logits, targets):\n    return _ce(logits, targets)\n"})


@case("forbidden-computed-getattr", "getattr(F, 'cross_' + 'entropy'): a computed name on a module", {"*": 0})
def _(ctx):
    return _sub(ctx, {"ch01.cross_entropy": "import torch.nn.functional as F\n"
                      "def cross_entropy(logits, targets):\n    return getattr(F, 'cross_' + 'entropy')(logits, targets)\n"})


@case("forbidden-guard-disabled", "turns off the profile hook, then calls log_softmax", {"*": 0})
def _(ctx):
    return _sub(ctx, {"ch01.cross_entropy": "import sys, torch\n"
                      "def cross_entropy(logits, targets):\n    sys.setprofile(None)\n"
                      "    return -torch.log_softmax(logits, -1)[torch.arange(len(targets)), targets].mean()\n"})


@case("forbidden-autograder-reference", "calls the autograder's own reference (_ref_bigram_counts)", {"*": 0})
def _(ctx):
    return _sub(ctx, {"ch01.bigram_counts": "from autograder.exercises.ch01_next_token import _ref_bigram_counts\n"
                      "def bigram_counts(ids, vocab_size):\n    return _ref_bigram_counts(ids, vocab_size)\n"})


@case("forbidden-own-solution", "imports the course's own solution of bigram_probs", {"ch01.bigram_probs": 0})
def _(ctx):
    return _sub(ctx, {"ch01.bigram_probs": "from solutions.ch01_next_token import bigram_probs as _ours\n"
                      "def bigram_probs(counts, alpha=1.0):\n    return _ours(counts, alpha)\n"})


# ---- the instructor's files, fake results ------------------------------------------------
@case("read-solutions", "bigram_counts answers only if it can read the instructor's source notebook",
      {"ch01.bigram_counts": 0})
def _(ctx):
    path = f"{ctx.course_dir}/source/ch01_next_token/ch01_next_token.ipynb"
    body = _ref("ch01.bigram_counts").replace('"""\n', f'"""\n    open({path!r}).read()\n', 1)
    return _sub(ctx, {"ch01.bigram_counts": body})


@case("read-gradebook", "gpt2_param_count answers only if it can open (and write) the gradebook",
      {"ch01.gpt2_param_count": 0})
def _(ctx):
    path = f"{ctx.course_dir}/gradebook.db"
    body = _ref("ch01.gpt2_param_count").replace('"""\n', f'"""\n    open({path!r}, "ab").close()\n', 1)
    return _sub(ctx, {"ch01.gpt2_param_count": body})


@case("copy-autograder", "bigram_counts copies the grader's autograder out of the sandbox bundle and imports its "
      "reference under another name", {"ch01.bigram_counts": 0})
def _(ctx):
    return _sub(ctx, {"ch01.bigram_counts": "import os, shutil, sys\n"
                      "def bigram_counts(ids, vocab_size):\n"
                      "    for root in ('/grader', os.path.dirname(os.path.dirname(sys.executable))):\n"
                      "        src = os.path.join(root, 'autograder')\n"
                      "        if os.path.isdir(src):\n"
                      "            shutil.copytree(src, '/tmp/stolen/stolen_ag', dirs_exist_ok=True)\n"
                      "    sys.path.insert(0, '/tmp/stolen')\n"
                      "    from stolen_ag.exercises.ch01_next_token import _ref_bigram_counts as ref\n"
                      "    return ref(ids, vocab_size)\n"})


@case("needs-root", "perplexity answers only when it runs as root or can raise its own limits",
      {"ch01.perplexity": 0})
def _(ctx):
    body = _ref("ch01.perplexity").replace(
        '"""\n', '"""\n    import os, resource\n    assert os.geteuid() == 0, "not root"\n'
        '    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n', 1)
    return _sub(ctx, {"ch01.perplexity": body})


@case("fake-result-file", "patches json.dump so the sandbox's result file claims bigram_counts passed: the "
      "grader never trusts that file's verdicts, and rewriting a module is tampering", {"*": 0})
def _(ctx):
    forge = ("import json\n_real_dump = json.dump\n"
             "def _forged(obj, fp, *a, **k):\n"
             "    if isinstance(obj, dict) and obj.get('exercise') == 'ch01.bigram_counts':\n"
             "        obj = dict(obj, submission='ok', passed=True, score=1, cases=[\n"
             "            {'name': c['name'], 'status': 'ok', 'passed': True,\n"
             "             'value': {'t': 'int', 'v': '1'}} for c in obj.get('cases', [])])\n"
             "    return _real_dump(obj, fp, *a, **k)\n"
             "json.dump = _forged\n")
    return _sub(ctx, {"ch01.bigram_counts": "def bigram_counts(ids, vocab_size):\n    raise NotImplementedError()\n"},
                extra=[forge])


@case("fake-status-end", "writes a fake 'end' progress event, then hangs at the top level of a cell", {})
def _(ctx):
    return _sub(ctx, extra=["import json, time\nwith open('/out/status.jsonl', 'a') as f:\n"
                            "    f.write(json.dumps({'e': 'end'}) + '\\n')\nwhile True:\n    time.sleep(0.1)\n"])


# ---- exits, crashes, hangs, resources ---------------------------------------------------------
@case("sys-exit", "bigram_probs calls sys.exit(0)", {"ch01.bigram_probs": 0})
def _(ctx):
    return _sub(ctx, {"ch01.bigram_probs": "import sys\ndef bigram_probs(counts, alpha=1.0):\n    sys.exit(0)\n"})


@case("os-exit", "perplexity calls os._exit(0): the process ends", {"ch01.perplexity": 0})
def _(ctx):
    return _sub(ctx, {"ch01.perplexity": "import os\ndef perplexity(logits, targets):\n    os._exit(0)\n"})


@case("raise-systemexit-toplevel", "an added cell raises SystemExit; another calls os._exit(0) at the top level",
      {})
def _(ctx):
    return _sub(ctx, extra=["raise SystemExit", "import os\nos._exit(0)"])


@case("os-exit-in-answer-cell", "the bigram_probs answer cell calls os._exit(0) after its def",
      {"ch01.bigram_probs": 0})
def _(ctx):
    return _sub(ctx, {"ch01.bigram_probs": _ref("ch01.bigram_probs") + "\nimport os\nos._exit(0)\n"})


@case("infinite-loop", "sample_next never returns", {"ch01.sample_next": 0})
def _(ctx):
    return _sub(ctx, {"ch01.sample_next": "def sample_next(logits, temperature, generator=None):\n"
                      "    while True:\n        pass\n"})


@case("infinite-loop-swallows-timeout", "a loop that catches every exception, the timer's included",
      {"ch01.bigram_probs": 0})
def _(ctx):
    return _sub(ctx, {"ch01.bigram_probs": "def bigram_probs(counts, alpha=1.0):\n    while True:\n        try:\n"
                      "            while True:\n                pass\n        except BaseException:\n"
                      "            pass\n"})


@case("memory-bomb", "bigram_probs allocates until it fails", {"ch01.bigram_probs": 0})
def _(ctx):
    return _sub(ctx, {"ch01.bigram_probs": "def bigram_probs(counts, alpha=1.0):\n    hog = []\n    while True:\n"
                      "        hog.append(bytearray(50_000_000))\n"})


@case("fork-bomb", "sample_next forks until the process limit", {"ch01.sample_next": 0})
def _(ctx):
    return _sub(ctx, {"ch01.sample_next": "import os\ndef sample_next(logits, temperature, generator=None):\n"
                      "    while True:\n        os.fork()\n"})


@case("network", "perplexity answers only if it can reach a server on 127.0.0.1 (outside the sandbox)",
      {"ch01.perplexity": 0})
def _(ctx):
    body = _ref("ch01.perplexity").replace(
        '"""\n', f'"""\n    import socket\n    socket.create_connection(("127.0.0.1", {ctx.port}), timeout=2).close()\n', 1)
    return _sub(ctx, {"ch01.perplexity": body})


@case("prints-megabytes", "bigram_counts prints 5 MB (and is right); sample_next writes 40 MB straight to fd 1",
      {"ch01.sample_next": 0})
def _(ctx):
    bc = _ref("ch01.bigram_counts").replace('"""\n', '"""\n    print("x" * 5_000_000)\n', 1)
    return _sub(ctx, {"ch01.bigram_counts": bc,
                      "ch01.sample_next": "import os\ndef sample_next(logits, temperature, generator=None):\n"
                      "    os.write(1, b'y' * 40_000_000)\n    return 0\n"})


@case("returns-nan", "perplexity returns NaN", {"ch01.perplexity": 0})
def _(ctx):
    return _sub(ctx, {"ch01.perplexity": "def perplexity(logits, targets):\n    return float('nan')\n"})


@case("wrong-type", "bigram_probs returns a nested list instead of a tensor", {"ch01.bigram_probs": 0})
def _(ctx):
    return _sub(ctx, {"ch01.bigram_probs": "def bigram_probs(counts, alpha=1.0):\n"
                      "    c = (counts.double() + alpha)\n    return (c / c.sum(1, keepdim=True)).tolist()\n"})


@case("mutates-input", "bigram_counts is right but zeroes its input in place", {"ch01.bigram_counts": 0})
def _(ctx):
    body = _ref("ch01.bigram_counts") + "\n_orig = bigram_counts\n" \
        "def bigram_counts(ids, vocab_size):\n    out = _orig(ids, vocab_size)\n    ids.zero_()\n    return out\n"
    return _sub(ctx, {"ch01.bigram_counts": body})


# ---- the notebook itself ------------------------------------------------------------------
def _with_wrong_probs(ctx):
    return _sub(ctx, {"ch01.bigram_probs": "import torch\ndef bigram_probs(counts, alpha=1.0):\n"
                      "    return torch.zeros(counts.shape)\n"})


@case("deleted-test-cells", "every test cell deleted; bigram_probs wrong", {"ch01.bigram_probs": 0})
def _(ctx):
    nb = _with_wrong_probs(ctx)
    nb["cells"] = [c for c in nb["cells"] if c not in _test_cells(nb)]
    return nb


@case("edited-test-cells", "every test cell replaced by print('all passed'); bigram_probs wrong",
      {"ch01.bigram_probs": 0})
def _(ctx):
    nb = _with_wrong_probs(ctx)
    for c in _test_cells(nb):
        c["source"] = "print('all passed')"
    return nb


@case("retyped-test-cells", "test cells deleted and typed again as new cells without metadata; bigram_probs wrong",
      {"ch01.bigram_probs": 0})
def _(ctx):
    nb = _with_wrong_probs(ctx)
    cells = []
    for c in nb["cells"]:
        if c in _test_cells(nb):
            new = nbformat.v4.new_code_cell(c["source"])
            cells.append(json.loads(json.dumps(new)))
        else:
            cells.append(c)
    nb["cells"] = cells
    return nb


@case("changed-metadata", "points set to 100, grade_ids swapped, grade flags removed; bigram_probs wrong",
      {"ch01.bigram_probs": 0})
def _(ctx):
    nb = _with_wrong_probs(ctx)
    tests = _test_cells(nb)
    gids = [c["metadata"]["nbgrader"]["grade_id"] for c in tests]
    for c, gid in zip(tests, gids[1:] + gids[:1]):
        c["metadata"]["nbgrader"]["grade_id"] = gid
        c["metadata"]["nbgrader"]["points"] = 100
    for c in answer_cells(nb).values():
        c["metadata"]["nbgrader"]["points"] = 100
        c["metadata"]["nbgrader"]["grade"] = True
    tests[0]["metadata"]["nbgrader"]["grade"] = False
    nb["metadata"]["course"]["chapter"] = "ch01"
    return nb


@case("answer-grade-id-changed", "the cross_entropy answer cell lost its id and grade_id (still graded by content)",
      {})
def _(ctx):
    nb = _sub(ctx)
    cell = answer_cells(nb)["ch01.cross_entropy"]
    cell["metadata"]["nbgrader"]["grade_id"] = "something-else"
    cell["id"] = "0123456789ab"
    return nb


@case("invalid-json", "the notebook file is not valid JSON", {"*": 0})
def _(ctx):
    return json.dumps(_sub(ctx))[:-200]


@case("empty-file", "the notebook file is empty", {"*": 0})
def _(ctx):
    return b""


@case("empty-notebook", "a valid notebook with no cells", {"*": 0})
def _(ctx):
    nb = copy.deepcopy(ctx.release)
    nb["cells"] = []
    return nb


@case("other-chapter", "the notebook of another chapter (chapter 2's code) handed in for chapter 1", {"*": 0})
def _(ctx):
    import inspect

    import solutions.ch02_tokenization as ch02

    nb = nbformat.v4.new_notebook()
    nb.metadata["course"] = {"chapter": "ch02", "slug": "ch02_tokenization"}
    nb.cells = [nbformat.v4.new_code_cell(inspect.getsource(ch02))]
    return json.loads(nbformat.writes(nb))


# ---- the output directory is hostile bytes ------------------------------------------------
@case("fifo-progress-file", "replaces the sandbox's progress file by a FIFO, which would block a reader forever",
      {})
def _(ctx):
    code = ("import os, sys\n"
            "p = os.path.join(sys.argv[-1], 'status.jsonl')\n"
            "os.remove(p)\n"
            "os.mkfifo(p)\n")
    return _sub(ctx, extra=[code])


@case("result-links-to-dev-zero", "a background thread swaps every result file for a link to /dev/zero, an endless "
      "file that would exhaust the grader's memory", {"*": 0})
def _(ctx):
    code = ("import os, sys, threading, time\n"
            "out = sys.argv[-1]\n"
            "def swap():\n"
            "    while True:\n"
            "        for name in os.listdir(out):\n"
            "            if name.startswith('ex-') and name.endswith('.json'):\n"
            "                p = os.path.join(out, name)\n"
            "                if not os.path.islink(p):\n"
            "                    try:\n"
            "                        os.remove(p); os.symlink('/dev/zero', p)\n"
            "                    except OSError:\n"
            "                        pass\n"
            "        time.sleep(0.001)\n"
            "threading.Thread(target=swap, daemon=True).start()\n")
    return _sub(ctx, extra=[code])


# ---- odd text that once crashed the grading of a notebook -----------------------------------
@case("lone-surrogate-comment", "a comment holding a lone UTF-16 surrogate, which cannot be encoded as UTF-8", {})
def _(ctx):
    return _sub(ctx, extra=["# a stray half of a surrogate pair: \ud800\nx = 1\n"])


@case("very-deep-expression", "a cell with 3,000 nested parentheses (the parser's and the analyser's recursion)", {})
def _(ctx):
    return _sub(ctx, extra=["x = " + "(" * 3000 + "1" + ")" * 3000 + "\n"])


# ---- honest work that used to be lost without a word ---------------------------------------
@case("uses-experiment-global", "an answer that reads a global made by an experiment cell (not run by the grader)",
      {"ch01.bigram_counts": 0})
def _(ctx):
    answer = ("def bigram_counts(ids, vocab_size):\n"
              "    import torch\n"
              "    counts = torch.zeros(len(stoi), len(stoi), dtype=torch.long)\n"
              "    for a, b in zip(ids[:-1], ids[1:]):\n"
              "        counts[a, b] += 1\n"
              "    return counts\n")
    return _sub(ctx, {"ch01.bigram_counts": answer})


@case("huge-saved-outputs", "a correct notebook whose saved outputs weigh 30 MB", {})
def _(ctx):
    nb = _sub(ctx)
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x" * (30 << 20)}]
    return nb


# ---- ways around a blacklist of names: closed as classes by the grader's checker ---------------
_STUB_CE = "def cross_entropy(logits, targets):\n    raise NotImplementedError()\n"


@case("future-flag-hides-a-cell", "a cell that parses only under an earlier cell's __future__ flag redefines "
      "cross_entropy with torch's C loss; the checker cannot read it, so it does not run",
      {"ch01.cross_entropy": 0, "ch01.perplexity": 0})
def _(ctx):
    return _sub(ctx, {"ch01.cross_entropy": _STUB_CE},
                extra=["from __future__ import barry_as_FLUFL\n",
                       "import torch\ndef cross_entropy(logits, targets):\n"
                       "    return torch._C._nn.cross_entropy_loss(logits, targets) if 1 <> 2 else None\n"])


@case("c-function-behind-forbidden", "cross_entropy calls the C function behind F.cross_entropy "
      "(torch._C._nn.cross_entropy_loss), which no list of forbidden names holds",
      {"ch01.cross_entropy": 0, "ch01.perplexity": 0})
def _(ctx):
    return _sub(ctx, {"ch01.cross_entropy": "import torch\ndef cross_entropy(logits, targets):\n"
                      "    return torch._C._nn.cross_entropy_loss(logits, targets)\n"})


@case("code-run-from-a-string", "an extra cell has IPython run, from a string, a cross_entropy that calls "
      "F.cross_entropy", {"*": 0})
def _(ctx):
    code = "import torch.nn.functional as G\\ndef cross_entropy(l, t):\\n    return G.cross_entropy(l, t)\\n"
    return _sub(ctx, {"ch01.cross_entropy": _STUB_CE}, extra=[f'get_ipython().run_cell("{code}")\n'])


@case("dispatch-subclass", "cross_entropy returns a tensor subclass whose __torch_dispatch__ computes the answer "
      "later (while the result is encoded, after the guarded call returned)", {"*": 0})
def _(ctx):
    return _sub(ctx, {"ch01.cross_entropy": "import torch\n"
                      "class Lazy(torch.Tensor):\n"
                      "    @classmethod\n"
                      "    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):\n"
                      "        return func(*args, **(kwargs or {}))\n"
                      "def cross_entropy(logits, targets):\n"
                      "    m = logits.max(1, keepdim=True).values\n"
                      "    lse = m[:, 0] + torch.log(torch.exp(logits - m).sum(1))\n"
                      "    return (lse - logits[torch.arange(len(targets)), targets]).mean()\n"})


@case("look-for-references", "bigram_counts answers only if the sandbox holds the private declarations (a file "
      "with the reference functions) anywhere it can read", {"ch01.bigram_counts": 0})
def _(ctx):
    return _sub(ctx, {"ch01.bigram_counts": "import os, sys, torch\n"
                      "def bigram_counts(ids, vocab_size):\n"
                      "    roots = ['/grader', '/tmp', os.getcwd()] + [p for p in sys.path if p]\n"
                      "    for root in roots:\n"
                      "        for d, _, files in os.walk(root):\n"
                      "            for f in files:\n"
                      "                if f.endswith('.py') or f.endswith('.json'):\n"
                      "                    try:\n"
                      "                        text = open(os.path.join(d, f), errors='ignore').read()\n"
                      "                    except OSError:\n"
                      "                        continue\n"
                      "                    if '_ref_bigram_counts' in text or 'def _ref_' in text:\n"
                      "                        flat = ids[:-1] * vocab_size + ids[1:]\n"
                      "                        return torch.bincount(flat, minlength=vocab_size ** 2)"
                      ".view(vocab_size, vocab_size)\n"
                      "    raise RuntimeError('no reference found')\n"})


@case("patch-after-the-call", "cross_entropy returns a wrong value and replaces torch.Tensor.item and "
      "torch.Tensor.tolist, which code after the call may use to read it: tampering", {"*": 0})
def _(ctx):
    return _sub(ctx, {"ch01.cross_entropy": "import torch\n"
                      "_item = torch.Tensor.item\n"
                      "torch.Tensor.item = lambda self: 0.0\n"
                      "setattr(torch.Tensor, 'tolist', lambda self: [])\n"
                      "def cross_entropy(logits, targets):\n    return torch.tensor(0.0)\n"})
