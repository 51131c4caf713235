"""RULER's aggregation tasks: common words extraction (cwe) and frequent words extraction (fwe).

Same protocol as ruler.py: a dataclass of knobs with RULER's defaults and `build(n, seed, length,
count_tokens)`; the prompts are this project's wording of RULER's structure.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from ..base import TextTask

from .fit import RulerSteps
from .haystack import distinct_words, fixed_shuffle
from .templates import render

CWE_TEMPLATE = (
    "Here is a numbered list of words. Some of the words occur more often than others; "
    "remember the ones that occur most often.\n{context}\n"
    "Question: Which {num_cw} words occur most often in the list above?"
)
CWE_PREFIX = " Answer: The {num_cw} words that occur most often in the list are:"
FWE_TEMPLATE = (
    "Count how often each coded word occurs in the coded text below, and find the three coded words "
    "that occur most often. {context}\nQuestion: Give no explanation and ignore the dots '...'. "
    "Which three words occur most often in the coded text above?"
)
FWE_PREFIX = " Answer: In the coded text above, the three words that occur most often are:"
FWE_NOISE = "..."  # RULER's top-ranked coded word is three dots (its instruction mentions four)


def numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def zeta(alpha: float, terms: int = 64) -> float:
    """Riemann zeta(alpha) for alpha > 1: a partial sum plus an Euler-Maclaurin tail (error < 1e-9)."""
    head = sum(k ** -alpha for k in range(1, terms))
    return head + terms ** (1 - alpha) / (alpha - 1) + terms ** -alpha / 2 + alpha * terms ** (-alpha - 1) / 12


@dataclass(frozen=True)
class CommonWords(TextTask):
    """A numbered word list: num_cw words repeated freq_cw times, the others freq_ucw times; name the
    common ones. As in RULER, `num_fewshot` solved examples come first (40 words, frequencies 10/3),
    and below 4096 tokens the frequencies are 6/1 and the example is 20 words at 3/1."""
    freq_cw: int = 30
    freq_ucw: int = 3
    num_cw: int = 10
    num_fewshot: int = 1
    max_new_tokens: int = 120         # RULER's tokens_to_generate for common_words_extraction
    template: str | None = None       # {context} {num_cw}; None: this project's wording
    answer_prefix: str | None = None

    def __post_init__(self):
        if self.num_cw < 1 or self.freq_cw <= self.freq_ucw or self.freq_ucw < 1:
            raise ValueError("cwe needs num_cw >= 1 and freq_cw > freq_ucw >= 1")

    def _prompt(self, context: str) -> str:
        if self.template is None:
            return render(CWE_TEMPLATE, CWE_PREFIX, context=context, num_cw=self.num_cw, query="")
        return render(self.template, self.answer_prefix or "", context=context, num_cw=self.num_cw, query="")

    def _list(self, rng: random.Random, num_words: int, cw: int, ucw: int, ruler: bool = False
              ) -> tuple[str, list[str]]:
        chosen = distinct_words(rng, num_words)
        common, uncommon = chosen[:self.num_cw], chosen[self.num_cw:]
        items = common * cw + uncommon * ucw
        if ruler:
            items = fixed_shuffle(items)
        else:
            rng.shuffle(items)
        return numbered(items), common

    def ruler_steps(self, length: int, seed: int = 0) -> RulerSteps:
        """RULER's common_words_extraction.py: words (common ones included) 10 a step, tokens per
        word estimated on 4096 of them, the search bounded by int(length // that) * 2."""
        return RulerSteps(10, offset=self.num_cw, probe=4096, bound="floor x2")

    def build(self, n: int, seed: int, length: int, count_tokens=None, ruler: bool = False
              ) -> tuple[str, list[str], dict]:
        """`ruler`: each list in RULER's fixed-seed order (`fixed_shuffle`: one permutation per list
        size) instead of one drawn per sample."""
        short = length < 4096
        rng = random.Random(seed)
        shots = []
        for _ in range(self.num_fewshot):
            context, answer = self._list(rng, 20 if short else 40, 3 if short else 10, 1 if short else 3, ruler)
            shots.append(self._prompt(context) + " " + numbered(answer))
        context, answer = self._list(random.Random(f"{seed}-list"), self.num_cw + n,
                                     6 if short else self.freq_cw, 1 if short else self.freq_ucw, ruler)
        prompt = self._prompt(context).after("".join(shot + "\n" for shot in shots))
        return prompt, answer, {"haystack_units": n, "uncommon_words": n}


@dataclass(frozen=True)
class FrequentWords(TextTask):
    """A stream of random coded words with Zipf(alpha) counts; the top-ranked word is '...' noise;
    name the next three. As in RULER, the vocabulary has (length - max_new_tokens) // 50 words unless
    `vocab_size` is given, and there is no solved example."""
    alpha: float = 2.0
    coded_wordlen: int = 6
    vocab_size: int | None = None     # None: RULER's (length - max_new_tokens) // 50
    max_new_tokens: int = 50          # RULER's tokens_to_generate for freq_words_extraction
    template: str | None = None       # {context}; None: this project's wording
    answer_prefix: str | None = None

    def __post_init__(self):
        if self.alpha <= 1:
            raise ValueError(f"fwe alpha must be over 1 (a Zipf distribution), not {self.alpha}")
        if self.vocab_size is not None and self.vocab_size < 5:
            raise ValueError("fwe vocab_size must be at least 5 (noise, three answers and one more)")

    def ruler_steps(self, length: int, seed: int = 0) -> RulerSteps:
        """RULER's freq_words_extraction.py: no search but a walk, from (length - budget) //
        coded_wordlen words up by (length - budget) // 32 (here at least 1) while the prompt is
        under length - budget, one step back; each sample then steps down while over it."""
        limit = length - self.max_new_tokens
        return RulerSteps(max(1, limit // 32), grow=True, start=max(1, limit // self.coded_wordlen))

    def build(self, n: int, seed: int, length: int, count_tokens=None, ruler: bool = False
              ) -> tuple[str, list[str], dict]:
        """`ruler`: the vocabulary's ranks and the stream in RULER's fixed-seed order
        (`fixed_shuffle`: one permutation per size) instead of ones drawn per sample."""
        rng = random.Random(seed)
        size = self.vocab_size or max(5, (length - self.max_new_tokens) // 50)
        vocab: set[str] = set()
        while len(vocab) < size:
            vocab.add("".join(rng.choices(string.ascii_lowercase, k=self.coded_wordlen)))
        words = sorted(vocab)
        if ruler:
            words = fixed_shuffle(words)
        else:
            rng.shuffle(words)
        words[0] = FWE_NOISE
        total = zeta(self.alpha)
        counts = [int(n * k ** -self.alpha / total) for k in range(1, len(words) + 1)]
        stream = [w for w, c in zip(words, counts) for _ in range(c)]
        if ruler:
            stream = fixed_shuffle(stream)
        else:
            random.Random(f"{seed}-stream").shuffle(stream)
        template, prefix = (FWE_TEMPLATE, FWE_PREFIX) if self.template is None else \
            (self.template, self.answer_prefix or "")
        prompt = render(template, prefix, context=" ".join(stream), query="")
        return prompt, words[1:4], {"haystack_units": n, "words": len(stream), "vocab_size": size}
