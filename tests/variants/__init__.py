"""Correct answers written in other styles than the reference solutions, one module per chapter.

Decorate each with ``@right("chNN.exercise_id", style="loops")``; ``style`` says in a few
words how it differs from the reference (explicit loops, einsum, float64 inside, ...).
An answer that is correct but that a check rejects is registered with ``rejected="why"``:
the test then expects the failure (strictly), so the day the check is fixed it shows up.
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable


@dataclasses.dataclass
class RightAnswer:
    exercise_id: str
    submission: Any
    style: str
    rejected: str | None = None

    @property
    def label(self) -> str:
        return f"{self.exercise_id}:{getattr(self.submission, '__name__', 'answer')}"


RIGHT: list[RightAnswer] = []


def right(exercise_id: str, style: str, rejected: str | None = None) -> Callable:
    def decorate(obj):
        RIGHT.append(RightAnswer(exercise_id, obj, style, rejected))
        return obj
    return decorate


def load_all() -> list[RightAnswer]:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")
    return RIGHT
