"""Single-needle retrieval (RULER's niah_single at the symbol level).

A sample of total length L is

    haystack[:p]  KEY VALUE  haystack[p:]  QUERY KEY   -> answer: VALUE

where the haystack is filler symbols (a repeated pattern, random symbols, or English words),
the needle (KEY VALUE) sits at relative depth
p / H (H = L - 4 haystack symbols) and the model must emit VALUE after the final KEY.

Vocabulary: 0 unused (padding), 1 QUERY, then the key, value and filler alphabets, disjoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from ..base import Samples, exact_match

QUERY = 1
NEEDLE_AND_QUERY = 4  # KEY VALUE ... QUERY KEY


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

    name = "needle"
    version = 1  # bump when generation changes, so stored results are not mixed up
    answer_length = 1
    min_length = NEEDLE_AND_QUERY + 1

    def __post_init__(self):
        for knob in ("n_keys", "n_values", "n_filler", "pattern_length"):
            value = getattr(self, knob)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"needle: {knob} must be an integer, not {value!r}")
        if min(self.n_keys, self.n_values, self.n_filler, self.pattern_length) < 1:
            raise ValueError("needle: n_keys, n_values, n_filler and pattern_length must be >= 1")
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
        return knobs

    @property
    def vocab_size(self) -> int:
        return 2 + self.n_keys + self.n_values + self.n_filler

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
        H = length - NEEDLE_AND_QUERY
        keys = rng.integers(0, self.n_keys, n) + self._key0  # (n,)
        values = rng.integers(0, self.n_values, n) + self._value0  # (n,)
        fraction = rng.random(n) if depth is None else np.full(n, depth / 100.0)
        insert_at = np.rint(fraction * H).astype(np.int64)  # (n,) in [0, H]
        haystack = self._haystack(rng, n, H)  # (n, H)

        columns = np.arange(H + 2)  # haystack plus the two needle symbols
        source = np.where(columns[None, :] < insert_at[:, None], columns, columns - 2)  # (n, H+2)
        body = np.take_along_axis(haystack, np.clip(source, 0, max(H - 1, 0)), axis=1) if H else \
            np.zeros((n, 2), dtype=np.int64)
        body[columns[None, :] == insert_at[:, None]] = keys
        body[columns[None, :] == insert_at[:, None] + 1] = values
        tokens = np.concatenate([body, np.full((n, 1), QUERY), keys[:, None]], axis=1).astype(np.int64)
        meta = {
            "length": np.full(n, length),
            "needle_position": insert_at,
            "needle_depth": 100.0 * insert_at / max(H, 1),
        }
        return Samples(self.name, self.knobs, tokens, values[:, None].astype(np.int64), meta)

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
        return exact_match(samples.answers, predictions)

    def symbol(self, token: int) -> str:
        """A readable name for one symbol."""
        if token == QUERY:
            return "QUERY"
        if self._key0 <= token < self._value0:
            return f"k{token - self._key0}"
        if self._value0 <= token < self._filler0:
            return f"v{token - self._value0}"
        if self._filler0 <= token < self.vocab_size:
            if self.haystack == "text":
                return self._words().word(token - self._filler0)
            return f"f{token - self._filler0}"
        return f"<{token}>"
