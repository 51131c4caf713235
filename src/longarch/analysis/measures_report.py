"""The "Per-model measures" section of a controlled study's report, and the analysis settings.

Per model and evaluated label: effective length (RULER's rule: the longest evaluated length whose
accuracy, pooled over seeds and depths, is above the threshold), the extrapolation ratio
(effective length / T) and the accuracy at T; per model and label with needle depths, the
lost-in-the-middle index at T; per model, the spread across formats at each length. Every number
comes from `measures`, with its 95% bootstrap interval, and says when it rests on fewer cells than
planned. Cells stored for fewer seeds than the study planned are listed and marked.

The settings (threshold, the labels the claims pool over, the bars of the claims) come from the
study's `analysis:` block as stored with its results, so a store written before the block existed
reports with the defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import ValidationError

from ..config import AnalysisConfig
from .findings import Settings
from .measures import Coverage, Plan, effective_length, format_sensitivity, middle_index
from .render import MISSING, Block
from .stats import DEFAULT_MIN_TRAIN_ACCURACY, Cell, ModelSummary

PARTIAL = "‡"  # marks an entry resting on a cell stored for only some of its planned seeds


def analysis_of(config: dict) -> AnalysisConfig:
    """The study's `analysis:` block; the defaults when absent (or unreadable in an old store)."""
    try:
        return AnalysisConfig.model_validate(config.get("analysis") or {})
    except ValidationError:
        return AnalysisConfig()


def settings_of(config: dict, min_train_accuracy: float = DEFAULT_MIN_TRAIN_ACCURACY) -> Settings:
    """The claims' Settings for a stored study config. The gate defaults to 'label' for a study
    trained on a mixture (its training accuracy averages tasks) and to 'model' otherwise."""
    analysis = analysis_of(config)
    mixture = bool((config.get("train") or {}).get("tasks"))
    chance = analysis.chance if not isinstance(analysis.chance, Mapping) else dict(analysis.chance)
    return Settings(min_train_accuracy=min_train_accuracy, level=analysis.level,
                    labels=tuple(analysis.labels) if analysis.labels else None,
                    gate=analysis.gate or ("label" if mixture else "model"), chance=chance,
                    min_drop=analysis.min_drop, factor=analysis.factor, nontrivial=analysis.nontrivial,
                    collapsed=analysis.collapsed, small_spread=analysis.small_spread,
                    large_spread=analysis.large_spread)


def partial_seed_cells(cells: Mapping, models: list[ModelSummary], seeds: list[int]) -> dict[tuple, list[int]]:
    """(model, label, length, depth) -> the seeds stored, for cells stored for fewer than the planned
    seeds (the study's `seeds`, else every seed the model has)."""
    out = {}
    for key, cell in cells.items():
        model = next((m for m in models if m.name == cell.model), None)
        planned = set(seeds) or set(model.seeds if model else [])
        stored = set(cell.per_seed)
        if stored < planned:
            out[key] = sorted(stored)
    return out


def _pct(x: float) -> str:
    return MISSING if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _ci(e) -> str:
    return MISSING if e.n == 0 or math.isnan(e.value) else f"{100 * e.value:.1f} [{100 * e.low:.1f}, {100 * e.high:.1f}]"


def _incomplete(coverage: Coverage) -> str:
    return "" if coverage.complete else f" ({coverage.covered} of {coverage.expected} cells)"


def _partial(keys, partial: dict) -> str:
    return f" {PARTIAL}" if any(tuple(k) in partial for k in keys) else ""


def measures(models: list[ModelSummary], cells: Mapping, plan: Plan | None, labels: list[str], threshold: float,
             settings: Settings, partial: dict) -> tuple[list[Block], dict]:
    """The section's blocks and its summary.json entry."""
    cell_values: list[Cell] = list(cells.values())
    args = dict(level=settings.level, resamples=settings.resamples, seed=settings.seed)
    bar = threshold / 100
    rows, lim_rows, spread_rows, summary = [], [], [], {}
    for model in models:
        T, mine = model.train_length, summary.setdefault(model.name, {"effective_length": {}, "middle_index": {},
                                                                     "format_spread": []})
        for label in labels:
            found = effective_length(cell_values, model.name, T, plan, [label], threshold=bar, **args)
            at_t = next((p for p in found.points if p.length == T), None)
            if not found.points or all(p.accuracy.n == 0 for p in found.points):
                continue
            ratio = "none" if found.length is None else f"{found.ratio:g}x"
            length = "below the threshold at every length" if found.length is None else str(found.length)
            if found.length is not None and not found.contiguous:
                length += " (not contiguous)"
            keys = [k for p in found.points for k in p.cells]
            rows.append([model.name, label, str(T), _ci(at_t.accuracy) if at_t else MISSING,
                         length + _incomplete(found.coverage) + _partial(keys, partial), ratio,
                         "none" if found.conservative is None else str(found.conservative),
                         "none" if found.optimistic is None else str(found.optimistic)])
            mine["effective_length"][label] = {
                "length": found.length, "ratio": found.ratio, "contiguous": found.contiguous,
                "from_lower_bounds": found.conservative, "from_upper_bounds": found.optimistic,
                "accuracy_at_T": None if at_t is None else at_t.accuracy.as_dict(),
                "covered_cells": found.coverage.covered, "expected_cells": found.coverage.expected}
            if plan is not None and plan.depths_of(label) == (None,):
                continue
            index = middle_index(cell_values, model.name, T, plan, [label], **args)
            if not index.ends or not index.middle:
                continue
            lim_rows.append([model.name, label, _pct(index.ends_accuracy), _pct(index.middle_accuracy),
                             _ci(index.index) + _incomplete(index.coverage) + _partial(index.cells, partial)])
            mine["middle_index"][label] = {**index.index.as_dict(), "ends": list(index.ends),
                                           "middle": list(index.middle), "covered_cells": index.coverage.covered,
                                           "expected_cells": index.coverage.expected}
        spreads = format_sensitivity(cell_values, model.name, plan, settings.labels or labels, **args)
        for spread in spreads:
            if spread.best is None:
                continue
            spread_rows.append([model.name, str(spread.length) + (" (T)" if spread.length == T else ""),
                                _ci(spread.spread) + _incomplete(spread.coverage) + _partial(spread.cells, partial),
                                f"{spread.best} {_pct(spread.by_label[spread.best].value)}",
                                f"{spread.worst} {_pct(spread.by_label[spread.worst].value)}"])
            mine["format_spread"].append({"length": spread.length, **spread.spread.as_dict(), "best": spread.best,
                                          "worst": spread.worst, "covered_cells": spread.coverage.covered,
                                          "expected_cells": spread.coverage.expected})
    blocks: list[Block] = [("h2", "Per-model measures"), ("p",
        f"Effective length: the longest evaluated length whose accuracy (pooled over seeds and depths) is above "
        f"{threshold:g}% (RULER's rule; `analysis.threshold`); the extrapolation ratio is it divided by T. The last "
        "two columns apply the same rule to the lower and upper ends of the 95% intervals. \"Not contiguous\" marks "
        "a model that falls below the threshold at a shorter length first. An entry resting on fewer cells than "
        f"planned says how many; {PARTIAL} marks one with cells stored for only some of the planned seeds.")]
    if rows:
        blocks.append(("table", ["model", "task", "T", "accuracy at T (%)", "effective length", "ratio",
                                 "from lower bounds", "from upper bounds"], rows))
    if lim_rows:
        blocks += [("h3", "Lost in the middle at T"), ("p",
            "Accuracy at the two extreme needle depths minus accuracy at depths 40-60%, at the training length, "
            "pooled over seeds, with a paired 95% interval: above zero means worse in the middle."),
            ("table", ["model", "task", "ends (%)", "middle (%)", "ends minus middle (points) [95% CI]"], lim_rows)]
    if spread_rows:
        pooled = ", ".join(settings.labels or labels)
        blocks += [("h3", "Format sensitivity"), ("p",
            f"Spread (best minus worst) of accuracy across the formats {pooled} at each length, each pooled over "
            "seeds and depths, with its 95% interval (a maximum's interval leans upward when formats are equal)."),
            ("table", ["model", "length", "spread (points) [95% CI]", "best format (%)", "worst format (%)"],
             spread_rows)]
    if partial:
        listed = "; ".join(f"{m} {label} at {length}" + ("" if depth is None else f" depth {depth:g}")
                           + f" (seeds {', '.join(map(str, s)) or 'none'})"
                           for (m, label, length, depth), s in list(partial.items())[:20])
        more = f" and {len(partial) - 20} more" if len(partial) > 20 else ""
        blocks.append(("warn", f"{PARTIAL} {len(partial)} cells are stored for only some of their planned seeds: "
                               f"{listed}{more}."))
    return blocks, summary
