"""The "Per-model measures" section of a controlled study's report, and the study's analysis settings.

Per model and evaluated label: the effective length by the lower bounds of the intervals (every
evaluated length up to it has its interval's lower bound above the bar: what the findings judge
by) beside RULER's rule on the point values (the longest length above the bar, contiguous or not:
what RULER reports) and the contiguous rule on the upper bounds; the extrapolation ratio
(effective length / T) and the accuracy at T. Per model and label with needle depths, lost in the
middle at T and at the lengths claim 3 reads (the first `middle_lengths_read` from T on whose
accuracy is off the floor and the ceiling): primacy (start minus middle) and recency (end minus
middle) apart, and the U index min(start, end) minus middle. Per model, the
spread across formats at each length. Every number comes from `measures`, with its interval for
these trained seeds (the Jeffreys interval of the counts pooled over seeds and samples;
seed-to-seed spread is not in it), and says when it rests on fewer cells than planned. Cells
stored for fewer seeds than the study planned are listed and marked.

The settings are the one `AnalysisSettings` (analysis/settings.py), read from the study's
`analysis:` block as stored with its results (`settings.from_stored`): a store written before
issue 15 reports with its old names read as the new ones and says so, a store without the block
reports with the defaults, and one whose block no longer validates says so, then uses them.
The "Findings" section (the paper's claims) follows only for a study with `analysis.claims:
paper` (a store from before that setting reads as such); without it the measures stand alone
and say nothing of the claims.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

from .findings_report import check_claims, findings_blocks, plan_of
from .learned import at_t as judged_at_t
from .measures import (Coverage, Estimate, MiddleIndex, Plan, effective_length, format_sensitivity, lengths_of,
                       middle_index)
from .render import MISSING, Block
from .settings import AnalysisSettings, from_stored
from .stats import Cell, ModelSummary

PARTIAL = "‡"  # marks an entry resting on a cell stored for only some of its planned seeds
INTERVAL = ("Jeffreys interval for the mean accuracy of these trained seeds (the counts pooled over seeds x "
            "samples); seed-to-seed spread is not in it")


class SeedGap(NamedTuple):
    """The seeds stored for a cell, and the seeds planned for it."""

    stored: list[int]
    planned: list[int]


def read_settings(config: dict) -> tuple[AnalysisSettings, str]:
    """The analysis settings of a stored study config, with the gate resolved ('label' for a study
    trained on a mixture, whose training accuracy averages its tasks, else 'model'), and a note
    when they had to be read leniently (else ""): names from before issue 15 (the top-level
    `min_train_accuracy` among them), or a block that no longer validates."""
    block = config.get("analysis")
    bar = config.get("min_train_accuracy")
    bar = bar if isinstance(bar, (int, float)) and not isinstance(bar, bool) else None
    try:
        settings, note = from_stored(block if isinstance(block, Mapping) else None, bar)
    except (ValueError, TypeError) as error:  # an old value that cannot even be translated
        settings, note = AnalysisSettings(), (f"the stored `analysis:` block cannot be read ({error}); the default "
                                              "analysis settings are used")
    notes = [note] if note else []
    if block is not None and not isinstance(block, Mapping):
        notes.append("the stored `analysis:` block is not a mapping; the default analysis settings are used")
    if "min_train_accuracy" in config:
        notes.append("the stored study has the top-level min_train_accuracy from before issue 15"
                     + (f" ({bar:g}), read as analysis.learned_bar_fraction" if bar is not None and
                        settings.learned_bar_fraction == bar else "; it is not used"))
    mixture = bool((config.get("train") or {}).get("tasks")) if isinstance(config.get("train"), Mapping) else False
    return settings.model_copy(update={"gate": settings.gate_for(mixture)}), "; ".join(notes)


def settings_of(config: dict) -> AnalysisSettings:
    """The analysis settings of a stored study config (see `read_settings`)."""
    return read_settings(config)[0]


def analysis_sections(meta: dict, config: dict, models: list[ModelSummary], cells: Mapping, labels: list[str],
                      partial: dict) -> tuple[list[Block], dict]:
    """The "Per-model measures" and, for a study with `analysis.claims: paper`, "Findings"
    sections, judged with the study's `analysis:` settings, and their summary.json entries:
    analysis (the settings used), measures, partial_seeds, and findings with the claims."""
    settings, note = read_settings(config)
    # a model whose every seed diverged has nothing to measure; the findings list it as not learned
    blocks, summary = measures([m for m in models if not m.all_diverged], cells, plan_of(meta, cells), labels,
                               settings, partial)
    if note:
        blocks.insert(1, ("warn", f"{note[0].upper()}{note[1:]}."))
    entries = {"analysis": settings.model_dump(mode="json"), "measures": summary,
               "partial_seeds": partial_summary(partial)}
    if settings.claims != "paper":
        return blocks, entries
    claims = check_claims(meta, models, cells, settings)
    return blocks + findings_blocks(claims, settings.interval_level_fraction), {
        **entries, "findings": [finding.as_dict() for finding in claims]}


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


def _pct(e: Estimate) -> str:
    return MISSING if e.n == 0 or math.isnan(e.value) else f"{100 * e.value:.1f}"


def _ci(e: Estimate) -> str:
    return MISSING if e.n == 0 or math.isnan(e.value) else f"{100 * e.value:.1f} [{100 * e.low:.1f}, {100 * e.high:.1f}]"


def _marks(coverage: Coverage, keys, partial: dict) -> str:
    """' (k of n cells)' when planned cells are missing, ' ‡' when a used cell lacks planned seeds."""
    missing = "" if coverage.complete else f" ({coverage.covered} of {coverage.expected} cells)"
    return missing + (f" {PARTIAL}" if any(tuple(k) in partial for k in keys) else "")


def _length(length: int | None) -> str:
    return "none" if length is None else str(length)


def _ratio(found) -> str:
    if found.length is None:
        return "none"
    return "< T" if found.length < found.train_length else f"{found.ratio:.1f}x"


def _coverage(coverage: Coverage, keys, partial: dict) -> dict:
    return {"covered_cells": coverage.covered, "expected_cells": coverage.expected,
            "partial_seeds": any(tuple(k) in partial for k in keys)}


def measures(models: list[ModelSummary], cells: Mapping, plan: Plan | None, labels: list[str],
             settings: AnalysisSettings, partial: dict) -> tuple[list[Block], dict]:
    """The section's blocks and its summary.json entry (per model: effective_length per label,
    middle_index per label (a list over the lengths read), format_spread per length). `settings`
    has its gate resolved (`read_settings`)."""
    cell_values: list[Cell] = list(cells.values())
    level, bar, learned = settings.interval_level_fraction, settings.effective_length_bar_fraction, \
        settings.learned_bar_fraction
    rows, lim_rows, spread_rows, summary = [], [], [], {}
    for model in models:
        T = model.train_length
        name = model.name + (" (did not learn)" if settings.gate == "model" and not judged_at_t(
            cell_values, model.name, T, settings.labels or labels, model.train_accuracy).learned(learned) else "")
        mine = summary.setdefault(model.name, {"effective_length": {}, "middle_index": {}, "format_spread": []})
        for label in labels:
            found = effective_length(cell_values, model.name, T, plan, [label], bar=bar, level=level)
            if not found.points:  # neither planned nor evaluated
                continue
            at_t = next((p for p in found.points if p.length == T), None)
            shown = label
            if settings.gate == "label" and at_t is not None and at_t.accuracy.value < learned:
                shown = f"{label} (below {100 * learned:g}% at T)"
            keys = [k for p in found.points for k in p.cells]
            stored = any(p.accuracy.n for p in found.points)
            rows.append([name, shown, str(T),
                         _ci(at_t.accuracy) + _marks(at_t.coverage, at_t.cells, partial) if at_t else MISSING,
                         (_length(found.length) + _marks(found.coverage, keys, partial)) if stored else MISSING,
                         _ratio(found) if stored else MISSING,
                         _length(found.ruler_length) if stored else MISSING,
                         _length(found.optimistic) if stored else MISSING])
            mine["effective_length"][label] = {
                "length": found.length, "ratio": found.ratio, "ruler_length": found.ruler_length,
                "from_upper_bounds": found.optimistic, "bar_fraction": bar,
                "accuracy_at_T": None if at_t is None else
                {**at_t.accuracy.as_dict(), **_coverage(at_t.coverage, at_t.cells, partial)},
                **_coverage(found.coverage, keys, partial)}
            if plan is not None and plan.depths_of(label) == (None,):
                continue
            for length, index, limit in _middle_rows(cell_values, model.name, T, plan, label, settings):
                lim_rows.append([name, shown, str(length) + (" (T)" if length == T else "")
                                 + (f" (at the {limit})" if limit else ""),
                                 _pct(index.start), _pct(index.middle_accuracy), _pct(index.end),
                                 _ci(index.primacy), _ci(index.recency),
                                 _ci(index.u_index) + _marks(index.coverage, index.cells, partial)])
                mine["middle_index"].setdefault(label, []).append({
                    "length": length, "start_depth": index.start_depth, "end_depth": index.end_depth,
                    "middle_depths": list(index.middle), "at_ceiling": limit == "ceiling",
                    "at_floor": limit == "floor",
                    **{what: getattr(index, what).as_dict()
                       for what in ("start", "middle_accuracy", "end", "overall", "primacy", "recency", "u_index")},
                    **_coverage(index.coverage, index.cells, partial)})
        for spread in format_sensitivity(cell_values, model.name, plan, settings.labels or labels, level=level):
            if spread.best is None and spread.coverage.complete:
                continue  # one format evaluated at this length: no spread to show
            best, worst = ((f"{x} {_pct(spread.by_label[x])}" if x else MISSING) for x in (spread.best, spread.worst))
            spread_rows.append([name, str(spread.length) + (" (T)" if spread.length == T else ""),
                                _ci(spread.spread) + _marks(spread.coverage, spread.cells, partial), best, worst])
            mine["format_spread"].append({"length": spread.length, **spread.spread.as_dict(), "best": spread.best,
                                          "worst": spread.worst, **_coverage(spread.coverage, spread.cells, partial)})
    return _blocks(rows, lim_rows, spread_rows, settings, labels, partial), summary


def _middle_rows(cells: list[Cell], model: str, T: int, plan: Plan | None, label: str,
                 settings: AnalysisSettings) -> list[tuple[int, MiddleIndex, str]]:
    """(length, lost-in-the-middle index, "ceiling" / "floor" / "") of one model on one label at T
    and at the first `middle_lengths_read` lengths from T on whose accuracy over all depths is off
    the ceiling and the floor: the lengths claim 3 reads (it pools the model's formats; this is
    per format). Lengths without start, end and middle depths are left out."""
    rows, read = [], 0
    for length in lengths_of(cells, model, plan, [label]):
        if length < T:
            continue
        index = middle_index(cells, model, length, plan, [label], middle=settings.middle_depths_percent,
                             level=settings.interval_level_fraction)
        if not index.measured:
            continue
        overall = index.overall.value
        limit = "ceiling" if overall > settings.ceiling_fraction else "floor" if overall < settings.floor_fraction \
            else ""
        if length == T or (not limit and read < settings.middle_lengths_read):
            rows.append((length, index, limit))
        if not limit:
            read += 1
            if read >= settings.middle_lengths_read:
                break
    return rows


def _blocks(rows, lim_rows, spread_rows, settings: AnalysisSettings, labels: list[str], partial: dict) -> list[Block]:
    level = f"{100 * settings.interval_level_fraction:g}%"
    bar = settings.effective_length_bar_fraction
    claims = settings.claims == "paper"  # the measures name the claims that read them only when the study has them
    blocks: list[Block] = [("h2", "Per-model measures"), ("p",
        f"Every interval in this section is a {level} {INTERVAL}. Effective length (lower bounds): the longest "
        "evaluated length L such that at every evaluated length up to L the lower end of the interval of the "
        f"accuracy (pooled over seeds and depths) is above {100 * bar:g}% (`analysis.effective_length_bar_fraction`); "
        "\"none\" when the shortest evaluated length already falls short. "
        + ("This is the effective length the findings read. " if claims else "") + "The ratio is that length divided by T (\"< T\" when it is shorter than T). RULER's rule "
        f"is what RULER reports: the longest evaluated length whose accuracy itself is above {100 * bar:g}%, whether "
        "or not a shorter length falls below it. The last column applies the lower-bound rule to the upper ends of "
        "the intervals: the longest effective length these intervals allow. \"(k of n cells)\" marks an entry "
        f"resting on fewer (model, task, length, depth) cells than planned; {PARTIAL} one resting on a cell stored "
        "for only some of the planned seeds.")]
    if rows:
        blocks.append(("table", ["model", "task", "T", f"accuracy at T (%) [{level} interval]",
                                 "effective length (lower bounds)", "ratio", "RULER's rule (point values)",
                                 "from upper bounds"], rows))
    if lim_rows:
        blocks += [("h3", "Lost in the middle"), ("p", _middle_text(settings, claims)),
            ("table", ["model", "task", "length", "start (%)", "middle (%)", "end (%)",
                       f"primacy (points) [{level}]", f"recency (points) [{level}]", f"U index (points) [{level}]"],
             lim_rows)]
    if spread_rows:
        blocks += [("h3", "Format sensitivity"), ("p",
            f"Spread (best minus worst) of accuracy across the formats {', '.join(settings.labels or labels)} at each "
            f"length, each pooled over seeds and depths, in percentage points. The spread's {level} interval holds "
            "for every format at once (each format's interval at a Bonferroni-corrected level; from the largest gap "
            "the formats' intervals force to the largest they allow)."
            + (" Claim 4 compares only formats with answers of equal length." if claims else "")),
            ("table", ["model", "length", f"spread (points) [{level} interval]", "best format (%)",
                       "worst format (%)"], spread_rows)]
    if partial:
        blocks.append(("warn", partial_note(partial)))
    return blocks


def _middle_text(settings: AnalysisSettings, claims: bool) -> str:
    """What the lost-in-the-middle table shows; with the paper's claims, how claim 3 reads it."""
    level = f"{100 * settings.interval_level_fraction:g}%"
    low, high = settings.middle_depths_percent
    floor, ceiling = 100 * settings.floor_fraction, 100 * settings.ceiling_fraction
    return (
        f"At T and at the first {settings.middle_lengths_read} lengths from T on where the accuracy over all "
        f"depths is off the floor and the ceiling ({floor:g}-{ceiling:g}%, `analysis.floor_fraction` and "
        "`analysis.ceiling_fraction`" + (": the lengths claim 3 reads, here for each format alone" if claims else "")
        + f"): accuracy at the shallowest needle depth (start), at depths {low:g}-{high:g}% (middle) and at the "
        "deepest depth (end, next to the question), pooled over seeds. Primacy is start minus middle and recency end "
        f"minus middle, in percentage points, each with its {level} interval; the U index is min(start, end) minus "
        "middle, above zero only when both ends beat the middle (lost in the middle; a model that only does better "
        "near the question has recency, not a U). The U index's interval is [the lower of the two lows, the lower of "
        f"the two highs] of primacy and recency, each taken at the "
        f"{100 * (1 - (1 - settings.interval_level_fraction) / 2):g}% level. \"(at the ceiling)\" or \"(at the "
        "floor)\" marks a length where no depth can do better or worse"
        + (" and claim 3 does not read it. Claim 3's verdict takes its intervals at a level that holds over the "
           "lengths it reads together, so they are wider than these." if claims else "."))
