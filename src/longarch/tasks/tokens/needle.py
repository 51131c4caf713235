"""Needle retrieval, RULER's NIAH family at the symbol level: single, multi-key, multi-value
and multi-query needles.

A sample of total length L is a body of haystack with S = needle_keys * values_per_key needles
(KEY VALUE) inserted whole, then the tail, one QUERY KEY per queried key:

    haystack  K1 V1  haystack  K2 V2  ...  K1 V1'  haystack   QUERY K1 QUERY K3 ...
    '---------------- body: L - queries * (1 + key length) ----'   -> answer: V1 V1' V3 ...

There are `needle_keys` distinct keys, each with `values_per_key` needles of its own (all S values
in a sample are distinct); the tail queries the first `queries` of them (the keys are random, so
they are a random choice). The correct answer is, for each queried key in tail order, all its
values in the order they stand in the body: queries * values_per_key items of one value each,
scored as a set (RULER's string_match_all). A key or a value is one symbol of its own alphabet
(`symbol`), a `number` of `number_length` digits or a `uuid` of `uuid_length` hex digits (32,
as a real UUID written without dashes).

Depth: needle 0 (a needle of the first queried key; meta needle_position, and needle_positions
(n, S) for all, needle i * values_per_key + j holding key i's value j, needle_queried marking
the queried ones) starts at round(depth / 100 * span), span = body
length - needle length (0 = the first symbol, 100 = ending right before the tail), moved to
the nearer edge when that falls inside another needle or, for the `needles` haystack, between
two of its needles: it starts within m/2 + 1/2 symbols of depth / 100 * span (m = needle
length; meta needle_depth = 100 * start / span). depth=None: uniformly random.
The other needles go at uniformly random haystack positions.

Haystacks: `noise` repeats one fixed filler pattern, `random` draws every filler symbol,
`text` is running English (see NeedleTask), `needles` is distractor KEY VALUE needles whose keys
are never a key of the sample (values random), after H mod (needle length) filler symbols, so
their number grows with the length (about 14 at 64 with 3-digit values, about 1,000 at 4,096).
`distractors` = D > 0 (noise, random or text haystacks) places exactly D such distractor needles
at uniformly random points of the haystack at every length, like the other needles: the length
and the number of distractors then vary apart.

Filler alphabet (n_filler): 16 symbols by default; for `text`, n_filler - 1 words of the corpus
(the most frequent) plus one unknown-word symbol standing for every other word, and by default
the smallest such vocabulary whose unknown words are at most 3% of the whole corpus
(TEXT_UNKNOWN_SHARE, `corpus.words_for_unknown_share`): 1,771 words plus the unknown symbol on
the default corpus, which keeps unknown words under 5% of the haystack of a batch of 64 samples
at any length from 64 to 4096 (the share of one batch varies by about a point around the
corpus's at short lengths). `unknown_share(samples)` measures it. The default is resolved when
the task is made, so `knobs` (and stored ids) hold the number: noise, random and needles
haystacks keep n_filler=16 and their ids; an explicit n_filler keeps its meaning.

Vocabulary: 0 unused (padding), 1 QUERY, then the key, value and filler alphabets, disjoint,
then the 16 hex digits 0-9a-f when a format uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..base import Samples, TokenTask, filler_haystack, insert_segments

QUERY = 1
FORMATS = ("symbol", "number", "uuid")
HAYSTACKS = ("noise", "random", "text", "needles")
UUID_LENGTH = 32
COUNTS = {"needle_keys": 1, "values_per_key": 1, "queries": 1}  # knobs kept out of `knobs` at these
FILLER = 16  # the default filler alphabet of the symbol haystacks (noise, random, needles)
TEXT_UNKNOWN_SHARE = 0.03  # the default text vocabulary leaves at most this share of the corpus unknown


def _put_in(row: np.ndarray, item: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Each row of (n, s) with its item (n,) put in at index `at` (n,) -> (n, s+1)."""
    n, s = row.shape
    if s == 0:
        return item[:, None]
    slot = np.arange(s + 1)[None, :]
    left = np.take_along_axis(row, np.minimum(slot, s - 1), axis=1)  # the row's entry at slot ...
    right = np.take_along_axis(row, np.maximum(slot - 1, 0), axis=1)  # ... or at the slot before
    return np.where(slot < at[:, None], left, np.where(slot == at[:, None], item[:, None], right))


@dataclass(frozen=True)
class NeedleTask(TokenTask):
    """Knobs: alphabet sizes; the haystack (`noise` is RULER's repeated sentence, `text` is
    consecutive words of a corpus: `corpus` a UTF-8 file, or None for the help topics that ship
    with Python, its n_filler - 1 most frequent words and one unknown-word symbol making up the
    filler alphabet; n_filler None: 16, or for text the vocabulary of the module docstring's
    rule); key and value formats; needle_keys (distinct keys with needles: RULER's
    num_needle_k), values_per_key (num_needle_v) and queries (keys queried: num_needle_q);
    distractors, a fixed number of distractor needles in a noise, random or text haystack."""

    n_keys: int = 16
    n_values: int = 16
    n_filler: int | None = None  # resolved when made: FILLER, or for text see TEXT_UNKNOWN_SHARE
    haystack: Literal["noise", "random", "text", "needles"] = "noise"
    pattern_length: int = 8
    corpus: str | None = None  # for haystack="text"
    key: Literal["symbol", "number", "uuid"] = "symbol"
    value: Literal["symbol", "number", "uuid"] = "symbol"
    number_length: int = 7
    uuid_length: int = UUID_LENGTH
    needle_keys: int = 1
    values_per_key: int = 1
    queries: int = 1
    distractors: int = 0  # distractor needles at random points (not with haystack="needles")

    name = "needle"
    version = 1  # bump when generation changes, so stored results are not mixed up
    ordered = False
    uses_depth = True

    def __post_init__(self):
        if self.n_filler is None:  # frozen: set once, here, so knobs and ids hold the number
            object.__setattr__(self, "n_filler", self._default_filler())
        self.check_integers(n_keys=self.n_keys, n_values=self.n_values, n_filler=self.n_filler,
                            pattern_length=self.pattern_length, number_length=self.number_length,
                            uuid_length=self.uuid_length,
                            needle_keys=self.needle_keys, values_per_key=self.values_per_key, queries=self.queries)
        self.check_integers(minimum=0, distractors=self.distractors)
        for knob in ("key", "value"):
            if getattr(self, knob) not in FORMATS:
                raise ValueError(f"needle: {knob} must be one of {', '.join(FORMATS)}, not {getattr(self, knob)!r}")
        if self.haystack not in HAYSTACKS:
            raise ValueError(f"needle: haystack must be one of {', '.join(HAYSTACKS)}, not {self.haystack!r}")
        if self.queries > self.needle_keys:
            raise ValueError(f"needle: queries ({self.queries}) must be <= needle_keys ({self.needle_keys})")
        if self.distractors and self.haystack == "needles":
            raise ValueError("needle: distractors is for the noise, random and text haystacks; a needles "
                             "haystack is all distractors")
        distracting = self.haystack == "needles" or self.distractors > 0
        keys = self.needle_keys + distracting  # distractors need one more key
        if keys > self._space(self.key, self.n_keys):
            extra = " plus distractor keys" if distracting else ""
            raise ValueError(f"needle: {self.needle_keys} distinct keys{extra} need {keys} keys, but key="
                             f"{self.key!r} has {self._space(self.key, self.n_keys)} (raise n_keys or number_length)")
        values = self.needle_keys * self.values_per_key
        if values > self._space(self.value, self.n_values):
            raise ValueError(f"needle: {values} distinct values do not fit value={self.value!r}, which has "
                             f"{self._space(self.value, self.n_values)} (raise n_values or number_length)")
        if self.haystack == "text":
            if self.n_filler < 2:
                raise ValueError("needle: a text haystack needs n_filler >= 2 (words plus the unknown word)")
            self._words()  # a missing or unreadable corpus fails here, before any work
        elif self.corpus is not None:
            raise ValueError(f"needle: corpus is only used with haystack='text', not {self.haystack!r}")

    def _default_filler(self) -> int:
        if self.haystack != "text":
            return FILLER
        from ..corpus import words_for_unknown_share

        return words_for_unknown_share(self.corpus, TEXT_UNKNOWN_SHARE) + 1  # the words and the unknown word

    def unknown_share(self, samples: Samples) -> float | None:
        """The fraction of the haystack symbols of `samples` (generated by this task) that are the
        unknown word; None unless the haystack is text."""
        if self.haystack != "text":
            return None
        haystack = (samples.tokens >= self._filler0) & (samples.tokens < self._hex0)  # needles and tail are not filler
        unknown = samples.tokens == self._filler0 + self._words().unknown
        return float(unknown.sum() / max(int(haystack.sum()), 1))

    @property
    def knobs(self) -> dict:
        """The knobs as set, less those added later while at their defaults (`corpus`, the
        formats for symbol keys and values, the counts), so older results keep their ids."""
        knobs = super().knobs
        if knobs["corpus"] is None:
            del knobs["corpus"]
        if self.key == self.value == "symbol":
            for knob in ("key", "value", "number_length"):
                del knobs[knob]
        if knobs["uuid_length"] == UUID_LENGTH:
            del knobs["uuid_length"]
        for knob, default in COUNTS.items():
            if knobs[knob] == default:
                del knobs[knob]
        if not knobs["distractors"]:
            del knobs["distractors"]
        return knobs

    def _format_length(self, fmt: str) -> int:
        return {"symbol": 1, "number": self.number_length, "uuid": self.uuid_length}[fmt]

    def _space(self, fmt: str, alphabet: int) -> int:
        """How many different keys or values a format can write."""
        return {"symbol": alphabet, "number": 10 ** self.number_length, "uuid": 16 ** self.uuid_length}[fmt]

    @property
    def item_length(self) -> int:
        return self._format_length(self.value)

    @property
    def answer_length(self) -> int:
        return self.queries * self.values_per_key * self.item_length

    @property
    def _needle_length(self) -> int:
        return self._format_length(self.key) + self._format_length(self.value)

    @property
    def _tail_length(self) -> int:
        return self.queries * (1 + self._format_length(self.key))

    @property
    def needle_length(self) -> int:
        """Symbols of one needle (KEY VALUE), each starting at a meta `needle_positions` entry."""
        return self._needle_length

    @property
    def tail_length(self) -> int:
        """Symbols of the tail (QUERY KEY per queried key) that ends every sample."""
        return self._tail_length

    @property
    def min_length(self) -> int:
        """The needles, any distractors, the tail and at least one haystack symbol."""
        needles = self.needle_keys * self.values_per_key + self.distractors
        return needles * self._needle_length + self._tail_length + 1

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
        """n samples of exactly `length` symbols; the first queried needle at `depth` percent,
        or at a uniformly random depth when None (see the module docstring)."""
        self.check_request(length, n, depth)
        rng = np.random.default_rng(seed)
        K, V, Q, D = self.needle_keys, self.values_per_key, self.queries, self.distractors
        S, m = K * V, self._needle_length
        keys = self._draw(rng, n, self.key, self.n_keys, self._key0, K)  # (n, K, k)
        values = self._draw(rng, n, self.value, self.n_values, self._value0, S)  # (n, S, v): needle i*V+j
        needles = np.concatenate([np.repeat(keys, V, axis=1), values], axis=2)  # (n, S, m): key i, value j
        span = length - self._tail_length - m  # the last start of a needle that ends before the tail
        H = span - (S + D - 1) * m  # haystack symbols
        fraction = rng.random(n) if depth is None else np.full(n, depth / 100.0)
        target = np.rint(fraction * span).astype(np.int64)  # (n,) wanted start of needle 0
        haystack, points = self._haystack(rng, n, H, keys)  # (n, H), the haystack indices a needle may go before

        # The other needles (then any distractors: needle S + d) at random points; needle 0 at the
        # nearest start outside them.
        drawn = points[rng.integers(0, len(points), (n, S + D - 1))] if S + D > 1 else np.zeros((n, 0), np.int64)
        if D:
            needles = np.concatenate([needles, self._distractor_needles(rng, keys, D)], axis=1)  # (n, S+D, m)
        by_point = np.argsort(drawn, axis=1, kind="stable")  # (n, S+D-1)
        others = np.take_along_axis(drawn, by_point, axis=1)  # (n, S+D-1) sorted haystack points
        starts = others + m * np.arange(S + D - 1)  # (n, S+D-1): their starts in the body without needle 0
        offset = target[:, None] - starts
        inside = (offset > 0) & (offset < m)  # (n, S+D-1): at most one per row
        target = target + np.where(inside, np.where(2 * offset <= m, -offset, m - offset), 0).sum(axis=1)
        rank = (starts < target[:, None]).sum(axis=1)  # (n,) other needles before needle 0
        wanted = target - m * rank  # (n,) its haystack point, snapped to the nearest allowed one
        above = np.clip(np.searchsorted(points, wanted), 0, len(points) - 1)
        below = points[np.maximum(above - 1, 0)]
        point = np.where(wanted - below < points[above] - wanted, below, points[above])  # (n,)

        # Needles in body order: the others by point with needle 0 at its rank, then insert them.
        order = _put_in(by_point + 1, np.zeros(n, np.int64), rank)  # (n, S+D) needle index in body order
        body, body_starts = insert_segments(haystack, np.take_along_axis(needles, order[:, :, None], axis=1),
                                            _put_in(others, point, rank))
        position = np.empty_like(body_starts)  # (n, S+D) start of needle i*V + j, then the distractors
        np.put_along_axis(position, order, body_starts, axis=1)
        position = position[:, :S]

        queried = keys[:, :Q]  # (n, Q, k)
        tail = np.concatenate([np.full((n, Q, 1), QUERY), queried], axis=2).reshape(n, -1)
        tokens = np.concatenate([body, tail], axis=1).astype(np.int64)
        in_body = np.argsort(position[:, :Q * V].reshape(n, Q, V), axis=2)  # (n, Q, V)
        answers = np.take_along_axis(values[:, :Q * V].reshape(n, Q, V, -1), in_body[..., None], axis=2)
        meta = {
            "length": np.full(n, length),
            "needle_position": position[:, 0],
            "needle_depth": 100.0 * position[:, 0] / span,
            "needle_positions": position,
            "needle_depths": 100.0 * position / span,
            "needle_queried": np.broadcast_to(np.arange(S) < Q * V, (n, S)).copy(),
        }
        if self.haystack == "needles" or D:
            meta["distractors"] = np.full(n, H // m if self.haystack == "needles" else D)
        return Samples(self.name, self.knobs, tokens, answers.reshape(n, -1).astype(np.int64), meta)

    def _draw(self, rng: np.random.Generator, n: int, fmt: str, alphabet: int, first: int, count: int) -> np.ndarray:
        """count distinct keys or values per sample: (n, count, 1) symbols of their own
        alphabet, or (n, count, digits) digit strings."""
        if fmt == "symbol":
            if count == 1:
                return (rng.integers(0, alphabet, n) + first)[:, None, None]
            return np.argsort(rng.random((n, alphabet)), axis=1)[:, :count, None] + first
        base, digits = (10 if fmt == "number" else 16), self._format_length(fmt)
        if count == 1:
            return (rng.integers(0, base, (n, digits)) + self._hex0)[:, None, :]
        drawn = rng.integers(0, base, (n, count, digits)) + self._hex0
        while True:  # redraw any repeat of an earlier one in its sample
            repeat = np.zeros((n, count), dtype=bool)
            for i in range(1, count):
                repeat[:, i] = (drawn[:, :i] == drawn[:, i:i + 1]).all(axis=2).any(axis=1)
            if not repeat.any():
                return drawn
            drawn[repeat] = rng.integers(0, base, (int(repeat.sum()), digits)) + self._hex0

    def _distractor_needles(self, rng: np.random.Generator, keys: np.ndarray, D: int) -> np.ndarray:
        """(n, D, m) KEY VALUE needles whose keys are none of the sample's keys (n, K, k), with
        random values."""
        n = len(keys)
        if self.value == "symbol":
            values = rng.integers(0, self.n_values, (n, D, 1)) + self._value0
        else:
            values = rng.integers(0, 10 if self.value == "number" else 16, (n, D, self.item_length)) + self._hex0
        return np.concatenate([self._distractor_keys(rng, keys, D), values], axis=2)

    def _distractor_keys(self, rng: np.random.Generator, keys: np.ndarray, D: int) -> np.ndarray:
        """(n, D, k) random keys, none equal to any of the sample's keys (n, K, k)."""
        n, K, digits = keys.shape
        if self.key == "symbol":
            drawn = rng.integers(0, self.n_keys - K, (n, D))  # the d-th key not in the sample
            for taken in np.sort(keys[:, :, 0] - self._key0, axis=1).T:  # ascending, (n,) each
                drawn += drawn >= taken[:, None]
            return drawn[:, :, None] + self._key0
        base = 10 if self.key == "number" else 16
        drawn = rng.integers(0, base, (n, D, digits)) + self._hex0
        while True:
            clash = np.zeros((n, D), dtype=bool)
            for i in range(K):
                clash |= (drawn == keys[:, i:i + 1]).all(axis=2)
            if not clash.any():
                return drawn
            drawn[clash] = rng.integers(0, base, (int(clash.sum()), digits)) + self._hex0

    def _words(self):
        from ..corpus import load_corpus

        return load_corpus(self.corpus, n_words=self.n_filler - 1)

    def _haystack(self, rng: np.random.Generator, n: int, H: int, keys: np.ndarray):
        """(n, H) filler, and the haystack indices (sorted) before which a needle may go."""
        anywhere = np.arange(H + 1)
        if self.haystack == "text":
            return self._words().spans(rng, n, H) + self._filler0, anywhere
        if self.haystack in ("noise", "random"):
            return filler_haystack(rng, n, H, self.haystack, self.n_filler, self.pattern_length, self._filler0), anywhere
        pattern = filler_haystack(rng, n, self.pattern_length, "noise", self.n_filler, self.pattern_length, self._filler0)[0]
        m = self._needle_length
        D, r = divmod(H, m)  # D distractor needles after r filler symbols
        distractors = self._distractor_needles(rng, keys, D).reshape(n, D * m)
        filler = np.broadcast_to(np.resize(pattern, r), (n, r))
        points = r + m * np.arange(D + 1)  # before or after each distractor
        return np.concatenate([filler, distractors], axis=1), (np.r_[0, points] if r else points)

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
