"""Shared test helpers."""
from __future__ import annotations

import functools
import importlib
import inspect
import os
import shutil
import sys
import types

from autograder.core import get


@functools.lru_cache(maxsize=None)
def fresh_module(module_name: str) -> types.ModuleType:
    """A second copy of a solution module, executed from its source.

    The autograder forbids calling our own solution (the learner must write it); a
    notebook's answer cell is a fresh copy of the code, and so is this.
    """
    original = importlib.import_module(module_name)
    module = types.ModuleType(f"_fresh_{module_name.replace('.', '_')}")
    module.__file__ = original.__file__
    sys.modules[module.__name__] = module  # dataclasses look their module up by name
    exec(compile(inspect.getsource(original), f"<fresh {module_name}>", "exec", dont_inherit=True),
         module.__dict__)
    return module


def reference_submission(exercise_id: str):
    ex = get(exercise_id)
    module_name = ex.solution.partition(":")[0]
    return getattr(fresh_module(module_name), ex.name)


def stub_for(exercise_id: str):
    """What the learner starts from: the signature, raising NotImplementedError."""
    ex = get(exercise_id)
    original = reference_submission(exercise_id)
    if isinstance(original, type):
        def init(self, *a, **k):
            raise NotImplementedError()
        return type(ex.name, (), {"__init__": init, "__call__": init, "forward": init})

    def stub(*args, **kwargs):
        # YOUR CODE HERE
        raise NotImplementedError()
    stub.__name__ = ex.name
    return stub


# Debian's chromium, headless, driven by Playwright (never `playwright install`: it would
# download a browser of its own, which fails offline). These flags keep it quiet on a closed
# network: no update checks, no sync, no background requests.
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps"]
