"""Word-frequency aggregation, RULER's common words (`cwe`) and frequent words (`fwe`)
extraction at the symbol level: name the most frequent symbols of a word alphabet.

common_words, a sample of total length L:

    f f w3 f w7 w3 f f w1 ... f w3 f f   QUERY      -> answer: the n_common common words
    '------- body: L - 1 symbols ------'

The body is a list of W = n_common * common_freq + (n_words - n_common) * uncommon_freq word
symbols, shuffled, at uniformly random points of a filler haystack of L - 1 - W symbols (kept in
list order). Every word of the alphabet is in the list: the n_common common words (a random
choice per sample) common_freq times each, every other word uncommon_freq times, with
common_freq > uncommon_freq, so the common words are strictly the most frequent at every length.
The counts do not grow with the length; the filler does (as in RULER, where the common words
keep their count while the context grows around them), so at longer lengths the few word
occurrences to be counted are further apart. At min_length = W + 1 there is no filler.
Haystacks: `noise` repeats one fixed filler pattern, `random` draws every filler symbol.

frequent_words, a sample of total length L:

    w5 w5 w2 w5 w9 w5 w2 ... w5 w0 w5   QUERY       -> answer: the n_top most frequent words
    '---- stream: W = L - 1 words ----'

The stream is every word of the alphabet repeated by its Zipf count and shuffled: the word of
rank r (1 = most frequent) stands c_r = floor(W p_r) times, p_r proportional to r ** -alpha,
plus one for each of the W - sum(floor(W p)) most frequent ranks (so the counts sum to W). Which
word has which rank is a random permutation per sample. The counts are fixed, not drawn, so the
answer never hangs on a tie: c_1 > c_2 > ... > c_(n_top+1) holds whenever
W * (p_r - p_(r+1)) >= 1 for r <= n_top (the leftover goes to the top ranks, so rounding
never ties them), and min_length is 1 + the smallest such W: from there on, at every length.
The stream fills the context, as RULER's does: at longer lengths there is more of it.

For both, the correct answer is the set of most frequent words, emitted after QUERY: each word is
one item, scored as a set (RULER's string_match_all: counted when it appears anywhere among the
predicted items). `answers` lists the common words by symbol id (they are equally frequent), the
frequent words most frequent first. Meta: answer_counts (n, k), the count of each answer word;
margin_count (n,), the count of the next most frequent word; for common_words also the
positions of every common-word occurrence (common_positions (n, k, common_freq), by answer
word, ascending) and their depths (100 * position / (L - 2): 0 = first, 100 = last body symbol).

Vocabulary: 0 unused (padding), 1 QUERY, then the word alphabet, then (common_words) the filler
alphabet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..base import Samples, TokenTask, filler_haystack, insert_segments

QUERY = 1
WORD0 = 2
HAYSTACKS = ("noise", "random")


class _Words(TokenTask):
    item_length = 1
    ordered = False
    uses_depth = False

    def symbol(self, token: int) -> str:
        """A readable name for one symbol."""
        if token == QUERY:
            return "QUERY"
        if WORD0 <= token < WORD0 + self.n_words:
            return f"w{token - WORD0}"
        if WORD0 + self.n_words <= token < self.vocab_size:
            return f"f{token - WORD0 - self.n_words}"
        return f"<{token}>"


def _shuffled_words(rng: np.random.Generator, n: int, n_words: int, counts: np.ndarray):
    """n shuffled lists holding word slot i counts[i] times, slot i being a random word per
    sample: the lists (n, W) as word indices, their slots (n, W) and the slot -> word map (n, n_words)."""
    slots = np.repeat(np.arange(n_words), counts)  # (W,)
    shuffled = rng.permuted(np.broadcast_to(slots, (n, len(slots))), axis=1)  # (n, W)
    word_of_slot = np.argsort(rng.random((n, n_words)), axis=1)  # (n, n_words) a permutation per row
    return np.take_along_axis(word_of_slot, shuffled, axis=1), shuffled, word_of_slot


@dataclass(frozen=True)
class CommonWordsTask(_Words):
    """Knobs: n_words (the word alphabet), n_common (the answer), common_freq and
    uncommon_freq (occurrences of each common and each other word), n_filler and the haystack."""

    n_words: int = 16
    n_common: int = 4
    common_freq: int = 5
    uncommon_freq: int = 2
    n_filler: int = 16
    haystack: Literal["noise", "random"] = "noise"
    pattern_length: int = 8

    name = "common_words"
    version = 1

    def __post_init__(self):
        self.check_integers(n_words=self.n_words, n_common=self.n_common, common_freq=self.common_freq,
                            n_filler=self.n_filler, pattern_length=self.pattern_length)
        self.check_integers(0, uncommon_freq=self.uncommon_freq)
        if self.haystack not in HAYSTACKS:
            raise ValueError(f"common_words: haystack must be one of {', '.join(HAYSTACKS)}, not {self.haystack!r}")
        if self.n_common >= self.n_words:
            raise ValueError(f"common_words: n_common ({self.n_common}) must be < n_words ({self.n_words})")
        if self.common_freq <= self.uncommon_freq:
            raise ValueError(f"common_words: common_freq ({self.common_freq}) must be > uncommon_freq "
                             f"({self.uncommon_freq})")

    @property
    def _list_length(self) -> int:
        return self.n_common * self.common_freq + (self.n_words - self.n_common) * self.uncommon_freq

    @property
    def vocab_size(self) -> int:
        return WORD0 + self.n_words + self.n_filler

    @property
    def min_length(self) -> int:
        """The whole list and QUERY, no filler."""
        return self._list_length + 1

    @property
    def answer_length(self) -> int:
        return self.n_common

    def generate(self, length: int, n: int, seed: int, depth: float | None = None) -> Samples:
        """n samples of exactly `length` symbols (see the module docstring)."""
        self.check_request(length, n, depth)
        rng = np.random.default_rng(seed)
        k, cf, W = self.n_common, self.common_freq, self._list_length
        counts = np.where(np.arange(self.n_words) < k, cf, self.uncommon_freq)  # slots 0..k-1 are common
        words, slots, word_of_slot = _shuffled_words(rng, n, self.n_words, counts)  # (n, W) each
        H = length - 1 - W  # filler symbols
        points = np.sort(rng.integers(0, H + 1, (n, W)), axis=1)  # (n, W) non-decreasing
        body, starts = insert_segments(self._haystack(rng, n, H), (words + WORD0)[:, :, None], points)
        tokens = np.concatenate([body, np.full((n, 1), QUERY)], axis=1).astype(np.int64)

        common = word_of_slot[:, :k]  # (n, k) the common words, by slot
        by_id = np.argsort(common, axis=1)  # (n, k)
        by_slot = np.argsort(slots, axis=1, kind="stable")  # (n, W): list indices grouped by slot, ascending
        position = np.take_along_axis(starts, by_slot[:, :k * cf], axis=1).reshape(n, k, cf)  # (n, k, cf)
        position = np.take_along_axis(position, by_id[:, :, None], axis=1)  # (n, k, cf) by answer word
        meta = {
            "length": np.full(n, length),
            "answer_counts": np.full((n, k), cf),
            "margin_count": np.full(n, self.uncommon_freq),
            "common_positions": position,
            "common_depths": 100.0 * position / max(length - 2, 1),
            "list_length": np.full(n, W),
        }
        answers = np.take_along_axis(common, by_id, axis=1) + WORD0  # (n, k) ascending symbol id
        return Samples(self.name, self.knobs, tokens, answers.astype(np.int64), meta)

    def _haystack(self, rng: np.random.Generator, n: int, H: int) -> np.ndarray:
        """(n, H) filler symbols."""
        return filler_haystack(rng, n, H, self.haystack, self.n_filler, self.pattern_length, WORD0 + self.n_words)


@dataclass(frozen=True)
class FrequentWordsTask(_Words):
    """Knobs: n_words (the word alphabet), n_top (the answer) and alpha (the Zipf exponent)."""

    n_words: int = 16
    n_top: int = 3
    alpha: float = 2.0

    name = "frequent_words"
    version = 1

    def __post_init__(self):
        self.check_integers(n_words=self.n_words, n_top=self.n_top)
        if self.n_top >= self.n_words:
            raise ValueError(f"frequent_words: n_top ({self.n_top}) must be < n_words ({self.n_words})")
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
            raise ValueError(f"frequent_words: alpha must be a positive number, not {alpha!r}")

    @property
    def _shares(self) -> np.ndarray:
        """p_r for ranks 1..n_words: (n_words,) decreasing, summing to 1."""
        weights = np.arange(1, self.n_words + 1, dtype=np.float64) ** -float(self.alpha)
        return weights / weights.sum()

    def counts(self, words: int) -> np.ndarray:
        """The count of each rank (n_words,) in a stream of `words` words (see the docstring)."""
        counts = np.floor(words * self._shares).astype(np.int64)
        counts[:words - int(counts.sum())] += 1
        return counts

    @property
    def vocab_size(self) -> int:
        return WORD0 + self.n_words

    @property
    def min_length(self) -> int:
        """QUERY and the shortest stream whose top n_top + 1 counts are strictly decreasing
        (W * the smallest gap between their shares >= 1)."""
        gap = -np.diff(self._shares[:self.n_top + 1]).max()  # the smallest p_r - p_(r+1), r <= n_top
        words = math.ceil(1.0 / gap)
        while not (np.diff(self.counts(words)[:self.n_top + 1]) < 0).all():  # guard float rounding
            words += 1
        return words + 1

    @property
    def answer_length(self) -> int:
        return self.n_top

    def generate(self, length: int, n: int, seed: int, depth: float | None = None) -> Samples:
        """n samples of exactly `length` symbols (see the module docstring)."""
        self.check_request(length, n, depth)
        rng = np.random.default_rng(seed)
        k = self.n_top
        counts = self.counts(length - 1)  # (n_words,) by rank
        if not (np.diff(counts[:k + 1]) < 0).all():
            raise AssertionError(f"frequent_words: tied top counts {counts[:k + 1]} at length {length}")
        words, _, word_of_rank = _shuffled_words(rng, n, self.n_words, counts)  # (n, W), _, (n, n_words)
        tokens = np.concatenate([words + WORD0, np.full((n, 1), QUERY)], axis=1).astype(np.int64)
        meta = {
            "length": np.full(n, length),
            "answer_counts": np.broadcast_to(counts[:k], (n, k)).copy(),
            "margin_count": np.full(n, counts[k]),
        }
        return Samples(self.name, self.knobs, tokens, (word_of_rank[:, :k] + WORD0).astype(np.int64), meta)
