"""Copying: reproduce a span of content symbols (`copy`) or the scattered content symbols
(`selective_copy`, Mamba's selective copying) after a separator at the end of the context.

copy, a sample of total length L:

    _ _ _ ... _  c1 c2 ... cS  _ _ ... _  SEP      -> answer: c1 c2 ... cS
    '--- p ---'  '--- span --' '- H - p -'

The span is S content symbols drawn independently (repeats allowed); the H = L - S - 1 other
symbols before SEP are all BLANK. The span starts at p = round(depth / 100 * H): depth 0 puts it
first (the classic copy task), 100 right before SEP, and depth None draws a uniformly random
depth per sample (as the needle task does). At longer lengths the blank stretch grows, so the
span must be held over more symbols.

selective_copy, a sample of total length L:

    _ c1 _ _ c2 c3 _ ... _ cS _  SEP               -> answer: c1 c2 ... cS
    '----- region of L - 1 -----'

S content symbols (drawn independently) at S distinct uniformly random positions of the region,
every other region symbol BLANK. At longer lengths the region grows and the content thins out.

For both, the correct answer is the S content symbols in the order they appear, emitted after
SEP (the answer follows the last token); each symbol is one item scored all-or-nothing in its
position, and the score is the fraction right.

Vocabulary: 0 unused (padding), 1 BLANK, 2 SEP, then the n_symbols content symbols. One repeated
BLANK (not random filler) keeps the content the only information in the context: what is
measured is how long a model can keep S symbols, not how well it ignores noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..base import Samples, TokenTask

BLANK = 1
SEP = 2
CONTENT0 = 3


@dataclass(frozen=True)
class _Copying(TokenTask):
    """Knobs shared by both: span (S, content symbols to copy) and n_symbols (the content
    alphabet)."""

    span: int = 6
    n_symbols: int = 16

    item_length = 1
    ordered = True

    def __post_init__(self):
        self.check_integers(span=self.span, n_symbols=self.n_symbols)

    @property
    def vocab_size(self) -> int:
        return CONTENT0 + self.n_symbols

    @property
    def answer_length(self) -> int:
        return self.span

    def _content(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(0, self.n_symbols, (n, self.span)) + CONTENT0  # (n, S)

    def symbol(self, token: int) -> str:
        """A readable name for one symbol."""
        if token == BLANK:
            return "_"
        if token == SEP:
            return "SEP"
        if CONTENT0 <= token < self.vocab_size:
            return f"c{token - CONTENT0}"
        return f"<{token}>"


@dataclass(frozen=True)
class CopyTask(_Copying):
    """Copy a contiguous span placed at `depth` in a blank context."""

    name = "copy"
    version = 1
    uses_depth = True

    @property
    def min_length(self) -> int:
        """The span, one BLANK (so that depth means something) and SEP."""
        return self.span + 2

    def generate(self, length: int, n: int, seed: int, depth: float | None = None) -> Samples:
        """n samples of exactly `length` symbols; the span at `depth` percent (0 = first symbol,
        100 = just before SEP), or at a uniformly random depth when None."""
        self.check_request(length, n, depth)
        rng = np.random.default_rng(seed)
        S = self.span
        content = self._content(rng, n)  # (n, S)
        H = length - S - 1  # blanks
        fraction = rng.random(n) if depth is None else np.full(n, depth / 100.0)
        start = np.rint(fraction * H).astype(np.int64)  # (n,) in [0, H]
        tokens = np.full((n, length), BLANK, dtype=np.int64)
        np.put_along_axis(tokens, start[:, None] + np.arange(S), content, axis=1)
        tokens[:, -1] = SEP
        meta = {
            "length": np.full(n, length),
            "span_position": start,
            "span_depth": 100.0 * start / H,
        }
        return Samples(self.name, self.knobs, tokens, content.astype(np.int64), meta)


@dataclass(frozen=True)
class SelectiveCopyTask(_Copying):
    """Copy the content symbols scattered through a blank context, in order."""

    name = "selective_copy"
    version = 1
    uses_depth = False

    @property
    def min_length(self) -> int:
        """A region holding the S content symbols, and SEP."""
        return self.span + 1

    def generate(self, length: int, n: int, seed: int, depth: float | None = None) -> Samples:
        """n samples of exactly `length` symbols, the content at random distinct positions."""
        self.check_request(length, n, depth)
        rng = np.random.default_rng(seed)
        S = self.span
        content = self._content(rng, n)  # (n, S)
        R = length - 1  # region
        if S < R:
            chosen = np.argpartition(rng.random((n, R)), S - 1, axis=1)[:, :S]  # (n, S) distinct
        else:
            chosen = np.broadcast_to(np.arange(R), (n, R))
        position = np.sort(chosen, axis=1)  # (n, S) increasing
        tokens = np.full((n, length), BLANK, dtype=np.int64)
        np.put_along_axis(tokens, position, content, axis=1)
        tokens[:, -1] = SEP
        meta = {
            "length": np.full(n, length),
            "content_position": position,
            "content_depth": 100.0 * position / max(R - 1, 1),  # (n, S): 0 = first, 100 = last region symbol
        }
        return Samples(self.name, self.knobs, tokens, content.astype(np.int64), meta)
