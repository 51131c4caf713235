"""The report's Diagnostics section: one figure per measure of analysis/diagnostics.py, read
beside the accuracy curves they explain, and plain sentences computed from the stored rows.

Rows of one (model, measure, format) stored for several training seeds are pooled. Loss and
state norms are averaged over the seeds, element by element (a missing value left out). A
head of one seed is not the same head in another, so retention and attention pick each seed's
head first (the one that keeps the most of the needle, or attends most to it at T) and average
what those heads do; the retention figure draws every head of every seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from . import plots
from .plots import format_length, plt
from .render import Block

TITLES = {"loss": "Per-position loss past T", "retention": "Needle retention through the state",
          "attention": "Attention on the needle", "state-norm": "State norm with length"}
EXPLAINS = {
    "loss": "next-symbol loss (nats) on haystack and needle symbols by position (log2 bins), and the loss of the "
            "answer given the needle by context length: a loss that climbs past T shows the model leaving the "
            "inputs it was trained on; an answer loss that climbs while the haystack's holds shows the needle lost",
    "retention": "the share of the needle's write still in each recurrent layer's state (per head) after k haystack "
                 "symbols, as the projection of the write that is left on the write (1: all of it, 0: none), the write "
                 "read once a short convolution no longer holds the needle (k counts the symbols after that); a "
                 "needle more than k symbols back can only be answered from heads that keep it",
    "attention": "the attention weight the answer's query puts on the needle's symbols, and the entropy of its "
                 "attention (nats; uniform over L symbols is ln L), for the head that attends most to the needle at "
                 "T in each attention layer: attention that spreads as L grows dilutes the needle",
    "state-norm": "the norm of each layer's state (its memory: the recurrent state, or an attention layer's keys "
                  "and values) after T, 2T, ... symbols of one long haystack: a norm that keeps growing past T "
                  "feeds the layers above inputs larger than any they were trained on",
}


def grouped(rows: list) -> dict[tuple[str, str, str], list[dict]]:
    """(model, measure, label) -> the data of each stored seed, in seed order."""
    groups: dict[tuple[str, str, str], list] = {}
    for row in sorted(rows, key=lambda r: r.seed):
        groups.setdefault((row.model, row.measure, row.label), []).append(row.data)
    return groups


def _mean_of(values: list):
    """The element-wise mean of values of one shape (dicts, lists, numbers; None is missing)."""
    first = values[0]
    if isinstance(first, dict):
        return {k: _mean_of([v.get(k) for v in values if isinstance(v, dict)]) for k in first}
    if isinstance(first, list) and all(isinstance(v, list) and len(v) == len(first) for v in values):
        return [_mean_of([v[i] for v in values]) for i in range(len(first))]
    if isinstance(first, (int, float)) and not isinstance(first, bool) or first is None:
        numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if isinstance(first, int) and all(v == first for v in values):
            return first  # a length, a layer index: the same in every seed
        return float(np.mean(numbers)) if numbers else None
    return first


def _pooled(data: dict, key: tuple[str, str, str]) -> dict | None:
    """The seeds' data of `key` averaged (None: none stored)."""
    seeds = data.get(key)
    return _mean_of(seeds) if seeds else None


def _series(values: Sequence) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _percent(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"


# --------------------------------------------------------------------------------------------
# what each measure says, in sentences
# --------------------------------------------------------------------------------------------
def best_head(data: dict, at: int = -1) -> tuple[int, int, float] | None:
    """(layer, head, retention) of the head that keeps the most of the needle at step `at`."""
    found = [(layer["layer"], h, values[at]) for layer in data.get("layers", [])
             for h, values in enumerate(layer["retention"]) if values[at] is not None]
    return max(found, key=lambda item: item[2]) if found else None


def retention_sentences(data: dict[tuple[str, str, str], list[dict]], models: Sequence[str], labels: Sequence[str]
                        ) -> list[str]:
    """'mamba2's best head keeps 66% of the needle after 2,048 noise symbols (layer 1, head 3) and
    20% after text (layer 0, head 5).' per model; with several seeds, the mean of each seed's best
    head, the heads named seed by seed."""
    out = []
    for model in models:
        parts, grown = [], False
        for label in labels:
            seeds = data.get((model, "retention", label)) or []
            bests = [best for best in (best_head(entry) for entry in seeds) if best is not None]
            if not bests:
                continue
            kept = float(np.mean([best[2] for best in bests]))
            heads = "; ".join(f"layer {layer}, head {head}" for layer, head, _ in bests)
            heads = heads if len(bests) == 1 else f"mean of {len(bests)} seeds' best heads: {heads}"
            text = (f"{_percent(kept)} of the needle after {seeds[0]['steps'][-1]:,} {label} symbols" if not parts
                    else f"{_percent(kept)} after {label}")
            parts.append(f"{text} ({heads})")
            grown = grown or kept > 1
        if parts:
            out.append(f"{model}'s best head keeps {' and '.join(parts)}." + (GROWN if grown else ""))
    return out


GROWN = (" Over 100% means that head holds more of the needle than its whole write (read once no shift register "
         "holds the needle any more): its own update amplifies what the needle wrote, which no decay of at most 1 "
         "does.")


def _at_train_length(lengths: Sequence[int], train_length: int) -> int:
    """The index of the length nearest T (the first, for a study measured from T)."""
    return int(np.argmin([abs(math.log2(x / train_length)) for x in lengths]))


def attention_sentences(data, models, labels) -> list[str]:
    out = []
    for model in models:
        for label in labels:
            seeds = [e for e in data.get((model, "attention", label)) or [] if e.get("layers")]
            if not seeds:
                continue
            entry = seeds[0]
            t = _at_train_length(entry["lengths"], entry["train_length"])
            picked = [_attentive_head(e["layers"], t) for e in seeds]  # (layer, head) of each seed
            mass = _mean_of([layer["mass"][head] for layer, head in picked])
            entropy = _mean_of([layer["entropy"][head] for layer, head in picked])
            heads = "; ".join(f"layer {layer['layer']}, head {head}" for layer, head in picked)
            heads = (f"{heads}, its head most on the needle at T" if len(picked) == 1
                     else f"each seed's head most on the needle at T: {heads}")
            uniform = entry["uniform_entropy"]
            out.append(f"On {label}, {model}'s answer query ({heads}) puts {_percent(mass[t])} of its attention on "
                       f"the needle at T and {_percent(mass[-1])} at {format_length(entry['lengths'][-1])}; its "
                       f"entropy goes from {_nats(entropy[t])} to {_nats(entropy[-1])} nats (uniform: "
                       f"{_nats(uniform[t])} to {_nats(uniform[-1])}).")
    return out


def _attentive_head(layers: list[dict], at: int) -> tuple[dict, int]:
    """The (layer, head) among `layers` whose mass on the needle is largest at length index `at`."""
    options = [(layer, h) for layer in layers for h in range(layer["heads"]) if layer["mass"][h][at] is not None]
    return max(options, key=lambda item: item[0]["mass"][item[1]][at])


def _pooled_entries(data, models, labels, measure: str):
    """(model, format, its measure pooled over seeds) for each model and format that has it."""
    for model in models:
        for label in labels:
            entry = _pooled(data, (model, measure, label))
            if entry:
                yield model, label, entry


def _nats(x: float | None) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.2f}"


def loss_sentences(data, models, labels) -> list[str]:
    out = []
    for model, label, entry in _pooled_entries(data, models, labels, "loss"):
        T, bins = entry["train_length"], entry["bins"]
        inside = max(i for i, low in enumerate(bins) if low < T)  # the bin holding position T - 1
        last = max((i for i, v in enumerate(entry["haystack"]) if v is not None), default=inside)
        t = _at_train_length(entry["lengths"], T)
        out.append(f"On {label}, {model}'s loss on haystack symbols is {_nats(entry['haystack'][inside])} nats "
                   f"just before T (positions {bins[inside]:,}-{2 * bins[inside] - 1:,}) and "
                   f"{_nats(entry['haystack'][last])} at positions {bins[last]:,}-{2 * bins[last] - 1:,}; the "
                   f"answer given the needle costs {_nats(entry['answer'][t])} nats at T and "
                   f"{_nats(entry['answer'][-1])} at {format_length(entry['lengths'][-1])}.")
    return out


def norm_sentences(data, models, labels) -> list[str]:
    out = []
    for model, label, entry in _pooled_entries(data, models, labels, "state-norm"):
        t = _at_train_length(entry["lengths"], entry["train_length"])
        growth = [f"layer {layer['layer']} ({layer['mixer']}) x{layer['norm'][-1] / layer['norm'][t]:.2f}"
                  for layer in entry["layers"] if layer["norm"][t] and layer["norm"][-1] is not None]
        if growth:
            out.append(f"On {label}, {model}'s state norms from T to {format_length(entry['lengths'][-1])}: "
                       f"{', '.join(growth)}.")
    return out


SENTENCES = {"loss": loss_sentences, "retention": retention_sentences, "attention": attention_sentences,
             "state-norm": norm_sentences}


# --------------------------------------------------------------------------------------------
# figures: one per measure, a row of panels per evaluated format
# --------------------------------------------------------------------------------------------
def _log2_axis(ax, ticks: Sequence[int], train_length: int | None) -> None:
    ticks = sorted(set(int(t) for t in ticks))
    ax.set_xscale("log", base=2)
    if ticks:
        shown = ticks if len(ticks) <= 8 else ticks[::max(1, len(ticks) // 7)]
        ax.set_xticks(shown, [format_length(t) for t in shown], fontsize=7)
        ax.xaxis.set_minor_locator(plots.NullLocator())
    if train_length:
        ax.axvline(train_length, color="dimgray", linestyle="--", linewidth=1)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=7)


def _grid(rows: int, columns: int):
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.0 * rows), squeeze=False)
    return fig, axes


def plot_loss(data, models, labels, stem: Path) -> list[Path]:
    """Per format: token loss by position (haystack solid, needle dashed) and answer loss by length."""
    fig, axes = _grid(len(labels), 2)
    colours = plt.get_cmap("tab10")
    for r, label in enumerate(labels):
        for i, model in enumerate(models):
            entry = _pooled(data, (model, "loss", label))
            if not entry:
                continue
            bins = np.array(entry["bins"])
            axes[r][0].plot(bins, _series(entry["haystack"]), marker="o", markersize=3, color=colours(i % 10),
                            label=f"{model} haystack")
            axes[r][0].plot(bins, _series(entry["needle"]), linestyle="--", marker="x", markersize=3,
                            color=colours(i % 10), label=f"{model} needle")
            axes[r][1].plot(entry["lengths"], _series(entry["answer"]), marker="o", markersize=3,
                            color=colours(i % 10), label=model)
            for ax, ticks in ((axes[r][0], bins), (axes[r][1], entry["lengths"])):
                _log2_axis(ax, ticks, entry["train_length"])
        axes[r][0].set_title(f"{label}: loss by position (log2 bins)", fontsize=9)
        axes[r][1].set_title(f"{label}: loss of the answer by context length", fontsize=9)
        axes[r][0].set_ylabel("loss (nats)", fontsize=8)
    return _finish(fig, axes, stem, "position (tokens, log scale; dashed: T)")


def plot_retention(data, models, labels, stem: Path) -> list[Path]:
    """One panel per (format, model): a line per (layer, head) of every seed, coloured by layer;
    each seed's best head bold."""
    shown = [m for m in models if any((m, "retention", label) in data for label in labels)]
    fig, axes = _grid(len(labels), max(1, len(shown)))
    for r, label in enumerate(labels):
        for c, model in enumerate(shown):
            ax, seeds = axes[r][c], data.get((model, "retention", label)) or []
            ax.set_title(f"{model} on {label}", fontsize=9)
            if not seeds:
                ax.axis("off")
                continue
            for entry in seeds:
                _retention_lines(ax, entry)
            _log2_axis(ax, seeds[0]["steps"], None)
            ax.set_ylim(min(-0.05, ax.get_ylim()[0]), max(1.05, ax.get_ylim()[1]))
            if c == 0:
                ax.set_ylabel("share of the needle's write kept", fontsize=8)
    return _finish(fig, axes, stem, "filler symbols k after the needle (log scale; bold: each seed's best head)")


def _retention_lines(ax, entry: dict) -> None:
    """A seed's heads, a colour per layer, its best head bold."""
    colours = plt.get_cmap("tab10")
    best = best_head(entry)
    for layer in entry["layers"]:
        for h, values in enumerate(layer["retention"]):
            bold = best is not None and (layer["layer"], h) == best[:2]
            ax.plot(entry["steps"], _series(values), color=colours(layer["layer"] % 10),
                    linewidth=2.2 if bold else 0.8, alpha=1.0 if bold else 0.55,
                    label=f"layer {layer['layer']}" if h == 0 else None)


def plot_attention(data, models, labels, stem: Path) -> list[Path]:
    """Per format: the mass on the needle and the entropy against length, for each attention
    layer's head most on the needle at T (each seed's, averaged); the uniform entropy ln L dotted."""
    fig, axes = _grid(len(labels), 2)
    colours = plt.get_cmap("tab10")
    for r, label in enumerate(labels):
        line = 0
        for model in models:
            seeds = [e for e in data.get((model, "attention", label)) or [] if e.get("layers")]
            if not seeds:
                continue
            entry = seeds[0]
            t = _at_train_length(entry["lengths"], entry["train_length"])
            for index, layer in enumerate(entry["layers"]):
                picked = [_attentive_head([e["layers"][index]], t) for e in seeds]
                colour = colours(line % 10)
                for ax, what, scale in ((axes[r][0], "mass", 100), (axes[r][1], "entropy", 1)):
                    curve = _mean_of([chosen[what][head] for chosen, head in picked])
                    ax.plot(entry["lengths"], scale * _series(curve), marker="o", markersize=3, color=colour,
                            label=f"{model} layer {layer['layer']}")
                line += 1
            axes[r][1].plot(entry["lengths"], _series(entry["uniform_entropy"]), linestyle=":", color="gray")
            for ax in axes[r]:
                _log2_axis(ax, entry["lengths"], entry["train_length"])
        axes[r][0].set_title(f"{label}: attention on the needle (%)", fontsize=9)
        axes[r][1].set_title(f"{label}: attention entropy (nats; dotted: uniform)", fontsize=9)
    return _finish(fig, axes, stem, "context length (tokens, log scale; dashed: T)")


def plot_norms(data, models, labels, stem: Path) -> list[Path]:
    """Per format: each layer's state norm against length (log-log), a colour per model."""
    fig, axes = _grid(1, len(labels))
    colours = plt.get_cmap("tab10")
    for c, label in enumerate(labels):
        ax = axes[0][c]
        for i, model in enumerate(models):
            entry = _pooled(data, (model, "state-norm", label))
            if not entry:
                continue
            for j, layer in enumerate(entry["layers"]):
                ax.plot(entry["lengths"], _series(layer["norm"]), marker="o", markersize=2.5,
                        color=colours(i % 10), alpha=0.5 + 0.5 / (1 + j), label=model if j == 0 else None)
            _log2_axis(ax, entry["lengths"], entry["train_length"])
        ax.set_yscale("log")
        ax.set_title(f"{label}: state norm per layer", fontsize=9)
    return _finish(fig, axes, stem, "symbols read (log scale; dashed: T)")


def _finish(fig, axes, stem: Path, xlabel: str) -> list[Path]:
    handles, names = {}, []
    for ax in axes.flat:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            if name not in handles:
                handles[name] = handle
                names.append(name)
    fig.supxlabel(xlabel, fontsize=8, y=0.01)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    if names:  # below the figure, which the saved bounding box takes in
        fig.legend([handles[n] for n in names], names, loc="upper center", ncol=min(4, len(names)), fontsize=7,
                   frameon=False, bbox_to_anchor=(0.5, 0.0))
    return plots._save(fig, stem)


PLOTS = {"loss": plot_loss, "retention": plot_retention, "attention": plot_attention, "state-norm": plot_norms}


# --------------------------------------------------------------------------------------------
# the section
# --------------------------------------------------------------------------------------------
def diagnostics_section(rows: list, models: Sequence[str], accuracy_figures: Mapping[str, str], figures,
                        unlearned: Mapping[str, str] | None = None) -> tuple[list[Block], dict]:
    """The Diagnostics section's blocks and its summary for summary.json ({} without rows).
    `accuracy_figures`: format label -> the accuracy figure (relative path) each diagnostic
    explains; `figures` (analysis.report.Figures) draws and keeps each figure; `unlearned`: the
    models that did not learn the task at T, with the accuracies that say so (said once, first)."""
    if not rows:
        return [], {}
    data = grouped(rows)
    labels = list(dict.fromkeys(label for _, _, label in data))
    measures = [m for m in TITLES if any(key[1] == m for key in data)]
    models = [m for m in models if any(key[0] == m for key in data)]
    blocks: list[Block] = [("h2", "Diagnostics"), ("p",
        "Why the accuracy curves fall past T: measured on the trained models (`diagnostics:`; "
        f"{', '.join(measures)}), on the needle formats {', '.join(labels)}, pooled over seeds. Each figure "
        "below explains the accuracy curve of its format, repeated here to be read beside it.")]
    for model, why in (unlearned or {}).items():
        if model in models:
            blocks.append(("warn", f"{model} did not learn the task at T ({why}): its "
                                   "diagnostics describe a model that never retrieved the needle, not why one that "
                                   "did loses it past T."))
    for label in labels:
        if label in accuracy_figures:
            blocks.append(("figure", accuracy_figures[label], f"Accuracy against context length on {label} "
                                                               "(as above), which the diagnostics below explain"))
    summary = {}
    for measure in measures:
        key = f"diagnostics {measure}"
        figures.record(key, PLOTS[measure](data, models, labels,
                                           figures.dir / f"diagnostics_{measure.replace('-', '_')}"))
        sentences = SENTENCES[measure](data, models, labels)
        blocks += [("h3", TITLES[measure]), ("p", f"What it shows: {EXPLAINS[measure]}. Read beside the accuracy "
                                                  f"curves on {', '.join(labels)}."),
                   ("figure", figures.keys[key], f"{TITLES[measure]}, on {', '.join(labels)}")]
        blocks += [("p", sentence) for sentence in sentences]
        summary[measure] = sentences
    return blocks, {"diagnostics": summary}
