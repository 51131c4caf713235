"""The report's section "What recovers extrapolation": each model under each intervention of the
study (controlled/interventions.py) beside its baseline.

Rows are the models, columns the baseline and then the interventions in the study's order. Three
tables share that layout: the effective length (analysis.measures.effective_length, pooled over
the evaluated tasks and depths, at the study's effective-length bar), and the accuracy at 8T and
at 64T (or the longest evaluated length, named in the heading), each with its interval and, under
an intervention, its change from the baseline in points with the interval of the difference
(analysis.measures.difference). A pair the intervention does not apply to reads n/a. A figure
draws accuracy against length, one panel per model and one line per intervention. Under
decay-scale-fit, one sentence per model gives the exponent it chose at each length past T (read
from the store's study metadata, runner.record_calibration).

Read from the report's StudyData only: the baseline's cells and the cells under an intervention,
whose model is named `<model>+<intervention>`.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..analysis import plots
from ..analysis.learned import AtT, at_t
from ..analysis.measures import Estimate, difference, effective_length, pooled_estimate
from ..analysis.render import MISSING, Block
from ..analysis.stats import Cell, LengthPoint, accuracy_by_length
from . import interventions as registry

BASELINE = "baseline"
NEAR, FAR = 8, 64  # the multiples of T whose accuracy the tables show
NOT_APPLICABLE = "n/a"


def columns(data) -> list[str]:
    """The baseline, then the study's interventions in its order; [] for a study without any."""
    names = data.interventions.get("names") or []
    return [BASELINE, *names] if names else []


def _applies(data, model: str, column: str) -> bool:
    return column == BASELINE or model in (data.interventions.get("applies") or {}).get(column, [])


def _name(model: str, column: str) -> str:
    """The model's name in the results of one column."""
    return registry.labelled(model, None if column == BASELINE else column)


def shown_lengths(lengths: list[int], train_length: int) -> list[int]:
    """The lengths the accuracy tables show: 8T (when evaluated and shorter than the longest) and
    64T, or the longest evaluated length in place of 64T."""
    if not lengths:
        return []
    far = FAR * train_length if FAR * train_length in lengths else max(lengths)
    near = NEAR * train_length
    return ([near] if near in lengths and near < far else []) + [far]


def _cells(data) -> list[Cell]:
    return list(data.cells.values()) + list(data.intervention_cells.values())


def _at(cells: list[Cell], name: str, length: int) -> list[Cell]:
    return [c for c in cells if c.model == name and c.length == length]


def _percent(x: float) -> str:
    return MISSING if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _estimate(estimate: Estimate, signed: bool = False) -> str:
    """'45.1 [40.2, 50.0]' (percent), or '+12.3 [5.0, 19.0]' (points) for a change."""
    if math.isnan(estimate.value):
        return MISSING
    value = f"{100 * estimate.value:+.1f}" if signed else _percent(estimate.value)
    return f"{value} [{_percent(estimate.low)}, {_percent(estimate.high)}]"


def _effective(data, cells: list[Cell], name: str, train_length: int) -> dict:
    """A model's effective length under one column: tokens (None: below the bar already at T),
    or {} when nothing of it is stored."""
    found = effective_length(cells, name, train_length, bar=data.settings.effective_length_bar_fraction,
                             level=data.level)
    return {"length": found.length} if found.points else {}


def judged_at_t(data, model, column: str) -> AtT | None:
    """What the learned rule (analysis/learned.py) reads of `model` under `column`: its accuracy at T
    on each label, from the baseline's cells for the baseline and an inference intervention, from
    the model trained under it for a training intervention (with that model's training check,
    mean over seeds, nan when unknown); None when that training diverged."""
    if _on_the_baseline(column):
        return data.at_t(model)
    name = _name(model.name, column)
    rows = [r for r in data.intervention_models if r.name == name]
    if any(r.diverged is not None for r in rows):
        return None
    training = sum(r.train_accuracy for r in rows) / len(rows) if rows else math.nan
    return at_t(data.intervention_cells.values(), name, model.train_length, data.settings.labels or data.tasks,
                training)


def _on_the_baseline(column: str) -> bool:
    """The baseline's column or an inference intervention's: read from the baseline's checkpoint."""
    return column == BASELINE or registry.get(column).stage == registry.EVAL


def _baseline_learned(data, model) -> bool:
    """Whether the baseline model learned the task at T (the report's rule, analysis/learned.py),
    on every task: only then is its accuracy past T read, or a change from it."""
    return model.name not in {m.name for m in data.unsolved()} and \
        not any(model.name in {m.name for m in data.unsolved(task)} for task in data.tasks)


def measured(data) -> dict:
    """Per model and column: its effective length, and at each shown length its accuracy and (under
    an intervention) its change from the baseline, as Estimates; None where it does not apply."""
    cells, out = _cells(data), {}
    for model in data.models:
        T = model.train_length
        row = {}
        baseline_learned = _baseline_learned(data, model)
        for column in columns(data):
            if not _applies(data, model.name, column):
                row[column] = None
                continue
            name = _name(model.name, column)
            judged = judged_at_t(data, model, column)
            # only then is its accuracy past T read: the baseline model's under the baseline and an
            # inference intervention, the model trained under it for a training intervention
            learned = baseline_learned if _on_the_baseline(column) else \
                judged is not None and judged.learned(data.learned_bar_fraction)
            # a change from the baseline only where both learned the task at T
            compared = column != BASELINE and baseline_learned
            at = {length: (pooled_estimate(_at(cells, name, length), data.level),
                           difference(_at(cells, name, length), _at(cells, model.name, length), data.level)
                           if compared else None)
                  for length in shown_lengths(data.lengths, T)}
            row[column] = {"effective": _effective(data, cells, name, T), "at": at,
                           "learned": learned, "judged": judged, "bar": data.learned_bar_fraction}
        out[model.name] = row
    return out


def _not_learned(entry: dict) -> str:
    """What a table shows for a model that did not learn the task at T under a column."""
    judged = entry["judged"]
    if judged is None:
        return "diverged"
    return f"did not learn ({judged.worst(entry['bar'])} at T)"


def _shown(entry: dict | None, text) -> str:
    """n/a, 'did not learn (..% at T)', or the measure's text."""
    if entry is None:
        return NOT_APPLICABLE
    return text() if entry["learned"] else _not_learned(entry)


def _effective_text(found: dict, train_length: int) -> str:
    if not found:
        return MISSING
    if found["length"] is None:
        return "none (below the bar at T)"
    return f"{plots.format_length(found['length'])} ({found['length'] / train_length:g}T)"


def _length_name(length: int, train_length: int, lengths: list[int]) -> str:
    multiple = f"{length / train_length:g}T"
    longest = " (the longest evaluated)" if length == max(lengths) and length != FAR * train_length else ""
    return f"{multiple}, {plots.format_length(length)} tokens{longest}"


def _described(name: str, config: dict) -> str:
    """An intervention in words, with the knobs the study set (tbptt's pieces)."""
    entries = [e for e in config.get("interventions") or [] if isinstance(e, dict) and e.get("name") == name]
    knobs = ", ".join(f"{k} {v}" for k, v in (entries[0] if entries else {}).items() if k != "name" and v is not None)
    known = registry.REGISTRY.get(name)
    return f"`{name}`" + (f" ({knobs})" if knobs else "") + (f": {known.description}" if known else "")


def _trained_table(data) -> list[Block]:
    """The models trained under an intervention: training accuracy at T and time, per seed."""
    rows = [[r.name, r.intervention, str(r.seed), "diverged" if r.diverged is not None else _percent(r.train_accuracy),
             str(r.steps if r.steps is not None else MISSING), f"{r.train_seconds:.1f}"]
            for r in data.intervention_models]
    if not rows:
        return []
    return [("table", ["model", "intervention", "seed", "training accuracy at T (%)", "steps", "training seconds"],
             rows)]


def intervention_blocks(data, figures: dict[str, str]) -> list[Block]:
    """The section, or nothing for a study without interventions."""
    shown = columns(data)
    if not shown or not data.models:
        return []
    found, T = measured(data), min(m.train_length for m in data.models)
    described = "; ".join(_described(name, data.config) for name in shown[1:])
    blocks: list[Block] = [("h2", "What recovers extrapolation"), ("p",
        "Each intervention of the study beside the baseline (the model trained and evaluated without one). A "
        "training intervention trains a new model with the baseline's recipe; an inference intervention "
        "evaluates the baseline's own checkpoint differently at lengths past T. n/a marks an intervention that "
        f"does not apply to that model (none of its layers can take it). The interventions: {described}.")]
    blocks += _trained_table(data)
    blocks += [("h3", "Effective length"), ("table", ["model", *shown], [
        [m.name] + [_shown(found[m.name][c], lambda e=found[m.name][c], m=m: _effective_text(e["effective"],
                                                                                             m.train_length))
                    for c in shown]
        for m in data.models]), ("p",
        f"The longest length up to which the lower end of the accuracy's {100 * data.level:g}% interval stays above "
        f"{100 * data.settings.effective_length_bar_fraction:g}% at every evaluated length (pooled over the "
        "evaluated tasks, depths and seeds), in tokens and in multiples of T.")]
    for length in shown_lengths(data.lengths, T):
        rows = []
        for m in data.models:
            rows.append([m.name] + [_shown(found[m.name][c], lambda e=found[m.name][c]: _accuracy_text(e, length))
                                    for c in shown])
        blocks += [("h3", f"Accuracy at {_length_name(length, T, data.lengths)}"), ("table", ["model", *shown], rows)]
    blocks.append(("p", f"Accuracy in percent with its {100 * data.level:g}% interval, pooled over the evaluated "
                        "tasks, depths and seeds; under an intervention, then its change from the baseline in "
                        "points, with the interval of that difference (only where the baseline learned the task). "
                        "\"did not learn\" marks a model below the learned bar at T "
                        f"({100 * data.learned_bar_fraction:g}% on every evaluated task, pooled over depths and "
                        "seeds; its final training check when nothing is evaluated at T), with its lowest task's "
                        "accuracy at T: its accuracy past T is not read. Under an inference intervention that is "
                        "the baseline's model; under a training intervention, the model trained under it."))
    blocks += _decay_exponents(data, shown)
    if "interventions" in figures:
        blocks.append(("figure", figures["interventions"],
                       "Accuracy against context length, one panel per model, one line per intervention"))
    return blocks


def decay_exponents(data) -> dict[str, dict[int, dict[int, float]]]:
    """decay-scale-fit's calibrated exponents as the store's study metadata keeps them
    (runner.record_calibration): model -> length -> seed -> p, for the planned models at the
    planned lengths past T and the study's number of calibration samples; {} without any."""
    kept = data.meta.get(registry.DECAY_FIT_KEY)
    if not isinstance(kept, dict):
        return {}
    planned = data.meta.get("planned_models")
    entries = [e for e in data.config.get("interventions") or []
               if isinstance(e, dict) and e.get("name") == "decay-scale-fit"]
    samples = (entries[0].get("samples") if entries else None) or registry.DECAY_FIT_SAMPLES
    train_lengths = {m.name: m.train_length for m in data.models}
    out: dict[str, dict[int, dict[int, float]]] = {}
    for record in kept.values():
        try:
            model, length, seed, exponent = record["model"], int(record["length"]), int(record["seed"]), \
                float(record["exponent"])
        except (KeyError, TypeError, ValueError):
            continue
        stale = isinstance(planned, list) and record.get("model_id") not in planned  # a model no longer planned
        if stale or model not in train_lengths or length <= train_lengths[model] or length not in data.lengths \
                or record.get("samples") != samples:
            continue
        out.setdefault(model, {}).setdefault(length, {})[seed] = exponent
    return out


def _decay_exponents(data, shown: list[str]) -> list[Block]:
    """One sentence per model on the exponent decay-scale-fit chose at each length past T (with
    several seeds, each seed's where they differ); nothing when the study has none stored."""
    found = decay_exponents(data) if "decay-scale-fit" in shown else {}
    if not found:
        return []
    sentences = []
    for model in [m for m in data.models if m.name in found]:
        at = []
        for length, seeds in sorted(found[model.name].items()):
            values = sorted(set(seeds.values()))
            chosen = f"{values[0]:g}" if len(values) == 1 else \
                " / ".join(f"{seeds[s]:g}" for s in sorted(seeds)) + f" (seeds {', '.join(map(str, sorted(seeds)))})"
            at.append(f"{chosen} at {length / model.train_length:g}T")
        sentences.append(f"{model.name} chose p = {', '.join(at)}.")
    return [("p", "decay-scale-fit scales each decay by s = (T/L)^p with p calibrated per model and length on "
                  "held-out samples of the training task (p = 0: the baseline, p = 1: decay-scale). "
             + " ".join(sentences))]


def _accuracy_text(entry: dict, length: int) -> str:
    accuracy, change = entry["at"].get(length, (None, None))
    text = MISSING if accuracy is None else _estimate(accuracy)
    return text if change is None or text == MISSING else f"{text}, {_estimate(change, True)}"


def intervention_curves(data) -> dict[str, dict[str, list[LengthPoint]]]:
    """Column -> model -> its accuracy-against-length curve (pooled over tasks and depths)."""
    cells = _cells(data)
    return {column: {m.name: accuracy_by_length(cells, _name(m.name, column), level=data.level)
                     for m in data.models if _applies(data, m.name, column)} for column in columns(data)}


def intervention_figures(data, figure_dir: Path, record) -> None:
    """The section's figure (nothing for a study without interventions)."""
    if not columns(data) or not data.models:
        return
    record("interventions", plots.plot_task_comparison(
        intervention_curves(data), {m.name: m.train_length for m in data.models}, figure_dir / "interventions",
        title=f"{data.name}: accuracy vs context length under each intervention ({100 * data.level:g}% interval)"))


def intervention_summary(data) -> dict:
    """summary.json's "interventions": per model and column, whether it learned the task at T, the
    effective length and, at each shown length, the accuracy and its change from the baseline
    (fractions, with intervals; no change where the baseline did not learn); None: n/a."""
    def plain(estimate: Estimate | None):
        return None if estimate is None or math.isnan(estimate.value) else estimate.as_dict()

    out = {}
    for model, row in measured(data).items():
        out[model] = {column: None if entry is None else {
            "learned": entry["learned"],
            "effective_length": entry["effective"].get("length"),
            "at": {str(length): {"accuracy": plain(a), "change": plain(c)} for length, (a, c) in entry["at"].items()}}
            for column, entry in row.items()}
    return {"columns": columns(data), "models": out}
