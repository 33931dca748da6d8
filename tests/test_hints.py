"""A hint is a nudge: it must not hand over the solution.

For every exercise, the statements of the reference solution's body are compared with the
code written in the hint just above the exercise (inline code and code blocks); a hint that
spells out too many of them gives the answer away, in the book and in every release.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import io
import re
import textwrap
import tokenize

import pytest

from autograder.core import get
from coursetools.source import chapters

MAX_SHARE = 0.25  # of the solution body's 4-token sequences that a hint's code may contain
_HINT = re.compile(r"<details><summary>Hint</summary>(.*?)</details>", re.S)
_CODE = re.compile(r"`([^`]+)`")


def _tokens(code: str) -> list[str]:
    out = []
    try:
        for t in tokenize.generate_tokens(io.StringIO(code).readline):
            if t.type in (tokenize.NAME, tokenize.OP, tokenize.NUMBER, tokenize.STRING):
                out.append(t.string.replace("'", '"'))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def _grams(tokens: list[str], n: int = 4) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def _body(obj) -> str:
    """The code of a solution without signatures and docstrings (every method of a class)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            parts += [ast.unparse(stmt) for stmt in body]
    return "\n".join(parts)


def share_given_away(solution_code: str, hint: str) -> float:
    """The share of the solution's 4-token sequences that the hint's code fragments contain."""
    solution = _grams(_tokens(solution_code))
    hinted: set = set()
    for fragment in _CODE.findall(hint):
        hinted |= _grams(_tokens(fragment))
    return len(solution & hinted) / max(1, len(solution))


def _pairs():
    for ch in chapters():
        pending = None
        for block in ch.blocks:
            if block.kind == "markdown":
                hints = _HINT.findall(block.text)
                pending = hints[-1] if hints else pending
            elif block.kind == "exercise":
                if pending is not None:
                    yield block.arg.strip(), pending
                pending = None


PAIRS = list(_pairs())


@pytest.mark.parametrize("exercise_id, hint", PAIRS, ids=[p[0] for p in PAIRS])
def test_a_hint_does_not_spell_out_the_solution(exercise_id, hint):
    ex = get(exercise_id)
    module, _, name = ex.solution.partition(":")
    share = share_given_away(_body(getattr(importlib.import_module(module), name)), hint)
    assert share <= MAX_SHARE, (f"the hint of {exercise_id} spells out {share:.0%} of the solution's code: "
                                "a hint names the idea, the function or the shape, not the statements")


def test_the_measure_tells_a_nudge_from_the_answer():
    from solutions.ch04_attention import scaled_dot_product_attention as sdpa

    code = _body(sdpa)
    answer = "\n".join(f"`{line.strip()}`" for line in code.splitlines())
    nudge = ("Compute all the scores at once with one matrix product, scale them, and block the "
             "masked positions with `-inf` before the softmax over the keys.")
    assert share_given_away(code, answer) > 0.6
    assert share_given_away(code, nudge) < 0.05
