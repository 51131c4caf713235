"""The report of a pretrained study: RULER-style scores of checkpoints, in and beyond their
training context. Built from `<out>/results.sqlite` alone, like the controlled study's report,
with the same renderers (report.md, a self-contained report.html, summary.json, PNG + SVG).

Scores are RULER's (string_match_all, string_match_part for QA) x100. A model's average at a
length is the mean over the suite tasks stored there; an average over fewer tasks than planned
says how many it covers, and a model's effective length (the longest length whose average is
above the threshold, 85.6 by default as in RULER) is computed only from complete averages.
Cells past a model's training length are marked with †.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.table import Table

from ..store import Store
from . import plots
from .reference import REFERENCES
from .render import MISSING, Block, render_html, render_markdown
from .stats import Cell, LengthPoint, collect_cells, mean_ci

BEYOND = "†"


@dataclass
class PretrainedData:
    meta: dict
    models: list[dict]        # store.pretrained() rows, plus models with results but no row
    cells: dict[tuple[str, str, int, float | None], Cell]
    suite: list[str]          # task labels averaged (entries without fixed depths or relative lengths)
    ablation: list[str]       # task labels with fixed depths
    lengths: list[int]

    @property
    def name(self) -> str:
        return str(self.meta.get("name", "study"))

    @property
    def config(self) -> dict:
        return self.meta.get("config") if isinstance(self.meta.get("config"), dict) else {}

    @property
    def threshold(self) -> float:
        return float(self.config.get("eval", {}).get("threshold", 85.6))

    def train_length(self, model: str) -> int | None:
        return next((m.get("train_length") for m in self.models if m["name"] == model), None)


def load(out_dir: Path) -> PretrainedData:
    with Store(Path(out_dir) / "results.sqlite") as store:
        meta, rows, results = store.meta(), store.pretrained(), store.results()
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    entries = config.get("tasks", [])
    skipped = {label for label, _ in meta.get("skipped", [])}
    suite = [e.get("label") or e["name"] for e in entries
             if not e.get("depths") and not e.get("length_factors") and (e.get("label") or e["name"]) not in skipped]
    ablation = [e.get("label") or e["name"] for e in entries if e.get("depths")]
    named = {r["name"] for r in rows}
    for model in dict.fromkeys(r.model for r in results):
        if model not in named:
            rows.append({"name": model, "spec": "?", "kind": "?", "family": "?", "params": None, "train_length": None})
    lengths = sorted(set(config.get("eval", {}).get("lengths", [])) | {r.length for r in results
                                                                       if r.label in suite})
    return PretrainedData(meta, rows, collect_cells(results), suite, ablation, lengths)


def average(data: PretrainedData, model: str, length: int) -> tuple[float, float, float, int]:
    """(mean, low, high, tasks stored) of the suite average, x100; the interval is a bootstrap over
    the samples of every stored task (equal samples per task, so the pooled mean is the average)."""
    parts = [data.cells[(model, t, length, None)].scores for t in data.suite if (model, t, length, None) in data.cells]
    if not parts:
        return math.nan, math.nan, math.nan, 0
    mean, low, high = mean_ci(np.concatenate(parts))
    means = [float(p.mean()) for p in parts]
    return 100 * float(np.mean(means)), 100 * low, 100 * high, len(parts)


def effective_length(scores: dict[int, float], threshold: float) -> int | None:
    """The longest length whose score is above `threshold` (None when none is)."""
    above = [length for length, score in scores.items() if not math.isnan(score) and score > threshold]
    return max(above) if above else None


def _fmt(x: float) -> str:
    return MISSING if x is None or math.isnan(x) else f"{x:.1f}"


def _mark(data: PretrainedData, model: str, length: int, text: str) -> str:
    limit = data.train_length(model)
    return f"{text} {BEYOND}" if limit is not None and length > limit and text != MISSING else text


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def build_summary(data: PretrainedData) -> dict:
    models = {}
    for m in data.models:
        name = m["name"]
        averages = {n: average(data, name, n) for n in data.lengths}
        complete = {n: a[0] for n, a in averages.items() if a[3] == len(data.suite)}
        models[name] = {
            "spec": m.get("spec"), "kind": m.get("kind"), "family": m.get("family"), "params": m.get("params"),
            "train_length": m.get("train_length"),
            "average": {str(n): None if math.isnan(a[0]) else round(a[0], 2) for n, a in averages.items()},
            "tasks_in_average": {str(n): a[3] for n, a in averages.items()},
            "effective_length": effective_length(complete, data.threshold),
            "tasks": {t: {str(n): round(100 * c.accuracy, 2) for (mm, tt, n, d), c in sorted(data.cells.items(),
                                                                                              key=lambda kv: kv[0][2])
                          if mm == name and tt == t and d is None} for t in data.suite}}
    return {"name": data.name, "kind": "pretrained", "threshold": data.threshold, "suite": data.suite,
            "lengths": data.lengths, "models": models}


def _ablation_grid(data: PretrainedData, model: str, label: str) -> dict[tuple[int, float], float]:
    return {(n, d): c.accuracy for (mm, tt, n, d), c in data.cells.items() if mm == model and tt == label and d is not None}


def _blocks(data: PretrainedData, figures: dict[str, str], summary: dict) -> list[Block]:
    config = data.config
    reference = REFERENCES.get(config.get("reference") or "")
    blocks: list[Block] = [("h1", f"longarch report: {data.name}")]
    if config.get("description"):
        blocks.append(("p", str(config["description"])))
    ev = config.get("eval", {})
    blocks += [("h2", "What this measures"), ("p",
        f"Pretrained checkpoints evaluated on RULER-style text tasks at {', '.join(plots.format_length(n) for n in data.lengths)} "
        f"tokens: {ev.get('samples', '?')} samples per cell, each prompt fitted with the model's own tokenizer so "
        "that prompt plus the task's generation budget is at most the length (never truncated), greedy decoding, "
        f"the `{ev.get('template', 'base')}` prompt template. Scores are RULER's string_match_all (string_match_part "
        "for QA) x100; intervals are 95% percentile bootstrap intervals over samples. "
        f"{BEYOND} marks a length past the model's training length.")]
    for label, reason in data.meta.get("skipped", []):
        blocks.append(("warn", f"{label} was skipped: {reason}"))

    blocks.append(("h2", "Setup"))
    rows = [[m["name"], f"`{m.get('spec')}`", str(m.get("kind")), str(m.get("family")),
             f"{m['params']:,}" if m.get("params") else MISSING,
             f"{m['train_length']} ({m.get('train_length_source')})" if m.get("train_length") else "not declared",
             str(m.get("template", MISSING)), str(m.get("dtype", MISSING))] for m in data.models]
    blocks.append(("table", ["model", "checkpoint", "kind", "family", "parameters", "training length (from)",
                             "template", "dtype"], rows))

    if data.suite:
        blocks.append(("h2", f"Average over {len(data.suite)} tasks"))
        headers = ["model", "T"] + [plots.format_length(n) for n in data.lengths] + ["effective length"]
        rows = []
        for m in data.models:
            name, cells = m["name"], []
            for n in data.lengths:
                mean, low, high, stored = average(data, name, n)
                text = MISSING if math.isnan(mean) else f"{mean:.1f} [{low:.1f}, {high:.1f}]"
                if stored and stored < len(data.suite):
                    text += f" ({stored} of {len(data.suite)} tasks)"
                cells.append(_mark(data, name, n, text))
            eff = summary["models"][name]["effective_length"]
            rows.append([name, str(m.get("train_length") or MISSING), *cells,
                         plots.format_length(eff) if eff else f"none above {data.threshold:g}"])
        blocks.append(("table", headers, rows))
        blocks.append(("p", f"Effective length: the longest length whose average is above {data.threshold:g} "
                            "(RULER's threshold), over complete averages only."))
        blocks.append(("figure", figures["average"], "Average score against context length"))
        if reference:
            blocks += _reference_averages(data, reference)
        blocks.append(("h2", "Per task"))
        for label in data.suite:
            blocks.append(("h3", label))
            rows = []
            for m in data.models:
                cells = []
                for n in data.lengths:
                    cell = data.cells.get((m["name"], label, n, None))
                    if cell is None:
                        cells.append(MISSING)
                        continue
                    mean, low, high = mean_ci(cell.scores)
                    cells.append(_mark(data, m["name"], n, f"{100 * mean:.1f} [{100 * low:.1f}, {100 * high:.1f}]"))
                rows.append([m["name"], *cells])
            blocks.append(("table", ["model"] + [plots.format_length(n) for n in data.lengths], rows))
        blocks.append(("figure", figures["tasks"], "Each task's score against context length, one panel per model"))

    if data.ablation:
        blocks += _ablation_blocks(data, figures, reference)

    blocks += [("h2", "Raw predictions"), ("p",
        "Every sample's decoded answer, references, score, prompt tokens and whether it ran past the training "
        "length are kept in `predictions/<model>/<task>-<length>[-d<depth>].jsonl`.")]
    blocks.append(("h2", "Reproducibility"))
    commit = data.meta.get("git_commit")
    blocks.append(("p", f"Git commit: {f'`{commit}`' if commit else 'not recorded'}."))
    from .report import reproducibility  # report.py hands pretrained directories to this module

    return blocks + reproducibility(data.meta, config)


def _reference_averages(data: PretrainedData, reference: dict) -> list[Block]:
    published = reference["averages"]
    lengths = [n for n in data.lengths if any(n in v for v in published.values())]
    rows = []
    for m in data.models:
        if m["name"] not in published:
            continue
        cells = []
        for n in lengths:
            ours = average(data, m["name"], n)
            theirs = published[m["name"]].get(n)
            cells.append(f"{_fmt(ours[0])} / {MISSING if theirs is None else f'{theirs:g}'}")
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
                parts = [data.cells[(name, t, n, d)].accuracy for t in data.ablation if (name, t, n, d) in data.cells]
                text = MISSING if not parts else f"{100 * np.mean(parts):.1f}"
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


def build_report(out_dir: Path) -> dict[str, Path]:
    """Write summary.json, figures/, report.md and report.html for a pretrained study."""
    out_dir = Path(out_dir)
    data = load(out_dir)
    figure_dir = out_dir / "figures"
    paths: dict[str, Path] = {}
    figures: dict[str, str] = {}

    def record(key: str, written: list[Path]) -> None:
        for path in written:
            paths[path.relative_to(out_dir).as_posix()] = path
        figures[key] = written[0].relative_to(out_dir).as_posix()

    train_lengths = {m["name"]: m.get("train_length") or 0 for m in data.models}
    if data.suite:
        curves = {}
        for m in data.models:
            points = []
            for n in data.lengths:
                mean, low, high, stored = average(data, m["name"], n)
                if stored:
                    points.append(LengthPoint(n, mean / 100, low / 100, high / 100, stored))
            curves[m["name"]] = points
        record("average", plots.plot_accuracy_vs_length(
            curves, {k: v for k, v in train_lengths.items() if v}, figure_dir / "average",
            title=f"{data.name}: average over {len(data.suite)} tasks (95% CI)"))
        task_curves = {}
        for label in data.suite:
            task_curves[label] = {}
            for m in data.models:
                points = []
                for n in data.lengths:
                    cell = data.cells.get((m["name"], label, n, None))
                    if cell is not None:
                        mean, low, high = mean_ci(cell.scores)
                        points.append(LengthPoint(n, mean, low, high, cell.n))
                task_curves[label][m["name"]] = points
        record("tasks", plots.plot_task_comparison(task_curves, train_lengths, figure_dir / "tasks",
                                                   title=f"{data.name}: score by task (95% CI)"))
    for label in data.ablation:
        for m in data.models:
            grid = _ablation_grid(data, m["name"], label)
            if grid:
                record(f"depth {m['name']} on {label}", plots.plot_heatmap(
                    grid, sorted({n for n, _ in grid}), sorted({d for _, d in grid}), m.get("train_length"),
                    figure_dir / f"depth_{_slug(m['name'])}_{_slug(label)}",
                    title=f"{m['name']} on {label}: score (%) by length and needle depth"))
    summary = build_summary(data)
    paths["summary"] = out_dir / "summary.json"
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    blocks = _blocks(data, figures, summary)
    paths["md"] = out_dir / "report.md"
    paths["md"].write_text(render_markdown(blocks), encoding="utf-8")
    paths["html"] = out_dir / "report.html"
    paths["html"].write_text(render_html(blocks, f"longarch report: {data.name}", out_dir), encoding="utf-8")
    return paths


def summary_table(out_dir: Path) -> Table:
    """The suite average (x100) by model and length for the terminal; † past the training length."""
    data = load(Path(out_dir))
    table = Table(title=f"{data.name}: average score over {len(data.suite)} tasks by context length")
    table.add_column("model")
    for n in data.lengths:
        table.add_column(plots.format_length(n), justify="right")
    for m in data.models:
        cells = []
        for n in data.lengths:
            mean, _, _, stored = average(data, m["name"], n)
            text = _mark(data, m["name"], n, _fmt(mean))
            cells.append(text + (f" ({stored}/{len(data.suite)})" if stored and stored < len(data.suite) else ""))
        table.add_row(m["name"], *cells)
    return table
