"""RULER's synthetic text tasks (NIAH x8, vt, cwe, fwe) as prompt generators.

Each task is a dataclass of knobs with RULER's defaults. `build(n, seed, length)` makes one sample
whose haystack has `n` units (essay words, noise sentences, distractor needles, list words...);
`fit.py` searches `n` so the prompt fits a target length with the evaluated model's tokenizer.
The same seed gives the same needles, depths and answers whatever `n` is.

Haystack text never ships with this repository: the essay haystack is Python's bundled help topics
(`pydoc_data.topics`) or a UTF-8 file given as `corpus=`. Key words come from the `wonderwords`
package's bundled noun/adjective/verb lists, as in RULER.
"""

from __future__ import annotations

import functools
import importlib.resources
import random
import string
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..corpus import _default_text

# This project's own wording of RULER's prompts: the same structure (instruction, context,
# question, answer prefix that the model continues), not RULER's text, which is not copied here.
# Exact RULER prompts would need its templates loaded from a user-given file (not done yet).
NOISE = "The river runs to the sea. The hills stand still. The day goes on. Nothing new happens here."
DEPTHS = [round(i * 100 / 39, 3) for i in range(40)]  # RULER: 40 evenly spaced depths in [0, 100]

NIAH_TEMPLATE = (
    "Secret values are hidden in the text below ({v}). Remember them: you will be asked about them "
    "afterwards.\n{context}\n"
    "Which secret {v} for {query} does the text above give?"
)
NIAH_PREFIX = " The secret {v} for {query} given in the text are"
NEEDLE = "One of the secret {v} for {key} is: {value}."

VT_TEMPLATE = (
    "Follow the chains of variable assignments hidden in the text below.\n\n{context}\n"
    "Question: Which variables are assigned the value {query} in the text above?"
)
VT_PREFIX = (" Answer: Following the assignments in the text above, {num_v} variables "
             "are assigned the value {query}, they are: ")
CWE_TEMPLATE = (
    "Here is a numbered list of words. Some of the words occur more often than others; "
    "remember the ones that occur most often.\n{context}\n"
    "Question: Which {num_cw} words occur most often in the list above?"
)
CWE_PREFIX = " Answer: The {num_cw} words that occur most often in the list are:"
FWE_TEMPLATE = (
    "Count how often each coded word occurs in the coded text below, and find the three coded words "
    "that occur most often. {context}\nQuestion: Give no explanation and ignore the dots '....'. "
    "Which three words occur most often in the coded text above?"
)
FWE_PREFIX = " Answer: In the coded text above, the three words that occur most often are:"


@functools.lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    """RULER's key words: wonderwords' nouns + adjectives + verbs, deduplicated and sorted."""
    try:
        assets = importlib.resources.files("wonderwords") / "assets"
    except ModuleNotFoundError:
        raise ImportError("RULER text tasks need the word lists of the 'wonderwords' package: pip install wonderwords")
    words: set[str] = set()
    for name in ("nounlist.txt", "adjectivelist.txt", "verblist.txt"):
        words.update(w.strip() for w in (assets / name).read_text(encoding="utf-8").splitlines() if w.strip())
    return tuple(sorted(words))


@functools.lru_cache(maxsize=4)
def essay_words(corpus: str | None) -> tuple[str, ...]:
    text = _default_text() if corpus is None else Path(corpus).read_text(encoding="utf-8")
    words = tuple(text.split())
    if not words:
        raise ValueError(f"corpus {corpus!r} contains no words")
    return words


def _take(items, n: int) -> list:
    """The first n items, repeating the sequence when n is longer than it."""
    reps = -(-n // len(items)) if n else 0
    return (list(items) * reps)[:n]


def _insert(units: list[str], inserts: list[str], depths: list[float], joiner: str, sentences: bool = False) -> str:
    """Put each insert at its depth (percent) among the units, keeping units whole; with `sentences`,
    moved back to just after the nearest sentence end (a word ending in . ! or ?), as RULER does."""
    out = list(units)
    order = sorted(range(len(inserts)), key=lambda i: (-depths[i], -i))  # deepest (then latest) first
    for i in order:
        at = int(len(units) * depths[i] / 100)
        if sentences:
            back = at
            while back > 0 and at - back < 200 and not units[back - 1].endswith((".", "!", "?")):
                back -= 1
            at = back if back == 0 or units[back - 1].endswith((".", "!", "?")) else at
        out.insert(at, inserts[i])
    return joiner.join(out)


def _value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))  # RULER: 7-digit numbers
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if kind == "words":
        words = word_list()
        return f"{rng.choice(words)}-{rng.choice(words)}"
    raise ValueError(f"unknown needle type {kind!r} (words, numbers or uuids)")


@dataclass
class NIAH:
    """Needle in a haystack: KEY -> VALUE needles; query some keys, answer all their values."""
    type_haystack: str = "essay"      # noise | essay | needle
    type_needle_k: str = "words"      # words | numbers | uuids
    type_needle_v: str = "numbers"    # words | numbers | uuids
    num_needle_k: int = 1
    num_needle_v: int = 1
    num_needle_q: int = 1
    corpus: str | None = None         # essay haystack file (default: Python's help topics)
    max_new_tokens: int = 128

    def __post_init__(self):
        if self.type_haystack not in ("noise", "essay", "needle"):
            raise ValueError(f"type_haystack must be noise, essay or needle, not {self.type_haystack!r}")
        if not 1 <= self.num_needle_q <= self.num_needle_k:
            raise ValueError("num_needle_q must be between 1 and num_needle_k")

    def build(self, n: int, seed: int, length: int) -> tuple[str, list[str], dict]:
        rng = random.Random(seed)
        keys: list[str] = []
        while len(keys) < self.num_needle_k:
            k = _value(rng, self.type_needle_k)
            if k not in keys:
                keys.append(k)
        values = [[_value(rng, self.type_needle_v) for _ in range(self.num_needle_v)] for _ in keys]
        v = self.type_needle_v if self.num_needle_q * self.num_needle_v > 1 else self.type_needle_v[:-1]
        needles = [NEEDLE.format(v=v, key=k, value=x) for k, vs in zip(keys, values) for x in vs]
        depths = rng.sample(DEPTHS, len(needles)) if len(needles) <= len(DEPTHS) else \
            [rng.choice(DEPTHS) for _ in needles]
        queried = rng.sample(range(len(keys)), self.num_needle_q)
        if self.type_haystack == "essay":
            context = _insert(_take(essay_words(self.corpus), n), needles, depths, " ", sentences=True)
        elif self.type_haystack == "noise":
            context = _insert([NOISE] * n, needles, depths, "\n")
        else:  # distractor needles with other keys, drawn from their own stream so n does not move the rest
            drng = random.Random(f"{seed}-distractors")
            units = []
            while len(units) < n:
                k = _value(drng, self.type_needle_k)
                if k not in keys:
                    units.append(NEEDLE.format(v=v, key=k, value=_value(drng, self.type_needle_v)))
            context = _insert(units, needles, depths, "\n")
        qkeys = [keys[i] for i in queried]
        query = qkeys[0] if len(qkeys) == 1 else ", ".join(qkeys[:-1]) + ", and " + qkeys[-1]
        prompt = NIAH_TEMPLATE.format(v=v, context=context, query=query) + NIAH_PREFIX.format(v=v, query=query)
        answers = [x for i in queried for x in values[i]]
        return prompt, answers, {"depths": depths, "keys": qkeys, "haystack_units": n}


@dataclass
class VariableTracking:
    """Chains of VAR X = VAR Y assignments in noise; name every variable bound to the queried value."""
    num_chains: int = 1
    num_hops: int = 4
    max_new_tokens: int = 30

    def build(self, n: int, seed: int, length: int) -> tuple[str, list[str], dict]:
        rng = random.Random(seed)
        names: list[str] = []
        while len(names) < self.num_chains * (self.num_hops + 1):
            name = "".join(rng.choices(string.ascii_uppercase, k=5))
            if name not in names:
                names.append(name)
        chains, values = [], []
        for c in range(self.num_chains):
            vs = names[c * (self.num_hops + 1):(c + 1) * (self.num_hops + 1)]
            value = str(rng.randint(10000, 99999))
            values.append(value)
            chains.append((vs, [f"VAR {vs[0]} = {value}"] + [f"VAR {b} = VAR {a}" for a, b in zip(vs, vs[1:])]))
        per = self.num_hops + 1
        inserts = [s for _, stmts in chains for s in stmts]
        depths = [d for _ in chains for d in sorted(rng.uniform(0, 100) for _ in range(per))]  # in chain order
        context = _insert([NOISE] * n, inserts, depths, "\n")
        q = rng.randrange(self.num_chains)
        prompt = VT_TEMPLATE.format(context=context, query=values[q]) + \
            VT_PREFIX.format(num_v=per, query=values[q])
        return prompt, list(chains[q][0]), {"haystack_units": n, "value": values[q]}


@dataclass
class CommonWords:
    """A numbered word list: num_cw words repeated freq_cw times, the rest freq_ucw; name the common ones.
    As in RULER, below 4096 tokens the frequencies are 6 and 1 and the example list is smaller."""
    freq_cw: int = 30
    freq_ucw: int = 3
    num_cw: int = 10
    max_new_tokens: int = 120

    def _list(self, rng: random.Random, num_words: int, cw: int, ucw: int) -> tuple[str, list[str]]:
        chosen = rng.sample(word_list(), num_words)
        common, uncommon = chosen[:self.num_cw], chosen[self.num_cw:]
        items = common * cw + uncommon * ucw
        rng.shuffle(items)
        return " ".join(f"{i + 1}. {w}" for i, w in enumerate(items)), common

    def build(self, n: int, seed: int, length: int) -> tuple[str, list[str], dict]:
        rng = random.Random(seed)
        short = length < 4096
        ex_ctx, ex_ans = self._list(rng, 20 if short else 40, 3 if short else 10, 1 if short else 3)
        ctx, ans = self._list(random.Random(f"{seed}-list"), self.num_cw + n,
                              6 if short else self.freq_cw, 1 if short else self.freq_ucw)
        example = CWE_TEMPLATE.format(context=ex_ctx, num_cw=self.num_cw) + \
            CWE_PREFIX.format(num_cw=self.num_cw) + " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(ex_ans))
        prompt = example + "\n" + CWE_TEMPLATE.format(context=ctx, num_cw=self.num_cw) + \
            CWE_PREFIX.format(num_cw=self.num_cw)
        return prompt, ans, {"haystack_units": n, "uncommon_words": n}


@dataclass
class FrequentWords:
    """Zipf(alpha)-distributed coded words; the top-ranked one is '....' noise; name the next three."""
    alpha: float = 2.0
    coded_wordlen: int = 6
    vocab_size: int = 2000
    max_new_tokens: int = 50

    def build(self, n: int, seed: int, length: int) -> tuple[str, list[str], dict]:
        rng = random.Random(seed)
        vocab: set[str] = set()
        while len(vocab) < self.vocab_size:
            vocab.add("".join(rng.choices(string.ascii_lowercase, k=self.coded_wordlen)))
        words = sorted(vocab)
        rng.shuffle(words)
        words[0] = "...."
        zeta = sum(k ** -self.alpha for k in range(1, 100000))
        counts = [int(n * k ** -self.alpha / zeta) for k in range(1, len(words) + 1)]
        stream = [w for w, c in zip(words, counts) for _ in range(c)]
        random.Random(f"{seed}-stream").shuffle(stream)
        prompt = FWE_TEMPLATE.format(context=" ".join(stream)) + FWE_PREFIX
        return prompt, words[1:4], {"haystack_units": n, "words": len(stream)}


# RULER's 13 configurations (scripts/synthetic.yaml); qa_1/qa_2 are in qa.py
CONFIGS = {
    "niah_single_1": (NIAH, dict(type_haystack="noise", type_needle_k="words", type_needle_v="numbers")),
    "niah_single_2": (NIAH, dict(type_haystack="essay", type_needle_k="words", type_needle_v="numbers")),
    "niah_single_3": (NIAH, dict(type_haystack="essay", type_needle_k="words", type_needle_v="uuids")),
    "niah_multikey_1": (NIAH, dict(type_haystack="essay", num_needle_k=4)),
    "niah_multikey_2": (NIAH, dict(type_haystack="needle")),
    "niah_multikey_3": (NIAH, dict(type_haystack="needle", type_needle_k="uuids", type_needle_v="uuids")),
    "niah_multivalue": (NIAH, dict(type_haystack="essay", num_needle_v=4)),
    "niah_multiquery": (NIAH, dict(type_haystack="essay", num_needle_k=4, num_needle_q=4)),
    "vt": (VariableTracking, {}),
    "cwe": (CommonWords, {}),
    "fwe": (FrequentWords, {}),
}
