"""RULER's metrics (scripts/eval/synthetic/constants.py): string_match_all (the fraction of references
found, so partial credit) for the synthetic tasks and string_match_part (any reference found) for QA;
both case-insensitive substring tests, x100, averaged over samples.

Predictions first go through RULER's postprocessing (scripts/eval/evaluate.py): strip, turn control
characters into newlines, strip again; nothing is cut at a newline and RULER uses no stop words by
default. RULER rounds a task's score to 2 decimals; these functions return it unrounded, so
per-sample scores average exactly.
"""

from __future__ import annotations

import re

CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(prediction: str) -> str:
    """RULER's cleaning of a generated answer before matching."""
    return CONTROL.sub("\n", prediction.strip()).strip()


def _check(predictions: list[str], references: list[list[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    if not predictions:
        raise ValueError("no predictions to score")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every sample needs at least one reference")


def string_match_all(predictions: list[str], references: list[list[str]]) -> float:
    _check(predictions, references)
    total = 0.0
    for pred, refs in zip(predictions, references):
        p = postprocess(pred).lower()
        total += sum(r.lower() in p for r in refs) / len(refs)
    return 100.0 * total / len(predictions)


def string_match_part(predictions: list[str], references: list[list[str]]) -> float:
    _check(predictions, references)
    hits = 0
    for pred, refs in zip(predictions, references):
        p = postprocess(pred).lower()
        hits += any(r.lower() in p for r in refs)
    return 100.0 * hits / len(predictions)


METRIC = {"qa_1": string_match_part, "qa_2": string_match_part}


def score(task: str, predictions: list[str], references: list[list[str]]) -> float:
    """The task's RULER metric: string_match_part for QA, string_match_all for the rest."""
    return METRIC.get(task, string_match_all)(predictions, references)
