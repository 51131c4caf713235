"""Statistics over stored results: aggregation over seeds, and the interval of a curve point.

Everything here works on plain rows read from the store (`ModelRow`, `ResultRow`) and numpy
arrays; nothing trains or evaluates. Accuracies are fractions in [0, 1] throughout; the
renderers turn them into percentages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..study.store import ModelRow, ResultRow
from . import intervals

DEFAULT_MIN_TRAIN_ACCURACY = 0.95


# --------------------------------------------------------------------------------------------
# intervals
# --------------------------------------------------------------------------------------------
def mean_ci(scores: np.ndarray | Sequence[np.ndarray], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper) of per-sample scores in [0, 1]: one array (one seed), or a list of
    per-seed arrays. The mean is that of the seed means; the interval is
    `intervals.these_seeds_interval` (Jeffreys, for the mean accuracy of these seeds, never zero
    width). (nan, nan, nan) when there are no scores."""
    groups = [g for g in _groups(scores) if g.size]
    if not groups:
        return float("nan"), float("nan"), float("nan")
    k, n = intervals.counts(groups)
    low, high = intervals.these_seeds_interval(k, n, level)
    return float(np.mean(k / n)), float(low), float(high)


def _groups(scores: np.ndarray | Sequence) -> list[np.ndarray]:
    """Per-seed groups: one for an array or a flat list of numbers, one per element of a list of arrays."""
    if isinstance(scores, np.ndarray) and scores.dtype != object:
        return [scores.ravel().astype(float)]
    items = list(scores)
    if all(np.ndim(item) == 0 for item in items):
        return [np.asarray(items, dtype=float)]
    return [np.asarray(item, dtype=float).ravel() for item in items]


# --------------------------------------------------------------------------------------------
# aggregation over seeds
# --------------------------------------------------------------------------------------------
@dataclass
class ModelSummary:
    """One model name, aggregated over its training seeds."""

    name: str
    family: str
    params: int              # the lowest seed's (identical across seeds for one config)
    state_floats: int        # floats of state per sequence at the training length
    state_growth: str        # 'constant' or 'linear' in the sequence length
    train_length: int
    train_accuracy: float    # mean over seeds, in [0, 1]; nan if no model row is stored
    train_seconds: float     # mean over seeds
    seeds: list[int]         # the seeds it is summarised over: those that trained, or, when every seed diverged, those
    diverged: dict[int, int] = field(default_factory=dict)  # seed -> the step its training diverged at

    def solved(self, threshold: float) -> bool:
        """Did the model learn the task at its training length (mean over seeds)?"""
        return bool(self.train_accuracy >= threshold)

    @property
    def all_diverged(self) -> bool:
        """Every seed's training diverged: a model that learned nothing (training accuracy 0)."""
        return bool(self.diverged) and not set(self.seeds) - set(self.diverged)


@dataclass
class Cell:
    """The stored results of one (model name, task label, length, depth), pooled over seeds;
    depth is None for a task without a needle depth."""

    model: str
    task: str
    length: int
    depth: float | None
    per_seed: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def scores(self) -> np.ndarray:
        return np.concatenate(list(self.per_seed.values())) if self.per_seed else np.zeros(0)

    @property
    def n(self) -> int:
        return int(sum(s.size for s in self.per_seed.values()))

    @property
    def accuracy(self) -> float:
        """Mean of the seeds' accuracies (each seed's mean score): the estimate every interval of
        the analysis is centred on. With as many samples in every seed (the runner's design) it is
        the mean over all scores."""
        means = [np.mean(s) for s in self.per_seed.values() if np.size(s)]
        return float(np.mean(means)) if means else float("nan")


def summarise_models(models: Iterable[ModelRow], results: Iterable[ResultRow] = ()) -> list[ModelSummary]:
    """One summary per model name, in the order names first appear in the store.

    A name that has results but no stored model row (a store written by hand, or a training row
    lost) still gets a summary, with unknown fields left empty, so its results are not dropped.
    A seed whose training diverged is left out of its name's summary (it has no results) and
    listed in `diverged`; a name whose every seed diverged is summarised over them, with training
    accuracy 0: a model that did not learn.
    """
    by_name: dict[str, list[ModelRow]] = {}
    for row in models:
        by_name.setdefault(row.name, []).append(row)
    summaries = []
    for name, every in by_name.items():
        every = sorted(every, key=lambda r: r.seed)
        rows = [r for r in every if r.diverged is None] or every
        first = rows[0]
        summaries.append(ModelSummary(
            name=name, family=first.family, params=first.params, state_floats=first.state_floats,
            state_growth=first.state_growth, train_length=first.train_length,
            train_accuracy=float(np.mean([r.train_accuracy for r in rows])),
            train_seconds=float(np.mean([r.train_seconds for r in rows])),
            seeds=sorted({r.seed for r in rows}),
            diverged={r.seed: r.diverged for r in every if r.diverged is not None}))
    orphans: dict[str, list[ResultRow]] = {}
    for result in results:
        if result.model not in by_name:
            orphans.setdefault(result.model, []).append(result)
    for name, rows in orphans.items():
        summaries.append(ModelSummary(
            name=name, family="?", params=0, state_floats=0, state_growth="?",
            train_length=min(r.length for r in rows), train_accuracy=float("nan"), train_seconds=float("nan"),
            seeds=sorted({r.seed for r in rows})))
    return summaries


def collect_cells(results: Iterable[ResultRow]) -> dict[tuple[str, str, int, float | None], Cell]:
    """Results keyed by (model name, task label, length, depth), each pooling its seeds."""
    cells: dict[tuple[str, str, int, float | None], Cell] = {}
    for row in results:
        key = (row.model, row.label or row.task, int(row.length), None if row.depth is None else float(row.depth))
        cell = cells.setdefault(key, Cell(*key))
        cell.per_seed[row.seed] = np.asarray(row.scores, dtype=float)
    return cells


def scores_by_length(cells: Iterable[Cell], model: str, task: str | None = None) -> dict[int, np.ndarray]:
    """All per-sample scores of a model at each length, pooled over depths, seeds and tasks (or
    of one task label only).

    With the same number of samples in every depth cell, the mean of these pooled scores equals
    the average of the per-depth accuracies.
    """
    pooled: dict[int, list[np.ndarray]] = {}
    for cell in cells:
        if cell.model == model and (task is None or cell.task == task):
            pooled.setdefault(cell.length, []).append(cell.scores)
    return {length: np.concatenate(parts) for length, parts in sorted(pooled.items())}


def seeds_by_length(cells: Iterable[Cell], model: str, task: str | None = None) -> dict[int, list[np.ndarray]]:
    """Like `scores_by_length`, but one array per training seed at each length."""
    pooled: dict[int, dict[int, list[np.ndarray]]] = {}
    for cell in cells:
        if cell.model == model and (task is None or cell.task == task):
            for seed, scores in cell.per_seed.items():
                pooled.setdefault(cell.length, {}).setdefault(seed, []).append(np.asarray(scores, dtype=float))
    return {length: [np.concatenate(parts) for _, parts in sorted(by_seed.items())]
            for length, by_seed in sorted(pooled.items())}


@dataclass
class LengthPoint:
    """Accuracy of one model at one length with its interval (`mean_ci`), all in [0, 1]."""

    length: int
    accuracy: float
    low: float
    high: float
    n: int


def accuracy_by_length(cells: Iterable[Cell], model: str, level: float = 0.95,
                       task: str | None = None) -> list[LengthPoint]:
    """The accuracy-vs-length curve of one model (on one task label, or all pooled), sorted by length."""
    points = []
    for length, groups in seeds_by_length(cells, model, task).items():
        mean, low, high = mean_ci(groups, level=level)
        points.append(LengthPoint(length, mean, low, high, int(sum(g.size for g in groups))))
    return points
