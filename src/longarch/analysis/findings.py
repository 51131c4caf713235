"""The paper's four claims (reference/paper.md), each tested on the study's results.

Every claim is decided per model first, from a measure with a 95% bootstrap interval (see
`measures`), and the model verdicts are then combined:

- a model's verdict is 'supported' or 'not supported' only when the interval lies wholly on one
  side of the claim's bar, 'inconclusive' otherwise, and also 'inconclusive' when any planned cell
  it needs is missing (unless `Settings.allow_incomplete`);
- "every family ..." claims (1, 2, 3): 'not supported' when any model is, 'supported' when all
  are (and there is at least one), 'inconclusive' otherwise; a family holds when all its models do;
- "at least one model ..." claims (4): 'supported' when any model is, 'not supported' when all
  are not, 'inconclusive' otherwise.

Models whose training accuracy (mean over seeds) is below `Settings.min_train_accuracy` never
enter a verdict; each finding lists them with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .measures import (NO_ESTIMATE, CellKey, Coverage, Estimate, Plan, cell_list, difference, format_spread,
                       middle_index, pooled_estimate, pooled_mean, select)
from .stats import DEFAULT_MIN_TRAIN_ACCURACY, Cell, ModelSummary

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)

CLAIMS = {
    1: "Every family degrades sharply past its training length.",
    2: "Linear-recurrent and state-space models keep non-trivial accuracy past their training length; "
       "pure attention collapses to near zero.",
    3: "At the training length every family does worse in the middle of the context than at the ends.",
    4: "Extrapolation is inconsistent across formats: for some model the spread between formats is "
       "large past the training length while small at it.",
}


@dataclass(frozen=True)
class Settings:
    """The bars the claims are judged against; accuracies are fractions in [0, 1]."""

    min_train_accuracy: float = DEFAULT_MIN_TRAIN_ACCURACY
    level: float = 0.95
    resamples: int = 2000
    seed: int = 0
    labels: tuple[str, ...] | None = None   # the formats pooled over; None: every label
    allow_incomplete: bool = False           # decide a model even when planned cells are missing
    # "model": a model whose training accuracy is below min_train_accuracy is left out of every
    # claim. "label": a model enters each claim only with the labels (formats) it solved at T,
    # accuracy pooled over seeds and depths at or above min_train_accuracy (for studies trained on
    # a mixture, whose training accuracy averages tasks), and is left out when it solved none.
    gate: str = "model"
    min_drop: float = 0.2                    # claim 1: accuracy at T minus at the longest length
    factor: int = 2                          # claim 2: "past T" is the length factor * T
    chance: float | Mapping[str, float] = 0.0  # claim 2: chance accuracy, overall or per label
    nontrivial: float = 0.10                 # claim 2: recurrent accuracy must exceed chance + this
    collapsed: float = 0.05                  # claim 2: attention accuracy must stay within chance + this
    recurrent_families: tuple[str, ...] = ("state-space", "linear-recurrent")
    attention_families: tuple[str, ...] = ("attention",)
    min_middle_gap: float = 0.0              # claim 3: ends minus middle must exceed this
    small_spread: float = 0.10               # claim 4: format spread at T must be below this
    large_spread: float = 0.30               # claim 4: and above this at some length past T


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

    def as_dict(self) -> dict:
        return {"model": self.model, "family": self.family, "quantity": self.quantity,
                "estimate": self.estimate.as_dict(), "verdict": self.verdict, "reason": self.reason,
                "cells": [list(k) for k in self.cells], "expected_cells": self.coverage.expected,
                "covered_cells": self.coverage.covered, "complete": self.coverage.complete,
                "numbers": {k: _round(v) for k, v in self.numbers.items()}}


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


def _fmt(e: Estimate) -> str:
    return "n/a" if np.isnan(e.value) else f"{e.value:.2f} [{e.low:.2f}, {e.high:.2f}]"


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


def split_models(models: Sequence[ModelSummary], settings: Settings, cells: list[Cell] = (),
                 plan: Plan | None = None) -> tuple[list[Judged], list[Exclusion]]:
    """Models fit to judge, and those left out with the reason (see `Settings.gate`; an unknown
    training accuracy counts as fit, as in the report)."""
    kept, excluded = [], []
    bar = settings.min_train_accuracy
    for model in models:
        if settings.gate == "label":
            solved, failed = solved_labels(cells, model, plan, settings)
            if failed:
                listed = ", ".join(f"{label} {accuracy:.3f}" for label, accuracy in failed)
                what = "every label" if not solved else "labels"
                excluded.append(Exclusion(model.name, model.family, f"{what} below {bar:.3f} at T={model.train_length}: "
                                                                    f"{listed}"))
            if solved:
                kept.append(Judged(model.name, model.family, model.train_length, tuple(solved)))
        elif not np.isnan(model.train_accuracy) and model.train_accuracy < bar:
            excluded.append(Exclusion(model.name, model.family,
                                      f"training accuracy {model.train_accuracy:.3f} below {bar:.3f}"))
        else:
            kept.append(Judged(model.name, model.family, model.train_length, settings.labels))
    return kept, excluded


def accuracy_at(cells: Iterable[Cell], model: str, label: str, length: int) -> float:
    """Accuracy of one model on one label at one length, pooled over seeds and depths; nan if none."""
    return pooled_mean(c for c in cells if c.model == model and c.task == label and c.length == length)


def solved_labels(cells: list[Cell], model: ModelSummary, plan: Plan | None,
                  settings: Settings) -> tuple[list[str], list[tuple[str, float]]]:
    """The labels (of `settings.labels`, else all) whose accuracy at T, pooled over seeds and depths,
    reaches min_train_accuracy, and the others with their accuracy (nan: nothing stored at T)."""
    labels = settings.labels or (plan.labels if plan is not None else sorted({c.task for c in cells}))
    solved, failed = [], []
    for label in labels:
        accuracy = accuracy_at(cells, model.name, label, model.train_length)
        if accuracy >= settings.min_train_accuracy:
            solved.append(label)
        else:
            failed.append((label, accuracy))
    return solved, failed


def _gate(verdict: str, coverage: Coverage, settings: Settings) -> tuple[str, str]:
    """A decided verdict becomes inconclusive when planned cells are missing."""
    if coverage.complete or settings.allow_incomplete or verdict == INCONCLUSIVE:
        return verdict, ""
    missing = coverage.expected - coverage.covered
    return INCONCLUSIVE, f"; decided on the stored cells, but {missing} of {coverage.expected} planned cells are missing"


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
        parts.append(f"{family}: {verdict} ({', '.join(f'{e.model} {e.verdict}' for e in items)})")
    return "; ".join(parts)


def _explain(verdict: str, evidence: list[Evidence], excluded: list[Exclusion], summary: str) -> str:
    lines = [f"Verdict: {verdict}. {summary}".rstrip()]
    lines += [f"- {e.model} ({e.family}): {e.quantity} {_fmt(e.estimate)} -> {e.verdict or 'not judged'}: {e.reason}"
              for e in evidence]
    lines += [f"- {x.model} ({x.family}) left out on {x.reason}" if x.reason.startswith("labels") else
              f"- {x.model} ({x.family}) excluded: {x.reason}" for x in excluded]
    return "\n".join(lines)


def _chance(cells: Iterable[Cell], chance: float | Mapping[str, float]) -> float:
    """Chance accuracy of pooled cells: per label, weighted by each cell's samples."""
    if not isinstance(chance, Mapping):
        return float(chance)
    cells = list(cells)
    total = sum(c.n for c in cells)
    return float(sum(chance.get(c.task, 0.0) * c.n for c in cells) / total) if total else 0.0


def _lengths(cells: list[Cell], model: str, plan: Plan | None, labels) -> list[int]:
    everything = select(cells, model, plan, labels)
    return sorted({k[2] for k in everything.keys} | {k[2] for k in everything.coverage.missing})


def _reason(verdict: str, bar: float, yes: str, no: str) -> str:
    if verdict == SUPPORTED:
        return f"{yes} (interval clear of {bar:.2f})"
    if verdict == NOT_SUPPORTED:
        return f"{no} (interval clear of {bar:.2f})"
    return f"interval straddles {bar:.2f}"


def _finish(number: int, rule: str, verdict: str, evidence: list[Evidence], excluded: list[Exclusion],
            summary: str = "") -> Finding:
    return Finding(number, CLAIMS[number], rule, verdict, evidence, excluded,
                   _explain(verdict, evidence, excluded, summary))


# --------------------------------------------------------------------------------------------
# the claims
# --------------------------------------------------------------------------------------------
def claim_degradation(models: Sequence[ModelSummary], cells, plan: Plan | None = None,
                      settings: Settings = Settings()) -> Finding:
    """Claim 1. Per model: drop = accuracy at T minus accuracy at the longest planned length past T
    (pooled over seeds, depths and the chosen labels; a paired interval). The model degrades when the
    whole interval is above `min_drop`, does not when it is at or below it."""
    cells = cell_list(cells)
    kept, excluded = split_models(models, settings, cells, plan)
    evidence = []
    for model in kept:
        T, name = model.train_length, model.name
        past = [length for length in _lengths(cells, name, plan, model.labels) if length > T]
        if not past:
            evidence.append(Evidence(name, model.family, "accuracy drop", NO_ESTIMATE, INCONCLUSIVE,
                                     f"no length past T={T} evaluated or planned"))
            continue
        at_t = select(cells, name, plan, model.labels, [T])
        at_longest = select(cells, name, plan, model.labels, [max(past)])
        drop = difference(at_t.cells, at_longest.cells, settings.level, settings.resamples, settings.seed)
        coverage = at_t.coverage + at_longest.coverage
        decided = decide(drop, settings.min_drop, SUPPORTED)
        verdict, note = _gate(decided, coverage, settings)
        first = pooled_estimate(at_t.cells, settings.level, settings.resamples, settings.seed)
        last = pooled_estimate(at_longest.cells, settings.level, settings.resamples, settings.seed)
        reason = (f"{_fmt(first)} at T={T}, {_fmt(last)} at {max(past)}; "
                  + _reason(decided, settings.min_drop, "degrades", "does not degrade sharply") + note)
        evidence.append(Evidence(name, model.family, f"accuracy drop T={T} -> {max(past)}", drop, verdict, reason,
                                 at_t.keys + at_longest.keys, coverage,
                                 {"accuracy_at_T": first.value, "accuracy_at_longest": last.value,
                                  "longest": float(max(past))}))
    rule = (f"per model, drop = accuracy at T minus at the longest length past T; supported when every model's "
            f"{100 * settings.level:g}% interval of the drop is above {settings.min_drop:.2f}, not supported when "
            "any is at or below it")
    verdict, summary = every_family(every(e.verdict for e in evidence), evidence, models, _by_family(evidence))
    return _finish(1, rule, verdict, evidence, excluded, summary)


def claim_recurrent_vs_attention(models: Sequence[ModelSummary], cells, plan: Plan | None = None,
                                 settings: Settings = Settings()) -> Finding:
    """Claim 2. At L = factor * T, pooled over seeds, depths and labels: a recurrent or state-space
    model keeps non-trivial accuracy when its interval is above chance + `nontrivial`; an attention
    model collapses when its interval is at or below chance + `collapsed`. Other families are shown
    but not judged."""
    cells = cell_list(cells)
    kept, excluded = split_models(models, settings, cells, plan)
    evidence, roles = [], set()
    for model in kept:
        name, length = model.name, settings.factor * model.train_length
        chosen = select(cells, name, plan, model.labels, [length])
        accuracy = pooled_estimate(chosen.cells, settings.level, settings.resamples, settings.seed)
        chance = _chance(chosen.cells, settings.chance)
        quantity = f"accuracy at {settings.factor}T={length}"
        if model.family in settings.recurrent_families:
            roles.add("recurrent")
            bar = chance + settings.nontrivial
            decided = decide(accuracy, bar, SUPPORTED)
            verdict, note = _gate(decided, chosen.coverage, settings)
            reason = _reason(decided, bar, "keeps non-trivial accuracy", "does not keep non-trivial accuracy") + note
        elif model.family in settings.attention_families:
            roles.add("attention")
            bar = chance + settings.collapsed
            decided = decide(accuracy, bar, NOT_SUPPORTED)
            verdict, note = _gate(decided, chosen.coverage, settings)
            reason = _reason(decided, bar, "collapses to near chance", "does not collapse") + note
        else:
            verdict, reason = None, f"family {model.family} is not part of the claim"
        if np.isnan(accuracy.value) and verdict is not None:
            verdict, reason = INCONCLUSIVE, f"no results at {length}"
        evidence.append(Evidence(name, model.family, quantity, accuracy, verdict, reason, chosen.keys,
                                 chosen.coverage, {"chance": chance, "length": float(length)}))
    verdict = every(e.verdict for e in evidence if e.verdict is not None)
    summary = _by_family(evidence)
    if verdict == SUPPORTED and roles != {"recurrent", "attention"}:
        verdict, summary = INCONCLUSIVE, f"needs both recurrent and attention models; has {sorted(roles)}. " + summary
    rule = (f"at {settings.factor}T, pooled over formats and depths: supported when every recurrent/state-space "
            f"model's interval is above chance + {settings.nontrivial:.2f} and every attention model's is at or below "
            f"chance + {settings.collapsed:.2f} (at least one of each); not supported when any model is decided the "
            "other way")
    return _finish(2, rule, verdict, evidence, excluded, summary)


def claim_lost_in_the_middle(models: Sequence[ModelSummary], cells, plan: Plan | None = None,
                             settings: Settings = Settings()) -> Finding:
    """Claim 3. At T: index = accuracy at the two extreme depths minus accuracy at depths in
    [40, 60], pooled over seeds and labels (a paired interval). Lost in the middle when the
    interval is above `min_middle_gap`; not when it is at or below it."""
    cells = cell_list(cells)
    kept, excluded = split_models(models, settings, cells, plan)
    evidence = []
    for model in kept:
        T, name = model.train_length, model.name
        found = middle_index(cells, name, T, plan, model.labels, level=settings.level,
                             resamples=settings.resamples, seed=settings.seed)
        if not found.ends or not found.middle:
            evidence.append(Evidence(name, model.family, "lost-in-the-middle index", NO_ESTIMATE, INCONCLUSIVE,
                                     f"no end and middle depths at T={T}", found.cells, found.coverage))
            continue
        decided = decide(found.index, settings.min_middle_gap, SUPPORTED)
        verdict, note = _gate(decided, found.coverage, settings)
        ends = "/".join(f"{d:g}" for d in found.ends)
        middle = "/".join(f"{d:g}" for d in found.middle)
        reason = (f"ends ({ends}) {found.ends_accuracy:.2f}, middle ({middle}) {found.middle_accuracy:.2f}; "
                  + _reason(decided, settings.min_middle_gap, "worse in the middle", "not worse in the middle") + note)
        evidence.append(Evidence(name, model.family, f"ends minus middle at T={T}", found.index, verdict, reason,
                                 found.cells, found.coverage,
                                 {"ends_accuracy": found.ends_accuracy, "middle_accuracy": found.middle_accuracy}))
    rule = (f"per model at T, index = accuracy at the extreme depths minus at depths 40-60%; supported when every "
            f"model's interval is above {settings.min_middle_gap:.2f}, not supported when any is at or below it")
    verdict, summary = every_family(every(e.verdict for e in evidence), evidence, models, _by_family(evidence))
    return _finish(3, rule, verdict, evidence, excluded, summary)


def claim_format_inconsistency(models: Sequence[ModelSummary], cells, plan: Plan | None = None,
                               settings: Settings = Settings()) -> Finding:
    """Claim 4. Per model, the spread (max - min) of accuracy across formats, each pooled over seeds
    and depths: at T, and at each planned length past T. A model shows the inconsistency when the
    spread at T is decided below `small_spread` and at some length past T decided above
    `large_spread`; it does not when the spread at T is decided not small or every spread past T is
    decided not large."""
    cells = cell_list(cells)
    kept, excluded = split_models(models, settings, cells, plan)
    evidence = []
    for model in kept:
        T, name = model.train_length, model.name
        args = dict(plan=plan, labels=model.labels, level=settings.level, resamples=settings.resamples,
                    seed=settings.seed)
        at_t = format_spread(cells, name, T, **args)
        past = [format_spread(cells, name, length, **args)
                for length in _lengths(cells, name, plan, model.labels) if length > T]
        coverage = sum((s.coverage for s in past), at_t.coverage)
        used = at_t.cells + [k for s in past for k in s.cells]
        if at_t.best is None or not past or any(s.best is None for s in past):
            evidence.append(Evidence(name, model.family, "format spread", NO_ESTIMATE, INCONCLUSIVE,
                                     "needs two or more formats at T and at a length past T", used, coverage))
            continue
        small = at_t.spread.compare(settings.small_spread)          # 'below' = small
        large = [s.spread.compare(settings.large_spread) for s in past]  # 'above' = large
        if small == "below" and "above" in large:
            verdict = SUPPORTED
        elif small == "above" or all(x == "below" for x in large):
            verdict = NOT_SUPPORTED
        else:
            verdict = INCONCLUSIVE
        verdict, note = _gate(verdict, coverage, settings)
        widest = max(past, key=lambda s: s.spread.value)
        ranking = (f"{widest.best} best, {widest.worst} worst" if widest.spread.value > 0 else "formats equal")
        reason = (f"spread at T={T} {_fmt(at_t.spread)} (small below {settings.small_spread:.2f}: {small}); widest "
                  f"past T at {widest.length}: {_fmt(widest.spread)}, {ranking} "
                  f"(large above {settings.large_spread:.2f}: {', '.join(large)})" + note)
        evidence.append(Evidence(name, model.family, f"widest format spread past T (at {widest.length})",
                                 widest.spread, verdict, reason, used, coverage,
                                 {"spread_at_T": at_t.spread.value, "spread_at_T_low": at_t.spread.low,
                                  "spread_at_T_high": at_t.spread.high, "length": float(widest.length)}))
    rule = (f"per model, spread across formats; supported when for some model the spread at T is decided below "
            f"{settings.small_spread:.2f} and at some length past T decided above {settings.large_spread:.2f}; "
            "not supported when no model can be (every model decided otherwise)")
    return _finish(4, rule, some(e.verdict for e in evidence), evidence, excluded)


CLAIM_FUNCTIONS = {1: claim_degradation, 2: claim_recurrent_vs_attention, 3: claim_lost_in_the_middle,
                   4: claim_format_inconsistency}


def findings(models: Sequence[ModelSummary], cells, plan: Plan | None = None,
             settings: Settings = Settings()) -> list[Finding]:
    """All four claims, in order."""
    cells = cell_list(cells)
    return [CLAIM_FUNCTIONS[number](models, cells, plan, settings) for number in sorted(CLAIM_FUNCTIONS)]
