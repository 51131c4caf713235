"""Statistics over stored results: bootstrap intervals and aggregation over seeds.

Everything here works on plain rows read from the store (`ModelRow`, `ResultRow`) and numpy
arrays; nothing trains or evaluates. Accuracies are fractions in [0, 1] throughout; the
renderers turn them into percentages.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..store import ModelRow, ResultRow

DEFAULT_MIN_TRAIN_ACCURACY = 0.95


# --------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------
def bootstrap_ci(scores: np.ndarray | Sequence[np.ndarray], level: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean of per-sample scores.

    `scores` is either one array (or flat list) of per-sample scores, resampled with replacement
    `resamples` times, or a list of per-seed arrays: then the seeds are resampled first and the samples
    within each drawn seed next (a two-stage bootstrap), so the interval also reflects the
    spread between training seeds. The statistic is always the mean over all resampled samples.
    Returns (lower, upper); (nan, nan) when there are no scores. Deterministic given `seed`.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    groups = [g for g in _groups(scores) if g.size]
    if not groups:
        return float("nan"), float("nan")
    pooled = np.concatenate(groups)
    if np.all(pooled == pooled[0]):
        return float(pooled[0]), float(pooled[0])  # exact, without rounding noise from the sums
    rng = np.random.default_rng(seed)
    if len(groups) == 1:
        totals, sizes = _resampled_sums(groups[0], np.full(resamples, 1), rng), np.full(resamples, pooled.size)
    else:
        # how often each seed is drawn in each resample: (resamples, seeds)
        draws = rng.multinomial(len(groups), np.full(len(groups), 1 / len(groups)), size=resamples)
        totals = sum(_resampled_sums(g, draws[:, i], rng) for i, g in enumerate(groups))
        sizes = draws @ np.array([g.size for g in groups])
    means = totals / sizes  # (resamples,)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def _resampled_sums(values: np.ndarray, copies: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sum of `copies[r]` bootstrap resamples of `values`, for each resample r.

    Resampling n values with replacement only matters through how often each distinct value is
    drawn, which is multinomial; drawing those counts instead of n indices per resample costs
    (resamples x distinct values) rather than (resamples x n), which for exact-match scores
    (two distinct values) is tiny whatever n is.
    """
    distinct, counts = np.unique(values, return_counts=True)
    drawn = rng.multinomial(copies * values.size, counts / values.size)  # (resamples, distinct)
    return drawn @ distinct


def mean_ci(scores: np.ndarray | Sequence[np.ndarray], level: float = 0.95, resamples: int = 2000,
            seed: int = 0) -> tuple[float, float, float]:
    """(mean, lower, upper) of per-sample scores; the interval is `bootstrap_ci`'s."""
    flat = _flatten(scores)
    mean = float(flat.mean()) if flat.size else float("nan")
    return (mean, *bootstrap_ci(scores, level=level, resamples=resamples, seed=seed))


def _groups(scores: np.ndarray | Sequence) -> list[np.ndarray]:
    """Per-seed groups: one for an array or a flat list of numbers, one per element of a list of arrays."""
    if isinstance(scores, np.ndarray) and scores.dtype != object:
        return [scores.ravel().astype(float)]
    items = list(scores)
    if all(np.ndim(item) == 0 for item in items):
        return [np.asarray(items, dtype=float)]
    return [np.asarray(item, dtype=float).ravel() for item in items]


def _flatten(scores: np.ndarray | Sequence) -> np.ndarray:
    parts = _groups(scores)
    return np.concatenate(parts) if parts else np.zeros(0)


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
    seeds: list[int]

    def solved(self, threshold: float) -> bool:
        """Did the model learn the task at its training length (mean over seeds)?"""
        return bool(self.train_accuracy >= threshold)


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
        """Mean over every per-sample score of every seed (seeds weighted by their samples)."""
        scores = self.scores
        return float(scores.mean()) if scores.size else float("nan")


def summarise_models(models: Iterable[ModelRow], results: Iterable[ResultRow] = ()) -> list[ModelSummary]:
    """One summary per model name, in the order names first appear in the store.

    A name that has results but no stored model row (a store written by hand, or a training row
    lost) still gets a summary, with unknown fields left empty, so its results are not dropped.
    """
    by_name: dict[str, list[ModelRow]] = {}
    for row in models:
        by_name.setdefault(row.name, []).append(row)
    summaries = []
    for name, rows in by_name.items():
        rows = sorted(rows, key=lambda r: r.seed)
        first = rows[0]
        summaries.append(ModelSummary(
            name=name, family=first.family, params=first.params, state_floats=first.state_floats,
            state_growth=first.state_growth, train_length=first.train_length,
            train_accuracy=float(np.mean([r.train_accuracy for r in rows])),
            train_seconds=float(np.mean([r.train_seconds for r in rows])),
            seeds=sorted({r.seed for r in rows})))
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


@dataclass
class LengthPoint:
    """Accuracy of one model at one length with its bootstrap interval, all in [0, 1]."""

    length: int
    accuracy: float
    low: float
    high: float
    n: int


def accuracy_by_length(cells: Iterable[Cell], model: str, level: float = 0.95,
                       task: str | None = None) -> list[LengthPoint]:
    """The accuracy-vs-length curve of one model (on one task label, or all pooled), sorted by length."""
    points = []
    for length, scores in scores_by_length(cells, model, task).items():
        mean, low, high = mean_ci(scores, level=level)
        points.append(LengthPoint(length, mean, low, high, int(scores.size)))
    return points
