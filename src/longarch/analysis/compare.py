"""Several study directories in one report: `longarch compare DIR [DIR ...]`.

How a user compares their architecture with a stored baseline without retraining it: each
study's stored results are read (read-only, from any kind of study), and for each evaluated task
label its models' accuracy by length is put side by side, every model labelled with its study.
Columns are lengths in tokens, so studies trained at different lengths T line up by length; each
row says its own T. The numbers are the ones each study's own report gives: the mean over seeds
of each seed's accuracy, pooled over depths, with `stats.mean_ci`'s interval (Jeffreys, for
these seeds). A trained model that did not learn its task at T by its study's own rule
(analysis/learned.py, with the study's `analysis.gate`: its accuracy at T on every label, or on
the row's label alone) is marked, since what it does past T says nothing about extrapolation;
its study's report says the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from ..study.store import read_only
from . import plots
from .learned import at_t
from .measures_report import read_settings
from .report import Figures, Report
from .stats import LengthPoint, accuracy_by_length, collect_cells


@dataclass
class Row:
    """One model of one study on one task label."""

    study: str
    model: str
    family: str
    train_length: int | None  # None: not known (a pretrained checkpoint that declares none)
    points: list[LengthPoint]
    learned: bool | None      # None: nothing at T to judge by (or not a trained model)

    @property
    def name(self) -> str:
        return f"{self.model} ({self.study})"


def read(directory: Path) -> tuple[str, dict[str, list[Row]]]:
    """A study's name and its rows by task label, from its store alone (opened read-only)."""
    with read_only(Path(directory) / "results.sqlite", untouched=True) as store:
        meta, models, checkpoints, results = store.meta(), store.models(), store.pretrained(), store.results()
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    study = meta.get("name") or config.get("name") or Path(directory).name
    settings, _ = read_settings(config)  # its gate resolved as its report resolves it
    family = {m.name: m.family for m in models} | {p["name"]: p.get("family") or "" for p in checkpoints}
    trained_at = {m.name: m.train_length for m in models}
    cells = collect_cells(results).values()
    labels: dict[str, list[Row]] = {}
    # in the study's own order: its models as stored (trained or loaded), then any other name with results
    named = [m.name for m in models] + [p["name"] for p in checkpoints] + [r.model for r in results]
    bar, all_labels = settings.learned_bar_fraction, list(dict.fromkeys(c.task for c in cells))
    for model in [m for m in dict.fromkeys(named) if any(r.model == m for r in results)]:
        t = trained_at.get(model)
        judged = None if t is None else at_t(cells, model, t, settings.labels or all_labels)
        for label in dict.fromkeys(c.task for c in cells if c.model == model):
            points = accuracy_by_length(cells, model, settings.interval_level_fraction, task=label)
            if judged is None or not judged.stored:  # nothing at T to judge by (or not a trained model)
                learned = None
            elif settings.gate == "model":
                learned = judged.learned(bar)
            else:
                learned = judged.label_learned(label, bar) if label in judged.stored else None
            labels.setdefault(label, []).append(Row(study, model, family.get(model, ""), t, points, learned))
    return study, labels


def compare(directories: list[Path], out: Path) -> Report:
    """The report of `directories` side by side, its figures drawn under `out`/figures."""
    read_ = [(Path(d), *read(d)) for d in directories]
    names = _distinct([study for _, study, _ in read_], [d for d, _, _ in read_])
    studies, by_label = [], {}
    for (directory, _, labels), name in zip(read_, names):
        studies.append((name, directory))
        for label, rows in labels.items():
            for row in rows:
                row.study = name
            by_label.setdefault(label, []).extend(rows)
    title = "Comparison: " + ", ".join(names)
    blocks: list = [("h1", title), ("p", _introduction(studies))]
    figures = Figures(out)
    figures.dir.mkdir(parents=True, exist_ok=True)
    summary = {"compared": [{"study": s, "directory": str(d)} for s, d in studies], "labels": {}}
    for label, rows in by_label.items():
        blocks += _label_blocks(label, rows, figures)
        summary["labels"][label] = [{"study": r.study, "model": r.model, "family": r.family,
                                     "train_length": r.train_length, "learned": r.learned,
                                     "points": [vars(p) for p in r.points]} for r in rows]
    if not by_label:
        blocks.append(("p", "None of these studies has stored results yet."))
    return Report(" vs ".join(names), blocks, summary, _terminal_table(by_label), dict(figures.files))


def _distinct(names: list[str], directories: list[Path]) -> list[str]:
    """The studies' names, each with its directory's name where two studies share a name (two
    runs of one study), and with the whole path where even that repeats."""
    if len(set(names)) == len(names):
        return names
    named = [n if names.count(n) == 1 else f"{n} in {d.name}" for n, d in zip(names, directories)]
    return named if len(set(named)) == len(named) else [f"{n} in {d}" for n, d in zip(names, directories)]


def _introduction(studies: list[tuple[str, Path]]) -> str:
    listed = "; ".join(f"`{s}` ({d})" for s, d in studies)
    return (f"Studies compared: {listed}. Each model is labelled with its study. Accuracies are in percent: the "
            "mean over seeds, pooled over depths, with its 95% interval in brackets; columns are lengths in tokens, "
            "and T is each model's training length. A trained model below its study's learned bar at T is marked "
            "'did not learn': its results past T say nothing about extrapolation.")


def _lengths(rows: list[Row]) -> list[int]:
    return sorted({p.length for r in rows for p in r.points})


def _cell(point: LengthPoint | None) -> str:
    if point is None:
        return "-"
    return f"{100 * point.accuracy:.1f} [{100 * point.low:.1f}, {100 * point.high:.1f}]"


def _label_blocks(label: str, rows: list[Row], figures: Figures) -> list:
    lengths = _lengths(rows)
    headers = ["model (study)", "family", "T"] + [plots.format_length(n) for n in lengths]
    table = []
    for row in rows:
        at = {p.length: p for p in row.points}
        name = row.name + (" (did not learn)" if row.learned is False else "")
        table.append([name, row.family, "?" if row.train_length is None else str(row.train_length),
                      *(_cell(at.get(n)) for n in lengths)])
    stem = figures.dir / f"compare-{_file_name(label)}"
    written = plots.plot_accuracy_vs_length(
        {r.name: r.points for r in rows}, {r.name: r.train_length for r in rows if r.train_length},
        stem, f"{label}: accuracy by context length", unsolved=[r.name for r in rows if r.learned is False])
    figures.record(label, written)
    return [("h2", f"Task `{label}`"), ("table", headers, table), ("figure", figures.keys[label], f"{label} by length")]


def _file_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in label) or "task"


def _terminal_table(by_label: dict[str, list[Row]]) -> Table:
    table = Table(title="compared: accuracy (%) by context length, mean over depths and seeds")
    lengths = _lengths([r for rows in by_label.values() for r in rows])
    for column in ["task", "model (study)", *(plots.format_length(n) for n in lengths)]:
        table.add_column(column, justify="left" if column in ("task", "model (study)") else "right")
    for label, rows in by_label.items():
        for row in rows:
            at = {p.length: p for p in row.points}
            table.add_row(label, row.name + (" (did not learn)" if row.learned is False else ""),
                          *("-" if n not in at else f"{100 * at[n].accuracy:.1f}" for n in lengths))
    return table
