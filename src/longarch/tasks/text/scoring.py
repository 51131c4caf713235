"""RULER's metrics: string_match_all (fraction of references found, partial credit) and
string_match_part (any reference found, for QA); both case-insensitive substring tests, x100."""

from __future__ import annotations


def _check(predictions: list[str], references: list[list[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
    if not predictions:
        raise ValueError("no predictions to score")


def string_match_all(predictions: list[str], references: list[list[str]]) -> float:
    _check(predictions, references)
    total = 0.0
    for pred, refs in zip(predictions, references):
        p = pred.lower()
        total += sum(r.lower() in p for r in refs) / len(refs)
    return 100.0 * total / len(predictions)


def string_match_part(predictions: list[str], references: list[list[str]]) -> float:
    _check(predictions, references)
    hits = sum(max(r.lower() in pred.lower() for r in refs) for pred, refs in zip(predictions, references))
    return 100.0 * hits / len(predictions)


METRIC = {"qa_1": string_match_part, "qa_2": string_match_part}


def score(task: str, predictions: list[str], references: list[list[str]]) -> float:
    """The task's RULER metric: string_match_part for QA, string_match_all for the rest."""
    return METRIC.get(task, string_match_all)(predictions, references)
