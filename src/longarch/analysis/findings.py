"""The paper's four claims (reference/paper.md), each tested on the study's results.

Every claim is decided per model (per pair of models for claim 2) from measures with intervals
(see `measures`: Jeffreys intervals for these trained seeds, MOVER for differences, Bonferroni
where one statement reads several lengths or depths), and the verdicts are then combined:

- a model's verdict is 'supported' or 'not supported' only when its intervals decide it, and
  'inconclusive' otherwise, or when a planned cell it needs is missing (unless
  `AnalysisSettings.allow_incomplete`);
- "every family ..." claims (1, 2, 3): 'not supported' when any model is, 'supported' when all
  are and every family of the study has a judged model, 'inconclusive' otherwise;
- "at least one model ..." claims (4): 'supported' when any model is, 'not supported' when all
  are not, 'inconclusive' otherwise.

Only models that learned their task at T are read (`learned`: the evaluated accuracy at T, pooled
over seeds and depths, reaches `learned_bar_fraction` on every label (gate 'model'), or each model
on the labels it learned at T (gate 'label')). Each finding lists what it left out and why, and
states its rule in one sentence.

Every text here (rules, reasons, explanations) gives accuracies in percent and differences and
bars in percentage points, in sentences that name each input of the rule (each length's side of
its bar); the numbers themselves stay fractions in `Evidence.numbers` and `details`, as in
summary.json.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .learned import at_t
from .measures import (NO_ESTIMATE, CellKey, Coverage, Estimate, Plan, answer_length_groups, cell_list, difference,
                       effective_length, format_spread, lengths_of, middle_index, pooled_estimate, select,
                       simultaneous_level)
from .settings import AnalysisSettings
from .stats import Cell, ModelSummary

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)

CLAIMS = {
    1: "Every family degrades sharply past its training length.",
    2: "Linear-recurrent and state-space models keep accuracy past their training length where pure attention "
       "collapses.",
    3: "Every family does worse in the middle of the context than at both ends (read at and just past the training "
       "length, where accuracy is off the ceiling).",
    4: "Extrapolation is inconsistent across formats: for some model, formats of equal answer length that score "
       "alike at the training length score far apart at a fixed length past it.",
}


@dataclass
class Evidence:
    """One model's measure for a claim, its verdict (None: shown, not part of the claim) and the
    cells it used."""

    model: str
    family: str
    quantity: str
    estimate: Estimate
    verdict: str | None
    reason: str
    cells: list[CellKey] = field(default_factory=list)
    coverage: Coverage = Coverage(0, 0)
    numbers: dict[str, float] = field(default_factory=dict)
    details: dict = field(default_factory=dict)   # JSON-ready: per-length values, lengths ahead, ...

    def as_dict(self) -> dict:
        return {"model": self.model, "family": self.family, "quantity": self.quantity,
                "estimate": self.estimate.as_dict(), "verdict": self.verdict, "reason": self.reason,
                "cells": [list(k) for k in self.cells], "expected_cells": self.coverage.expected,
                "covered_cells": self.coverage.covered, "complete": self.coverage.complete,
                "numbers": {k: _round(v) for k, v in self.numbers.items()}, "details": self.details}


@dataclass
class Exclusion:
    model: str
    family: str
    reason: str


@dataclass
class Finding:
    number: int
    claim: str
    rule: str
    verdict: str
    evidence: list[Evidence]
    excluded: list[Exclusion]
    explanation: str

    @property
    def coverage(self) -> Coverage:
        return sum((e.coverage for e in self.evidence), Coverage(0, 0))

    @property
    def complete(self) -> bool:
        return self.coverage.complete

    def as_dict(self) -> dict:
        coverage = self.coverage
        return {"claim": self.number, "text": self.claim, "rule": self.rule, "verdict": self.verdict,
                "explanation": self.explanation, "expected_cells": coverage.expected,
                "covered_cells": coverage.covered, "complete": coverage.complete,
                "evidence": [e.as_dict() for e in self.evidence],
                "excluded": [vars(x) for x in self.excluded]}


# --------------------------------------------------------------------------------------------
# shared pieces
# --------------------------------------------------------------------------------------------
def _round(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) else round(float(x), 4)


def _fmt(e: Estimate, unit: str = " points") -> str:
    """An estimate in percent (an accuracy, unit "%") or percentage points (a difference)."""
    if np.isnan(e.value):
        return "n/a"
    return f"{100 * e.value:.1f}{unit} [{100 * e.low:.1f}, {100 * e.high:.1f}]"


def decide(estimate: Estimate, bar: float, above_means: str) -> str:
    """SUPPORTED / NOT_SUPPORTED from an interval wholly above / at-or-below `bar` (swapped when
    `above_means` is NOT_SUPPORTED); INCONCLUSIVE when the interval straddles it."""
    side = estimate.compare(bar)
    if side == "undecided":
        return INCONCLUSIVE
    other = NOT_SUPPORTED if above_means == SUPPORTED else SUPPORTED
    return above_means if side == "above" else other


def every(verdicts: Iterable[str]) -> str:
    verdicts = list(verdicts)
    if NOT_SUPPORTED in verdicts:
        return NOT_SUPPORTED
    return SUPPORTED if verdicts and all(v == SUPPORTED for v in verdicts) else INCONCLUSIVE


def some(verdicts: Iterable[str]) -> str:
    verdicts = list(verdicts)
    if SUPPORTED in verdicts:
        return SUPPORTED
    return NOT_SUPPORTED if verdicts and all(v == NOT_SUPPORTED for v in verdicts) else INCONCLUSIVE


@dataclass(frozen=True)
class Judged:
    """A model as a claim sees it: its summary's fields, plus the labels it is judged on (None:
    the settings' labels)."""

    name: str
    family: str
    train_length: int
    labels: tuple[str, ...] | None


def split_models(models: Sequence[ModelSummary], settings: AnalysisSettings, cells: list[Cell] = (),
                 plan: Plan | None = None) -> tuple[list[Judged], list[Exclusion]]:
    """Models fit to judge, and those left out with the reason (see `AnalysisSettings.gate`; an unknown
    training accuracy counts as fit, as in the report)."""
    kept, excluded = [], []
    bar = settings.learned_bar_fraction
    for model in models:
        if model.all_diverged:  # it learned nothing: left out whatever the gate
            steps = ", ".join(f"seed {seed} at step {step}" for seed, step in sorted(model.diverged.items()))
            excluded.append(Exclusion(model.name, model.family, f"did not learn: its training diverged ({steps})"))
        elif settings.gate == "label":
            solved, failed = solved_labels(cells, model, plan, settings)
            if failed:
                listed = _and([f"{label} {_accuracy(accuracy)}" for label, accuracy in failed])
                what = "every label" if not solved else "labels"
                excluded.append(Exclusion(model.name, model.family, f"{what} below the {100 * bar:g}% bar at "
                                                                    f"T={model.train_length}: {listed}"))
            if solved:
                kept.append(Judged(model.name, model.family, model.train_length, tuple(solved)))
        elif not (judged := at_t(cells, model.name, model.train_length, _labels(cells, plan, settings),
                                 model.train_accuracy)).learned(bar):
            excluded.append(Exclusion(model.name, model.family, f"did not learn its task: {judged.describe(bar)} at "
                                                                f"T={model.train_length}, below the {100 * bar:g}% bar"))
        else:
            kept.append(Judged(model.name, model.family, model.train_length,
                              None if settings.labels is None else tuple(settings.labels)))
    return kept, excluded


def _labels(cells: Sequence[Cell], plan: Plan | None, settings: AnalysisSettings) -> list[str]:
    """The labels the claims read: the settings', else the plan's, else every stored one."""
    return list(settings.labels or (plan.labels if plan is not None else sorted({c.task for c in cells})))


def solved_labels(cells: list[Cell], model: ModelSummary, plan: Plan | None,
                  settings: AnalysisSettings) -> tuple[list[str], list[tuple[str, float]]]:
    """The labels (of `settings.labels`, else all) whose accuracy at T, pooled over seeds and depths,
    reaches learned_bar_fraction, and the others with their accuracy (nan: nothing stored at T)."""
    judged = at_t(cells, model.name, model.train_length, _labels(cells, plan, settings))
    bar = settings.learned_bar_fraction
    solved = [label for label in judged.accuracy if judged.label_learned(label, bar)]
    return solved, [(label, a) for label, a in judged.accuracy.items() if label not in solved]


def _gate(verdict: str, coverage: Coverage, settings: AnalysisSettings) -> tuple[str, str]:
    """A decided verdict becomes inconclusive when planned cells are missing."""
    if coverage.complete or settings.allow_incomplete or verdict == INCONCLUSIVE:
        return verdict, ""
    missing = coverage.expected - coverage.covered
    return INCONCLUSIVE, (f" Inconclusive all the same: it was decided on the stored cells, but {missing} of "
                          f"{coverage.expected} planned cells are missing.")


def every_family(verdict: str, evidence: list[Evidence], models: Sequence[ModelSummary], summary: str) -> tuple[str, str]:
    """An "every family" claim supported by the judged models is only inconclusive while a family
    of the study has no judged model (all left out, or none with a decided measure)."""
    judged = {e.family for e in evidence if e.verdict is not None}
    unjudged = sorted({m.family for m in models} - judged)
    if verdict != SUPPORTED or not unjudged:
        return verdict, summary
    return INCONCLUSIVE, (f"supported by every family judged, but no model of {', '.join(unjudged)} could be judged. "
                          + summary)


def _by_family(evidence: list[Evidence]) -> str:
    families: dict[str, list[Evidence]] = {}
    for e in evidence:
        if e.verdict is not None:
            families.setdefault(e.family, []).append(e)
    parts = []
    for family, items in families.items():
        verdict = every(e.verdict for e in items)
        parts.append(f"In the {family} family the claim is {verdict}: "
                     + _and([f"{e.model} {e.verdict}" for e in items]) + ".")
    return " ".join(parts)


def _explain(verdict: str, evidence: list[Evidence], excluded: list[Exclusion], summary: str) -> str:
    lines = [f"Verdict: {verdict}. {summary}".rstrip()]
    lines += [f"- {e.model} ({e.family}), {e.quantity}: {_fmt(e.estimate)}; {e.verdict or 'not judged'}. {e.reason}"
              for e in evidence]
    lines += [f"- {x.model} ({x.family}) left out on {x.reason}" if x.reason.startswith("labels") else
              f"- {x.model} ({x.family}) excluded: {x.reason}" for x in excluded]
    return "\n".join(lines)


def _finish(number: int, rule: str, verdict: str, evidence: list[Evidence], excluded: list[Exclusion],
            summary: str = "") -> Finding:
    return Finding(number, CLAIMS[number], rule, verdict, evidence, excluded,
                   _explain(verdict, evidence, excluded, summary))


# --------------------------------------------------------------------------------------------
# the claims
# --------------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return "n/a" if x is None or np.isnan(x) else f"{100 * x:.0f}%"


def _accuracy(x: float) -> str:
    """An accuracy (a fraction) in percent, one decimal: 0.81 -> '81.0%'."""
    return "nothing stored" if x is None or np.isnan(x) else f"{100 * x:.1f}%"


def _points(x: float) -> str:
    """A bar on a difference of accuracies (a fraction) in percentage points: 0.2 -> '20 points'."""
    return f"{100 * x:g} points"


def _and(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _lengths_text(lengths: Sequence[int], T: int) -> str:
    """'128 (2T), 256 (4T) and 512 (8T)', or 'no length'."""
    return _and([f"{length} ({'' if length == T else f'{length / T:g}'}T)" for length in lengths]) or "no length"


SIDE = {"above": "is wholly above {}", "undecided": "straddles {}", "below": "is at or below {}"}


def _side(e: Estimate, bar: float) -> str:
    """Where an interval lies against a bar, in words: 'is wholly above 20 points', 'straddles 20
    points' or 'is at or below 20 points'."""
    return SIDE[e.compare(bar)].format(_points(bar))


def _sides(estimates: dict[int, Estimate], bar: float, T: int) -> str:
    """Each length's interval against `bar` in one phrase, lengths with the same side together in
    the order they come: 'is wholly above 20 points at 128 (2T) and 256 (4T), straddles 20 points
    at 512 (8T), is at or below 20 points at 1024 (16T)'."""
    groups: dict[str, list[int]] = {}
    for length, e in estimates.items():
        groups.setdefault(e.compare(bar), []).append(length)
    return ", ".join(f"{SIDE[side].format(_points(bar))} at {_lengths_text(lengths, T)}"
                     for side, lengths in groups.items())


def _triple(e: Estimate) -> list[float | None]:
    return [_round(e.value), _round(e.low), _round(e.high)]


def claim_degradation(models: Sequence[ModelSummary], cells, plan: Plan | None = None,
                      settings: AnalysisSettings = AnalysisSettings()) -> Finding:
    """Claim 1. Per model, at every evaluated length L past T: drop(L) = accuracy at T minus at L
    (pooled over seeds, depths and the model's labels), each interval at the Bonferroni level
    over the k lengths. The model degrades sharply when some drop is decided above
    `sharp_drop_fraction`, does not when every drop's upper bound is at or below it."""
    cells = cell_list(cells)
    kept, excluded = split_models(models, settings, cells, plan)
    level, bar = settings.interval_level_fraction, settings.sharp_drop_fraction
    evidence = []
    for model in kept:
        T, name = model.train_length, model.name
        past = [length for length in lengths_of(cells, name, plan, model.labels) if length > T]
        if not past:
            evidence.append(Evidence(name, model.family, "accuracy drop", NO_ESTIMATE, INCONCLUSIVE,
                                     f"no length past T={T} evaluated or planned"))
            continue
        each = simultaneous_level(level, len(past))
        at_t = select(cells, name, plan, model.labels, [T])
        drops, coverage, keys = {}, at_t.coverage, list(at_t.keys)
        for length in past:
            at_length = select(cells, name, plan, model.labels, [length])
            drops[length] = difference(at_t.cells, at_length.cells, each)
            coverage, keys = coverage + at_length.coverage, keys + at_length.keys
        sharp = [length for length, d in drops.items() if d.compare(bar) == "above"]
        if sharp:
            decided = SUPPORTED
        elif all(d.compare(bar) == "below" for d in drops.values()):
            decided = NOT_SUPPORTED
        else:
            decided = INCONCLUSIVE
        verdict, note = _gate(decided, coverage, settings)
        shown_at = sharp[0] if sharp else max(drops, key=lambda L: -np.inf if np.isnan(drops[L].value) else drops[L].value)
        shown = drops[shown_at]
        effective = effective_length(cells, name, T, plan, model.labels, settings.effective_length_bar_fraction, level)
        first = pooled_estimate(at_t.cells, level)
        reason = (f"Accuracy at T={T} is {_fmt(first, '%')}. The drop from T {_sides(drops, bar, T)}. The "
                  f"{'first sharp' if sharp else 'largest'} drop is {_fmt(shown)}, at {shown_at} ({shown_at / T:g}T). "
                  f"Effective length: {effective.length if effective.length is not None else 'none'}." + note)
        evidence.append(Evidence(
            name, model.family, f"drop from T={T} ({'first sharp' if sharp else 'largest'}, at {shown_at})", shown,
            verdict, reason, keys, coverage,
            {"accuracy_at_T": first.value, "length": float(shown_at),
             "effective_length": float("nan") if effective.length is None else float(effective.length)},
            {"drops": {str(length): _triple(d) for length, d in drops.items()}, "sharp_from": sharp,
             "interval_level_each": each, "effective_length": effective.length,
             "ruler_effective_length": effective.ruler_length}))
    rule = (f"A model degrades sharply when, at some length past T, its accuracy at T minus its accuracy there has "
            f"an interval wholly above {_points(bar)} ({100 * level:g}% over all lengths together), and does not when "
            f"every such interval ends at or below {_points(bar)}; the claim holds when every family's judged models "
            "degrade.")
    verdict, summary = every_family(every(e.verdict for e in evidence), evidence, models, _by_family(evidence))
    return _finish(1, rule, verdict, evidence, excluded, summary)


def claim_recurrent_vs_attention(models: Sequence[ModelSummary], cells, plan: Plan | None = None,
                                 settings: AnalysisSettings = AnalysisSettings()) -> Finding:
    """Claim 2. For every recurrent/state-space model R and every attention model A, at every
    evaluated length past T, the difference acc_R - acc_A on the labels both models are judged
    on (pooled over seeds and depths; MOVER intervals at the Bonferroni level over the lengths).
    R is ahead at a length when the interval is wholly above `lead_margin_fraction`, A is ahead
    when it is wholly below minus that margin. A pair supports the claim when R is ahead
    somewhere and A nowhere; it contradicts it when A is ahead somewhere, or when R cannot be
    ahead anywhere (every upper bound at or below the margin). Other families are not judged."""
    cells = cell_list(cells)
    kept, excluded = split_models(models, settings, cells, plan)
    level, margin = settings.interval_level_fraction, settings.lead_margin_fraction
    recurrent = [m for m in kept if m.family in settings.recurrent_families]
    attention = [m for m in kept if m.family in settings.attention_families]
    evidence = []
    for model in kept:
        if model not in recurrent and model not in attention:
            evidence.append(Evidence(model.name, model.family, "not compared", NO_ESTIMATE, None,
                                     f"family {model.family} is neither recurrent nor attention"))
    for r in recurrent:
        for a in attention:
            evidence.append(_pair(cells, plan, settings, r, a, level, margin))
    verdict = every(e.verdict for e in evidence if e.verdict is not None)
    summary = " ".join(_pair_summary(e) for e in evidence if e.verdict is not None)
    if not recurrent or not attention:
        have = "a recurrent" if recurrent else "an attention" if attention else "no"
        verdict, summary = INCONCLUSIVE, f"needs a judged recurrent and a judged attention model; has {have} model only. "
    rule = (f"For each recurrent or state-space model paired with each attention model, the difference in accuracy "
            f"(recurrent minus attention, on the formats both learned) is read at every length past T with "
            f"{100 * level:g}% intervals over all lengths together: a family is ahead where its interval clears a "
            f"margin of {_points(margin)}, and the claim holds when every recurrent model is ahead somewhere and attention "
            "nowhere.")
    return _finish(2, rule, verdict, evidence, excluded, summary)


def _pair(cells: list[Cell], plan: Plan | None, settings: AnalysisSettings, r: Judged, a: Judged, level: float,
          margin: float) -> Evidence:
    T = r.train_length
    labels = _shared_labels(r.labels, a.labels)
    name = f"{r.name} vs {a.name}"
    if labels is not None and not labels:
        return Evidence(name, r.family, "recurrent minus attention", NO_ESTIMATE, INCONCLUSIVE,
                        "no format both models learned at T")
    if a.train_length != T:
        return Evidence(name, r.family, "recurrent minus attention", NO_ESTIMATE, INCONCLUSIVE,
                        f"trained at different lengths ({T} and {a.train_length})")
    lengths = sorted(set(lengths_of(cells, r.name, plan, labels)) & set(lengths_of(cells, a.name, plan, labels)))
    past = [length for length in lengths if length > T]
    if not past:
        return Evidence(name, r.family, "recurrent minus attention", NO_ESTIMATE, INCONCLUSIVE,
                        f"no length past T={T} evaluated for both")
    each = simultaneous_level(level, len(past))
    diffs, coverage, keys = {}, Coverage(0, 0), []
    for length in past:
        mine = select(cells, r.name, plan, labels, [length])
        theirs = select(cells, a.name, plan, labels, [length])
        diffs[length] = difference(mine.cells, theirs.cells, each)
        coverage, keys = coverage + mine.coverage + theirs.coverage, keys + mine.keys + theirs.keys
    r_ahead = [length for length, d in diffs.items() if d.compare(margin) == "above"]
    a_ahead = [length for length, d in diffs.items() if not np.isnan(d.high) and d.high < -margin]
    if a_ahead:
        decided = NOT_SUPPORTED
    elif r_ahead:
        decided = SUPPORTED
    elif all(not np.isnan(d.high) and d.high <= margin for d in diffs.values()):
        decided = NOT_SUPPORTED
    else:
        decided = INCONCLUSIVE
    verdict, note = _gate(decided, coverage, settings)
    longest = max(past)
    neither = [length for length in past if length not in r_ahead and length not in a_ahead]
    if r_ahead or a_ahead:
        ahead = (f"{r.name} is ahead by more than {_points(margin)} at {_lengths_text(r_ahead, T)}, {a.name} at "
                 f"{_lengths_text(a_ahead, T)}" + (f", neither at {_lengths_text(neither, T)}" if neither else ""))
    else:
        ahead = f"Neither is ahead by more than {_points(margin)} at any of {_lengths_text(past, T)}"
    reason = (ahead + f". At {longest} ({longest / T:g}T) {r.name} minus {a.name} is {_fmt(diffs[longest])}."
              + ("" if labels is None else f" Read on {_and(labels)}.") + note)
    return Evidence(name, r.family, f"{r.name} minus {a.name} at {longest} ({longest / T:g}T)", diffs[longest],
                    verdict, reason, keys, coverage, {"length": float(longest)},
                    {"recurrent": r.name, "attention": a.name, "recurrent_ahead": r_ahead, "attention_ahead": a_ahead,
                     "differences": {str(length): _triple(d) for length, d in diffs.items()},
                     "labels": None if labels is None else list(labels), "interval_level_each": each})


def _shared_labels(first: tuple[str, ...] | None, second: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if first is None or second is None:
        return first if second is None else second
    return tuple(label for label in first if label in second)


def _pair_summary(e: Evidence) -> str:
    d = e.details
    if not d:
        return f"{e.model}: {e.verdict}"
    return (f"{e.model}: {e.verdict}, as {d['recurrent']} is ahead at "
            f"{_and([str(n) for n in d['recurrent_ahead']]) or 'no length'} and {d['attention']} at "
            f"{_and([str(n) for n in d['attention_ahead']]) or 'no length'}.")


def _middle_evidence(model: ModelSummary, cells, plan: Plan | None, settings: AnalysisSettings) -> Evidence:
    """Claim 3's evidence of one model (see claim_lost_in_the_middle)."""
    level, gap = settings.interval_level_fraction, settings.middle_gap_fraction
    T, name = model.train_length, model.name
    candidates = [L for L in lengths_of(cells, name, plan, model.labels) if L >= T]
    measured = {L: middle_index(cells, name, L, plan, model.labels, settings.middle_depths_percent, level)
                for L in candidates}
    measured = {L: m for L, m in measured.items() if m.measured}
    if not measured:
        return Evidence(name, model.family, "lost-in-the-middle index", NO_ESTIMATE, INCONCLUSIVE,
                        f"no start, end and middle depths from T={T} on")
    inside = [L for L, m in measured.items()
              if settings.floor_fraction <= m.overall.value <= settings.ceiling_fraction]
    read = inside[:settings.middle_lengths_read]
    skipped = [L for L in measured if L < (read[-1] if read else max(measured) + 1) and L not in read]
    limits = {str(L): _round(measured[L].overall.value) for L in skipped}
    used = [measured[L] for L in read + skipped]
    coverage = sum((m.coverage for m in used), Coverage(0, 0))
    keys = [k for m in used for k in m.cells]
    if not read:
        return Evidence(name, model.family, "lost-in-the-middle index", NO_ESTIMATE, INCONCLUSIVE,
                        f"accuracy over all depths is above {_pct(settings.ceiling_fraction)} or below "
                        f"{_pct(settings.floor_fraction)} at every length from T={T} on: no depth can "
                        "differ there", keys, coverage, details={"skipped": limits})
    each = simultaneous_level(level, len(read))
    again = {L: middle_index(cells, name, L, plan, model.labels, settings.middle_depths_percent, each) for L in read}
    lost = [L for L, m in again.items() if m.u_index.compare(gap) == "above"]
    if lost:
        decided = SUPPORTED
    elif all(m.u_index.compare(gap) == "below" for m in again.values()):
        decided = NOT_SUPPORTED
    else:
        decided = INCONCLUSIVE
    verdict, note = _gate(decided, coverage, settings)
    shown_at = lost[0] if lost else max(again, key=lambda L: again[L].u_index.value)
    shown = again[shown_at]
    reason = (f"At {shown_at} ({shown_at / T:g}T) the accuracy is {_pct(shown.start.value)} at the start, "
              f"{_pct(shown.middle_accuracy.value)} in the middle and {_pct(shown.end.value)} at the end; primacy "
              f"(start minus middle) is {_fmt(shown.primacy)}, recency (end minus middle) {_fmt(shown.recency)}. The "
              f"worse end minus the middle {_sides({L: m.u_index for L, m in again.items()}, gap, T)}: "
              + ("worse in the middle than at both ends." if decided == SUPPORTED else
                 "not worse in the middle than at both ends." if decided == NOT_SUPPORTED else "undecided.")
              + (f" Not read, at the ceiling or the floor: {_lengths_text([int(L) for L in limits], T)}." if limits
                 else "") + note)
    return Evidence(
        name, model.family, f"min(start, end) minus middle at {shown_at} ({shown_at / T:g}T)", shown.u_index,
        verdict, reason, keys, coverage,
        {"primacy": shown.primacy.value, "recency": shown.recency.value, "length": float(shown_at)},
        {"read_lengths": read, "lost_at": lost, "skipped": limits, "interval_level_each": each,
         "by_length": {str(L): {"start": _round(m.start.value), "middle": _round(m.middle_accuracy.value),
                                "end": _round(m.end.value), "primacy": _triple(m.primacy),
                                "recency": _triple(m.recency), "u_index": _triple(m.u_index)}
                       for L, m in again.items()}})


def claim_lost_in_the_middle(models: Sequence[ModelSummary], cells, plan: Plan | None = None,
                             settings: AnalysisSettings = AnalysisSettings()) -> Finding:
    """Claim 3. Per model at the first `middle_lengths_read` lengths from T on whose accuracy over all
    depths is off the ceiling and floor: the U index min(start, end) - middle,
    with primacy (start - middle) and recency (end - middle) apart, intervals at the Bonferroni
    level over the lengths read. Lost in the middle when some U index is decided above
    `middle_gap_fraction`; not when every one's upper bound is at or below it. Recency alone
    (the start no better than the middle) is not lost in the middle."""
    cells = cell_list(cells)
    kept, excluded = split_models(models, settings, cells, plan)
    level = settings.interval_level_fraction
    evidence = [_middle_evidence(model, cells, plan, settings) for model in kept]
    rule = (f"At the first {settings.middle_lengths_read} lengths from T on where a model's accuracy over all depths "
            f"is off the ceiling and floor ({_pct(settings.floor_fraction)}-{_pct(settings.ceiling_fraction)}), "
            f"the worse of its two ends minus its middle (depths {settings.middle_depths_percent[0]:g}-"
            f"{settings.middle_depths_percent[1]:g}%) must have an interval wholly above {_points(settings.middle_gap_fraction)} "
            f"at some length ({100 * level:g}% over the lengths together) for the model to be lost in the middle, so "
            "that a rise toward the question alone (recency) does not count; the claim holds when every family's judged "
            "models are.")
    verdict, summary = every_family(every(e.verdict for e in evidence), evidence, models, _by_family(evidence))
    return _finish(3, rule, verdict, evidence, excluded, summary)


def claim_format_inconsistency(models: Sequence[ModelSummary], cells, plan: Plan | None = None,
                               settings: AnalysisSettings = AnalysisSettings()) -> Finding:
    """Claim 4. Per model and per group of its labels with equal answer length (so that a longer
    answer cannot make a format look worse): the spread (max - min) of accuracy across the group
    at T and at the fixed length `format_length_factor` * T. Inconsistent when for some group
    the spread at T is decided below `small_spread_fraction` and at the fixed length decided
    above `large_spread_fraction`; consistent when no group can be."""
    cells = cell_list(cells)
    kept, excluded = split_models(models, settings, cells, plan)
    level = settings.interval_level_fraction
    small, large = settings.small_spread_fraction, settings.large_spread_fraction
    evidence = []
    for model in kept:
        T, name = model.train_length, model.name
        fixed = settings.format_length_factor * T
        labels = model.labels or tuple(sorted({c.task for c in cells if c.model == name}))
        groups = [g for g in answer_length_groups(labels, plan) if len(g) >= 2]
        if not groups:
            evidence.append(Evidence(name, model.family, "format spread", NO_ESTIMATE, INCONCLUSIVE,
                                     "needs two or more learned formats of equal answer length"))
            continue
        if fixed not in lengths_of(cells, name, plan, labels):
            evidence.append(Evidence(name, model.family, "format spread", NO_ESTIMATE, INCONCLUSIVE,
                                     f"the fixed length {fixed} ({settings.format_length_factor}T) was not evaluated"))
            continue
        each = simultaneous_level(level, 2 * len(groups))  # every group, at T and at the fixed length
        results = []
        for group in groups:
            at_t = format_spread(cells, name, T, plan, group, each)
            at_fixed = format_spread(cells, name, fixed, plan, group, each)
            yes = at_t.spread.compare(small) == "below" and at_fixed.spread.compare(large) == "above"
            no = ((not np.isnan(at_t.spread.low) and at_t.spread.low >= small)
                  or at_fixed.spread.compare(large) == "below")
            results.append((group, at_t, at_fixed, yes, no))
        if any(yes for *_, yes, _ in results):
            decided = SUPPORTED
        elif all(no for *_, no in results):
            decided = NOT_SUPPORTED
        else:
            decided = INCONCLUSIVE
        verdict, note = _gate(decided, sum((r[1].coverage + r[2].coverage for r in results), Coverage(0, 0)), settings)
        group, at_t, at_fixed, *_ = max(results, key=lambda r: (r[3], -np.inf if np.isnan(r[2].spread.value)
                                                                else r[2].spread.value))
        reason = _spread_reason(group, at_t, at_fixed, T, settings) + note
        coverage = sum((r[1].coverage + r[2].coverage for r in results), Coverage(0, 0))
        keys = [k for r in results for k in r[1].cells + r[2].cells]
        evidence.append(Evidence(
            name, model.family, f"format spread at {fixed} ({settings.format_length_factor}T)", at_fixed.spread,
            verdict, reason, keys, coverage,
            {"spread_at_T": at_t.spread.value, "spread_at_T_low": at_t.spread.low,
             "spread_at_T_high": at_t.spread.high, "length": float(fixed)},
            {"groups": [{"labels": list(g), "spread_at_T": _triple(t.spread), "spread_at_fixed": _triple(f.spread),
                         "by_label_at_fixed": {k: _triple(v) for k, v in f.by_label.items()}}
                        for g, t, f, *_ in results], "interval_level_each": each}))
    rule = (f"Among formats of equal answer length, a model is inconsistent when their spread in accuracy is decided "
            f"below {_points(small)} at T and above {_points(large)} at {settings.format_length_factor}T (a length fixed in "
            f"advance; {100 * level:g}% intervals over every comparison together); the claim holds when some model is.")
    return _finish(4, rule, some(e.verdict for e in evidence), evidence, excluded)


def _spread_reason(group: Sequence[str], at_t, at_fixed, T: int, settings: AnalysisSettings) -> str:
    """Claim 4's inputs in words: the spread of a group of formats at T against the small bar and
    at the fixed length against the large one, and which format is best and worst there."""
    ranking = (f"{at_fixed.best} is best and {at_fixed.worst} worst" if at_fixed.spread.value > 0
               else "the formats are equal")
    factor = settings.format_length_factor
    return (f"Across the formats {_and(list(group))} the spread is {_fmt(at_t.spread)} at T={T}, "
            f"which {_side(at_t.spread, settings.small_spread_fraction)}, and {_fmt(at_fixed.spread)} at {factor * T} "
            f"({factor}T), which {_side(at_fixed.spread, settings.large_spread_fraction)}; {ranking}.")


CLAIM_FUNCTIONS = {1: claim_degradation, 2: claim_recurrent_vs_attention, 3: claim_lost_in_the_middle,
                   4: claim_format_inconsistency}


def findings(models: Sequence[ModelSummary], cells, plan: Plan | None = None,
             settings: AnalysisSettings = AnalysisSettings()) -> list[Finding]:
    """All four claims, in order."""
    cells = cell_list(cells)
    return [CLAIM_FUNCTIONS[number](models, cells, plan, settings) for number in sorted(CLAIM_FUNCTIONS)]
