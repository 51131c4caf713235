"""Variable tracking, RULER's `vt` (multi-hop tracing) at the symbol level.

A chain binds a value to a variable, then each hop binds a new variable to the previous one
(RULER's "VAR X1 = 12345 ... VAR X2 = VAR X1 ..."). A statement is exactly two symbols, the
variable assigned, then its source: a value symbol (the chain's first statement) or a variable
symbol (a hop); the alphabets are disjoint, so the source's alphabet says which. A chain with
H hops is 1 + H statements:

    xa v    xb xa    xc xb    ...          (xa = v, xb = xa, xc = xb, ...)

A sample of total length L is a filler haystack with the C * (1 + H) statements of C chains
inserted whole, then the tail QUERY v, v being the value of chain 0 (the queried chain; the
others are distractors):

    f f xa v f f f  xd w  f xb xa f ... f xc xb  f f ... f   QUERY v
    '----------------- body: L - 2 symbols -----------------'   -> answer: xa xb xc ...

Every statement of a chain comes after the chain's previous statement (hop order is kept);
the chains interleave at random and the statements sit at uniformly random haystack points.
All C * (1 + H) variables of a sample are distinct, and so are the C values.

The correct answer is every variable bound (through any number of hops) to the queried value:
the 1 + H variables of chain 0. They are listed in chain order in `answers` but scored as a
set (RULER's string_match_all): each variable is one item, counted when it appears anywhere
among the predicted items; the score is the fraction found.

No depth (`uses_depth` False): the statements of a chain spread over the body at random. The
meta has what a depth would: statement_positions (n, 1 + H), the start of each statement of the
queried chain in order (its target variable's index), statement_depths 100 * position / span
(span = the last start a statement can have, L - 4: 0 = first symbol, 100 = right before the
tail), chain_positions (n, C, 1 + H) for every chain, and the span of the queried chain
(chain_extent: last start - first start).

Haystacks: `noise` repeats one fixed filler pattern (RULER's repeated noise sentences),
`random` draws every filler symbol.

Vocabulary: 0 unused (padding), 1 QUERY, then the variable, value and filler alphabets,
disjoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..base import Samples, TokenTask, filler_haystack, insert_segments

QUERY = 1
HAYSTACKS = ("noise", "random")


@dataclass(frozen=True)
class VariableTrackingTask(TokenTask):
    """Knobs: n_chains (C, chain 0 queried), n_hops (H per chain: a chain binds 1 + H
    variables), the sizes of the variable, value and filler alphabets, and the haystack."""

    n_chains: int = 2  # one distractor chain by default: with one chain every variable is the answer
    n_hops: int = 4
    n_vars: int = 16
    n_values: int = 16
    n_filler: int = 16
    haystack: Literal["noise", "random"] = "noise"
    pattern_length: int = 8

    name = "variable_tracking"
    version = 1
    item_length = 1
    ordered = False
    uses_depth = False

    def __post_init__(self):
        self.check_integers(n_chains=self.n_chains, n_vars=self.n_vars, n_values=self.n_values,
                            n_filler=self.n_filler, pattern_length=self.pattern_length)
        self.check_integers(0, n_hops=self.n_hops)
        if self.haystack not in HAYSTACKS:
            raise ValueError(f"variable_tracking: haystack must be one of {', '.join(HAYSTACKS)}, "
                             f"not {self.haystack!r}")
        if self._statements > self.n_vars:
            raise ValueError(f"variable_tracking: {self.n_chains} chains of {self.n_hops} hops bind "
                             f"{self._statements} distinct variables, but n_vars is {self.n_vars}")
        if self.n_chains > self.n_values:
            raise ValueError(f"variable_tracking: {self.n_chains} chains need as many distinct values, "
                             f"but n_values is {self.n_values}")

    @property
    def _statements(self) -> int:
        return self.n_chains * (1 + self.n_hops)

    @property
    def vocab_size(self) -> int:
        return 2 + self.n_vars + self.n_values + self.n_filler

    @property
    def min_length(self) -> int:
        """Every statement and the tail (the haystack may be empty)."""
        return 2 * self._statements + 2

    @property
    def answer_length(self) -> int:
        return 1 + self.n_hops

    @property
    def _var0(self) -> int:
        return 2

    @property
    def _value0(self) -> int:
        return 2 + self.n_vars

    @property
    def _filler0(self) -> int:
        return 2 + self.n_vars + self.n_values

    def generate(self, length: int, n: int, seed: int, depth: float | None = None) -> Samples:
        """n samples of exactly `length` symbols (see the module docstring)."""
        self.check_request(length, n, depth)
        rng = np.random.default_rng(seed)
        C, h1 = self.n_chains, 1 + self.n_hops
        S = C * h1
        if S == 1:
            variables = rng.integers(0, self.n_vars, (n, 1)) + self._var0
        else:
            variables = np.argsort(rng.random((n, self.n_vars)), axis=1)[:, :S] + self._var0  # (n, S) distinct
        variables = variables.reshape(n, C, h1)  # chain c binds variables[:, c] in hop order
        if C == 1:
            values = rng.integers(0, self.n_values, (n, 1)) + self._value0
        else:
            values = np.argsort(rng.random((n, self.n_values)), axis=1)[:, :C] + self._value0  # (n, C) distinct
        sources = np.concatenate([values[:, :, None], variables[:, :, :-1]], axis=2)  # (n, C, h1)
        statements = np.stack([variables, sources], axis=3).reshape(n, S, 2)  # statement c*h1 + j

        # Body order: random keys, sorted within each chain so that its hops keep their order.
        keys = np.sort(rng.random((n, C, h1)), axis=2).reshape(n, S)
        order = np.argsort(keys, axis=1, kind="stable")  # (n, S): statement index at each body rank
        H = length - 2 - 2 * S  # haystack symbols
        points = np.sort(rng.integers(0, H + 1, (n, S)), axis=1)  # (n, S) non-decreasing, by rank
        in_order = np.take_along_axis(statements, order[:, :, None], axis=1)  # (n, S, 2)
        body, starts = insert_segments(self._haystack(rng, n, H), in_order, points)
        position = np.empty_like(starts)  # (n, S): start of statement c*h1 + j
        np.put_along_axis(position, order, starts, axis=1)
        position = position.reshape(n, C, h1)

        tail = np.stack([np.full(n, QUERY), values[:, 0]], axis=1)  # (n, 2)
        tokens = np.concatenate([body, tail], axis=1).astype(np.int64)
        span = max(length - 4, 1)  # the last start of a statement ending before the tail
        queried = position[:, 0]  # (n, h1)
        meta = {
            "length": np.full(n, length),
            "statement_positions": queried,
            "statement_depths": 100.0 * queried / span,
            "chain_positions": position,
            "chain_extent": queried[:, -1] - queried[:, 0],
            "n_hops": np.full(n, self.n_hops),
            "n_chains": np.full(n, C),
        }
        return Samples(self.name, self.knobs, tokens, variables[:, 0].astype(np.int64), meta)

    def _haystack(self, rng: np.random.Generator, n: int, H: int) -> np.ndarray:
        """(n, H) filler symbols."""
        return filler_haystack(rng, n, H, self.haystack, self.n_filler, self.pattern_length, self._filler0)

    def symbol(self, token: int) -> str:
        """A readable name for one symbol."""
        if token == QUERY:
            return "QUERY"
        if self._var0 <= token < self._value0:
            return f"x{token - self._var0}"
        if self._value0 <= token < self._filler0:
            return f"v{token - self._value0}"
        if self._filler0 <= token < self.vocab_size:
            return f"f{token - self._filler0}"
        return f"<{token}>"
