"""The report of a pretrained study: RULER-style scores of checkpoints, in and beyond their
training context. Built from `<out>/results.sqlite` alone, like the controlled study's report,
with the same renderers (report.md, a self-contained report.html, summary.json, PNG + SVG).

Scores are RULER's (string_match_all, string_match_part for QA) x100. Every average, interval and
effective length comes from `measures`, judged with the study's `analysis:` settings (the same
`AnalysisSettings` as a controlled study's; a pretrained study reads its effective-length bar, its
interval level and its labels). A model's average at a length pools the averaged tasks stored
there; an average over fewer tasks than planned says how many it covers and never counts towards
an effective length. The effective length is shown twice: by the lower bounds of the intervals
(every length up to it is above the bar) and by RULER's rule on the averages themselves (what
RULER reports). Cells past a model's training length are marked with †.

A study fitted with `fit: ruler` is reported as RULER reports: each task's score rounded to 2
decimals (RULER's metrics round), and RULER's average, the mean of those rounded scores, beside
the pooled one. A `fit: exact` study's numbers are not rounded before averaging.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from ..study.ids import slug
from ..study.store import for_reading
from ..analysis import plots
from ..analysis.measures import EffectiveLength, Estimate, LengthAccuracy, Plan, accuracy_at_lengths, cell_estimate, \
    effective_length, pooled_estimate
from ..analysis.reference import REFERENCES
from ..analysis.render import MISSING, Block, reproducibility
from ..analysis.report import Figures, Report, heading
from ..analysis.settings import AnalysisSettings
from ..analysis.stats import Cell, LengthPoint, collect_cells
from . import args as arguments
from .config import stored_settings

BEYOND = "†"


@dataclass
class PretrainedData:
    meta: dict
    models: list[dict]        # store.pretrained() rows, plus models with results but no row
    cells: dict[tuple[str, str, int, float | None], Cell]
    suite: list[str]          # task labels averaged (entries without fixed depths or relative lengths)
    ablation: list[str]       # task labels with fixed depths
    lengths: list[int]
    settings: AnalysisSettings = field(default_factory=AnalysisSettings)
    settings_note: str = ""   # how the stored settings were read, when not as they are (else "")

    @property
    def name(self) -> str:
        return str(self.meta.get("name", "study"))

    @property
    def config(self) -> dict:
        return self.meta.get("config") if isinstance(self.meta.get("config"), dict) else {}

    @property
    def bar(self) -> float:
        """The effective length's bar, a fraction (`analysis.effective_length_bar_fraction`)."""
        return self.settings.effective_length_bar_fraction

    @property
    def level(self) -> float:
        return self.settings.interval_level_fraction

    @property
    def plan(self) -> Plan:
        """The averaged grid: every suite task at every length, without a needle depth."""
        return Plan(tuple(self.suite), tuple(self.lengths), (None,))

    def train_length(self, model: str) -> int | None:
        return next((m.get("train_length") for m in self.models if m["name"] == model), None)

    @property
    def ruler(self) -> bool:
        """Whether the study was fitted with `fit: ruler` (then reported as RULER reports)."""
        evaluation = self.config.get("eval")
        return isinstance(evaluation, dict) and evaluation.get("fit") == "ruler"


def ruler_score(accuracy: float) -> float:
    """A task's score as RULER's metrics return it: x100, rounded to 2 decimals."""
    return round(100 * accuracy, 2)


def ruler_averages(data: PretrainedData, model: str) -> dict[int, float]:
    """length -> RULER's average for `model`: the mean of its suite tasks' rounded scores
    (`ruler_score`), where every suite task has a cell at that length."""
    out = {}
    for n in data.lengths:
        cells = [data.cells.get((model, label, n, None)) for label in data.suite]
        if data.suite and all(c is not None and c.n for c in cells):
            out[n] = round(sum(ruler_score(c.accuracy) for c in cells) / len(cells), 2)
    return out


def load(out_dir: Path) -> PretrainedData:
    with for_reading(Path(out_dir) / "results.sqlite") as store:
        meta, rows, results = store.meta(), store.pretrained(), store.results()
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    settings, note = stored_settings(config)
    entries = config.get("tasks", [])
    skipped = {label for label, _ in meta.get("skipped", [])}
    suite = [e.get("label") or e["name"] for e in entries
             if not e.get("depths") and not e.get("length_factors") and (e.get("label") or e["name"]) not in skipped]
    if settings.labels:
        suite = [label for label in suite if label in settings.labels]
    ablation = [e.get("label") or e["name"] for e in entries if e.get("depths")]
    named = {r["name"] for r in rows}
    for model in dict.fromkeys(r.model for r in results):
        if model not in named:
            rows.append({"name": model, "spec": "?", "kind": "?", "family": "?", "params": None, "train_length": None})
    lengths = sorted(set(config.get("eval", {}).get("lengths", [])) | {r.length for r in results
                                                                       if r.label in suite})
    return PretrainedData(meta, rows, collect_cells(results), suite, ablation, lengths, settings, note)


def averages(data: PretrainedData, model: str) -> dict[int, LengthAccuracy]:
    """length -> the suite average of `model` there (a fraction with its interval, from
    `measures.accuracy_at_lengths`: the scores of every stored suite task pooled, which is the mean
    of the task scores when every task has as many samples), and the tasks it covers."""
    return {p.length: p for p in accuracy_at_lengths(data.cells.values(), model, data.plan, data.suite,
                                                     level=data.level)}


def _stored(point: LengthAccuracy | None) -> int:
    """How many suite tasks an average covers."""
    return 0 if point is None else point.coverage.covered


def effective(data: PretrainedData, model: str) -> EffectiveLength:
    """The effective length of `model` (`measures.effective_length` at the study's bar and level)
    over complete averages only: a length where some suite task has no stored cell has no average
    here, so it is not effective and ends the lower-bound rule's run of lengths."""
    complete = {n for n, p in averages(data, model).items() if p.coverage.complete and p.accuracy.n}
    cells = [c for c in data.cells.values() if c.model == model and c.length in complete]
    return effective_length(cells, model, data.train_length(model) or 0, data.plan, data.suite, bar=data.bar,
                            level=data.level)


def _interval(e: Estimate, ruler: bool = False) -> str:
    """x100 with its interval; `ruler`: the score as RULER's metric rounds it, to 2 decimals."""
    if e.n == 0 or math.isnan(e.value):
        return MISSING
    score = f"{ruler_score(e.value):.2f}" if ruler else f"{100 * e.value:.1f}"
    return f"{score} [{100 * e.low:.1f}, {100 * e.high:.1f}]"


def _tasks(n: int) -> str:
    return f"{n} task" + ("" if n == 1 else "s")


def _plain(x: float, digits: int = 2) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), digits)


def _fmt(x: float) -> str:
    return MISSING if x is None or math.isnan(x) else f"{x:.1f}"


def _mark(data: PretrainedData, model: str, length: int, text: str) -> str:
    limit = data.train_length(model)
    return f"{text} {BEYOND}" if limit is not None and length > limit and text != MISSING else text


def build_summary(data: PretrainedData) -> dict:
    """Per model: the suite average at each length (x100, with its interval), the tasks it covers,
    the effective length by both rules, and each task's score (x100)."""
    models = {}
    for m in data.models:
        name = m["name"]
        points, found = averages(data, name), effective(data, name)
        models[name] = {
            "spec": m.get("spec"), "kind": m.get("kind"), "family": m.get("family"), "params": m.get("params"),
            "train_length": m.get("train_length"), "model_args": m.get("model_args") or {},
            "gen_args": m.get("gen_args") or {}, "system_prompt": m.get("system_prompt"),
            "average": {str(n): _plain(100 * points[n].accuracy.value) if n in points else None for n in data.lengths},
            "average_interval": {str(n): [_plain(100 * points[n].accuracy.low), _plain(100 * points[n].accuracy.high)]
                                 if n in points and points[n].accuracy.n else None for n in data.lengths},
            "tasks_in_average": {str(n): _stored(points.get(n)) for n in data.lengths},
            "effective_length": found.length, "ruler_effective_length": found.ruler_length,
            "effective_length_from_upper_bounds": found.optimistic,
            "tasks": {t: {str(n): round(100 * c.accuracy, 2) for (mm, tt, n, d), c in sorted(data.cells.items(),
                                                                                              key=lambda kv: kv[0][2])
                          if mm == name and tt == t and d is None} for t in data.suite}}
        if data.ruler:
            models[name]["ruler_average"] = {str(n): v for n, v in ruler_averages(data, name).items()}
    summary = {"name": data.name, "kind": "pretrained", "effective_length_bar_fraction": data.bar,
               "interval_level_fraction": data.level, "suite": data.suite, "lengths": data.lengths, "models": models}
    if data.ruler:
        summary["fit"] = "ruler"
    return summary


def _ablation_grid(data: PretrainedData, model: str, label: str) -> dict[tuple[int, float], float]:
    return {(n, d): c.accuracy for (mm, tt, n, d), c in data.cells.items() if mm == model and tt == label and d is not None}


def _blocks(data: PretrainedData, figures: dict[str, str], summary: dict) -> list[Block]:
    config = data.config
    reference = REFERENCES.get(config.get("reference") or "")
    blocks: list[Block] = heading(data.name, config, data.settings)
    ev = config.get("eval", {})
    blocks += [("h2", "What this measures"), ("p",
        f"Pretrained checkpoints evaluated on RULER-style text tasks at {', '.join(plots.format_length(n) for n in data.lengths)} "
        f"tokens: {ev.get('samples', '?')} samples per cell, each prompt fitted with the model's own tokenizer so "
        "that prompt plus the task's generation budget is at most the length (never truncated), greedy decoding, "
        f"the `{ev.get('template', 'base')}` prompt template. Scores are RULER's string_match_all (string_match_part "
        f"for QA) x100; intervals are {100 * data.level:g}% Jeffreys intervals over the samples (a partial score "
        f"counts as that fraction of a correct answer). {BEYOND} marks a length past the model's training length.")]
    if data.settings_note:
        blocks.append(("warn", data.settings_note[0].upper() + data.settings_note[1:] + "."))
    for label, reason in data.meta.get("skipped", []):
        blocks.append(("warn", f"{label} was skipped: {reason}"))

    blocks.append(("h2", "Setup"))
    rows = [[m["name"], f"`{m.get('spec')}`", str(m.get("kind")), str(m.get("family")),
             f"{m['params']:,}" if m.get("params") else MISSING,
             f"{m['train_length']} ({m.get('train_length_source')})" if m.get("train_length") else "not declared",
             str(m.get("template", MISSING)), str(m.get("dtype", MISSING))] for m in data.models]
    blocks.append(("table", ["model", "checkpoint", "kind", "family", "parameters", "training length (from)",
                             "template", "dtype"], rows))
    blocks += _arguments(data)

    if data.suite:
        blocks += _suite_blocks(data, figures, summary, reference)
    if data.ablation:
        blocks += _ablation_blocks(data, figures, reference)

    blocks += [("h2", "Raw predictions"), ("p",
        "Every sample's decoded answer, references, score, prompt tokens and whether it ran past the training "
        "length are kept in `predictions/<model>/<task>-<length>[-d<depth>].jsonl`.")]
    blocks.append(("h2", "Reproducibility"))
    commit = data.meta.get("git_commit")
    blocks.append(("p", f"Git commit: {f'`{commit}`' if commit else 'not recorded'}."))
    return blocks + reproducibility(data.meta, config)


def _arguments(data: PretrainedData) -> list[Block]:
    """A line per model evaluated with model or generation arguments or a system prompt (none
    when no model was)."""
    lines = []
    for m in data.models:
        parts = [f"{what} `{arguments.shown(m[key])}`" for key, what in
                 (("model_args", "model arguments"), ("gen_args", "generation arguments")) if m.get(key)]
        if m.get("system_prompt"):
            parts.append(f"system prompt {json.dumps(m['system_prompt'], ensure_ascii=False)}")
        if parts:
            lines.append(f"{m['name']}: " + "; ".join(parts) + ".")
    if not lines:
        return []
    return [("p", "Evaluated with arguments (model arguments go to `from_pretrained` or override the checkpoint's "
                  "config; generation arguments replace the tasks' budgets or cut answers; see README):")] + \
        [("p", line) for line in lines]


def _suite_blocks(data: PretrainedData, figures: dict[str, str], summary: dict, reference: dict | None) -> list[Block]:
    """The suite's average at each length with the effective lengths, then each task's scores."""
    level = f"{100 * data.level:g}%"
    blocks: list[Block] = [("h2", f"Average over {_tasks(len(data.suite))}")]
    headers = ["model", "T"] + [plots.format_length(n) for n in data.lengths] + \
        ["effective length (lower bounds)", "RULER's rule"]
    rows = []
    for m in data.models:
        name, cells, points = m["name"], [], averages(data, m["name"])
        for n in data.lengths:
            point = points.get(n)
            text = MISSING if point is None else _interval(point.accuracy)
            if _stored(point) and _stored(point) < len(data.suite):
                text += f" ({_stored(point)} of {len(data.suite)} tasks)"
            cells.append(_mark(data, name, n, text))
        found = summary["models"][name]
        rows.append([name, str(m.get("train_length") or MISSING), *cells,
                     *(plots.format_length(found[key]) if found[key] else "none"
                       for key in ("effective_length", "ruler_effective_length"))])
    blocks.append(("table", headers, rows))
    blocks.append(("p",
        f"Each average pools the scores of the {_tasks(len(data.suite))} at that length (with as many samples per "
        f"task, the mean of the task scores), with its {level} Jeffreys interval over those samples: one "
        "evaluation of one checkpoint, so the interval is about these prompts' sampling, not about other "
        f"checkpoints. Effective length (lower bounds): the longest length L such that at every evaluated length "
        f"up to L the lower end of the average's {level} interval is above {100 * data.bar:g} "
        f"(`analysis.effective_length_bar_fraction`; RULER's bar is Llama-2-7B's 85.6 at 4K); "
        "\"none\" when the shortest length already falls short. RULER's rule, what RULER reports: the longest "
        f"length whose average itself is above {100 * data.bar:g}, whether or not a shorter length falls below "
        "it. Both read complete averages only: a length where a task's cell is missing is not effective."))
    blocks.append(("figure", figures["average"], "Average score against context length"))
    if data.ruler:
        blocks += [("h3", "As RULER reports it"), ("p",
            "This study's prompts were fitted with `fit: ruler` (RULER's own haystack sizes and shuffles). RULER "
            "rounds each task's score to 2 decimals and averages those: the mean of the rounded task scores, at "
            "the lengths where every task has a cell."),
            ("table", ["model"] + [plots.format_length(n) for n in data.lengths], _ruler_rows(data))]
    if reference:
        blocks += _reference_averages(data, reference)
    blocks += [("h2", "Per task"), ("p", f"Each task's score x100 with its {level} Jeffreys interval over the "
                                         "samples.")]
    for label in data.suite:
        blocks.append(("h3", label))
        rows = []
        for m in data.models:
            cells = []
            for n in data.lengths:
                cell = data.cells.get((m["name"], label, n, None))
                cells.append(MISSING if cell is None else
                             _mark(data, m["name"], n, _interval(cell_estimate(cell, data.level), data.ruler)))
            rows.append([m["name"], *cells])
        blocks.append(("table", ["model"] + [plots.format_length(n) for n in data.lengths], rows))
    blocks.append(("figure", figures["tasks"], "Each task's score against context length, one panel per model"))
    return blocks


def _ruler_rows(data: PretrainedData) -> list[list[str]]:
    """Each model's RULER averages (2 decimals), one column per length."""
    rows = []
    for m in data.models:
        found = ruler_averages(data, m["name"])
        rows.append([m["name"], *(_mark(data, m["name"], n, f"{found[n]:.2f}") if n in found else MISSING
                                  for n in data.lengths)])
    return rows


def _reference_averages(data: PretrainedData, reference: dict) -> list[Block]:
    published = reference["averages"]
    lengths = [n for n in data.lengths if any(n in v for v in published.values())]
    rows = []
    for m in data.models:
        if m["name"] not in published:
            continue
        cells = []
        points = averages(data, m["name"])
        for n in lengths:
            ours = 100 * points[n].accuracy.value if n in points else math.nan
            if data.ruler:  # RULER's published averages are means of rounded task scores
                ours = ruler_averages(data, m["name"]).get(n, math.nan)
            theirs = published[m["name"]].get(n)
            cells.append(f"{_fmt(ours)} / {MISSING if theirs is None else f'{theirs:g}'}")
        rows.append([m["name"], *cells])
    if not rows:
        return []
    return [("h3", "Beside the published averages"),
            ("p", f"This run / {reference['citation']}, average over RULER's 13 tasks. The published numbers "
                  "are single runs without intervals; differences in prompt wording and haystack text are expected."),
            ("table", ["model"] + [plots.format_length(n) for n in lengths], rows)]


def _ablation_blocks(data: PretrainedData, figures: dict[str, str], reference: dict | None) -> list[Block]:
    blocks: list[Block] = [("h2", "Needle depth ablation"), ("p",
        f"One needle at fixed depths in {len(data.ablation)} formats ({', '.join(data.ablation)}). The table "
        "averages the formats at each length; 0% is the start of the context.")]
    depths = sorted({d for (_, t, _, d) in data.cells if t in data.ablation and d is not None})
    for m in data.models:
        name = m["name"]
        lengths = sorted({n for (mm, t, n, d) in data.cells if mm == name and t in data.ablation})
        rows = []
        for n in lengths:
            cells = []
            for d in depths:
                parts = [data.cells[(name, t, n, d)] for t in data.ablation if (name, t, n, d) in data.cells]
                text = MISSING if not parts else f"{100 * pooled_estimate(parts, data.level).value:.1f}"
                if parts and len(parts) < len(data.ablation):
                    text += f" ({len(parts)} of {len(data.ablation)} formats)"
                cells.append(text)
            row = [f"{name} at {plots.format_length(n)}", *cells]
            train = m.get("train_length")
            factor = n / train if train else None
            if reference and factor in reference["depth_averages"] and depths == reference["depths"]:
                published = reference["depth_averages"][factor].get(name)
                row.append(" / ".join(f"{v:g}" for v in published) if published else MISSING)
            rows.append([_mark(data, name, n, row[0]), *row[1:]])
        if rows:
            headers = ["model at length"] + [f"{d:g}%" for d in depths]
            if reference and any(len(r) > len(headers) for r in rows):
                headers.append("published")
                rows = [r + [MISSING] * (len(headers) - len(r)) for r in rows]
            blocks.append(("table", headers, rows))
    for key in [k for k in figures if k.startswith("depth ")]:
        blocks.append(("figure", figures[key], f"{key.removeprefix('depth ')}: score by length and depth"))
    return blocks


def report(out_dir: Path, dest: Path | None = None) -> Report:
    """The pretrained study's report, from the store in `out_dir`; its figures are drawn under
    `<dest>/figures` (dest: where the report goes, `out_dir` unless given)."""
    data = load(out_dir)
    figures = Figures(dest or out_dir)
    if data.suite:
        _suite_figures(data, figures)
    for label in data.ablation:
        for m in data.models:
            grid = _ablation_grid(data, m["name"], label)
            if grid:
                figures.record(f"depth {m['name']} on {label}", plots.plot_heatmap(
                    grid, sorted({n for n, _ in grid}), sorted({d for _, d in grid}), m.get("train_length"),
                    figures.dir / f"depth_{slug(m['name'])}_{slug(label)}",
                    title=f"{m['name']} on {label}: score (%) by length and needle depth"))
    summary = build_summary(data)
    return Report(data.name, _blocks(data, figures.keys, summary), summary, _table(data), figures.files,
                  data.settings.title)


def _suite_figures(data: PretrainedData, figures: Figures) -> None:
    """The suite's average against length, and each task's score against length."""
    train_lengths = {m["name"]: m.get("train_length") or 0 for m in data.models}
    level = f"{100 * data.level:g}%"
    curves = {}
    for m in data.models:
        curves[m["name"]] = [LengthPoint(n, p.accuracy.value, p.accuracy.low, p.accuracy.high, _stored(p))
                             for n, p in sorted(averages(data, m["name"]).items()) if p.accuracy.n]
    figures.record("average", plots.plot_accuracy_vs_length(
        curves, {k: v for k, v in train_lengths.items() if v}, figures.dir / "average",
        title=f"{data.name}: average over {_tasks(len(data.suite))} ({level} Jeffreys intervals)"))
    task_curves = {}
    for label in data.suite:
        task_curves[label] = {}
        for m in data.models:
            points = []
            for n in data.lengths:
                cell = data.cells.get((m["name"], label, n, None))
                if cell is not None and cell.n:
                    e = cell_estimate(cell, data.level)
                    points.append(LengthPoint(n, e.value, e.low, e.high, cell.n))
            task_curves[label][m["name"]] = points
    figures.record("tasks", plots.plot_task_comparison(task_curves, train_lengths, figures.dir / "tasks",
                                                       title=f"{data.name}: score by task ({level} Jeffreys intervals)"))


def summary_table(out_dir: Path) -> Table:
    """The suite average (x100) by model and length for the terminal; † past the training length."""
    return _table(load(Path(out_dir)))


def _table(data: PretrainedData) -> Table:
    table = Table(title=f"{data.name}: average score over {_tasks(len(data.suite))} by context length")
    table.add_column("model")
    for n in data.lengths:
        table.add_column(plots.format_length(n), justify="right")
    for m in data.models:
        cells, points = [], averages(data, m["name"])
        for n in data.lengths:
            point = points.get(n)
            stored = _stored(point)
            text = _mark(data, m["name"], n, _fmt(100 * point.accuracy.value if point else math.nan))
            cells.append(text + (f" ({stored}/{len(data.suite)})" if stored and stored < len(data.suite) else ""))
        table.add_row(m["name"], *cells)
    return table
