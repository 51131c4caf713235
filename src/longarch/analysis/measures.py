"""Measures over stored cells: per-cell intervals, effective length, the lost-in-the-middle index
(primacy and recency apart) and format spread, each with its interval and a count of the planned
cells it rests on.

Everything works on `Cell`s (results pooled over seeds, see `stats.collect_cells`); nothing reads
or writes the store. Accuracies are fractions in [0, 1].

Intervals (see `intervals` for why these and their coverage, proven by simulation): an accuracy
gets the Jeffreys interval of its counts pooled over seeds, which covers the mean true accuracy of
the seeds that were trained; a difference of two accuracies gets Newcombe's MOVER interval built
from the two. A quantity read at several lengths or depths at once (the worse of two ends, the
widest of several formats, "at some length past T") takes its intervals at a Bonferroni-corrected
level, so the whole statement holds at the nominal level.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from . import intervals
from .stats import Cell

CellKey = tuple[str, str, int, "float | None"]  # (model, label, length, depth), as `collect_cells` keys them
RULER_BAR = 0.856  # Llama-2-7B's RULER average at 4K, the bar of RULER's effective length
MIDDLE = (40.0, 60.0)    # needle depths (percent) that count as the middle of the context


# --------------------------------------------------------------------------------------------
# plain results
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """A point estimate with its interval; n is the number of per-sample scores used."""

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
    is a mapping label -> depths; (None,) marks a label evaluated without a needle depth.
    `answer_lengths`: how many symbols each label's answer has (claim 4 compares only formats of
    equal answer length)."""

    labels: tuple[str, ...]
    lengths: tuple[int, ...]
    depths: tuple[float | None, ...] | Mapping[str, tuple[float | None, ...]] = (None,)
    answer_lengths: Mapping[str, int] | None = None  # answer symbols per sample, per label; None: unknown

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
    """Per-seed arrays of every score of `cells`, in seed order."""
    by_seed: dict[int, list[np.ndarray]] = {}
    for cell in cells:
        for seed, scores in cell.per_seed.items():
            by_seed.setdefault(seed, []).append(np.asarray(scores, dtype=float).ravel())
    return [np.concatenate(parts) for _, parts in sorted(by_seed.items())]


def seed_counts(cells: Iterable[Cell]) -> tuple[np.ndarray, np.ndarray]:
    """(k, n) per seed over every score of `cells`: the sum of the scores and their number
    (seeds with no score left out); see `intervals.counts`."""
    return intervals.counts([g for g in seed_groups(cells) if g.size])


def pooled_mean(cells: Iterable[Cell]) -> float:
    """Mean of the seeds' accuracies over every score of `cells` (the value of `pooled_estimate`;
    with as many samples in every seed, the mean over all scores); nan when there is none."""
    k, n = seed_counts(cells)
    return float(np.mean(k / n)) if n.size else float("nan")


def pooled_estimate(cells: Iterable[Cell], level: float = 0.95) -> Estimate:
    """Accuracy over every score of `cells` with its interval for these trained seeds.

    The value is the mean of the per-seed accuracies (the pooled accuracy when every seed has as
    many samples); the interval is `intervals.these_seeds_interval`: the Jeffreys interval of the
    counts pooled over seeds, which covers the mean true accuracy of the seeds that were trained
    (seed-to-seed spread is shown apart, never in it). It never has zero width: 48 of 48 correct
    gives [0.949, 1]."""
    k, n = seed_counts(cells)
    if not n.size:
        return NO_ESTIMATE
    low, high = intervals.these_seeds_interval(k, n, level)
    return Estimate(float(np.mean(k / n)), float(low), float(high), int(n.sum()))


def cell_estimate(cell: Cell, level: float = 0.95) -> Estimate:
    """One cell's accuracy with its interval (see `pooled_estimate`)."""
    return pooled_estimate([cell], level)


def difference(first: Sequence[Cell], second: Sequence[Cell], level: float = 0.95) -> Estimate:
    """Accuracy of `first` minus accuracy of `second` (each pooled as in `pooled_estimate`), with
    Newcombe's MOVER interval built from the two intervals (`intervals.these_seeds_difference`).
    It assumes the two groups' samples are independent given the seeds; where they share samples
    (two models of one seed see the same samples) and score alike, it errs wide."""
    k_a, n_a = seed_counts(first)
    k_b, n_b = seed_counts(second)
    if not n_a.size or not n_b.size:
        return NO_ESTIMATE
    a, b = float(np.mean(k_a / n_a)), float(np.mean(k_b / n_b))
    low, high = intervals.these_seeds_difference(k_a, n_a, k_b, n_b, level)
    return Estimate(a - b, float(low), float(high), int(n_a.sum() + n_b.sum()))


def simultaneous_level(level: float, tests: int) -> float:
    """The level of each of `tests` intervals that hold together at `level` (Bonferroni)."""
    return 1 - (1 - level) / max(1, tests)


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
    """How far a model's accuracy (pooled over seeds, depths and the chosen labels) stays above
    `bar`, by two rules:

    - `length`: the longest evaluated length up to which the interval's lower bound is above
      `bar` at every evaluated length (contiguous from the shortest); None when the shortest
      already fails. One lucky point past a failing length cannot extend it.
    - `ruler_length`: RULER's rule, the longest length whose point accuracy is above `bar`,
      contiguous or not (what RULER's tables report; compare with it).
    - `optimistic`: the contiguous rule on the upper bounds (the most the data allow).

    `ratio` is `length` / training length."""

    model: str
    labels: tuple[str, ...] | None   # None: pooled over every label
    bar: float
    train_length: int
    length: int | None
    ruler_length: int | None
    optimistic: int | None
    points: list[LengthAccuracy]
    coverage: Coverage

    @property
    def ratio(self) -> float | None:
        return None if self.length is None else self.length / self.train_length


def _contiguous(values: list[tuple[int, float]], bar: float) -> int | None:
    """The longest length up to which every value (in length order) is above `bar`."""
    last = None
    for length, value in sorted(values):
        if np.isnan(value) or value <= bar:
            break
        last = length
    return last


def _longest_above(values: list[tuple[int, float]], bar: float) -> int | None:
    above = [length for length, value in values if not np.isnan(value) and value > bar]
    return max(above) if above else None


def accuracy_at_lengths(cells, model: str, plan: Plan | None = None, labels: Iterable[str] | None = None,
                        level: float = 0.95) -> list[LengthAccuracy]:
    """Accuracy at every planned or evaluated length, pooled over seeds, depths and `labels`."""
    cells = cell_list(cells)
    labels = None if labels is None else tuple(labels)
    points = []
    for length in lengths_of(cells, model, plan, labels):
        chosen = select(cells, model, plan, labels, [length])
        points.append(LengthAccuracy(length, pooled_estimate(chosen.cells, level), chosen.keys, chosen.coverage))
    return points


def lengths_of(cells, model: str, plan: Plan | None = None, labels: Iterable[str] | None = None) -> list[int]:
    """Every planned or evaluated length of `model` (on `labels`), sorted."""
    everything = select(cell_list(cells), model, plan, labels)
    return sorted({k[2] for k in everything.keys} | {k[2] for k in everything.coverage.missing})


def effective_length(cells, model: str, train_length: int, plan: Plan | None = None,
                     labels: Iterable[str] | None = None, bar: float = RULER_BAR,
                     level: float = 0.95) -> EffectiveLength:
    """Effective length of one model (per label set, or pooled over every label); see
    `EffectiveLength`. A length with a planned cell missing counts for neither rule: it ends the
    contiguous run, and RULER's rule skips it."""
    points = accuracy_at_lengths(cells, model, plan, labels, level)
    lows = [(p.length, p.accuracy.low if p.coverage.complete else float("nan")) for p in points]
    coverage = sum((p.coverage for p in points), Coverage(0, 0))
    return EffectiveLength(
        model, None if labels is None else tuple(labels), bar, int(train_length), _contiguous(lows, bar),
        _longest_above([(p.length, p.accuracy.value) for p in points if p.coverage.complete], bar),
        _contiguous([(p.length, p.accuracy.high) for p in points], bar), points, coverage)


def extrapolation_ratio(effective: EffectiveLength) -> float | None:
    """Effective length / training length; None when no length is effective."""
    return effective.ratio


@dataclass
class MiddleIndex:
    """Lost in the middle at one length, pooled over seeds and the chosen labels.

    primacy = accuracy at the first depth minus at the middle depths (40-60%), recency = at the
    last depth minus at the middle; `u_index` = min(start, end) - middle = min(primacy, recency),
    which is above zero only when BOTH ends beat the middle (a U), not when accuracy just rises
    toward the question (recency alone). The intervals of primacy and recency are each taken at
    level 1 - (1 - level) / 2, so `u_index`'s interval [min of lows, min of highs] holds at
    `level`."""

    model: str
    length: int
    start_depth: float | None
    end_depth: float | None
    middle: tuple[float, ...]
    start: Estimate
    end: Estimate
    middle_accuracy: Estimate
    overall: Estimate
    primacy: Estimate
    recency: Estimate
    u_index: Estimate
    cells: list[CellKey]
    coverage: Coverage

    @property
    def measured(self) -> bool:
        return self.start_depth is not None and bool(self.middle) and not np.isnan(self.u_index.value)


def middle_index(cells, model: str, length: int, plan: Plan | None = None, labels: Iterable[str] | None = None,
                 middle: tuple[float, float] = MIDDLE, level: float = 0.95) -> MiddleIndex:
    cells = cell_list(cells)
    labels = None if labels is None else tuple(labels)
    at_length = select(cells, model, plan, labels, [length], depth=lambda d: d is not None)
    depths = sorted({k[3] for k in at_length.keys} | {k[3] for k in at_length.coverage.missing})
    first, last = (depths[0], depths[-1]) if len(depths) >= 2 else (None, None)
    mids = tuple(d for d in depths if middle[0] <= d <= middle[1] and d not in (first, last))
    start = [c for c in at_length.cells if c.depth == first]
    end = [c for c in at_length.cells if c.depth == last]
    mid = [c for c in at_length.cells if c.depth in mids]
    used = select(cells, model, plan, labels, [length], depth=lambda d: d in (first, last) or d in mids)
    half = simultaneous_level(level, 2)
    if first is not None and mids and start and end and mid:
        primacy, recency = difference(start, mid, half), difference(end, mid, half)
        u_index = Estimate(min(primacy.value, recency.value), min(primacy.low, recency.low),
                           min(primacy.high, recency.high), primacy.n + recency.n)
    else:
        primacy = recency = u_index = NO_ESTIMATE
    return MiddleIndex(model, int(length), first, last, mids, pooled_estimate(start, level),
                       pooled_estimate(end, level), pooled_estimate(mid, level),
                       pooled_estimate(at_length.cells, level), primacy, recency, u_index, used.keys, used.coverage)


@dataclass
class FormatSpread:
    """Spread (max - min) across labels of the accuracy at one length (each label pooled over
    seeds and depths), with the best and worst label. Its interval comes from the labels'
    intervals taken together (each at level 1 - (1 - level) / k for k labels):
    [max(0, max low - min high), max high - min low]."""

    model: str
    length: int
    spread: Estimate
    best: str | None
    worst: str | None
    by_label: dict[str, Estimate] = field(default_factory=dict)
    cells: list[CellKey] = field(default_factory=list)
    coverage: Coverage = Coverage(0, 0)


def format_spread(cells, model: str, length: int, plan: Plan | None = None, labels: Iterable[str] | None = None,
                  level: float = 0.95) -> FormatSpread:
    cells = cell_list(cells)
    chosen = select(cells, model, plan, labels, [length])
    names = sorted({c.task for c in chosen.cells})
    groups = {name: [c for c in chosen.cells if c.task == name] for name in names}
    by_label = {name: pooled_estimate(group, level) for name, group in groups.items()}
    if len(names) < 2:
        return FormatSpread(model, int(length), NO_ESTIMATE, None, None, by_label, chosen.keys, chosen.coverage)
    joint = {name: pooled_estimate(group, simultaneous_level(level, len(names))) for name, group in groups.items()}
    values = [e.value for e in joint.values()]
    low = max(0.0, max(e.low for e in joint.values()) - min(e.high for e in joint.values()))
    high = max(e.high for e in joint.values()) - min(e.low for e in joint.values())
    spread = Estimate(max(values) - min(values), low, high, sum(e.n for e in joint.values()))
    best = max(names, key=lambda name: by_label[name].value)
    worst = min(names, key=lambda name: by_label[name].value)
    return FormatSpread(model, int(length), spread, best, worst, by_label, chosen.keys, chosen.coverage)


def format_sensitivity(cells, model: str, plan: Plan | None = None, labels: Iterable[str] | None = None,
                       level: float = 0.95) -> list[FormatSpread]:
    """`format_spread` at every planned or evaluated length of `model`, sorted by length."""
    cells = cell_list(cells)
    return [format_spread(cells, model, length, plan, labels, level) for length in lengths_of(cells, model, plan,
                                                                                                labels)]


def answer_length_groups(labels: Iterable[str], plan: Plan | None) -> list[tuple[str, ...]]:
    """`labels` grouped by equal answer length (symbols per answer), in order; every label in one
    group when the plan does not know the answer lengths."""
    labels = list(labels)
    known = None if plan is None else plan.answer_lengths
    if not known:
        return [tuple(labels)] if labels else []
    groups: dict[int | None, list[str]] = {}
    for label in labels:
        groups.setdefault(known.get(label), []).append(label)
    return [tuple(group) for group in groups.values()]
