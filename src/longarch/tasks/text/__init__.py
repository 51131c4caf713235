"""RULER's 13 text tasks: `names()`, `get(name, **knobs)` and `generate(...)` for fitted, cached samples.

Layout: haystack.py (word lists, haystacks, placing needles), ruler.py (NIAH, vt, the synthetic
configurations), aggregation.py (cwe, fwe), qa.py (qa_1, qa_2 from user files), templates.py
(filling and loading prompt templates), fit.py (length fitting, cache), scoring.py (metrics).
"""

from __future__ import annotations

import dataclasses
import difflib

from .fit import FitError, TextSample, generate
from .fit import fit as fit_sample  # the package attribute `fit` stays the module
from .qa import QA, TaskSkipped
from .ruler import CONFIGS
from .scoring import postprocess, score, string_match_all, string_match_part
from .templates import load_templates

TEXT_TASKS = {
    "niah_single_1": (CONFIGS["niah_single_1"], "NIAH: one word key, number value, noise haystack (passkey)"),
    "niah_single_2": (CONFIGS["niah_single_2"], "NIAH: one word key, number value, essay haystack"),
    "niah_single_3": (CONFIGS["niah_single_3"], "NIAH: one word key, uuid value, essay haystack"),
    "niah_multikey_1": (CONFIGS["niah_multikey_1"], "NIAH: 4 word keys (3 distractors), essay haystack"),
    "niah_multikey_2": (CONFIGS["niah_multikey_2"], "NIAH: word key among a haystack of distractor needles"),
    "niah_multikey_3": (CONFIGS["niah_multikey_3"], "NIAH: uuid key and value among distractor needles"),
    "niah_multivalue": (CONFIGS["niah_multivalue"], "NIAH: one key with 4 values, all asked for"),
    "niah_multiquery": (CONFIGS["niah_multiquery"], "NIAH: 4 keys, all queried at once"),
    "vt": (CONFIGS["vt"], "variable tracking: 1 chain of 4 hops in noise, after a one-shot example; "
                          "name all variables bound to the value"),
    "cwe": (CONFIGS["cwe"], "common words extraction: the 10 words repeated most in a numbered list, "
                            "after a one-shot example"),
    "fwe": (CONFIGS["fwe"], "frequent words extraction: the 3 most frequent coded words of a Zipf(2) stream"),
    "qa_1": ((QA, {"dataset": "squad"}), "QA on SQuAD v2 (path=FILE): the answer from documents among distractors"),
    "qa_2": ((QA, {"dataset": "hotpotqa"}), "multi-hop QA on HotpotQA (path=FILE) among distractors"),
}

__all__ = ["TEXT_TASKS", "names", "describe", "get", "fit_sample", "generate", "score", "string_match_all",
           "string_match_part", "postprocess", "load_templates", "TextSample", "FitError", "TaskSkipped"]


def names() -> list[str]:
    return list(TEXT_TASKS)


def describe(name: str) -> str:
    return TEXT_TASKS[name][1]


def get(name: str, **knobs):
    """The task `name` with RULER's defaults, overridden by `knobs`; unknown names and knobs are errors.
    qa_1/qa_2 without path=FILE raise TaskSkipped with the one-line reason.

    `template` is the template text (it contains {context}) or a YAML/JSON template file (see
    templates.py), whose entry for this task sets `template` and `answer_prefix`."""
    if name not in TEXT_TASKS:
        close = difflib.get_close_matches(name, TEXT_TASKS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown text task {name!r}{hint} (known: {', '.join(TEXT_TASKS)})")
    cls, defaults = TEXT_TASKS[name][0]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(knobs) - fields
    if unknown:
        raise ValueError(f"text task {name!r} has no knob {sorted(unknown)[0]!r} (knobs: {', '.join(sorted(fields))})")
    template = knobs.get("template")
    if template is not None and "{context}" not in str(template):  # a file, not the text itself
        entry = load_templates(template).get(name)
        if entry is None:
            raise ValueError(f"template file {str(template)!r} has no entry for {name!r} or its family")
        knobs = {**knobs, "template": entry["template"],
                 "answer_prefix": knobs.get("answer_prefix", entry["answer_prefix"])}
    return cls(**{**defaults, **knobs})
