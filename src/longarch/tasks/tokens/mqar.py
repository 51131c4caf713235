"""Multi-query associative recall (MQAR), as in Zoology (Arora, Eyuboglu et al., 2023).

A sample of total length L is P key-value pairs followed by a query region of R = L - 2P symbols:

    k1 v1 k2 v2 ... kP vP   _ _ kq _ _ _ kq' _ ... _      (_ = FILLER)
    '----- 2P pairs -----'  '------ query region (R) ------'

The P keys are distinct symbols of the key alphabet and the P values distinct symbols of the
value alphabet (as in Zoology). The region is cut into floor(R / 2) slots of two symbols; each
of n_queries randomly chosen pairs has its key placed at the first symbol of its own randomly
chosen slot (Zoology's random even offsets, here uniform over the slots), every other symbol is
FILLER (plus one trailing FILLER when R is odd). So a query is always followed by FILLER, never
by its value.

The correct answer is, for every query key in order of position, its value, predicted AT the
query: `answer_positions[:, j]` is the index of the j-th query key in tokens and the next-symbol
prediction there must be `answers[:, j]`; all queries are answered in one forward pass. Each
query is one item scored all-or-nothing, in order; the score is the fraction right.

At longer lengths only the query region grows: the pairs stay at the start and the queries
spread uniformly over a longer region, so the key-to-query distance (meta "distance") grows
with the length; the number of pairs and queries does not.

Vocabulary: 0 unused (padding), 1 FILLER, then the key and value alphabets (disjoint). Zoology
fills with 0 or random symbols of the whole vocabulary; a dedicated FILLER keeps 0 for padding
and keeps every key or value symbol in the region a query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..base import Samples, TokenTask

FILLER = 1


@dataclass(frozen=True)
class MQARTask(TokenTask):
    """Knobs: n_pairs (P), n_queries (pairs queried, None = all P), and the sizes of the key
    and value alphabets."""

    n_pairs: int = 4
    n_queries: int | None = None  # None: every pair is queried once
    n_keys: int = 32
    n_values: int = 32

    name = "mqar"
    version = 1
    item_length = 1
    ordered = True
    uses_depth = False

    def __post_init__(self):
        self.check_integers(n_pairs=self.n_pairs, n_keys=self.n_keys, n_values=self.n_values)
        if self.n_queries is not None:
            self.check_integers(n_queries=self.n_queries)
        if self.queries > self.n_pairs:
            raise ValueError(f"mqar: n_queries ({self.queries}) must be <= n_pairs ({self.n_pairs})")
        for knob in ("n_keys", "n_values"):
            if getattr(self, knob) < self.n_pairs:
                raise ValueError(f"mqar: {knob} ({getattr(self, knob)}) must be >= n_pairs ({self.n_pairs}): "
                                 "the keys of a sample are distinct, and so are its values")

    @property
    def queries(self) -> int:
        """The number of queries (n_queries, or n_pairs when it is None)."""
        return self.n_pairs if self.n_queries is None else self.n_queries

    @property
    def _key0(self) -> int:
        return 2

    @property
    def _value0(self) -> int:
        return 2 + self.n_keys

    @property
    def vocab_size(self) -> int:
        return 2 + self.n_keys + self.n_values

    @property
    def min_length(self) -> int:
        """The pairs, and one two-symbol slot (query, FILLER) per query."""
        return 2 * self.n_pairs + 2 * self.queries

    @property
    def answer_length(self) -> int:
        return self.queries

    def generate(self, length: int, n: int, seed: int, depth: float | None = None) -> Samples:
        """n samples of exactly `length` symbols; answers (n, n_queries) with their positions."""
        self.check_request(length, n, depth)
        rng = np.random.default_rng(seed)
        P, Q = self.n_pairs, self.queries
        keys = np.argsort(rng.random((n, self.n_keys)), axis=1)[:, :P] + self._key0  # (n, P) distinct
        values = np.argsort(rng.random((n, self.n_values)), axis=1)[:, :P] + self._value0  # (n, P) distinct
        asked = np.argsort(rng.random((n, P)), axis=1)[:, :Q]  # (n, Q): pair of each query, random order
        slots = (length - 2 * P) // 2
        chosen = np.argpartition(rng.random((n, slots)), Q - 1, axis=1)[:, :Q] if Q < slots \
            else np.broadcast_to(np.arange(slots), (n, slots))  # (n, Q) distinct slots
        query_position = 2 * P + 2 * np.sort(chosen, axis=1)  # (n, Q) increasing

        tokens = np.full((n, length), FILLER, dtype=np.int64)
        tokens[:, 0:2 * P:2] = keys
        tokens[:, 1:2 * P:2] = values
        np.put_along_axis(tokens, query_position, np.take_along_axis(keys, asked, axis=1), axis=1)
        answers = np.take_along_axis(values, asked, axis=1).astype(np.int64)  # (n, Q)
        key_position = 2 * asked  # (n, Q): where the queried key sits in the pairs
        meta = {
            "length": np.full(n, length),
            "key_position": key_position,
            "query_position": query_position,
            "distance": query_position - key_position,  # (n, Q) symbols from key to query
        }
        return Samples(self.name, self.knobs, tokens, answers, meta, answer_positions=query_position.astype(np.int64))

    def symbol(self, token: int) -> str:
        """A readable name for one symbol."""
        if token == FILLER:
            return "_"
        if self._key0 <= token < self._value0:
            return f"k{token - self._key0}"
        if self._value0 <= token < self.vocab_size:
            return f"v{token - self._value0}"
        return f"<{token}>"
