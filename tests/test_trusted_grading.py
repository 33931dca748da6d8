"""The trusted grader's parts: transport, static check, program extraction, sandbox, catalogue."""
from __future__ import annotations

import json

import nbformat
import pytest
import torch

from autograder import codec
from grading.program import build_program, load_source, read_submission, NotebookError
from grading.static import analyse


# ---- transport: plain data only ----------------------------------------------------------------
def roundtrip(x):
    tree, tensors = codec.encode(x)
    json.dumps(tree)  # the tree is JSON
    return codec.decode(json.loads(json.dumps(tree)), tensors)


def test_codec_round_trips_the_result_types_chapters_use():
    value = {"t": torch.arange(6).view(2, 3), "f": 1.5, "i": 10**30, "s": "héllo", "b": b"\x00\xff", "n": None,
             "nested": [(1, 2.0, [torch.tensor(True)]), {"k": torch.zeros(0, 3, dtype=torch.bfloat16)}],
             7: float("inf"), "c": torch.tensor([1 + 2j]), "size": torch.Size([2, 3]), "dtype": torch.float16}
    got = roundtrip(value)
    assert got.keys() == value.keys()
    assert torch.equal(got["t"], value["t"]) and got["i"] == 10**30 and got["s"] == "héllo" and got["b"] == b"\x00\xff"
    assert isinstance(got["nested"][0], tuple) and torch.equal(got["nested"][0][2][0], torch.tensor(True))
    assert got["nested"][1]["k"].dtype == torch.bfloat16 and got[7] == float("inf")
    assert torch.equal(got["c"], value["c"]) and got["size"] == torch.Size([2, 3]) and got["dtype"] is torch.float16
    assert torch.isnan(roundtrip(torch.tensor(float("nan")))).item()


def test_codec_strips_behaviour_of_learner_classes():
    class Sly(int):
        def __eq__(self, other):
            return True
        __hash__ = int.__hash__

    class Anything:
        def __eq__(self, other):
            return True

    class Liar(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            return True

    got = roundtrip([Sly(3), Anything(), torch.ones(2).as_subclass(Liar)])
    assert type(got[0]) is int and got[0] == 3 and got[0] != 4
    assert isinstance(got[1], codec.Opaque) and got[1] != got[1] and type(got[1]).__name__ == "Anything"
    assert type(got[2]) is torch.Tensor and torch.equal(got[2], torch.ones(2))


@pytest.mark.parametrize("tree", [
    {"t": "int", "v": "1e9"}, {"t": "float", "v": 3.0}, {"t": "tensor", "key": "missing", "shape": [1]},
    {"t": "list", "items": "abc"}, {"t": "object", "module": "os", "name": "system"}, "x", None,
    {"t": "dtype", "v": "os.system"}])
def test_codec_rejects_malformed_trees(tree):
    with pytest.raises(codec.DecodeError):
        codec.decode(tree, {})


def test_safetensors_file_with_a_bad_dtype_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2, dtype=torch.uint16)}, tmp_path / "r.safetensors")
    with pytest.raises(codec.DecodeError):
        codec.load_tensors(tmp_path / "r.safetensors", 1 << 20)


# ---- static check -------------------------------------------------------------------------------
FORBIDDEN = {"ch01.cross_entropy": ["torch.nn.functional.cross_entropy", "torch.logsumexp"],
             "ch01.perplexity": ["torch.nn.functional.cross_entropy"], "ch01.bigram_counts": []}
EXERCISES = [("ch01.cross_entropy", "cross_entropy"), ("ch01.perplexity", "perplexity"),
             ("ch01.bigram_counts", "bigram_counts")]
SOLUTIONS = {e: f"solutions.ch01_next_token.{n}" for e, n in EXERCISES}
SETUP = ["import torch\nimport torch.nn.functional as F\nfrom autograder import check, fallback, quick"]


def findings(code):
    out = analyse([("cell", code)], SETUP, EXERCISES, FORBIDDEN, SOLUTIONS, {"solutions.ch01_next_token"})
    return {e for f in out for e in f.exercises}, [f.message for f in out]


@pytest.mark.parametrize("code,hit", [
    ("def cross_entropy(l, t):\n    return F.cross_entropy(l, t)", {"ch01.cross_entropy", "ch01.perplexity"}),
    ("from torch.nn.functional import cross_entropy as ce\ndef cross_entropy(l, t):\n    return ce(l, t)",
     {"ch01.cross_entropy", "ch01.perplexity"}),
    ("import torch.nn.modules.loss as L\nx = L.F\ndef cross_entropy(l, t):\n    return x.cross_entropy(l, t)",
     {"ch01.cross_entropy", "ch01.perplexity"}),
    ("def cross_entropy(l, t):\n    return torch.logsumexp(l, 1).mean()", {"ch01.cross_entropy"}),
    ("def bigram_counts(i, v):\n    return getattr(torch, 'bin' + 'count')(i)", {"*"}),
    ("import autograder.core\nautograder.core.default_compare = None", {"*"}),
    ("from solutions.ch01_next_token import bigram_counts as b", {"ch01.bigram_counts"}),
    ("import gc\ndef bigram_counts(i, v):\n    return gc.get_objects()", {"*"}),
    ("def bigram_counts(i, v):\n    return bigram_counts.__globals__", {"*"}),
    ("import subprocess\ndef bigram_counts(i, v):\n    return subprocess.run(['true'])", {"ch01.bigram_counts"}),
    ("import os\nos.system('true')", {"*"}),
    ("def bigram_counts(i, v):\n    return eval('1')", {"*"}),
])
def test_static_check_finds(code, hit):
    assert findings(code)[0] == hit


@pytest.mark.parametrize("code", [
    "def cross_entropy(logits, targets):\n    m = logits.max(1, keepdim=True).values\n"
    "    return (m.squeeze(1) + torch.log(torch.exp(logits - m).sum(1)) - logits.gather(1, targets[:, None]).squeeze(1)).mean()",
    "def perplexity(l, t):\n    return math.exp(float(cross_entropy(l, t)))",
    "check('ch01.cross_entropy', cross_entropy)",
    "%matplotlib inline\nimport matplotlib.pyplot as plt\nprint(F.softmax(torch.zeros(3), 0))",
    "def bigram_counts(ids, v):\n    import os\n    return os.path.join('a', 'b')",
])
def test_static_check_leaves_honest_code_alone(code):
    assert findings(code)[0] == set()


# ---- which cells run ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from grading.simulate import chapter_source

    path = tmp_path_factory.mktemp("src") / "ch01_next_token.ipynb"
    nbformat.write(chapter_source("ch01"), path)
    return path


def test_program_runs_course_cells_from_the_source_and_answers_from_the_learner(source):
    info = load_source(source)
    assert info.exercises[0] == "ch01.bigram_counts" and len(info.exercises) == 6
    nb = json.loads(source.read_text())
    for cell in nb["cells"]:
        if cell.get("metadata", {}).get("course", {}).get("role") == "setup":
            cell["source"] = "import os; os._exit(0)  # the learner broke the setup cell"
        if cell.get("metadata", {}).get("course", {}).get("role") == "check":
            cell["source"] = "print('passed')"
    nb["cells"].append(nbformat.v4.new_code_cell('check("ch01.perplexity", perplexity)'))  # retyped test cell
    nb["cells"].append(nbformat.v4.new_code_cell("def helper():\n    return 1"))  # added by the learner
    cells, notes = build_program(info, nb)
    sources = [c.source for c in cells]
    assert not any("os._exit" in s for s in sources)
    assert not any("print('passed')" in s or 'check("ch01.perplexity"' in s for s in sources)
    assert any("def helper" in s for s in sources)
    assert [c.exercise for c in cells if c.kind == "answer"] == info.exercises
    assert "### BEGIN SOLUTION" not in "".join(c.source for c in cells if c.kind == "course")


@pytest.mark.parametrize("content,message", [(b"", "empty"), (b"{oops", "not valid JSON"),
                                             (b"[1, 2]", "not a JSON object"), (b'{"cells": 3}', "no list of cells")])
def test_unreadable_notebooks_are_reported(tmp_path, content, message):
    p = tmp_path / "nb.ipynb"
    p.write_bytes(content)
    with pytest.raises(NotebookError, match=message):
        read_submission(p)


# ---- the sandbox on this machine ------------------------------------------------------------------
def test_isolation_is_probed_and_explained():
    from grading.sandbox import isolation

    iso = isolation()
    assert iso["mode"] in ("bwrap", "basic")
    if iso["mode"] == "basic":
        assert iso["notes"], "a degraded sandbox must say why"
    else:
        assert iso["network"].startswith("off")


@pytest.mark.slow
def test_selfcheck_gives_the_reference_full_marks_through_the_sandbox(capsys):
    """`python -m grading selfcheck`: the reference solution, as a notebook, passes the
    trusted grader. Chapter 1 here; every other chapter goes through the same sandbox, with
    a complete and a mistaken student, in test_nbgrader_chapters.py."""
    from grading.__main__ import selfcheck

    assert selfcheck(["ch01"]) == 0, capsys.readouterr().out


# ---- the static check closes whole classes of bypasses -------------------------------------------
@pytest.mark.parametrize("code,hit", [
    # the same operation under another of torch's names
    ("def cross_entropy(l, t):\n    return torch._C._nn.cross_entropy_loss(l, t)", {"ch01.cross_entropy"}),
    ("def cross_entropy(l, t):\n    return -(l.log_softmax(1).gather(1, t[:, None])).mean()", set()),
    ("def cross_entropy(l, t):\n    m = l.logsumexp(1)\n    return (m - l.gather(1, t[:, None])[:, 0]).mean()",
     {"ch01.cross_entropy"}),
    ("def cross_entropy(l, t):\n    return (torch.special.logsumexp(l, 1) - l[range(len(t)), t]).mean()",
     {"ch01.cross_entropy"}),
    ("def cross_entropy(l, t):\n    return (torch.ops.aten.logsumexp.default(l, [1]) - l[range(len(t)), t]).mean()",
     {"ch01.cross_entropy"}),
    ("def cross_entropy(l, t):\n    return torch.nn.functional.torch._C._nn.cross_entropy_loss(l, t)",
     {"ch01.cross_entropy"}),
    # names reached through strings, values and other modules
    ("def cross_entropy(l, t):\n    f = getattr(torch, 'logsumexp')\n    return (f(l, 1) - l[range(len(t)), t]).mean()",
     {"ch01.cross_entropy"}),
    ("def cross_entropy(l, t):\n    g = getattr\n    return g(F, 'cross_' + 'entropy')(l, t)", {"*"}),
    ("import functools\nce = functools.partial(getattr, F)", {"*"}),
    ("import os\ndef bigram_counts(i, v):\n    return os.sys.modules", {"*"}),
    ("s = torch.sys\ndef bigram_counts(i, v):\n    return s.modules", {"*"}),
    ("def cross_entropy(l, t):\n    return F.__dict__['cross_entropy'](l, t)", {"*", "ch01.cross_entropy"}),
    ("def cross_entropy(l, t):\n    return F.torch.logsumexp(l, 1).mean()", {"ch01.cross_entropy"}),
    # an alias re-pointed in dead code does not hide what it names
    ("import math as G\nif False:\n    import torch.nn.functional as G\ndef cross_entropy(l, t):\n    return G.cross_entropy(l, t)",
     {"ch01.cross_entropy", "ch01.perplexity"}),
    # code that IPython runs from strings
    ("%run helper.py", {"*"}),
    ("!pip install something", {"*"}),
    ("%%bash\necho hi", {"*"}),
    ("%%writefile helper.py\nimport torch", {"*"}),
    ("out = !ls", {"*"}),
    ("%timeit F.cross_entropy(torch.zeros(2, 3), torch.zeros(2).long())", {"ch01.cross_entropy", "ch01.perplexity"}),
    ("get_ipython().run_cell('x = 1')", {"*"}),
    ("import timeit\ntimeit.timeit('1 + 1')", {"*"}),
    # hooks that run code behind torch's back
    ("class T(torch.Tensor):\n    @classmethod\n    def __torch_function__(cls, f, types, a=(), k=None):\n        return 0", {"*"}),
    ("from torch.utils._python_dispatch import TorchDispatchMode", {"*"}),
    ("import torch.library", {"*"}),
    ("import sys\nsys.setrecursionlimit(100000)", {"*"}),
    # rewriting a module that the code beside the learner's also uses: tampering
    ("torch.nn.functional.cross_entropy = lambda l, t: 0", {"*", "ch01.cross_entropy", "ch01.perplexity"}),
    ("torch.Tensor.backward = lambda self, *a: None", {"*"}),
    ("G = F\nG.softmax = None", {"*"}),
    ("setattr(torch, 'allclose', lambda *a, **k: True)", {"*"}),
    ("del torch.Tensor.item", {"*"}),
    ("import numpy as np\nnp.testing.assert_allclose, x = print, 1", {"*"}),
    ("def cross_entropy(l, t):\n    torch.isfinite = lambda x: torch.ones_like(x, dtype=bool)\n    return l.sum()",
     {"*"}),
])
def test_static_check_closes_bypass_classes(code, hit):
    found, messages = findings(code)
    assert found == hit, messages


@pytest.mark.parametrize("code", [
    "%time x = torch.zeros(3)",
    "%config InlineBackend.figure_format = 'png'",
    "F.softmax?",
    "def perplexity(l, t):\n    return math.exp(-(l.log_softmax(1)[range(len(t)), t]).mean())",
    "class Model(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.embedding = torch.nn.Embedding(3, 4)",
    "def bigram_counts(ids, v):\n    return getattr(ids, 'shape')",
    # variables that share a name with a refused module are not that module
    "def bigram_counts(ids, v):\n    code = torch.tensor([1])\n    types = code.shape\n    return code.sum()",
    "trace = [1, 2]\nprofile = {'a': trace}\nprint(len(trace), profile)",
    # attributes of the learner's own objects, and settings that only change display or determinism
    "w = torch.zeros(3)\nw.requires_grad = True\nm = torch.nn.Linear(2, 2)\nm.weight.data = torch.ones(2, 2)",
    "class M(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.w = torch.zeros(2)",
    "torch.backends.cudnn.deterministic = True",
    "import matplotlib.pyplot as plt\nplt.rcParams['figure.dpi'] = 90",
])
def test_static_check_still_leaves_honest_code_alone(code):
    found, messages = findings(code)
    assert found == set(), messages


@pytest.mark.parametrize("code", [
    "x = 1 <> 2",  # parses only after an earlier cell's `from __future__ import barry_as_FLUFL`
    "x = " + "(" * 300 + "1" + ")" * 300,  # parses only under a raised recursion limit
    "def cross_entropy(l, t)\n    return F.cross_entropy(l, t)",
])
def test_a_cell_the_checker_cannot_read_is_not_run(code):
    out = analyse([("cell 3", code)], SETUP, EXERCISES, FORBIDDEN, SOLUTIONS, {"solutions.ch01_next_token"})
    assert [f.where for f in out if f.skip_cell] == ["cell 3"]
    assert all(not f.exercises for f in out if f.skip_cell)
