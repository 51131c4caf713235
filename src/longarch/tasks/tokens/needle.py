"""Single-needle retrieval (RULER's niah_single at the symbol level).

A sample of total length L is

    haystack[:p]  KEY VALUE  haystack[p:]  QUERY KEY   -> answer: VALUE

where the haystack is filler symbols (a repeated pattern, random symbols, or English words),
the needle (KEY VALUE) sits at relative depth p / H (H = L minus the needle and the query)
and the model must emit VALUE after the final KEY. A key or a value is one symbol of its own
alphabet (`symbol`), or, as in RULER, a `number` of `number_length` digits or a `uuid` of 32
hex digits; a multi-symbol value is scored all-or-nothing.

Vocabulary: 0 unused (padding), 1 QUERY, then the key, value and filler alphabets, disjoint,
then the 16 hex digits 0-9a-f when a format uses them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from ..base import Samples, exact_match

QUERY = 1
FORMATS = ("symbol", "number", "uuid")
UUID_LENGTH = 32


@dataclass(frozen=True)
class NeedleTask:
    """Knobs: alphabet sizes, and the haystack: `noise` repeats one fixed filler pattern
    (RULER's repeated-sentence noise), `random` draws every filler symbol independently, `text`
    is running English: consecutive words of a corpus (`corpus`: a UTF-8 file, or None for the
    help topics that ship with Python), its n_filler - 1 most frequent words and one unknown-word
    symbol making up the filler alphabet."""

    n_keys: int = 16
    n_values: int = 16
    n_filler: int = 16
    haystack: Literal["noise", "random", "text"] = "noise"
    pattern_length: int = 8
    corpus: str | None = None  # for haystack="text"
    key: Literal["symbol", "number", "uuid"] = "symbol"
    value: Literal["symbol", "number", "uuid"] = "symbol"
    number_length: int = 7

    name = "needle"
    version = 1  # bump when generation changes, so stored results are not mixed up

    def __post_init__(self):
        for knob in ("n_keys", "n_values", "n_filler", "pattern_length", "number_length"):
            value = getattr(self, knob)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"needle: {knob} must be an integer, not {value!r}")
        if min(self.n_keys, self.n_values, self.n_filler, self.pattern_length, self.number_length) < 1:
            raise ValueError("needle: n_keys, n_values, n_filler, pattern_length and number_length must be >= 1")
        for knob in ("key", "value"):
            if getattr(self, knob) not in FORMATS:
                raise ValueError(f"needle: {knob} must be one of {', '.join(FORMATS)}, not {getattr(self, knob)!r}")
        if self.haystack not in ("noise", "random", "text"):
            raise ValueError(f"needle: haystack must be 'noise', 'random' or 'text', not {self.haystack!r}")
        if self.haystack == "text":
            if self.n_filler < 2:
                raise ValueError("needle: a text haystack needs n_filler >= 2 (words plus the unknown word)")
            self._words()  # a missing or unreadable corpus fails here, before any work
        elif self.corpus is not None:
            raise ValueError(f"needle: corpus is only used with haystack='text', not {self.haystack!r}")

    @property
    def knobs(self) -> dict:
        """The knobs as set; `corpus` only when given, so the ids of results stored before it
        existed stay the same."""
        knobs = asdict(self)
        if knobs["corpus"] is None:
            del knobs["corpus"]
        if self.key == self.value == "symbol":
            for knob in ("key", "value", "number_length"):
                del knobs[knob]
        return knobs

    def _format_length(self, fmt: str) -> int:
        return {"symbol": 1, "number": self.number_length, "uuid": UUID_LENGTH}[fmt]

    @property
    def answer_length(self) -> int:
        return self._format_length(self.value)

    @property
    def min_length(self) -> int:
        """The needle, QUERY and the key again, and at least one haystack symbol."""
        return 2 * self._format_length(self.key) + self.answer_length + 2

    @property
    def _hex0(self) -> int:
        return 2 + self.n_keys + self.n_values + self.n_filler

    @property
    def vocab_size(self) -> int:
        uses_digits = self.key != "symbol" or self.value != "symbol"
        return self._hex0 + (16 if uses_digits else 0)

    @property
    def _key0(self) -> int:
        return 2

    @property
    def _value0(self) -> int:
        return 2 + self.n_keys

    @property
    def _filler0(self) -> int:
        return 2 + self.n_keys + self.n_values

    def generate(self, length: int, n: int, seed: int, depth: float | None = None) -> Samples:
        """n samples of exactly `length` symbols; the needle at `depth` percent (0 = first
        symbol, 100 = just before the query), or at a uniformly random depth when None."""
        if length < self.min_length:
            raise ValueError(f"needle: length {length} is below the minimum {self.min_length}")
        if depth is not None and not 0 <= depth <= 100:
            raise ValueError(f"needle: depth {depth} is outside 0-100")
        rng = np.random.default_rng(seed)
        keys = self._draw(rng, n, self.key, self.n_keys, self._key0)  # (n, key symbols)
        values = self._draw(rng, n, self.value, self.n_values, self._value0)  # (n, value symbols)
        needle = np.concatenate([keys, values], axis=1)  # (n, m)
        m = needle.shape[1]
        H = length - m - 1 - keys.shape[1]  # haystack symbols
        fraction = rng.random(n) if depth is None else np.full(n, depth / 100.0)
        insert_at = np.rint(fraction * H).astype(np.int64)  # (n,) in [0, H]
        haystack = self._haystack(rng, n, H)  # (n, H)

        columns = np.arange(H + m)  # the haystack with the needle inserted
        source = np.where(columns[None, :] < insert_at[:, None], columns, columns - m)  # (n, H+m)
        body = np.take_along_axis(haystack, np.clip(source, 0, H - 1), axis=1)
        np.put_along_axis(body, insert_at[:, None] + np.arange(m), needle, axis=1)
        tokens = np.concatenate([body, np.full((n, 1), QUERY), keys], axis=1).astype(np.int64)
        meta = {
            "length": np.full(n, length),
            "needle_position": insert_at,
            "needle_depth": 100.0 * insert_at / H,
        }
        return Samples(self.name, self.knobs, tokens, values.astype(np.int64), meta)

    def _draw(self, rng: np.random.Generator, n: int, fmt: str, alphabet: int, first: int) -> np.ndarray:
        """n keys or values in a format: (n, 1) symbols of their own alphabet, or digit strings."""
        if fmt == "symbol":
            return (rng.integers(0, alphabet, n) + first)[:, None]
        base = 10 if fmt == "number" else 16
        return rng.integers(0, base, (n, self._format_length(fmt))) + self._hex0

    def _words(self):
        from ..corpus import load_corpus

        return load_corpus(self.corpus, n_words=self.n_filler - 1)

    def _haystack(self, rng: np.random.Generator, n: int, H: int) -> np.ndarray:
        if self.haystack == "random":
            return rng.integers(0, self.n_filler, (n, H)) + self._filler0
        if self.haystack == "text":
            return self._words().spans(rng, n, H) + self._filler0
        # One fixed pattern for every sample and seed, like a repeated sentence.
        pattern = np.random.default_rng(0).integers(0, self.n_filler, self.pattern_length) + self._filler0
        return np.broadcast_to(np.resize(pattern, H), (n, H))

    def score(self, samples: Samples, predictions: np.ndarray) -> np.ndarray:
        """1 when every symbol of the value is right, else 0: the value is one answer item."""
        return exact_match(samples.answers, predictions, item_length=self.answer_length)

    def symbol(self, token: int) -> str:
        """A readable name for one symbol."""
        if token == QUERY:
            return "QUERY"
        if self._key0 <= token < self._value0:
            return f"k{token - self._key0}"
        if self._value0 <= token < self._filler0:
            return f"v{token - self._value0}"
        if self._hex0 <= token < self.vocab_size:
            return "0123456789abcdef"[token - self._hex0]
        if self._filler0 <= token < self._hex0:
            if self.haystack == "text":
                return self._words().word(token - self._filler0)
            return f"f{token - self._filler0}"
        return f"<{token}>"
