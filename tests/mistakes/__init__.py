"""Realistic wrong answers, written the way learners write them, one module per chapter.

Decorate each with ``@wrong("chNN.exercise_id", diagnosis="mistake-name")``; ``diagnosis``
names the ``Mistake`` the autograder should recognise (or ``None`` when it has no name,
in which case the feedback only has to say what differs).
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable


@dataclasses.dataclass
class WrongAnswer:
    exercise_id: str
    submission: Any
    diagnosis: str | None

    @property
    def label(self) -> str:
        return f"{self.exercise_id}:{getattr(self.submission, '__name__', 'answer')}"


WRONG: list[WrongAnswer] = []


def wrong(exercise_id: str, diagnosis: str | None = None) -> Callable:
    def decorate(obj):
        WRONG.append(WrongAnswer(exercise_id, obj, diagnosis))
        return obj
    return decorate


def load_all() -> list[WrongAnswer]:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}")
    return WRONG
