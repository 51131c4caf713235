"""What every task returns and how it is scored."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Samples:
    """A batch of generated samples.

    tokens: (n, length) int64, the full input; the answer follows its last token.
    answers: (n, k) int64, the k symbols a correct model emits next, in order.
    meta: per-sample arrays of length n (length, needle_position, needle_depth, ...).
    """

    task: str
    knobs: dict
    tokens: np.ndarray
    answers: np.ndarray
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def length(self) -> int:
        return self.tokens.shape[1]


def exact_match(answers: np.ndarray, predictions: np.ndarray, item_length: int = 1) -> np.ndarray:
    """Per-sample fraction of answer items reproduced exactly, each item all-or-nothing, as RULER's
    string_match_all averages them. An item is `item_length` consecutive symbols (a 7-digit
    number is one item). answers, predictions: (n, k) with k a multiple of item_length -> (n,)."""
    predictions = np.asarray(predictions)
    if predictions.shape != answers.shape:
        raise ValueError(f"predictions have shape {predictions.shape}, answers {answers.shape}")
    n, k = answers.shape
    if k % item_length:
        raise ValueError(f"answers of {k} symbols do not split into items of {item_length}")
    correct = (predictions == answers).reshape(n, k // item_length, item_length)
    return correct.all(axis=2).mean(axis=1)
