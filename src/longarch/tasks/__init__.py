"""The task registry, one for both families: `names()`, `describe(name)` and `get(name, **knobs)`.

Token tasks (tokens/) are what controlled studies train and evaluate small models on; text
tasks (text/) are RULER's, for pretrained checkpoints. Both follow the one contract of base.py.
"""

from __future__ import annotations

import dataclasses
import difflib

from . import text
from .base import Samples, TextTask, TokenTask, exact_match
from .tokens.needle import NeedleTask
from .tokens.mqar import MQARTask
from .tokens.copy import CopyTask, SelectiveCopyTask
from .tokens.variable_tracking import VariableTrackingTask
from .tokens.words import CommonWordsTask, FrequentWordsTask

TOKEN_TASKS = {
    "needle": (NeedleTask, "needle retrieval (RULER NIAH): KEY VALUE needles in a haystack of noise, text or other needles; single, multi-key, multi-value or multi-query"),
    "mqar": (MQARTask, "multi-query associative recall (Zoology): KEY VALUE pairs, then their keys queried later, each answered in place"),
    "copy": (CopyTask, "copy: reproduce a span of content symbols, placed at a depth in a blank context, after SEP"),
    "selective_copy": (SelectiveCopyTask, "selective copy (Mamba): reproduce the content symbols scattered among blanks, in order, after SEP"),
    "variable_tracking": (VariableTrackingTask, "variable tracking (RULER vt): chains of assignments in a haystack; name every variable bound to the queried value"),
    "common_words": (CommonWordsTask, "common words extraction (RULER cwe): word occurrences in a haystack; name the few words that occur most often"),
    "frequent_words": (FrequentWordsTask, "frequent words extraction (RULER fwe): a Zipf-distributed word stream; name its most frequent words"),
}
# name -> (the task's class, a one-line description), both families
TASKS = {**TOKEN_TASKS, **{name: (cls, cls.description) for name, cls in text.TEXT_TASKS.items()}}
FAMILY_NOUN = {"tokens": "task", "text": "text task"}


class UnknownTask(ValueError):
    pass


def names(family: str | None = None) -> list[str]:
    """The registered tasks, of one family ("tokens" or "text") or of both."""
    return [name for name, (cls, _) in TASKS.items() if family in (None, cls.family)]


def describe(name: str) -> str:
    return TASKS[name][1]


def task_class(name: str) -> type:
    return TASKS[name][0]


def get(name: str, *, family: str | None = None, **knobs):
    """The task `name` with its knobs set (a text task: RULER's defaults for it, overridden by
    `knobs`); unknown names and knobs are errors. `family`: only tasks of that family are known."""
    known = names(family)
    noun = FAMILY_NOUN.get(family, "task")
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownTask(f"unknown {noun} {name!r}{hint} (known: {', '.join(known)})")
    cls = TASKS[name][0]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(knobs) - fields
    if unknown:
        raise ValueError(f"{FAMILY_NOUN[cls.family]} {name!r} has no knob {sorted(unknown)[0]!r} "
                         f"(knobs: {', '.join(sorted(fields))})")
    return text.make(cls, knobs) if cls.family == "text" else cls(**knobs)


__all__ = ["Samples", "TextTask", "TokenTask", "exact_match", "names", "describe", "get", "task_class",
           "UnknownTask", "TASKS"]
