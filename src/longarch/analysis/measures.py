"""Measures over stored cells: per-cell intervals, effective length, lost-in-the-middle index and
format sensitivity, each with a bootstrap interval and a count of the planned cells it covers.

Everything works on `Cell`s (results pooled over seeds, see `stats.collect_cells`); nothing reads
or writes the store. Accuracies are fractions in [0, 1]. Wherever a measure compares or combines
several groups of cells (ends vs middle, one length vs another, one format vs the others) the
groups are resampled together: one draw of seeds, and within each seed one draw of sample
indices shared by every cell with the same number of samples. Differences then keep what the
groups share (the model seed above all) out of their interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .stats import Cell, mean_ci

CellKey = tuple[str, str, int, "float | None"]  # (model, label, length, depth), as `collect_cells` keys them
RULER_THRESHOLD = 0.856  # Llama-2-7B's RULER average at 4K, the bar RULER's effective length uses
MIDDLE = (40.0, 60.0)    # needle depths (percent) that count as the middle of the context


# --------------------------------------------------------------------------------------------
# plain results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval; n is the number of per-sample scores used."""

    value: float
    low: float
    high: float
    n: int

    def compare(self, bar: float) -> str:
        """'above' when the whole interval is above `bar`, 'below' when it is at or below it,
        'undecided' otherwise (or when there is no estimate)."""
        if np.isnan(self.low) or np.isnan(self.high):
            return "undecided"
        if self.low > bar:
            return "above"
        if self.high <= bar:
            return "below"
        return "undecided"

    def as_dict(self) -> dict:
        return {"value": _plain(self.value), "low": _plain(self.low), "high": _plain(self.high), "n": self.n}


NO_ESTIMATE = Estimate(float("nan"), float("nan"), float("nan"), 0)


@dataclass(frozen=True)
class Coverage:
    """How many of the planned cells an aggregate rests on; `missing` lists the absent ones."""

    expected: int
    covered: int
    missing: tuple[CellKey, ...] = ()

    @property
    def complete(self) -> bool:
        return self.covered >= self.expected

    def __add__(self, other: "Coverage") -> "Coverage":
        return Coverage(self.expected + other.expected, self.covered + other.covered, self.missing + other.missing)


@dataclass(frozen=True)
class Plan:
    """The planned evaluation grid, the same for every model. `depths` applies to every label, or
    is a mapping label -> depths; (None,) marks a label evaluated without a needle depth."""

    labels: tuple[str, ...]
    lengths: tuple[int, ...]
    depths: tuple[float | None, ...] | Mapping[str, tuple[float | None, ...]] = (None,)

    def depths_of(self, label: str) -> tuple[float | None, ...]:
        depths = self.depths.get(label, (None,)) if isinstance(self.depths, Mapping) else self.depths
        return tuple(None if d is None else float(d) for d in depths) or (None,)

    def keys(self, model: str) -> list[CellKey]:
        return [(model, label, int(length), depth) for label in self.labels for length in self.lengths
                for depth in self.depths_of(label)]


# --------------------------------------------------------------------------------------------
# selecting cells and counting what is missing
# --------------------------------------------------------------------------------------------
def cell_list(cells: Mapping[CellKey, Cell] | Iterable[Cell]) -> list[Cell]:
    return list(cells.values()) if isinstance(cells, Mapping) else list(cells)


def expected_keys(cells: Iterable[Cell], model: str, plan: Plan | None) -> list[CellKey]:
    """The cells planned for `model`: the plan's, or without one the full grid of the labels,
    lengths and (per label) depths this model has results for, so interior holes still count."""
    if plan is not None:
        return plan.keys(model)
    mine = [c for c in cells if c.model == model]
    labels = sorted({c.task for c in mine})
    lengths = sorted({c.length for c in mine})
    depths = {label: sorted({c.depth for c in mine if c.task == label}, key=lambda d: -1.0 if d is None else d)
              for label in labels}
    return [(model, label, length, depth) for label in labels for length in lengths for depth in depths[label]]


@dataclass
class Selection:
    """The cells an aggregate uses, and how many of the planned ones they are."""

    cells: list[Cell]
    coverage: Coverage

    @property
    def keys(self) -> list[CellKey]:
        return [(c.model, c.task, c.length, c.depth) for c in self.cells]


def select(cells: Iterable[Cell], model: str, plan: Plan | None = None, labels: Iterable[str] | None = None,
           lengths: Iterable[int] | None = None, depth=None) -> Selection:
    """The cells of `model` on the given labels and lengths (all when None) whose depth passes
    `depth` (a predicate on depth or None; all when not given), with their coverage of the plan."""
    cells = cell_list(cells)
    label_set = None if labels is None else set(labels)
    length_set = None if lengths is None else {int(x) for x in lengths}

    def wanted(label: str, length: int, cell_depth: float | None) -> bool:
        return ((label_set is None or label in label_set) and (length_set is None or length in length_set)
                and (depth is None or depth(cell_depth)))

    present = {(c.model, c.task, c.length, c.depth): c for c in cells if c.model == model and c.n > 0}
    expected = [k for k in expected_keys(cells, model, plan) if wanted(*k[1:])]
    chosen = [c for k, c in present.items() if wanted(*k[1:])]
    missing = tuple(k for k in expected if k not in present)
    return Selection(chosen, Coverage(len(expected), len(expected) - len(missing), missing))


# --------------------------------------------------------------------------------------------
# intervals
# --------------------------------------------------------------------------------------------
def seed_groups(cells: Iterable[Cell]) -> list[np.ndarray]:
    """Per-seed arrays of every score of `cells`, for `mean_ci`'s two-stage bootstrap."""
    by_seed: dict[int, list[np.ndarray]] = {}
    for cell in cells:
        for seed, scores in cell.per_seed.items():
            by_seed.setdefault(seed, []).append(np.asarray(scores, dtype=float).ravel())
    return [np.concatenate(parts) for _, parts in sorted(by_seed.items())]


def pooled_mean(cells: Iterable[Cell]) -> float:
    """Mean over every score of `cells`; nan when there is none."""
    groups = seed_groups(cells)
    flat = np.concatenate(groups) if groups else np.zeros(0)
    return float(flat.mean()) if flat.size else float("nan")


def pooled_estimate(cells: Iterable[Cell], level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Estimate:
    """Accuracy over every score of `cells` (seeds weighted by their samples), with the two-stage
    bootstrap interval of `mean_ci` (seeds resampled, then samples within each seed)."""
    groups = [g for g in seed_groups(cells) if g.size]
    if not groups:
        return NO_ESTIMATE
    mean, low, high = mean_ci(groups, level=level, resamples=resamples, seed=seed)
    return Estimate(mean, low, high, int(sum(g.size for g in groups)))


def cell_estimate(cell: Cell, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Estimate:
    """One cell's accuracy with a 95% interval over samples and seeds."""
    return pooled_estimate([cell], level=level, resamples=resamples, seed=seed)


def resampled_means(groups: Sequence[Sequence[Cell]], resamples: int = 2000,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The pooled accuracy of each group of cells, observed (G,) and under one shared bootstrap
    (resamples, G): seeds are drawn once for all groups, and within a seed every cell with the
    same number of samples reuses the same draw of sample indices (a paired resample)."""
    rng = np.random.default_rng(seed)
    seeds = sorted({s for group in groups for cell in group for s in cell.per_seed})
    observed_sum = np.zeros(len(groups))
    observed_n = np.zeros(len(groups))
    sums = np.zeros((resamples, len(groups)))
    counts = np.zeros((resamples, len(groups)))
    if seeds:
        seed_draws = rng.multinomial(len(seeds), np.full(len(seeds), 1 / len(seeds)), size=resamples)  # (R, S)
    for s, model_seed in enumerate(seeds):
        by_size: dict[int, list[tuple[int, np.ndarray]]] = {}
        for g, group in enumerate(groups):
            for cell in group:
                scores = np.asarray(cell.per_seed.get(model_seed, ()), dtype=float).ravel()
                if scores.size:
                    by_size.setdefault(scores.size, []).append((g, scores))
        for size, members in sorted(by_size.items()):
            copies = seed_draws[:, s]  # (R,)
            weights = rng.multinomial(copies * size, np.full(size, 1 / size))  # (R, size): index counts
            for g, scores in members:
                sums[:, g] += weights @ scores
                counts[:, g] += copies * size
                observed_sum[g] += scores.sum()
                observed_n[g] += size
    with np.errstate(invalid="ignore", divide="ignore"):
        return observed_sum / observed_n, sums / counts


def statistic_estimate(groups: Sequence[Sequence[Cell]], statistic, level: float = 0.95, resamples: int = 2000,
                       seed: int = 0) -> Estimate:
    """`statistic` (a function of the group means, applied along the last axis) with a
    percentile interval from the shared resample of `resampled_means`. Resamples that drew no
    score of some group (possible with few seeds) are left out."""
    if not groups or any(not group for group in groups):
        return NO_ESTIMATE
    observed, draws = resampled_means(groups, resamples=resamples, seed=seed)
    if np.isnan(observed).any():
        return NO_ESTIMATE
    draws = draws[~np.isnan(draws).any(axis=1)]
    values = statistic(draws)
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail]) if values.size else (np.nan, np.nan)
    n = int(sum(cell.n for group in groups for cell in group))
    return Estimate(float(statistic(observed[None, :])[0]), float(low), float(high), n)


def difference(first: Sequence[Cell], second: Sequence[Cell], level: float = 0.95, resamples: int = 2000,
               seed: int = 0) -> Estimate:
    """Accuracy of `first` minus accuracy of `second`, with a paired bootstrap interval."""
    return statistic_estimate([first, second], lambda m: m[:, 0] - m[:, 1], level, resamples, seed)


def _plain(x: float) -> float | None:
    return None if x is None or np.isnan(x) else round(float(x), 6)


# --------------------------------------------------------------------------------------------
# measures per model
# --------------------------------------------------------------------------------------------
@dataclass
class LengthAccuracy:
    length: int
    accuracy: Estimate
    cells: list[CellKey]
    coverage: Coverage


@dataclass
class EffectiveLength:
    """The longest evaluated length whose accuracy (pooled over seeds, depths and the chosen
    labels) is strictly above `threshold`; None when no length is. `contiguous` says whether every
    shorter evaluated length is above it too. `conservative` / `optimistic` apply the same rule to
    the lower / upper ends of the intervals. `ratio` is length / training length."""

    model: str
    labels: tuple[str, ...] | None   # None: pooled over every label
    threshold: float
    train_length: int
    length: int | None
    contiguous: bool
    conservative: int | None
    optimistic: int | None
    points: list[LengthAccuracy]
    coverage: Coverage

    @property
    def ratio(self) -> float | None:
        return None if self.length is None else self.length / self.train_length


def _longest_above(values: list[tuple[int, float]], threshold: float) -> int | None:
    above = [length for length, value in values if not np.isnan(value) and value > threshold]
    return max(above) if above else None


def accuracy_at_lengths(cells, model: str, plan: Plan | None = None, labels: Iterable[str] | None = None,
                        level: float = 0.95, resamples: int = 2000, seed: int = 0) -> list[LengthAccuracy]:
    """Accuracy at every planned or evaluated length, pooled over seeds, depths and `labels`."""
    cells = cell_list(cells)
    labels = None if labels is None else tuple(labels)
    everything = select(cells, model, plan, labels)
    lengths = sorted({k[2] for k in everything.keys} | {k[2] for k in everything.coverage.missing})
    points = []
    for length in lengths:
        chosen = select(cells, model, plan, labels, [length])
        points.append(LengthAccuracy(length, pooled_estimate(chosen.cells, level, resamples, seed), chosen.keys,
                                     chosen.coverage))
    return points


def effective_length(cells, model: str, train_length: int, plan: Plan | None = None,
                     labels: Iterable[str] | None = None, threshold: float = RULER_THRESHOLD, level: float = 0.95,
                     resamples: int = 2000, seed: int = 0) -> EffectiveLength:
    """RULER's effective length of one model (per label set, or pooled over every label)."""
    points = accuracy_at_lengths(cells, model, plan, labels, level, resamples, seed)
    length = _longest_above([(p.length, p.accuracy.value) for p in points], threshold)
    contiguous = length is not None and all(p.accuracy.value > threshold for p in points if p.length < length)
    coverage = sum((p.coverage for p in points), Coverage(0, 0))
    return EffectiveLength(
        model, None if labels is None else tuple(labels), threshold, int(train_length), length, contiguous,
        _longest_above([(p.length, p.accuracy.low) for p in points], threshold),
        _longest_above([(p.length, p.accuracy.high) for p in points], threshold), points, coverage)


def extrapolation_ratio(effective: EffectiveLength) -> float | None:
    """Effective length / training length; None when no length is effective."""
    return effective.ratio


@dataclass
class MiddleIndex:
    """Lost in the middle: accuracy at the two extreme depths present minus accuracy at depths in
    [40, 60], at one length, pooled over seeds and the chosen labels; a paired interval."""

    model: str
    length: int
    ends: tuple[float, ...]
    middle: tuple[float, ...]
    index: Estimate
    ends_accuracy: float
    middle_accuracy: float
    cells: list[CellKey]
    coverage: Coverage


def middle_index(cells, model: str, length: int, plan: Plan | None = None, labels: Iterable[str] | None = None,
                 middle: tuple[float, float] = MIDDLE, level: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> MiddleIndex:
    cells = cell_list(cells)
    labels = None if labels is None else tuple(labels)
    at_length = select(cells, model, plan, labels, [length], depth=lambda d: d is not None)
    depths = sorted({k[3] for k in at_length.keys} | {k[3] for k in at_length.coverage.missing})
    ends = (depths[0], depths[-1]) if len(depths) >= 2 else ()
    mids = tuple(d for d in depths if middle[0] <= d <= middle[1] and d not in ends)
    end_cells = [c for c in at_length.cells if c.depth in ends]
    mid_cells = [c for c in at_length.cells if c.depth in mids]
    used = select(cells, model, plan, labels, [length], depth=lambda d: d in ends or d in mids)
    index = difference(end_cells, mid_cells, level, resamples, seed) if ends and mids else NO_ESTIMATE
    return MiddleIndex(model, int(length), tuple(ends), mids, index, pooled_mean(end_cells), pooled_mean(mid_cells),
                       used.keys, used.coverage)


@dataclass
class FormatSpread:
    """Spread (max - min) across labels of the accuracy at one length (each label pooled over seeds
    and depths), with a paired interval; the best and worst label. The percentile interval of a
    maximum is biased upward when the labels are truly equal: read a small spread as 'at most'."""

    model: str
    length: int
    spread: Estimate
    best: str | None
    worst: str | None
    by_label: dict[str, Estimate] = field(default_factory=dict)
    cells: list[CellKey] = field(default_factory=list)
    coverage: Coverage = Coverage(0, 0)


def format_spread(cells, model: str, length: int, plan: Plan | None = None, labels: Iterable[str] | None = None,
                  level: float = 0.95, resamples: int = 2000, seed: int = 0) -> FormatSpread:
    cells = cell_list(cells)
    chosen = select(cells, model, plan, labels, [length])
    names = sorted({c.task for c in chosen.cells})
    groups = [[c for c in chosen.cells if c.task == name] for name in names]
    by_label = {name: pooled_estimate(group, level, resamples, seed) for name, group in zip(names, groups)}
    if len(names) < 2:
        return FormatSpread(model, int(length), NO_ESTIMATE, None, None, by_label, chosen.keys, chosen.coverage)
    spread = statistic_estimate(groups, lambda m: m.max(axis=1) - m.min(axis=1), level, resamples, seed)
    best = max(names, key=lambda name: by_label[name].value)
    worst = min(names, key=lambda name: by_label[name].value)
    return FormatSpread(model, int(length), spread, best, worst, by_label, chosen.keys, chosen.coverage)


def format_sensitivity(cells, model: str, plan: Plan | None = None, labels: Iterable[str] | None = None,
                       level: float = 0.95, resamples: int = 2000, seed: int = 0) -> list[FormatSpread]:
    """`format_spread` at every planned or evaluated length of `model`, sorted by length."""
    cells = cell_list(cells)
    everything = select(cells, model, plan, labels)
    lengths = sorted({k[2] for k in everything.keys} | {k[2] for k in everything.coverage.missing})
    return [format_spread(cells, model, length, plan, labels, level, resamples, seed) for length in lengths]
