"""Whether a trained model learned its task at T: the one rule every reader of results applies.

A result past T is read only from a model that learned its task at T, and "learned" is judged
on the evaluation itself: the model's accuracy at its training length T on an evaluated label
(a task or haystack format), pooled over seeds and depths, the same cells its figure and tables
show at T, must reach `analysis.learned_bar_fraction`.

- gate 'label' (`AnalysisSettings.gate`): each label is judged on its own, and a model is read on
  the labels it learned;
- gate 'model': a model is read only when every label stored at its T reaches the bar.

The final training check (held-out samples at T, at the depths the recipe draws, which need not be
the evaluated ones) decides only when nothing is stored at T; when that is unknown too (a store
without its model rows), the model is read. The report, the claims, `compare` and the
interventions table all call this module, so none of them can call a model learned that another
calls not learned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .measures import pooled_mean
from .stats import Cell


def accuracy_at(cells: Iterable[Cell], model: str, label: str, length: int) -> float:
    """Accuracy of one model on one label at one length, pooled over seeds and depths; nan if none."""
    return pooled_mean(c for c in cells if c.model == model and c.task == label and c.length == length)


@dataclass(frozen=True)
class AtT:
    """A model's accuracy at T on each label judged (nan: nothing stored there), and its training
    check's accuracy (nan: unknown)."""

    accuracy: dict[str, float]
    training: float

    @property
    def stored(self) -> dict[str, float]:
        """The labels with cells stored at T."""
        return {label: a for label, a in self.accuracy.items() if not math.isnan(a)}

    def label_learned(self, label: str, bar: float) -> bool:
        """Gate 'label': this label's accuracy at T reaches the bar (nothing stored: not learned)."""
        return self.accuracy.get(label, math.nan) >= bar

    def learned(self, bar: float) -> bool:
        """Gate 'model': every label stored at T reaches the bar; with none stored, the training
        check decides, and an unknown one counts as learned."""
        if self.stored:
            return all(a >= bar for a in self.stored.values())
        return math.isnan(self.training) or self.training >= bar

    def below(self, bar: float) -> list[tuple[str, float]]:
        """The labels stored at T that fall short of the bar, with their accuracy."""
        return [(label, a) for label, a in self.stored.items() if a < bar]

    def worst(self, bar: float) -> str:
        """The short form, for a table cell: the label furthest below the bar ('text 49.8%'), or
        the training check ('check 75.5%') with nothing evaluated at T."""
        short = self.below(bar)
        if short:
            label, a = min(short, key=lambda item: item[1])
            return f"{label} {100 * a:.1f}%"
        return f"check {100 * self.training:.1f}%"

    def describe(self, bar: float) -> str:
        """Why the model is below the bar, in words, to be followed by where ("at T=64"): '90.0% on
        noise and 49.8% on text' or, with nothing evaluated at T, its training check."""
        short = self.below(bar)
        if short:
            parts = [f"{100 * a:.1f}% on {label}" for label, a in short]
            return ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
        return f"{100 * self.training:.1f}% on its final training check (nothing evaluated)"


def at_t(cells: Iterable[Cell], model: str, train_length: int, labels: Sequence[str],
         training: float = math.nan) -> AtT:
    """`model`'s accuracy at `train_length` on each of `labels`, pooled over seeds and depths."""
    mine = [c for c in cells if c.model == model and c.length == train_length]
    return AtT({label: accuracy_at(mine, model, label, train_length) for label in labels}, float(training))
