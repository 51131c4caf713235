"""Material the synthetic RULER tasks are made of: word lists, haystacks, and placing inserts in them.

Nothing here is RULER's text. Key words come from the `wonderwords` package's bundled lists, as in
RULER; the essay haystack is Python's bundled help topics (`pydoc_data.topics`) or a UTF-8 file
given as `corpus=`; the noise haystack is one repeated sentence of this project's wording.
"""

from __future__ import annotations

import functools
import importlib.resources
import random
import re
import uuid
from pathlib import Path

from ..corpus import _default_text

NOISE = "The river runs to the sea. The hills stand still. The day goes on. Nothing new happens here."
# RULER's needle depths: 40 evenly spaced percents in [0, 100], rounded to whole numbers.
DEPTHS = [round(i * 100 / 39) for i in range(40)]
SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")
RULER_SEED = 42  # RULER's default --random_seed, with which its prepare scripts reseed every shuffle


def _wonderwords(name: str) -> list[str]:
    try:
        assets = importlib.resources.files("wonderwords") / "assets"
    except ModuleNotFoundError:
        raise ImportError("RULER text tasks need the word lists of the 'wonderwords' package: pip install wonderwords")
    return [w.strip() for w in (assets / name).read_text(encoding="utf-8").splitlines() if w.strip()]


@functools.lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    """CWE's words (as in RULER): wonderwords' nouns + adjectives + verbs, deduplicated and sorted."""
    return tuple(sorted({w for name in ("nounlist.txt", "adjectivelist.txt", "verblist.txt")
                         for w in _wonderwords(name)}))


@functools.lru_cache(maxsize=1)
def key_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(adjectives, nouns): a NIAH word key is ADJECTIVE-NOUN, as in RULER (verbs are not used)."""
    return tuple(sorted(set(_wonderwords("adjectivelist.txt")))), tuple(sorted(set(_wonderwords("nounlist.txt"))))


def distinct_words(rng: random.Random, count: int) -> list[str]:
    """`count` distinct words in random order: a sample of `word_list()`, topped up with distinct
    ADJECTIVE-NOUN compounds when more are wanted than the list holds. (RULER falls back to a larger
    English word list that this project does not ship; that happens only near 100K tokens.)"""
    words = word_list()
    if count <= len(words):
        return rng.sample(words, count)
    chosen, seen = list(words), set(words)
    adjectives, nouns = key_words()
    while len(chosen) < count:
        compound = f"{rng.choice(adjectives)}-{rng.choice(nouns)}"
        if compound not in seen:
            seen.add(compound)
            chosen.append(compound)
    rng.shuffle(chosen)
    return chosen


@functools.lru_cache(maxsize=4)
def essay_words(corpus: str | None) -> tuple[str, ...]:
    text = _default_text() if corpus is None else Path(corpus).read_text(encoding="utf-8")
    words = tuple(text.split())
    if not words:
        raise ValueError(f"corpus {corpus!r} contains no words")
    return words


def take(items, n: int) -> list:
    """The first n items, repeating the sequence when n is longer than it (as RULER does)."""
    reps = -(-n // len(items)) if n else 0
    return (list(items) * reps)[:n]


def essay_sentences(corpus: str | None, n_words: int) -> list[str]:
    """The first `n_words` words of the essay haystack, grouped into sentences (a sentence ends with a
    word ending in . ! or ?, maybe followed by a quote or bracket). RULER splits with nltk's
    sent_tokenize; this simpler rule keeps the same idea: needles go between sentences."""
    words = take(essay_words(corpus), n_words)
    sentences, start = [], 0
    for i, word in enumerate(words):
        if SENTENCE_END.search(word):
            sentences.append(" ".join(words[start:i + 1]))
            start = i + 1
    if start < len(words):
        sentences.append(" ".join(words[start:]))
    return sentences


def fixed_shuffle(items: list) -> list:
    """`items` shuffled as RULER shuffles needles, cwe lists, fwe streams and QA documents (`fit:
    ruler`): with a fresh generator seeded RULER_SEED each time, so the permutation depends on
    len(items) alone, the same for every sample of that size. (Python's shuffle with RULER's seed:
    the very permutation RULER's scripts apply.)"""
    out = list(items)
    random.Random(RULER_SEED).shuffle(out)
    return out


def place(units: list[str], inserts: list[str], positions: list[int]) -> list[str]:
    """`units` with inserts[i] put just before units[positions[i]] (after the last unit when
    positions[i] == len(units)); inserts sharing a position keep their list order."""
    out, done = [], 0
    for i in sorted(range(len(inserts)), key=lambda i: positions[i]):  # stable: list order on ties
        out.extend(units[done:positions[i]])
        done = max(done, positions[i])
        out.append(inserts[i])
    out.extend(units[done:])
    return out


def at_depth(count: int, depth: float) -> int:
    """The unit index at `depth` percent of `count` units (RULER: int(count * depth / 100))."""
    return int(count * depth / 100)


def needle_value(rng: random.Random, kind: str) -> str:
    """A NIAH key or value: a 7-digit number, a version-4 uuid, or an ADJECTIVE-NOUN word."""
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if kind == "words":
        adjectives, nouns = key_words()
        return f"{rng.choice(adjectives)}-{rng.choice(nouns)}"
    raise ValueError(f"unknown needle type {kind!r} (words, numbers or uuids)")
