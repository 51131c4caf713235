"""Natural-text symbol streams, for haystacks made of real English rather than noise.

The default corpus is the text of the help topics that ship with Python itself
(`pydoc_data.topics`, a few hundred kilobytes of English prose about the language), so it works
offline on a fresh machine and nothing third-party is copied into this repository. Any UTF-8
text file can be used instead (`load_corpus(path)`).

Words are runs of the letters a-z after lowercasing (an apostrophe inside a word is kept: "don't"). The
vocabulary is the `n_words` most frequent words, ties broken alphabetically, plus one unknown
symbol for every other word, so a stream is a sequence of ids in [0, n_words].

How large a vocabulary a text haystack needs: `words_for_unknown_share(path, share)` is the
smallest `n_words` whose unknown words are at most `share` of the whole corpus (every word when
even that is needed, leaving no unknown word). On the default corpus (64,262 words, 3,126
distinct) 255 words leave 28% unknown, 1,023 leave 7.9%, 1,380 leave 5.0% and 1,771 leave 3.0%.
"""

from __future__ import annotations

import collections
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
DEFAULT_SOURCE = "python-help-topics"


@dataclass(frozen=True, eq=False)
class WordStream:
    source: str              # DEFAULT_SOURCE or the file's path
    words: tuple[str, ...]   # the vocabulary, most frequent first; id n_words is the unknown word
    ids: np.ndarray          # (T,) int64: the whole corpus as ids in [0, n_words]

    @property
    def n_words(self) -> int:
        return len(self.words)

    @property
    def unknown(self) -> int:
        return len(self.words)

    def word(self, symbol: int) -> str:
        return self.words[symbol] if 0 <= symbol < len(self.words) else "<unk>"

    def spans(self, rng: np.random.Generator, n: int, length: int) -> np.ndarray:
        """n spans of exactly `length` consecutive ids from random starts, wrapping from the
        corpus's end to its start, so any length is possible (a span longer than the corpus
        repeats it). Returns (n, length) int64."""
        starts = rng.integers(0, len(self.ids), n)  # (n,)
        return self.ids[(starts[:, None] + np.arange(length)[None, :]) % len(self.ids)]


def _default_text() -> str:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n".join(topics[name] for name in sorted(topics))


@functools.lru_cache(maxsize=8)
def load_corpus(path: str | Path | None = None, n_words: int = 256) -> WordStream:
    """The corpus at `path` (UTF-8 text), or Python's help topics when None, as word ids."""
    if not isinstance(n_words, int) or isinstance(n_words, bool) or n_words < 1:
        raise ValueError(f"corpus: n_words must be a positive integer, not {n_words!r}")
    source, tokens = _tokens(path)
    counts = collections.Counter(tokens)
    words = tuple(sorted(counts, key=lambda w: (-counts[w], w))[:n_words])
    index = {w: i for i, w in enumerate(words)}
    ids = np.fromiter((index.get(t, len(words)) for t in tokens), dtype=np.int64, count=len(tokens))
    return WordStream(source, words, ids)


@functools.lru_cache(maxsize=8)
def words_for_unknown_share(path: str | Path | None = None, share: float = 0.05) -> int:
    """The smallest n_words for which the words outside the vocabulary are at most `share`
    (a fraction) of the corpus at `path` (None: the help topics); every distinct word when
    nothing less will do."""
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share <= 1:
        raise ValueError(f"corpus: share must be a fraction in [0, 1], not {share!r}")
    _, tokens = _tokens(path)
    frequencies = np.array(sorted(collections.Counter(tokens).values(), reverse=True), dtype=np.int64)
    unknown = len(tokens) - np.cumsum(frequencies)  # unknown words with the k + 1 most frequent known
    return int(np.argmax(unknown <= share * len(tokens))) + 1  # the last entry is 0, so one always fits


def _tokens(path: str | Path | None) -> tuple[str, list[str]]:
    """The corpus's source name and its words, in order."""
    if path is None:
        text, source = _default_text(), DEFAULT_SOURCE
    else:
        file = Path(path)
        if file.is_dir():
            raise ValueError(f"corpus file {str(file)!r} is a directory, not a text file")
        if not file.is_file():
            raise FileNotFoundError(f"corpus file {str(file)!r} does not exist")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"corpus file {str(file)!r} is not UTF-8 text ({error.reason} at byte {error.start})")
        source = str(file)
    tokens = WORD.findall(text.lower())
    if not tokens:
        raise ValueError(f"corpus {source!r} contains no words")
    return source, tokens
