"""Figures of a study: accuracy against context length, and depth x length heatmaps.

The functions take plain aggregated numbers (fractions in [0, 1]) and write each figure as
PNG (embedded in the HTML report) and SVG (for papers). They compute no statistics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display is needed or assumed: figures only go to files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from .stats import LengthPoint  # noqa: E402

FORMATS = ("png", "svg")


def format_length(length: int) -> str:
    """A context length as people write it: 64, 512, 1K, 2K, 1.5K, 1M."""
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if length >= size:
            value = length / size
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return str(length)


def _save(fig: plt.Figure, stem: Path) -> list[Path]:
    """Write `stem`.png and `stem`.svg, close the figure and return the two paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = stem.with_suffix(f".{fmt}")
        # fixed metadata and element ids (their salt is random per process otherwise), so that
        # rebuilding a report from the same store gives the same SVG
        metadata = {"Date": None} if fmt == "svg" else None
        with matplotlib.rc_context({"svg.hashsalt": "longarch"}):
            fig.savefig(path, dpi=150, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    plt.close(fig)
    return paths


def plot_accuracy_vs_length(curves: Mapping[str, Sequence[LengthPoint]], train_lengths: Mapping[str, int],
                            stem: Path, title: str, unsolved: Sequence[str] = ()) -> list[Path]:
    """Accuracy (%) against context length on a log2 axis: one line per model with its shaded
    95% interval, and a dashed vertical line at each distinct training length.

    `curves` maps a model name to its points; `train_lengths` maps it to its training length;
    models in `unsolved` (did not learn the task) are drawn dotted and marked in the legend.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    lengths = sorted({p.length for points in curves.values() for p in points})
    colours = plt.get_cmap("tab10")
    for i, (name, points) in enumerate(curves.items()):
        if not points:
            continue
        x = np.array([p.length for p in points])
        y = 100 * np.array([p.accuracy for p in points])
        low = 100 * np.array([p.low for p in points])
        high = 100 * np.array([p.high for p in points])
        colour = colours(i % 10)
        did_not_learn = name in unsolved
        label = f"{name} (did not learn the task)" if did_not_learn else name
        ax.plot(x, y, marker="o", color=colour, label=label, linestyle=":" if did_not_learn else "-")
        ax.fill_between(x, low, high, color=colour, alpha=0.18, linewidth=0)

    # one marker line per distinct training length, naming the models when they differ
    by_length: dict[int, list[str]] = {}
    for name, length in train_lengths.items():
        by_length.setdefault(int(length), []).append(name)
    for length, names in sorted(by_length.items()):
        text = "train length" if len(by_length) == 1 else f"train length ({', '.join(names)})"
        ax.axvline(length, color="dimgray", linestyle="--", linewidth=1.2)
        # left of the line, where (with T the shortest evaluated length) no curve runs
        ax.text(length / 1.03, 50, text, rotation=90, va="center", ha="right", fontsize=9, color="dimgray")

    ticks = sorted(set(lengths) | set(by_length))
    ax.set_xscale("log", base=2)
    if ticks:
        ax.set_xlim(min(ticks) / 1.3, max(ticks) * 1.3)
        ax.set_xticks(ticks, [format_length(t) for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
    if not lengths:
        ax.text(0.5, 0.5, "no results stored yet", transform=ax.transAxes, ha="center", va="center")
    ax.set_ylim(0, 100)
    ax.set_xlabel("context length (tokens, log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if any(curves.values()):
        # outside the axes: curves that collapse to 0% would otherwise run under it
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    return _save(fig, stem)


def plot_task_comparison(task_curves: Mapping[str, Mapping[str, Sequence[LengthPoint]]],
                         train_lengths: Mapping[str, int], stem: Path, title: str) -> list[Path]:
    """One panel per model, one line per evaluated task (format) with its 95% band: accuracy (%)
    against context length on a log2 axis, the training length dashed. `task_curves` maps a task
    label to {model: points}."""
    models = list(train_lengths)
    columns = min(3, max(1, len(models)))
    rows = -(-len(models) // columns) if models else 1
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.3 * rows), squeeze=False, sharey=True)
    colours = plt.get_cmap("tab10")
    for index, model in enumerate(models):
        ax = axes[index // columns][index % columns]
        ticks = {int(train_lengths[model])} if train_lengths[model] else set()
        for i, (task, curves) in enumerate(task_curves.items()):
            points = curves.get(model) or []
            if not points:
                continue
            x = np.array([p.length for p in points])
            ticks |= set(int(v) for v in x)
            ax.plot(x, 100 * np.array([p.accuracy for p in points]), marker="o", markersize=3.5,
                    color=colours(i % 10), label=task)
            ax.fill_between(x, 100 * np.array([p.low for p in points]), 100 * np.array([p.high for p in points]),
                            color=colours(i % 10), alpha=0.18, linewidth=0)
        if train_lengths[model]:  # a pretrained model may declare none
            ax.axvline(train_lengths[model], color="dimgray", linestyle="--", linewidth=1.1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(ticks), [format_length(t) for t in sorted(ticks)], fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_ylim(0, 100)
        ax.set_title(model, fontsize=10)
        ax.grid(True, alpha=0.3)
        if index % columns == 0:
            ax.set_ylabel("accuracy (%)")
    for index in range(len(models), rows * columns):
        axes[index // columns][index % columns].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), frameon=False,
                   bbox_to_anchor=(0.5, -0.02), fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.supxlabel("context length (tokens, log scale; dashed: training length)", fontsize=9, y=0.06)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return _save(fig, stem)


def plot_heatmap(accuracy: Mapping[tuple[int, float], float], lengths: Sequence[int], depths: Sequence[float],
                 train_length: int | None, stem: Path, title: str) -> list[Path]:
    """The needle-in-a-haystack map of one model: context length across (categorical), needle
    depth down (0% = start of the context at the top), cell colour and label = accuracy (%).

    `accuracy` maps (length, depth) to a fraction in [0, 1]; cells not in it are drawn grey
    with a dash. The training-length column is outlined and labelled.
    """
    lengths, depths = sorted(lengths), sorted(depths)
    grid = np.full((len(depths), len(lengths)), np.nan)
    for (length, depth), value in accuracy.items():
        if length in lengths and depth in depths:
            grid[depths.index(depth), lengths.index(length)] = 100 * value

    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 0.75 * len(lengths)), max(3.2, 1.4 + 0.42 * len(depths))))
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="#d9d9d9")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=100, aspect="auto",
                      interpolation="nearest", origin="upper")
    for row in range(len(depths)):
        for col in range(len(lengths)):
            value = grid[row, col]
            if np.isnan(value):
                ax.text(col, row, "—", ha="center", va="center", fontsize=8, color="dimgray")
            else:
                # the colormap's ends are dark: white text there, black in the light middle
                colour = "white" if value < 20 or value > 85 else "black"
                ax.text(col, row, f"{value:.0f}", ha="center", va="center", fontsize=8, color=colour)

    labels = [format_length(x) + ("\n(train)" if x == train_length else "") for x in lengths]
    ax.set_xticks(range(len(lengths)), labels)
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    if train_length in lengths:
        col = lengths.index(train_length)
        ax.add_patch(Rectangle((col - 0.5, -0.5), 1, len(depths), fill=False, edgecolor="black", linewidth=2.2))
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth (% of context)")
    ax.set_title(title)
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
    colorbar.set_label("accuracy (%)")
    return _save(fig, stem)


def plot_training_curves(curves: Mapping[str, Mapping[int, Mapping[str, Sequence[tuple[int, float]]]]],
                         stem: Path, title: str) -> list[Path]:
    """The training loss and the held-out accuracy (%) at T of each trained task against the
    step: one panel for the loss (log scale) and one per task, one colour per model, one line
    per seed. `curves`: model -> seed -> series name ("loss" or a task label) -> (step, value)."""
    series = sorted({name for seeds in curves.values() for by_name in seeds.values() for name in by_name} - {"loss"})
    panels = ["loss"] + series
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.8 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, panel in zip(axes.flat, panels):
        for i, (model, seeds) in enumerate(curves.items()):
            for j, (seed, by_name) in enumerate(sorted(seeds.items())):
                points = by_name.get(panel) or []
                if not points:
                    continue
                steps, values = zip(*points)
                values = np.asarray(values) * (1 if panel == "loss" else 100)
                ax.plot(steps, values, color=colours(i % 10), linewidth=1, alpha=0.85,
                        label=model if j == 0 else None)
        ax.set_title("training loss" if panel == "loss" else f"{panel}: held-out at T", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if panel == "loss":
            ax.set_yscale("log")
        else:
            ax.set_ylim(-3, 103)
            ax.set_ylabel("accuracy (%)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(6, len(labels)), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    fig.suptitle(title, fontsize=10, y=1.04)
    fig.tight_layout()
    return _save(fig, stem)
