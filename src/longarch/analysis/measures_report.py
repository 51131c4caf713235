"""The "Per-model measures" section of a controlled study's report, and the analysis settings.

Per model and evaluated label: effective length (RULER's rule: the longest evaluated length whose
accuracy, pooled over seeds and depths, is above the threshold), the extrapolation ratio
(effective length / T) and the accuracy at T; per model and label with needle depths, the
lost-in-the-middle index at T; per model, the spread across formats at each length. Every number
comes from `measures`, with its bootstrap interval (at `analysis.level`), and says when it rests on
fewer cells than planned. Cells stored for fewer seeds than the study planned are listed and marked.

The settings (threshold, the labels the claims pool over, the bars of the claims) come from the
study's `analysis:` block as stored with its results, so a store written before the block existed
reports with the defaults (and one whose block no longer validates says so, then uses them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

from pydantic import ValidationError

from ..config import AnalysisConfig
from .findings import Settings
from .findings_report import check_claims, findings_blocks, plan_of
from .measures import Coverage, Plan, effective_length, format_sensitivity, middle_index
from .render import MISSING, Block
from .stats import DEFAULT_MIN_TRAIN_ACCURACY, Cell, ModelSummary

PARTIAL = "‡"  # marks an entry resting on a cell stored for only some of its planned seeds


class SeedGap(NamedTuple):
    """The seeds stored for a cell, and the seeds planned for it."""

    stored: list[int]
    planned: list[int]


def analysis_of(config: dict) -> AnalysisConfig:
    """The study's `analysis:` block; the defaults when absent (or unreadable in an old store)."""
    return _read_analysis(config)[0]


def _read_analysis(config: dict) -> tuple[AnalysisConfig, str]:
    """The `analysis:` block and, when it does not validate, the first problem (else "")."""
    try:
        return AnalysisConfig.model_validate(config.get("analysis") or {}), ""
    except ValidationError as error:
        first = error.errors()[0]
        return AnalysisConfig(), f"{'.'.join(map(str, first['loc'])) or 'analysis'}: {first['msg']}"


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


def analysis_sections(meta: dict, config: dict, models: list[ModelSummary], cells: Mapping, labels: list[str],
                      min_train_accuracy: float, partial: dict) -> tuple[list[Block], dict]:
    """The "Per-model measures" and "Findings" sections, judged with the study's `analysis:`
    settings, and their summary.json entries: measures, partial_seeds, findings."""
    settings = settings_of(config, min_train_accuracy)
    claims = check_claims(meta, models, cells, settings)
    analysis, problem = _read_analysis(config)
    blocks, summary = measures(models, cells, plan_of(meta, cells), labels, analysis.threshold, settings, partial)
    if problem:
        blocks.insert(1, ("warn", f"The stored `analysis:` block does not validate ({problem}); this report uses "
                                  "the default analysis settings."))
    return blocks + findings_blocks(claims, settings.level), {
        "measures": summary, "partial_seeds": partial_summary(partial),
        "findings": [finding.as_dict() for finding in claims]}


def partial_seed_cells(cells: Mapping, models: list[ModelSummary], seeds: list[int]) -> dict[tuple, SeedGap]:
    """(model, label, length, depth) -> its stored and planned seeds, for each stored cell missing
    some of the planned seeds (the study's `seeds`, else every seed the model has)."""
    seeds_of = {m.name: m.seeds for m in models}
    out = {}
    for key, cell in cells.items():
        planned = sorted(set(seeds) or set(seeds_of.get(cell.model, ())))
        if set(planned) - set(cell.per_seed):
            out[key] = SeedGap(sorted(cell.per_seed), planned)
    return out


def partial_summary(partial: dict[tuple, SeedGap]) -> list[dict]:
    """summary.json's `partial_seeds`: one entry per cell stored for only some planned seeds."""
    return [{"model": m, "task": t, "length": n, "depth": d, "seeds": gap.stored, "planned_seeds": gap.planned}
            for (m, t, n, d), gap in partial.items()]


def partial_note(partial: dict[tuple, SeedGap], limit: int = 20) -> str:
    """The footnote of the ‡ mark: each such cell with how many of its planned seeds are stored."""
    listed = "; ".join(f"{m} {label} at {length}" + ("" if depth is None else f" depth {depth:g}")
                       + f" ({len(gap.stored)} of {len(gap.planned)}: seeds {', '.join(map(str, gap.stored))})"
                       for (m, label, length, depth), gap in list(partial.items())[:limit])
    more = f"; and {len(partial) - limit} more (summary.json lists all)" if len(partial) > limit else ""
    return f"{PARTIAL} only some of the planned seeds are stored for {_cells(len(partial))}: {listed}{more}."


def _cells(n: int) -> str:
    return f"{n} cell" + ("" if n == 1 else "s")


def _pct(x: float) -> str:
    return MISSING if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _ci(e) -> str:
    return MISSING if e.n == 0 or math.isnan(e.value) else f"{100 * e.value:.1f} [{100 * e.low:.1f}, {100 * e.high:.1f}]"


def _marks(coverage: Coverage, keys, partial: dict) -> str:
    """' (k of n cells)' when planned cells are missing, ' ‡' when a used cell lacks planned seeds."""
    missing = "" if coverage.complete else f" ({coverage.covered} of {coverage.expected} cells)"
    return missing + (f" {PARTIAL}" if any(tuple(k) in partial for k in keys) else "")


def _ratio(found) -> str:
    if found.length is None:
        return "none"
    return "< T" if found.length < found.train_length else f"{found.ratio:.1f}x"


def _coverage(coverage: Coverage, keys, partial: dict) -> dict:
    return {"covered_cells": coverage.covered, "expected_cells": coverage.expected,
            "partial_seeds": any(tuple(k) in partial for k in keys)}


def measures(models: list[ModelSummary], cells: Mapping, plan: Plan | None, labels: list[str], threshold: float,
             settings: Settings, partial: dict) -> tuple[list[Block], dict]:
    """The section's blocks and its summary.json entry (per model: effective_length and
    middle_index per label, format_spread per length)."""
    cell_values: list[Cell] = list(cells.values())
    args = dict(level=settings.level, resamples=settings.resamples, seed=settings.seed)
    rows, lim_rows, spread_rows, summary = [], [], [], {}
    for model in models:
        T = model.train_length
        name = model.name + (" (did not learn)" if settings.gate == "model" and not math.isnan(model.train_accuracy)
                             and not model.solved(settings.min_train_accuracy) else "")
        mine = summary.setdefault(model.name, {"effective_length": {}, "middle_index": {}, "format_spread": []})
        for label in labels:
            found = effective_length(cell_values, model.name, T, plan, [label], threshold=threshold / 100, **args)
            if not found.points:  # neither planned nor evaluated
                continue
            at_t = next((p for p in found.points if p.length == T), None)
            shown = label
            if settings.gate == "label" and at_t is not None and at_t.accuracy.value < settings.min_train_accuracy:
                shown = f"{label} (below {100 * settings.min_train_accuracy:g}% at T)"
            keys = [k for p in found.points for k in p.cells]
            stored = any(p.accuracy.n for p in found.points)
            length = MISSING if not stored else "none" if found.length is None else str(found.length)
            if found.length is not None and not found.contiguous:
                length += " (not contiguous)"
            rows.append([name, shown, str(T),
                         _ci(at_t.accuracy) + _marks(at_t.coverage, at_t.cells, partial) if at_t else MISSING,
                         length + _marks(found.coverage, keys, partial), _ratio(found) if stored else MISSING,
                         "none" if found.conservative is None else str(found.conservative),
                         "none" if found.optimistic is None else str(found.optimistic)])
            mine["effective_length"][label] = {
                "length": found.length, "ratio": found.ratio, "contiguous": found.contiguous,
                "from_lower_bounds": found.conservative, "from_upper_bounds": found.optimistic,
                "accuracy_at_T": None if at_t is None else
                {**at_t.accuracy.as_dict(), **_coverage(at_t.coverage, at_t.cells, partial)},
                **_coverage(found.coverage, keys, partial)}
            if plan is not None and plan.depths_of(label) == (None,):
                continue
            index = middle_index(cell_values, model.name, T, plan, [label], **args)
            if not index.ends or not index.middle:
                continue
            lim_rows.append([name, shown, _pct(index.ends_accuracy), _pct(index.middle_accuracy),
                             _ci(index.index) + _marks(index.coverage, index.cells, partial)])
            mine["middle_index"][label] = {**index.index.as_dict(), "ends": list(index.ends),
                                           "middle": list(index.middle),
                                           **_coverage(index.coverage, index.cells, partial)}
        for spread in format_sensitivity(cell_values, model.name, plan, settings.labels or labels, **args):
            if spread.best is None and spread.coverage.complete:
                continue  # one format evaluated at this length: no spread to show
            best, worst = ((f"{x} {_pct(spread.by_label[x].value)}" if x else MISSING)
                           for x in (spread.best, spread.worst))
            spread_rows.append([name, str(spread.length) + (" (T)" if spread.length == T else ""),
                                _ci(spread.spread) + _marks(spread.coverage, spread.cells, partial), best, worst])
            mine["format_spread"].append({"length": spread.length, **spread.spread.as_dict(), "best": spread.best,
                                          "worst": spread.worst, **_coverage(spread.coverage, spread.cells, partial)})
    return _blocks(rows, lim_rows, spread_rows, threshold, settings, labels, partial), summary


def _blocks(rows, lim_rows, spread_rows, threshold: float, settings: Settings, labels: list[str],
            partial: dict) -> list[Block]:
    level = f"{100 * settings.level:g}%"
    blocks: list[Block] = [("h2", "Per-model measures"), ("p",
        f"Effective length: the longest evaluated length whose accuracy (pooled over seeds and depths) is strictly "
        f"above {threshold:g}% (RULER's rule; `analysis.threshold`), whether or not a shorter length falls below it "
        "first (then marked \"not contiguous\"), and \"none\" when no length is. The ratio is the effective length "
        "divided by T (\"< T\" when only lengths shorter than T are above the threshold, \"none\" when none is). The "
        "last two columns apply the same rule to the lower and upper ends of the intervals. Intervals here are "
        f"{level} two-stage bootstrap intervals (seeds, then samples), so they can be wider than the sample-only "
        "intervals of the length tables. \"(k of n cells)\" marks an entry resting on fewer (model, task, length, "
        f"depth) cells than planned; {PARTIAL} one resting on a cell stored for only some of the planned seeds.")]
    if rows:
        blocks.append(("table", ["model", "task", "T", f"accuracy at T (%) [{level} CI]", "effective length",
                                 "ratio", "from lower bounds", "from upper bounds"], rows))
    if lim_rows:
        blocks += [("h3", "Lost in the middle at T"), ("p",
            "Accuracy at the two extreme needle depths minus accuracy at depths 40-60%, at the training length, "
            f"pooled over seeds, with a paired {level} interval: above zero means worse in the middle."),
            ("table", ["model", "task", "ends (%)", "middle (%)", f"ends minus middle (points) [{level} CI]"],
             lim_rows)]
    if spread_rows:
        blocks += [("h3", "Format sensitivity"), ("p",
            f"Spread (best minus worst) of accuracy across the formats {', '.join(settings.labels or labels)} at each "
            f"length, each pooled over seeds and depths, with its {level} interval (a maximum's interval leans "
            "upward when formats are equal)."),
            ("table", ["model", "length", f"spread (points) [{level} CI]", "best format (%)", "worst format (%)"],
             spread_rows)]
    if partial:
        blocks.append(("warn", partial_note(partial)))
    return blocks
