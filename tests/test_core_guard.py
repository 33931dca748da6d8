"""The forbidden-call guard of autograder.core: what a learner's function may not reach."""
import functools
import sys
import types

import torch

from autograder import core


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(mod, key, value)
    sys.modules[name] = mod
    return mod


@torch.no_grad()
def _decorated_reference(x):
    return x * 2


def _plain_reference(x):
    return x * 2


@functools.wraps(_plain_reference)
def _wrapped_reference(x):
    return _plain_reference(x)


def _run_guarded(path: str, submission):
    log = []
    guard = core._Forbid([path], submission).prepare()
    guard.log = log
    try:
        with guard:
            result = guard.wrap(submission)(torch.ones(2))
    except core.ForbiddenCall:
        return "refused", log
    return result, log


def test_a_decorated_reference_is_refused_even_through_a_hidden_alias():
    mod = _module("guard_fixture_a", ref=_decorated_reference)
    hidden = {"f": mod.ref}  # an alias the guard cannot see: only the code hook catches it

    def learner(x):
        return hidden["f"](x)

    outcome, _ = _run_guarded("guard_fixture_a:ref", learner)
    assert outcome == "refused"


def test_the_function_inside_a_wraps_decorator_is_refused_too():
    _module("guard_fixture_b", ref=_wrapped_reference)

    def learner(x):
        return _plain_reference(x)  # calls the wrapped function directly

    outcome, _ = _run_guarded("guard_fixture_b:ref", learner)
    assert outcome == "refused"


def test_honest_code_runs_and_the_guard_is_off_afterwards():
    mod = _module("guard_fixture_c", ref=_decorated_reference)

    def learner(x):
        return x + x

    outcome, log = _run_guarded("guard_fixture_c:ref", learner)
    assert torch.equal(outcome, torch.full((2,), 2.0)) and log == []
    assert mod.ref is _decorated_reference and torch.equal(mod.ref(torch.ones(1)), torch.full((1,), 2.0))


@torch.no_grad()
def _learners_own_decorated(x):
    return x * 3


def test_the_learners_own_decorated_functions_are_not_mistaken_for_the_reference():
    _module("guard_fixture_d", ref=_decorated_reference)

    def learner(x):
        return _learners_own_decorated(x)  # same decorator, different function

    outcome, log = _run_guarded("guard_fixture_d:ref", learner)
    assert torch.equal(outcome, torch.full((2,), 3.0)) and log == []
