"""The task registry: `names()` and `get(name, **knobs)`."""

from __future__ import annotations

import dataclasses
import difflib

from .base import Samples, exact_match
from .tokens.needle import NeedleTask
from .tokens.mqar import MQARTask
from .tokens.copy import CopyTask, SelectiveCopyTask
from .tokens.variable_tracking import VariableTrackingTask
from .tokens.words import CommonWordsTask, FrequentWordsTask

TASKS = {
    "needle": (NeedleTask, "needle retrieval (RULER NIAH): KEY VALUE needles in a haystack of noise, text or other needles; single, multi-key, multi-value or multi-query"),
    "mqar": (MQARTask, "multi-query associative recall (Zoology): KEY VALUE pairs, then their keys queried later, each answered in place"),
    "copy": (CopyTask, "copy: reproduce a span of content symbols, placed at a depth in a blank context, after SEP"),
    "selective_copy": (SelectiveCopyTask, "selective copy (Mamba): reproduce the content symbols scattered among blanks, in order, after SEP"),
    "variable_tracking": (VariableTrackingTask, "variable tracking (RULER vt): chains of assignments in a haystack; name every variable bound to the queried value"),
    "common_words": (CommonWordsTask, "common words extraction (RULER cwe): word occurrences in a haystack; name the few words that occur most often"),
    "frequent_words": (FrequentWordsTask, "frequent words extraction (RULER fwe): a Zipf-distributed word stream; name its most frequent words"),
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
