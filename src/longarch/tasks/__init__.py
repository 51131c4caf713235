"""The task registry: `names()` and `get(name, **knobs)`."""

from __future__ import annotations

import dataclasses
import difflib

from .base import Samples, exact_match
from .tokens.needle import NeedleTask

TASKS = {
    "needle": (NeedleTask, "single-needle retrieval: one KEY VALUE pair in a filler haystack, queried at the end"),
}


class UnknownTask(ValueError):
    pass


def names() -> list[str]:
    return list(TASKS)


def describe(name: str) -> str:
    return TASKS[name][1]


def get(name: str, **knobs):
    """The task `name` with its knobs set; unknown names and knobs are errors."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownTask(f"unknown task {name!r}{hint} (known: {', '.join(TASKS)})")
    task_cls = TASKS[name][0]
    fields = {f.name for f in dataclasses.fields(task_cls)}
    unknown = set(knobs) - fields
    if unknown:
        raise ValueError(f"task {name!r} has no knob {sorted(unknown)[0]!r} (knobs: {', '.join(sorted(fields))})")
    return task_cls(**knobs)


__all__ = ["Samples", "exact_match", "names", "describe", "get", "UnknownTask", "TASKS"]
