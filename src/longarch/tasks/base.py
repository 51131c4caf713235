"""The one task contract, what token tasks return and how they are scored, and the pieces the
token tasks share.

Every task, of either family, is a frozen dataclass of knobs, got by `tasks.get(name, **knobs)`,
with

    name, version                  class attributes; bump `version` when generation changes
    family                         "tokens" (symbols a model trains on from scratch: controlled
                                   studies) or "text" (a token-free description of a prompt that a
                                   tokenizer fits to a length: pretrained studies)
    knobs -> dict                  the knobs as set (part of every stored result's id)

A token task (`TokenTask` below gives the common checks and scoring) also has
    vocab_size, min_length         symbols used; the shortest length it can generate
    answer_length                  k: answer symbols per sample
    item_length                    symbols per answer item (a 7-digit number is one item)
    ordered                        whether answer items must come in order (copy) or as a set
    uses_depth                     whether `generate` places a needle at `depth`
    generate(length, n, seed, depth=None) -> Samples
    score(samples, predictions) -> (n,) per-sample scores in [0, 1]
    symbol(token) -> str           a readable name for one symbol
    unknown_share(samples)         the unknown-word share of a text haystack; None without one

A text task (`TextTask`) also has `max_new_tokens` (its generation budget) and
`build(n, seed, length, count_tokens)`: one prompt over a haystack of n units, its answers and
metadata; text/fit.py finds the n that fits a length with a model's tokenizer, and
text/scoring.py scores the decoded answers as RULER does. A task states only what is its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class Samples:
    """A batch of generated samples.

    tokens: (n, length) int64, the full input.
    answers: (n, k) int64, the k symbols a correct model emits.
    answer_positions: None when the answer follows the last token (decoded one symbol at a
        time after it); else (n, k) int64 indices into tokens: the prediction made at
        tokens[:, t] (the next-symbol logits there) must be the answer (Zoology's MQAR style,
        where queries are spread through the sequence and all are answered in one pass).
    meta: per-sample arrays whose first axis is n (length, needle_position, needle_depth, ...).
    """

    task: str
    knobs: dict
    tokens: np.ndarray
    answers: np.ndarray
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    answer_positions: np.ndarray | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def length(self) -> int:
        return self.tokens.shape[1]


def exact_match(answers: np.ndarray, predictions: np.ndarray, item_length: int = 1,
                ordered: bool = True) -> np.ndarray:
    """Per-sample fraction of answer items reproduced exactly, each item all-or-nothing, as RULER's
    string_match_all averages them. An item is `item_length` consecutive symbols. `ordered`:
    item i must be predicted item i; otherwise an item counts when it is any predicted item
    (RULER checks each reference is somewhere in the output). answers, predictions: (n, k)
    with k a multiple of item_length -> (n,)."""
    predictions = np.asarray(predictions)
    if predictions.shape != answers.shape:
        raise ValueError(f"predictions have shape {predictions.shape}, answers {answers.shape}")
    n, k = answers.shape
    if k % item_length:
        raise ValueError(f"answers of {k} symbols do not split into items of {item_length}")
    items = answers.reshape(n, k // item_length, item_length)  # (n, K, m)
    guesses = predictions.reshape(n, k // item_length, item_length)  # (n, K, m)
    if ordered:
        return (items == guesses).all(axis=2).mean(axis=1)
    same = (items[:, :, None, :] == guesses[:, None, :, :]).all(axis=3)  # (n, K answers, K guesses)
    return same.any(axis=2).mean(axis=1)


def insert_segments(haystack: np.ndarray, segments: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Insert segments into each row of a haystack, keeping the haystack's order.

    haystack (n, H); segments (n, s, m): s segments of m symbols per row; positions (n, s):
    the haystack index each segment goes before (0..H), in any order; segments at equal
    positions keep their order. Returns (n, H + s*m) and the start of each segment in it (n, s)."""
    n, H = haystack.shape
    _, s, m = segments.shape
    order = np.argsort(positions, axis=1, kind="stable")  # (n, s)
    sorted_positions = np.take_along_axis(positions, order, axis=1)
    starts_sorted = sorted_positions + np.arange(s)[None, :] * m  # (n, s): earlier segments shift later ones
    starts = np.empty_like(starts_sorted)
    np.put_along_axis(starts, order, starts_sorted, axis=1)
    out = np.empty((n, H + s * m), dtype=np.int64)
    is_segment = np.zeros((n, H + s * m), dtype=bool)
    columns = starts[:, :, None] + np.arange(m)[None, None, :]  # (n, s, m)
    rows = np.arange(n)[:, None, None]
    is_segment[rows, columns] = True
    out[rows, columns] = segments
    out[~is_segment] = haystack.reshape(-1)  # every row has exactly H haystack slots, row-major
    return out, starts


def filler_haystack(rng: np.random.Generator, n: int, H: int, kind: str, n_filler: int, pattern_length: int,
           first: int) -> np.ndarray:
    """(n, H) filler symbols first .. first + n_filler - 1: `noise` repeats one fixed pattern of
    `pattern_length` symbols, the same for every sample and seed (RULER's repeated sentence);
    `random` draws every symbol independently from `rng`."""
    if kind == "random":
        return rng.integers(0, n_filler, (n, H)) + first
    pattern = np.random.default_rng(0).integers(0, n_filler, pattern_length) + first
    return np.broadcast_to(np.resize(pattern, H), (n, H))


class TextTask:
    """What the text tasks share (mixed into frozen dataclasses): each registered name is a
    subclass with RULER's defaults for that configuration (tasks/text/__init__.py)."""

    family = "text"
    name = "text"
    version = 1          # bump when a task's prompts change, so stored cells are recomputed
    description = ""

    @property
    def knobs(self) -> dict:
        return asdict(self)


class TokenTask:
    """Checks and scoring shared by the symbol-level tasks (mixed into frozen dataclasses)."""

    family = "tokens"
    name = "task"
    version = 1
    item_length = 1
    ordered = True
    uses_depth = False

    @property
    def knobs(self) -> dict:
        return asdict(self)

    def check_integers(self, minimum: int = 1, **values) -> None:
        """Each knob an integer (not a bool) of at least `minimum`."""
        for knob, value in values.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{self.name}: {knob} must be an integer, not {value!r}")
            if value < minimum:
                raise ValueError(f"{self.name}: {knob} must be >= {minimum}, not {value}")

    def check_request(self, length: int, n: int, depth: float | None) -> None:
        """A length below the minimum, a depth outside 0-100, or a depth for a task without
        one, as one clear error."""
        if not isinstance(length, (int, np.integer)) or length < self.min_length:
            raise ValueError(f"{self.name}: length {length} is below the minimum {self.min_length}")
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"{self.name}: n must be a positive integer, not {n!r}")
        if depth is not None:
            if not self.uses_depth:
                raise ValueError(f"{self.name}: this task has no needle depth")
            if not 0 <= depth <= 100:
                raise ValueError(f"{self.name}: depth {depth} is outside 0-100")

    def unknown_share(self, samples: Samples) -> float | None:
        """The fraction of haystack symbols that are the unknown word: None, no text haystack."""
        return None

    def score(self, samples: Samples, predictions: np.ndarray) -> np.ndarray:
        return exact_match(samples.answers, predictions, item_length=self.item_length, ordered=self.ordered)
