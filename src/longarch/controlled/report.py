"""The controlled study's report: its blocks, summary, figures and terminal table.

Everything is rebuilt from `<out>/results.sqlite` alone, so a report can be regenerated (or
re-rendered after a change here) without rerunning anything. The report is assembled once as
a list of blocks (headings, paragraphs, tables, figures, code) and rendered twice, to Markdown
and to HTML, so the two never disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.table import Table

from ..study.ids import slug
from ..study.store import for_reading
from ..analysis import plots
from ..analysis.diagnostics_report import diagnostics_section
from ..analysis.learned import AtT, accuracy_at, at_t
from ..analysis.measures import cell_estimate
from ..analysis.measures_report import INTERVAL, PARTIAL, analysis_sections, partial_seed_cells, settings_of
from ..analysis.render import MISSING, Block, reproducibility
from ..analysis.report import Figures, Report, heading
from ..analysis.settings import AnalysisSettings
from ..analysis.training_report import training_section
from ..analysis.stats import Cell, LengthPoint, ModelSummary, accuracy_by_length, collect_cells, summarise_models
from .interventions_report import intervention_blocks, intervention_figures, intervention_summary

@dataclass
class StudyData:
    """What the report needs, read from the store and aggregated over seeds."""

    meta: dict
    models: list[ModelSummary]
    cells: dict[tuple[str, str, int, float | None], Cell]
    stored_cells: int                  # result rows in the store (model x seed x task x length x depth)
    settings: AnalysisSettings         # the study's analysis settings as stored, gate resolved (settings_of)
    lengths: list[int]                 # evaluated or planned lengths
    depths: list[float]                # needle depths (tasks without one have none)
    curves: dict[str, list[LengthPoint]]  # per model, pooled over tasks
    tasks: list[str]                   # evaluated task labels, in the study's order
    task_curves: dict[str, dict[str, list[LengthPoint]]]  # task label -> model -> curve
    partial: dict = field(default_factory=dict)  # cell key -> SeedGap, for cells missing planned seeds
    left_out: list[str] = field(default_factory=list)  # stored models the study's plan no longer has
    model_rows: list = field(default_factory=list)  # the stored rows of `models`, one per model and seed
    cells_per_model: int = 0  # planned evaluation cells of one model and seed (0: unknown)
    out: Path | None = None  # the study directory (its input files are read from there)
    # the cells made under an intervention (keyed as `cells`, the model named <model>+<intervention>);
    # every other field is the baseline's alone
    intervention_cells: dict[tuple[str, str, int, float | None], Cell] = field(default_factory=dict)
    intervention_models: list = field(default_factory=list)  # the stored rows of models trained under one

    @property
    def interventions(self) -> dict:
        """The study's interventions as planned (runner.planned_interventions); {} without any."""
        planned = self.meta.get("planned_interventions")
        return planned if isinstance(planned, dict) else {}

    @property
    def name(self) -> str:
        return str(self.meta.get("name", "study"))

    @property
    def config(self) -> dict:
        config = self.meta.get("config")
        return config if isinstance(config, dict) else {}

    @property
    def train_lengths(self) -> set[int]:
        return {m.train_length for m in self.models}

    @property
    def learned_bar_fraction(self) -> float:
        """The accuracy a model (or, judged by task, a task at T) must reach to count as learned
        (`analysis.learned_bar_fraction`, a fraction)."""
        return self.settings.learned_bar_fraction

    @property
    def level(self) -> float:
        """The coverage of every interval (`analysis.interval_level_fraction`)."""
        return self.settings.interval_level_fraction

    @property
    def by_task(self) -> bool:
        """Judged task by task (the claims' label gate, the default for a study trained on a
        mixture, whose training accuracy averages its tasks), not by the training accuracy."""
        return self.settings.gate == "label"

    def at_t(self, model: ModelSummary) -> AtT:
        """`model`'s accuracy at T on each label read (`analysis.labels`, else every task), the
        cells the learned rule judges (analysis/learned.py)."""
        return at_t(self.cells.values(), model.name, model.train_length, self.settings.labels or self.tasks,
                    model.train_accuracy)

    def learned(self, model: ModelSummary) -> bool:
        """Whether `model` learned its task at T by the one rule (analysis/learned.py): every label
        read reaches the bar at T, and it did not diverge on every seed."""
        return not model.all_diverged and self.at_t(model).learned(self.learned_bar_fraction)

    def unsolved(self, task: str | None = None) -> list[ModelSummary]:
        """Models below the learned bar at T (analysis/learned.py): on any label read, or, when judged
        by task, on `task` (none for task None; nothing stored at T on it: not below)."""
        bar = self.learned_bar_fraction
        if not self.by_task:
            return [m for m in self.models if not self.learned(m)]
        if task is None:
            return []
        return [m for m in self.models
                if accuracy_at(self.cells.values(), m.name, task, m.train_length) < bar]  # nan: not below

    @property
    def diverged(self) -> list:
        """The stored rows of the models (name and seed) whose training diverged."""
        return [r for r in self.model_rows if r.diverged is not None]

    def not_run(self) -> int:
        """Planned cells of diverged models: skipped, not missing."""
        return self.cells_per_model * len(self.diverged)

    def missing_cells(self) -> int:
        planned = self.meta.get("planned_cells")
        if isinstance(planned, int) and not isinstance(planned, bool) and planned > self.stored_cells + self.not_run():
            return planned - self.stored_cells - self.not_run()
        return 0


def load(out_dir: Path) -> StudyData:
    """Read a study's store and aggregate it; the store is only read."""
    path = Path(out_dir) / "results.sqlite"
    if not path.exists():
        raise FileNotFoundError(f"no results database at {path}")
    with for_reading(path) as store:
        meta, model_rows, results = store.meta(), store.models(), store.results()
    model_rows, results, left_out = planned_only(meta, model_rows, results)
    # every section but "What recovers extrapolation" reads the baseline alone
    intervened, trained_under = [r for r in results if r.intervention], [r for r in model_rows if r.intervention]
    model_rows = [r for r in model_rows if not r.intervention]
    results = [r for r in results if not r.intervention]
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    settings = settings_of(config)
    level = settings.interval_level_fraction
    # in the study's order, not the order training happened to finish in
    order = [e.get("name") or e.get("arch") if isinstance(e, dict) else e for e in config.get("models") or []]
    models = sorted(summarise_models(model_rows, results),
                    key=lambda m: order.index(m.name) if m.name in order else len(order))
    cells = collect_cells(results)
    # The runner records the planned grid, so cells not yet evaluated still show as missing.
    lengths = sorted({c.length for c in cells.values()} | {int(x) for x in meta.get("planned_lengths") or []})
    depths = sorted({c.depth for c in cells.values() if c.depth is not None}
                    | {float(d) for d in meta.get("planned_depths") or []})
    curves = {m.name: accuracy_by_length(cells.values(), m.name, level=level) for m in models}
    planned = [str(t) for t in meta.get("planned_tasks") or []]
    tasks = planned + sorted({c.task for c in cells.values()} - set(planned))
    task_curves = {t: {m.name: accuracy_by_length(cells.values(), m.name, level=level, task=t) for m in models}
                   for t in tasks}
    seeds = [s for s in config.get("seeds") or [] if isinstance(s, int)]
    return StudyData(meta, models, cells, len(results), settings, lengths, depths, curves, tasks,
                     task_curves, partial_seed_cells(cells, models, seeds), left_out, model_rows,
                     _cells_per_model(meta), Path(out_dir), collect_cells(intervened), trained_under)


def _cells_per_model(meta: dict) -> int:
    """The planned cells of one model and seed (every model has the same grid); 0: not recorded."""
    planned, ids = meta.get("planned_cells"), meta.get("planned_models")
    if isinstance(planned, int) and not isinstance(planned, bool) and isinstance(ids, list) and ids:
        return planned // len(ids)
    return 0


def planned_only(meta: dict, model_rows: list, results: list) -> tuple[list, list, list[str]]:
    """The stored models and results of the study as last run (the runner records its models'
    ids as `planned_models`), and a description of each other stored model: a model whose
    settings changed has a new id, and the old one stays in the store but is no longer part of
    the study. Stores from before the record keep every model."""
    planned = meta.get("planned_models")
    if not isinstance(planned, list):
        return model_rows, results, []
    intervened = (meta.get("planned_interventions") or {}).get("models") if isinstance(
        meta.get("planned_interventions"), dict) else None
    keep = set(planned) | set(intervened if isinstance(intervened, list) else [])
    cells: dict[str, int] = {}
    for row in results:
        if row.model_id not in keep:
            cells[row.model_id] = cells.get(row.model_id, 0) + 1
    left_out = [f"{r.name} seed {r.seed} ({r.model_id}, {cells.get(r.model_id, 0)} cells)"
                for r in model_rows if r.model_id not in keep]
    return ([r for r in model_rows if r.model_id in keep], [r for r in results if r.model_id in keep], left_out)


# --------------------------------------------------------------------------------------------
# summary.json
# --------------------------------------------------------------------------------------------
def build_summary(data: StudyData) -> dict:
    """The machine-readable summary: per model name, its setup and every (task, length, depth)
    cell pooled over seeds. Accuracies are fractions rounded to 6 decimals."""
    def rounded(x: float) -> float | None:
        return None if math.isnan(x) else round(float(x), 6)

    models = []
    for model in data.models:
        cells = sorted((c for c in data.cells.values() if c.model == model.name),
                       key=lambda c: (c.task, c.length, -1.0 if c.depth is None else c.depth))
        scores = []
        for cell in cells:
            interval = cell_estimate(cell, data.level)
            scores.append({"task": cell.task, "length": cell.length, "depth": cell.depth,
                           "accuracy": rounded(cell.accuracy), "n": cell.n,
                           "interval": [rounded(interval.low), rounded(interval.high)]})
        models.append({
            "name": model.name, "family": model.family, "params": model.params, "train_length": model.train_length,
            "train_accuracy": rounded(model.train_accuracy),
            "solved_at_train_length": data.learned(model),
            "seeds": model.seeds, "state_floats": model.state_floats, "state_growth": model.state_growth,
            "by_length": [{"length": p.length, "accuracy": rounded(p.accuracy), "interval": [rounded(p.low),
                                                                                              rounded(p.high)],
                           "n": p.n} for p in data.curves[model.name]],
            "scores": scores,
            **({"diverged": {str(k): v for k, v in model.diverged.items()}} if model.diverged else {})})
    summary = {"study": data.name, "learned_bar_fraction": data.learned_bar_fraction,
               "interval_level_fraction": data.level, "planned_cells": data.meta.get("planned_cells"),
               "stored_cells": data.stored_cells, "missing_cells": data.missing_cells(), "models": models,
               "left_out_models": data.left_out}
    if data.diverged:  # only then, so that the summary of a study without one is as it was
        summary["diverged_models"] = [{"name": r.name, "seed": r.seed, "model_id": r.model_id, "step": r.diverged,
                                       "cells_not_run": data.cells_per_model} for r in data.diverged]
    return summary


# --------------------------------------------------------------------------------------------
# formatting helpers
# --------------------------------------------------------------------------------------------
def _percent(x: float, digits: int = 1) -> str:
    return MISSING if x is None or math.isnan(x) else f"{100 * x:.{digits}f}"


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _length_header(length: int, train_lengths: set[int]) -> str:
    return f"{plots.format_length(length)} (T)" if length in train_lengths else plots.format_length(length)


def _diverged_warning(model: ModelSummary, data: StudyData) -> str:
    """The warning naming a model with a seed whose training diverged, and what that leaves out."""
    rows = sorted((r for r in data.diverged if r.name == model.name), key=lambda r: r.seed)
    what = "; ".join(f"seed {r.seed} at step {r.diverged}, its {(r.config.get('diverged') or {}).get('what', 'loss')} "
                     "becoming non-finite" for r in rows)
    cells = f"{data.cells_per_model * len(rows)} evaluation cells" if data.cells_per_model else "evaluation cells"
    if model.all_diverged:
        kept = f"it learned nothing and is left out of every analysis as a model that did not learn; its {cells} were"
    else:
        seeds = f"seed{'s' if len(model.seeds) > 1 else ''} {', '.join(map(str, model.seeds))}"
        kept = (f"{'those seeds are' if len(rows) > 1 else 'that seed is'} left out of every analysis as a model that "
                f"did not learn, and {model.name} stands for its {seeds} only; the {cells} of the diverged "
                f"seed{'s' if len(rows) > 1 else ''} were")
    return (f"**{model.name} diverged** ({what}): {kept} not run (`longarch status` lists them as skipped, and a "
            "rerun does not train it again). A lower learning rate may train it.")


def _train_accuracy(model: ModelSummary) -> str:
    """The setup table's training accuracy: the seeds' mean, and which seeds diverged."""
    steps = ", ".join(f"seed {seed} at step {step}" for seed, step in sorted(model.diverged.items()))
    if model.all_diverged:
        return f"diverged ({steps})"
    return _percent(model.train_accuracy) + (f" (diverged: {steps})" if steps else "")


def _marker(model: ModelSummary, unsolved: set[str], by_task: bool, bar: float) -> str:
    """What a table's row says after a model's name: that it diverged, or did not learn."""
    if model.all_diverged:
        return " (diverged)"
    if model.name in unsolved:
        return f" (below {100 * bar:g}% at T)" if by_task else " (did not learn)"
    return ""


def _warning(model: ModelSummary, data: StudyData) -> str:
    """The warning naming a model below the learned bar at T, with the accuracies that put it there."""
    bar, judged = data.learned_bar_fraction, data.at_t(model)
    seeds = f", pooled over its {len(model.seeds)} seeds and the depths" if len(model.seeds) > 1 else \
        ", pooled over the depths"
    check = "" if not judged.stored or math.isnan(model.train_accuracy) else \
        f" (its final training check at T read {100 * model.train_accuracy:.1f}%)"
    return (f"**{model.name} did not learn the task**: {judged.describe(bar)} at T={model.train_length}{seeds}{check}; "
            f"learned means at least {100 * bar:g}% at T on every format evaluated "
            "(`analysis.learned_bar_fraction`). Its accuracy past the training length says nothing about "
            "extrapolation and is not interpreted.")


# --------------------------------------------------------------------------------------------
# the report as blocks (render.py says what a block is)
# --------------------------------------------------------------------------------------------


def _trained_on(config: dict, data: StudyData) -> str:
    """The training task in words: `name` with its knobs, or a weighted mixture."""
    def one(entry: dict) -> str:
        knobs = ", ".join(f"{k}={v}" for k, v in (entry.get("knobs") or {}).items())
        return f"`{entry.get('name', '?')}`" + (f" ({knobs})" if knobs else "")

    mixture = (config.get("train") or {}).get("tasks")
    if mixture:
        return "a mixture of " + ", ".join(f"{one(e)} with weight {e.get('weight', 1):g}" for e in mixture)
    if config.get("task"):
        return one(config["task"])
    return ", ".join(f"`{t}`" for t in data.tasks) or "?"


def _point(point: LengthPoint | None, partial: set[int]) -> str:
    """Accuracy (%) with its interval, marked when a cell it pools lacks planned seeds."""
    if point is None:
        return MISSING
    mark = f" {PARTIAL}" if point.length in partial else ""
    return f"{_percent(point.accuracy)} [{_percent(point.low)}, {_percent(point.high)}]{mark}"


def _partial_lengths(data: StudyData, model: str, task: str | None) -> set[int]:
    return {length for (m, label, length, _) in data.partial if m == model and task in (None, label)}


def _length_table(data: StudyData, curves: dict[str, list[LengthPoint]], unsolved: set[str],
                  task: str | None = None) -> Block:
    headers = ["model"] + [_length_header(x, data.train_lengths) for x in data.lengths]
    rows = []
    for model in data.models:
        points, partial = {p.length: p for p in curves[model.name]}, _partial_lengths(data, model.name, task)
        rows.append([model.name + _marker(model, unsolved, data.by_task, data.learned_bar_fraction)]
                    + [_point(points.get(x), partial) for x in data.lengths])
    return ("table", headers, rows)


def _comparison_table(data: StudyData) -> Block:
    """Each model on each evaluated task at its training length and at the longest length."""
    longest = max(data.lengths)
    headers = ["model"]
    for task in data.tasks:
        headers += [f"{task} at T", f"{task} at {plots.format_length(longest)}"]
    rows = []
    for model in data.models:
        row = [model.name]
        for task in data.tasks:
            points = {p.length: p for p in data.task_curves[task][model.name]}
            row += [_point(points.get(length), _partial_lengths(data, model.name, task))
                    for length in (model.train_length, longest)]
        rows.append(row)
    return ("table", headers, rows)


UNKNOWN_SAMPLES = 64  # samples (seed 0) generated to measure a text haystack's unknown words


def _unknown_words(config: dict, out: Path | None) -> list[Block]:
    """A line per evaluated task with a text haystack: the share of its haystack that is the
    unknown-word symbol at T and at the longest evaluated length, measured on samples generated
    from the stored configuration; nothing when that configuration no longer builds (a corpus
    file that is not on this machine, a store without one)."""
    from ..study import inputs
    from .config import Study, from_stored
    from .runner import Controlled

    try:
        study = Study.model_validate(from_stored(inputs.resolved(config, Controlled.input_keys, out)))
        evaluated, lengths = study.eval_tasks(), (study.train.length, max(study.eval_lengths()))
    except (ValueError, TypeError, OSError):
        return []
    blocks: list[Block] = []
    for label, task in evaluated:
        shares = [getattr(task, "unknown_share", lambda _: None)(task.generate(length, UNKNOWN_SAMPLES, seed=0))
                  for length in lengths]
        if shares[0] is not None:
            blocks.append(("p", f"Unknown words in the `{label}` haystack: {_percent(shares[0])}% at T = {lengths[0]}, "
                                f"{_percent(shares[1])}% at {plots.format_length(lengths[1])} (words outside its "
                                f"{task.n_filler - 1:,}-word vocabulary, all one symbol; {UNKNOWN_SAMPLES} samples)."))
    return blocks


def _blocks(data: StudyData, figures: dict[str, str], analysis_blocks: list[Block] | None = None,
            training_blocks: list[Block] | None = None, diagnostic_blocks: list[Block] | None = None) -> list[Block]:
    config, unsolved = data.config, {m.name for m in data.unsolved()}
    task = _trained_on(config, data)
    train_lengths = data.train_lengths
    t_text = ", ".join(str(t) for t in sorted(train_lengths)) or "?"
    longest = plots.format_length(max(data.lengths)) if data.lengths else "?"
    blocks: list[Block] = heading(data.name, config, data.settings)

    blocks += [("h2", "What this measures"), ("p",
        f"Each model was trained from scratch on {task} at the training length T = {t_text} tokens, "
        f"then evaluated at T and at longer contexts (up to {longest} tokens) on "
        f"{', '.join(f'`{t}`' for t in data.tasks) or 'its task'}, with any needle placed at several depths. "
        "Accuracy is the exact match of every answer item, averaged over items as RULER's string_match_all. "
        f"Every interval is a {100 * data.level:g}% {INTERVAL} (`analysis.interval_level_fraction`).")]

    blocks.append(("h2", "Setup"))
    rows = [[m.name, m.family, f"{m.params:,}", f"{m.state_floats:,}",
             {"linear": "grows linearly"}.get(m.state_growth, m.state_growth), str(m.train_length),
             _train_accuracy(m), seeds_text(sorted({*m.seeds, *m.diverged})), _duration(m.train_seconds)]
            for m in data.models]
    blocks.append(("table", ["model", "family", "parameters", "state size (floats at T)", "state size with length",
                             "training length", "training accuracy (%)", "seeds", "training time (per seed)"], rows))
    if data.left_out:
        blocks.append(("p", f"Left out: {len(data.left_out)} stored model(s) that this study, as last run, no longer "
                            f"has (its settings changed, so they have other ids): {'; '.join(data.left_out)}. Their "
                            "results stay in the store."))
    blocks += _unknown_words(config, data.out)
    for model in data.models:
        if model.diverged:
            blocks.append(("warn", _diverged_warning(model, data)))
    for model in data.unsolved():
        if not model.all_diverged:  # its warning above says why
            blocks.append(("warn", _warning(model, data)))
    if data.by_task:
        blocks.append(("p", f"Trained on a mixture: the training accuracy is the mean over its tasks, so models are "
                            f"judged task by task. In each task's table, \"(below {100 * data.learned_bar_fraction:g}% at T)\" marks "
                            "a model that did not solve that task at T (accuracy pooled over seeds and depths); its "
                            "accuracy past T on that task is not interpreted"
                            + (", and the findings leave it out there." if data.settings.claims == "paper" else ".")))
    blocks += training_blocks or []
    blocks += _accuracy_blocks(data, figures, unsolved)
    blocks += diagnostic_blocks or []  # beside the accuracy curves they explain
    blocks += intervention_blocks(data, figures)  # What recovers extrapolation (nothing without interventions)
    blocks += analysis_blocks or []  # Per-model measures, then Findings
    return blocks + _closing_blocks(data, config)


def seeds_text(seeds: list[int]) -> str:
    """The setup table's seeds: each seed and how many, so that seed 0 alone does not read as no
    seeds: '0 (1 seed)', '0, 1 (2 seeds)'."""
    if not seeds:
        return MISSING
    return f"{', '.join(map(str, seeds))} ({len(seeds)} seed{'' if len(seeds) == 1 else 's'})"


def _accuracy_blocks(data: StudyData, figures: dict[str, str], unsolved: set[str]) -> list[Block]:
    """Accuracy by length (a table per evaluated task), the format comparison and the heatmaps."""
    blocks: list[Block] = [("h2", "Accuracy by length")]
    if len(data.tasks) <= 1:
        blocks.append(_length_table(data, data.curves, unsolved))
    else:
        for task_label in data.tasks:
            blocks.append(("h3", f"Evaluated on {task_label}"))
            blocks.append(_length_table(data, data.task_curves[task_label],
                                        {m.name for m in data.unsolved(task_label)} if data.by_task else unsolved,
                                        task_label))
    blocks.append(("p", f"Accuracy (%) averaged over needle depths and seeds, with its {100 * data.level:g}% "
                        "interval for these seeds; (T) marks the training length."))
    seed_note = ("p", f"{PARTIAL} pools a cell stored for only some of the planned seeds (such cells: "
                         f"{len(data.partial)}, listed under Per-model measures).")
    if data.partial:
        blocks.append(seed_note)
    if data.missing_cells():
        blocks.append(("p", f"Averages cover the stored cells only: **{data.missing_cells()} of "
                            f"{data.meta['planned_cells']} planned evaluation cells are not stored** (what became "
                            f"of them is said under the title). Entries with nothing stored show {MISSING}."))
    if len(data.tasks) <= 1:
        blocks.append(("figure", figures["accuracy_vs_length"], "Accuracy against context length"))
    else:
        for task_label in data.tasks:
            blocks.append(("figure", figures[f"accuracy_vs_length {task_label}"],
                           f"Accuracy against context length, evaluated on {task_label}"))
        blocks += [("h2", "Format comparison"), ("p",
            f"The same trained models evaluated on {len(data.tasks)} tasks or formats ({', '.join(data.tasks)}): "
            f"accuracy (%) with its {100 * data.level:g}% interval at the training length and at the longest length. "
            "A model whose "
            "accuracy holds on one format and falls on another extrapolates inconsistently across formats."),
            _comparison_table(data), *([seed_note] if data.partial else []),
            ("figure", figures["format_comparison"], "Accuracy against context length, one panel per model, "
                                                     "one line per evaluated task or format")]

    heatmaps = [key for key in figures if key.startswith("heatmap ")]
    if heatmaps:
        blocks.append(("h2", "Accuracy by length and needle depth"))
        for key in heatmaps:
            blocks.append(("figure", figures[key], f"{key.removeprefix('heatmap ')}: accuracy by length and depth"))
    return blocks


def _closing_blocks(data: StudyData, config: dict) -> list[Block]:
    blocks: list[Block] = [("h2", "How to read this report"), ("p",
        "At the training length (the column marked T) a model that learned the task scores near 100%; the "
        "columns to the right show how much of that survives on longer contexts than it ever saw. Where two "
        "models' intervals do not overlap, the difference is unlikely to be sampling noise. In the heatmaps a "
        "needle depth of 0% is the start of the context and 100% is just before the question: a model that "
        "forgets old context fades towards the top, one that cannot reach past its training length fades to the "
        "right. Models flagged as not having learned the task are drawn dotted and should not be compared.")]

    blocks.append(("h2", "Reproducibility"))
    seeds = config.get("seeds") or sorted({s for m in data.models for s in m.seeds})
    commit = data.meta.get("git_commit")
    blocks.append(("p", f"Seeds: {', '.join(map(str, seeds)) or MISSING}. Git commit: "
                        f"{f'`{commit}`' if commit else 'not recorded'}."))
    return blocks + reproducibility(data.meta, config)


def _accuracy_figures(data: StudyData, figure_dir: Path, record) -> None:
    """Accuracy against length (one figure, or one per evaluated task and a comparison of them)
    and each model's heatmap by length and depth; `record(key, written)` keeps each figure."""
    unsolved = [m.name for m in data.unsolved()]
    train_lengths = {m.name: m.train_length for m in data.models}
    several = len(data.tasks) > 1
    if not several:
        record("accuracy_vs_length", plots.plot_accuracy_vs_length(
            data.curves, train_lengths, figure_dir / "accuracy_vs_length",
            title=f"{data.name}: accuracy vs context length (mean over depths, {100 * data.level:g}% interval)",
            unsolved=unsolved))
    else:
        for task_label in data.tasks:
            record(f"accuracy_vs_length {task_label}", plots.plot_accuracy_vs_length(
                data.task_curves[task_label], train_lengths, figure_dir / f"accuracy_vs_length_{slug(task_label)}",
                title=f"{data.name}, {task_label}: accuracy vs context length ({100 * data.level:g}% interval)",
                unsolved=[m.name for m in data.unsolved(task_label)] if data.by_task else unsolved))
        record("format_comparison", plots.plot_task_comparison(
            data.task_curves, train_lengths, figure_dir / "format_comparison",
            title=f"{data.name}: accuracy vs context length by evaluated task or format "
                  f"({100 * data.level:g}% interval)"))
    for task_label in data.tasks:
        if not any(c.task == task_label and c.depth is not None for c in data.cells.values()) and data.cells:
            continue  # a task without a needle depth has no depth heatmap
        for model in (m for m in data.models if not m.all_diverged):  # nothing evaluated to draw
            key, stem = (f"{model.name} on {task_label}", f"heatmap_{slug(model.name)}_{slug(task_label)}") if several \
                else (model.name, f"heatmap_{slug(model.name)}")
            record(f"heatmap {key}", plots.plot_heatmap(
                _depth_grid(data, model.name, task_label), data.lengths, data.depths, model.train_length,
                figure_dir / stem, title=f"{key}: accuracy (%) by length and needle depth"))


# --------------------------------------------------------------------------------------------
# the report (analysis/report.py writes it)
# --------------------------------------------------------------------------------------------
def report(out_dir: Path, dest: Path | None = None) -> Report:
    """The controlled study's report, from the store in `out_dir`; its figures are drawn under
    `<dest>/figures` (dest: where the report goes, `out_dir` unless given)."""
    data = load(out_dir)
    figures = Figures(dest or out_dir)
    _accuracy_figures(data, figures.dir, figures.record)
    intervention_figures(data, figures.dir, figures.record)
    with for_reading(Path(out_dir) / "results.sqlite") as store:
        stored_curves = store.curves()
    order = [m.name for m in data.models]
    training_blocks, training_figures, training_summary = training_section(data.model_rows, stored_curves, data.config,
                                                                           order, figures.dir)
    for key, written in training_figures.items():
        figures.record(key, written)
    analysis_blocks, analysis_summary = analysis_sections(data.meta, data.config, data.models, data.cells, data.tasks,
                                                          data.partial)
    diagnostic_blocks, diagnostic_summary = diagnostics_section(
        _diagnostic_rows(out_dir, data), order, _accuracy_figure_keys(data, figures.keys), figures,
        {m.name: f"{data.at_t(m).describe(data.learned_bar_fraction)} at T={m.train_length}" for m in data.unsolved()})
    summary = {**build_summary(data), **analysis_summary, "training": training_summary, **diagnostic_summary}
    if data.interventions:  # only then: a study without any summarises as before
        summary["interventions"] = intervention_summary(data)
    return Report(data.name, _blocks(data, figures.keys, analysis_blocks, training_blocks, diagnostic_blocks), summary,
                  _table(data), figures.files, data.settings.title)


def _diagnostic_rows(out_dir: Path, data: StudyData) -> list:
    """The stored diagnostics of the study as last run: only when it asks for them, of its
    planned models, and of its planned diagnostic cells."""
    if not data.config.get("diagnostics"):
        return []
    with for_reading(Path(out_dir) / "results.sqlite") as store:
        rows = store.diagnostics()
    planned, models = data.meta.get("planned_diagnostics"), data.meta.get("planned_models")
    return [r for r in rows if (not isinstance(planned, list) or r.cell_id in planned)
            and (not isinstance(models, list) or r.model_id in models)]


def _accuracy_figure_keys(data: StudyData, keys: dict[str, str]) -> dict[str, str]:
    """Evaluated task label -> its accuracy figure (the one figure, for a study of one task)."""
    if len(data.tasks) <= 1:
        return {task: keys["accuracy_vs_length"] for task in data.tasks if "accuracy_vs_length" in keys}
    return {task: keys[f"accuracy_vs_length {task}"] for task in data.tasks if f"accuracy_vs_length {task}" in keys}


def _depth_grid(data: StudyData, model: str, task: str) -> dict[tuple[int, float], float]:
    """A model's accuracy at each (length, depth) on one task label, pooling seeds."""
    pooled: dict[tuple[int, float], list[np.ndarray]] = {}
    for cell in data.cells.values():
        if cell.model == model and cell.task == task and cell.depth is not None:
            pooled.setdefault((cell.length, cell.depth), []).append(cell.scores)
    return {key: float(np.concatenate(parts).mean()) for key, parts in pooled.items() if sum(p.size for p in parts)}


def summary_table(out_dir: Path) -> Table:
    """Accuracy (%) by model (rows) and length (columns) for the terminal; (T) marks the
    training length and models that did not learn the task are flagged."""
    return _table(load(Path(out_dir)))


def _table(data: StudyData) -> Table:
    unsolved = {m.name for m in data.unsolved()}
    several = len(data.tasks) > 1
    table = Table(title=f"{data.name}: accuracy (%) by context length, mean over depths and seeds")
    table.add_column("model")
    if several:
        table.add_column("evaluated on")
    for length in data.lengths:
        table.add_column(_length_header(length, data.train_lengths), justify="right")
    for model in data.models:
        for task_label in data.tasks if several else [None]:
            below = model.name in ({m.name for m in data.unsolved(task_label)} if data.by_task else unsolved)
            flag = "diverged" if model.all_diverged else "below bar at T" if data.by_task else "did not learn"
            label = f"{model.name} [red]({flag})[/red]" if below or model.all_diverged else model.name
            curve = data.task_curves[task_label][model.name] if several else data.curves[model.name]
            points = {p.length: p.accuracy for p in curve}
            cells = []
            for length in data.lengths:
                value = points.get(length, float("nan"))
                style = "dim" if np.isnan(value) else "green" if value >= 0.9 else "yellow" if value >= 0.5 else "red"
                cells.append(f"[{style}]{_percent(value)}[/{style}]")
            table.add_row(label, *([task_label] if several else []), *cells)
    return table
