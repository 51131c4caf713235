"""RULER's 13 text tasks, each a named, versioned, frozen task that `tasks.get(name, **knobs)`
returns, and `generate(...)` for fitted, cached samples.

Layout: haystack.py (word lists, haystacks, placing needles), ruler.py (NIAH, vt, the synthetic
configurations), aggregation.py (cwe, fwe), qa.py (qa_1, qa_2 from user files), templates.py
(filling and loading prompt templates), fit.py (length fitting, cache), scoring.py (metrics).
Each name is a subclass of its task's dataclass with RULER's defaults for that configuration, so
that a task knows its name and its knobs are its fields (as stored in every result's id).
"""

from __future__ import annotations

import dataclasses

from .fit import FITS, FitError, TextSample, fit_samples, generate
from .fit import fit as fit_sample  # the package attribute `fit` stays the module
from .qa import QA, TaskSkipped
from .ruler import CONFIGS
from .scoring import postprocess, score, string_match_all, string_match_part
from .templates import load_templates

DESCRIPTIONS = {
    "niah_single_1": "NIAH: one word key, number value, noise haystack (passkey)",
    "niah_single_2": "NIAH: one word key, number value, essay haystack",
    "niah_single_3": "NIAH: one word key, uuid value, essay haystack",
    "niah_multikey_1": "NIAH: 4 word keys (3 distractors), essay haystack",
    "niah_multikey_2": "NIAH: word key among a haystack of distractor needles",
    "niah_multikey_3": "NIAH: uuid key and value among distractor needles",
    "niah_multivalue": "NIAH: one key with 4 values, all asked for",
    "niah_multiquery": "NIAH: 4 keys, all queried at once",
    "vt": "variable tracking: 1 chain of 4 hops in noise, after a one-shot example; name all variables bound to "
          "the value",
    "cwe": "common words extraction: the 10 words repeated most in a numbered list, after a one-shot example",
    "fwe": "frequent words extraction: the 3 most frequent coded words of a Zipf(2) stream",
    "qa_1": "QA on SQuAD v2 (path=FILE): the answer from documents among distractors",
    "qa_2": "multi-hop QA on HotpotQA (path=FILE) among distractors",
}
CONFIGURATIONS = {**CONFIGS, "qa_1": (QA, {"dataset": "squad"}), "qa_2": (QA, {"dataset": "hotpotqa"})}


def _named(name: str, base: type, defaults: dict) -> type:
    """The task `name`: `base` with RULER's defaults for it, frozen, knowing its name."""
    fields = [(key, base.__dataclass_fields__[key].type, dataclasses.field(default=value))
              for key, value in defaults.items()]
    cls_name = "".join(part.capitalize() for part in name.split("_"))
    return dataclasses.make_dataclass(cls_name, fields, bases=(base,), frozen=True, namespace={
        "name": name, "description": DESCRIPTIONS[name], "__doc__": DESCRIPTIONS[name], "__module__": __name__})


TEXT_TASKS = {name: _named(name, base, defaults) for name, (base, defaults) in CONFIGURATIONS.items()}
# each class is an attribute of this module under its own name, so a task pickles (jobs go to workers)
globals().update({cls.__name__: cls for cls in TEXT_TASKS.values()})

__all__ = ["TEXT_TASKS", "names", "make", "fit_sample", "fit_samples", "FITS", "generate", "score", "string_match_all",
           "string_match_part", "postprocess", "load_templates", "TextSample", "FitError", "TaskSkipped"]


def names() -> list[str]:
    return list(TEXT_TASKS)


def make(cls: type, knobs: dict):
    """The text task `cls` with `knobs`. qa_1/qa_2 without path=FILE raise TaskSkipped with the
    one-line reason. `template` is the template text (it contains {context}) or a YAML/JSON
    template file (see templates.py), whose entry for this task sets `template` and
    `answer_prefix`."""
    template = knobs.get("template")
    if template is not None and "{context}" not in str(template):  # a file, not the text itself
        entry = load_templates(template).get(cls.name)
        if entry is None:
            raise ValueError(f"template file {str(template)!r} has no entry for {cls.name!r} or its family")
        knobs = {**knobs, "template": entry["template"],
                 "answer_prefix": knobs.get("answer_prefix", entry["answer_prefix"])}
    return cls(**knobs)
