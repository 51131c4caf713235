"""RULER's retrieval and multi-hop tasks (NIAH x8, vt) as prompt generators, and the 11 synthetic
configurations of RULER's scripts/synthetic.yaml (`CONFIGS`; cwe/fwe live in aggregation.py).

Each task is a dataclass of knobs with RULER's defaults. `build(n, seed, length, count_tokens)`
makes one sample whose haystack has `n` units (essay words, noise sentences, distractor needles);
`fit.py` searches `n` so the prompt fits a target length with the evaluated model's tokenizer.
The same seed gives the same needles, depths and answers whatever `n` is.

Prompts: this project's own wording of RULER's prompts, with the same structure (instruction,
context, question, and an answer prefix the model continues). RULER's text is not copied here;
`template=` / `answer_prefix=` knobs (or `templates.load_templates`) take exact ones from a file.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from ..base import TextTask

from .aggregation import CommonWords, FrequentWords
from .fit import RulerSteps, largest_fitting
from .haystack import DEPTHS, NOISE, at_depth, essay_sentences, fixed_shuffle, needle_value, place
from .templates import render

__all__ = ["NIAH", "VariableTracking", "CommonWords", "FrequentWords", "CONFIGS"]

# {type_needle_v} is plural ("numbers"), or singular ("number") when one value is asked for.
NIAH_TEMPLATE = (
    "Some secret {type_needle_v} are hidden in the text below. Remember them: you will be asked about "
    "them afterwards.\n{context}\nWhich secret {type_needle_v} for {query} does the text above give?"
)
NIAH_PREFIX = " The secret {type_needle_v} for {query} given in the text are"
NIAH_TEMPLATE_ONE = (
    "A secret {type_needle_v} is hidden in the text below. Remember it: you will be asked about it "
    "afterwards.\n{context}\nWhich secret {type_needle_v} for {query} does the text above give?"
)
NIAH_PREFIX_ONE = " The secret {type_needle_v} for {query} given in the text is"
NEEDLE = "One of the secret {type_needle_v} for {key} is: {value}."  # always plural, as in RULER

VT_TEMPLATE = (
    "Follow the chains of variable assignments hidden in the text below.\n\n{context}\n"
    "Question: Which variables are assigned the value {query} in the text above?"
)
VT_PREFIX = (" Answer: Following the assignments in the text above, {num_v} variables "
             "are assigned the value {query}, they are: ")


def distinct_slots(rng: random.Random, units: int, count: int) -> list[int]:
    """`count` unit indices, each the unit a statement goes just before: distinct indices of
    range(units) drawn without replacement, as RULER samples them, so every statement is followed
    by a unit of its own and no two statements touch. A haystack of fewer units than statements
    (only tiny ones: a fitted vt prompt at 1K has about 15 noise units for 5 statements) cannot
    separate them all: the indices are then drawn with replacement from range(units + 1), and
    statements sharing an index stand next to each other."""
    if count <= units:
        return rng.sample(range(units), count)
    return [rng.randrange(units + 1) for _ in range(count)]


def separated(positions: list[int], units: int) -> list[int]:
    """Sorted insert positions made distinct where the haystack has room (at most `units`, the
    end): each moved forward past its predecessor, then back from the end when that ran over, so
    that a unit separates every two inserts. With fewer than count - 1 units some stay adjacent."""
    out = sorted(positions)
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1] + 1)
    for i in range(len(out) - 1, -1, -1):
        ceiling = units if i == len(out) - 1 else out[i + 1] - 1
        out[i] = max(0, min(out[i], ceiling))
    return out


def ruler_singular(text: str) -> str:
    """RULER's rewrite of a user-given NIAH template (and prefix) when one value is asked for:
    plain substring replacements, kept as RULER has them so its exact prompts come out."""
    for plural, single in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        text = text.replace(plural, single)
    return text


@dataclass(frozen=True)
class NIAH(TextTask):
    """Needle in a haystack: KEY -> VALUE needles; query some keys, answer all their values.

    Depths as in RULER: in an essay haystack each needle goes between sentences at a depth drawn
    without replacement from `DEPTHS`; in a noise or needle haystack at a uniformly random unit.
    `depth` (percent) puts every needle at that depth instead: the depth ablation.

    With `ruler=True` (`fit: ruler`) the needles are ordered as RULER orders them: made key by
    key, shuffled with RULER's fixed seed (`fixed_shuffle`: one order for every sample), then laid
    at the sorted positions (in a noise or needle haystack, distinct random units, last needle
    first, as RULER's inserts from the back leave them). Otherwise each needle keeps its own depth,
    so their order varies per sample."""
    type_haystack: str = "essay"      # noise | essay | needle
    type_needle_k: str = "words"      # words | numbers | uuids
    type_needle_v: str = "numbers"    # words | numbers | uuids
    num_needle_k: int = 1             # raised to num_needle_q when smaller, as RULER does
    num_needle_v: int = 1
    num_needle_q: int = 1
    corpus: str | None = None         # essay haystack file (default: Python's help topics)
    depth: float | None = None        # percent: every needle at this depth (the depth ablation); None: RULER's random depths
    max_new_tokens: int = 128         # RULER's tokens_to_generate for niah
    template: str | None = None       # {type_needle_v} {context} {query}; None: this project's wording
    answer_prefix: str | None = None

    def __post_init__(self):
        if self.type_haystack not in ("noise", "essay", "needle"):
            raise ValueError(f"type_haystack must be noise, essay or needle, not {self.type_haystack!r}")
        for kind in (self.type_needle_k, self.type_needle_v):
            if kind not in ("words", "numbers", "uuids"):
                raise ValueError(f"needle type must be words, numbers or uuids, not {kind!r}")
        if self.depth is not None and not 0 <= self.depth <= 100:
            raise ValueError(f"depth {self.depth} is outside 0-100")
        if min(self.num_needle_k, self.num_needle_v, self.num_needle_q) < 1:
            raise ValueError("num_needle_k, num_needle_v and num_needle_q must be at least 1")
        # as RULER: at least as many keys as queries (set once, here: the knobs as stored say so)
        object.__setattr__(self, "num_needle_k", max(self.num_needle_k, self.num_needle_q))

    def _prompt(self, context: str, query: str) -> str:
        single = self.num_needle_q * self.num_needle_v == 1
        kind = self.type_needle_v[:-1] if single else self.type_needle_v
        if self.template is None:
            template, prefix = (NIAH_TEMPLATE_ONE, NIAH_PREFIX_ONE) if single else (NIAH_TEMPLATE, NIAH_PREFIX)
        else:
            template, prefix = self.template, self.answer_prefix or ""
            if single:
                template, prefix = ruler_singular(template), ruler_singular(prefix)
        return render(template, prefix, type_needle_v=kind, context=context, query=query)

    @property
    def takes_partial(self) -> bool:
        """Whether `build` can add part of one more unit: for distractor needles, whose units are
        coarse (a uuid needle is ~60 tokens); sentences of noise or essay are fine-grained."""
        return self.type_haystack == "needle"

    def _ruler_order(self, needles: list[str], depths: list[float], n: int, seed: int
                     ) -> tuple[list[str], list[float], list[int] | None]:
        """The needles in RULER's order, their depths ascending, and (noise or needle haystack) the
        units they go before (see the class). Those units come from their own stream, so the rest
        of the sample stays the same whatever n is."""
        shuffled = fixed_shuffle(needles)
        if self.depth is not None:
            return shuffled, depths, None
        if self.type_haystack == "essay":
            return shuffled, sorted(depths), None
        prng = random.Random(f"{seed}-positions")
        units = sorted(prng.sample(range(n), len(needles)) if len(needles) <= n else
                       [prng.randrange(n + 1) for _ in needles])
        return shuffled[::-1], [100 * u / n if n else 0.0 for u in units], units

    def ruler_steps(self, length: int, seed: int = 0) -> RulerSteps:
        """RULER's niah.py: 500 essay words a step; 25 noise sentences or distractor needles, 5
        below 4096 tokens."""
        if self.type_haystack == "essay":
            return RulerSteps(500)
        return RulerSteps(5 if length < 4096 else 25)

    def build(self, n: int, seed: int, length: int, count_tokens=None, partial: int = 0, ruler: bool = False
              ) -> tuple[str, list[str], dict]:
        """`partial` > 0 (needle haystack only): one more distractor needle, cut to its first
        `partial` words; `fit` uses it only where whole needles land under 95% of the length.
        `ruler`: RULER's needle order (see the class)."""
        if partial and self.type_haystack != "needle":
            raise ValueError("a partial haystack unit is for the needle haystack only")
        rng = random.Random(seed)
        keys: list[str] = []
        while len(keys) < self.num_needle_k:
            key = needle_value(rng, self.type_needle_k)
            if key not in keys:
                keys.append(key)
        values = [[needle_value(rng, self.type_needle_v) for _ in range(self.num_needle_v)] for _ in keys]
        needles = [NEEDLE.format(type_needle_v=self.type_needle_v, key=k, value=x) for k, vs in zip(keys, values)
                   for x in vs]
        if self.type_haystack == "essay":
            depths = [float(d) for d in (rng.sample(DEPTHS, len(needles)) if len(needles) <= len(DEPTHS)
                                         else [rng.choice(DEPTHS) for _ in needles])]
        else:
            depths = [100 * rng.random() for _ in needles]
        if self.depth is not None:  # drawn above all the same, so a fixed depth changes nothing else
            depths = [float(self.depth)] * len(needles)
        queried = rng.sample(range(len(keys)), self.num_needle_q)
        units_at = None
        if ruler:
            needles, depths, units_at = self._ruler_order(needles, depths, n, seed)
        if self.type_haystack == "essay":
            sentences = essay_sentences(self.corpus, n)
            positions = [at_depth(len(sentences), d) for d in depths]
            context = " ".join(place(sentences, needles, positions))
        else:
            if self.type_haystack == "noise":
                units = [NOISE] * n
            else:  # distractor needles with other keys, from their own stream so n does not move the rest
                drng = random.Random(f"{seed}-distractors")
                units = []
                while len(units) < n + (partial > 0):
                    key = needle_value(drng, self.type_needle_k)
                    if key not in keys:
                        value = needle_value(drng, self.type_needle_v)
                        units.append(NEEDLE.format(type_needle_v=self.type_needle_v, key=key, value=value))
                if partial:  # its key is not a queried one, so the cut needle can never be an answer
                    units[-1] = " ".join(units[-1].split()[:partial])
            positions = units_at or [at_depth(len(units), d) for d in depths]
            context = "\n".join(place(units, needles, positions))
        qkeys = [keys[i] for i in queried]
        query = qkeys[0] if len(qkeys) == 1 else ", ".join(qkeys[:-1]) + ", and " + qkeys[-1]
        answers = [x for i in queried for x in values[i]]
        return self._prompt(context, query), answers, {"depths": depths, "keys": qkeys, "haystack_units": n}


@dataclass(frozen=True)
class VariableTracking(TextTask):
    """Chains of VAR X = VAR Y assignments hidden in a haystack; name every variable bound to the value
    of the first chain.

    As in RULER, the prompt opens with a one-shot example of the whole task (3-letter variables,
    min(num_hops, 10) hops, its own haystack grown to at most `example_tokens` tokens, followed by its
    answer), and the example counts toward the target length at every length.

    Placement (version 2): as RULER samples distinct noise units, every statement goes just before a
    noise unit of its own, so at least one noise sentence separates any two statements (version 1
    drew a depth per statement and could put two hops side by side). In an essay haystack the
    statements go at sorted RULER depths, moved apart where two depths fall on one sentence. Only a
    haystack with fewer units than statements leaves some adjacent (`distinct_slots`)."""
    version = 2                       # 2: hops never adjacent (issue 23)
    num_chains: int = 1
    num_hops: int = 4
    type_haystack: str = "noise"      # noise | essay
    corpus: str | None = None         # essay haystack file (default: Python's help topics)
    example_tokens: int = 500         # RULER sizes its one-shot example to 500 tokens
    max_new_tokens: int = 30          # RULER's tokens_to_generate for variable_tracking
    template: str | None = None       # {context} {query} {num_v}; None: this project's wording
    answer_prefix: str | None = None

    def __post_init__(self):
        if self.type_haystack not in ("noise", "essay"):
            raise ValueError(f"type_haystack must be noise or essay, not {self.type_haystack!r}")
        if self.num_chains < 1 or self.num_hops < 1:
            raise ValueError("num_chains and num_hops must be at least 1")

    def _sample(self, n: int, rng: random.Random, name_length: int, num_hops: int) -> tuple[str, list[str], dict]:
        """A prompt (with answer prefix) over `n` haystack units, and the variables of chain 0."""
        per = num_hops + 1
        names: list[str] = []
        while len(names) < self.num_chains * per:
            name = "".join(rng.choices(string.ascii_uppercase, k=name_length))
            if name not in names:
                names.append(name)
        chains = [names[c * per:(c + 1) * per] for c in range(self.num_chains)]
        values = [str(rng.randrange(10000, 99999)) for _ in chains]
        statements = [[f"VAR {chain[0]} = {value}"] + [f"VAR {b} = VAR {a}" for a, b in zip(chain, chain[1:])]
                      for chain, value in zip(chains, values)]
        if self.type_haystack == "noise":  # each statement just before its own noise unit, as RULER
            units, joiner = [NOISE] * n, "\n"
            inserts = [s for chain in statements for s in chain]
            slots = distinct_slots(rng, n, len(inserts))
            positions = [p for c in range(len(chains)) for p in sorted(slots[c * per:(c + 1) * per])]
            depths = [100 * p / n if n else 0.0 for p in positions]
        else:  # between sentences at sorted RULER depths, chains interleaved at random in their own order
            units, joiner = essay_sentences(self.corpus, n), " "
            order = [c for c, chain in enumerate(statements) for _ in chain]
            rng.shuffle(order)
            taken = [0] * len(statements)
            inserts = []
            for c in order:
                inserts.append(statements[c][taken[c]] + ".")
                taken[c] += 1
            count = len(inserts)
            depths = sorted(rng.sample(DEPTHS, count) if count <= len(DEPTHS) else
                            [rng.choice(DEPTHS) for _ in inserts])
            positions = separated([at_depth(len(units), d) for d in depths], len(units))
        context = joiner.join(place(units, inserts, positions))
        prompt = render(self.template or VT_TEMPLATE, VT_PREFIX if self.template is None else self.answer_prefix or "",
                        context=context, query=values[0], num_v=per)
        return prompt, chains[0], {"haystack_units": n, "value": values[0], "depths": depths,
                                   "positions": positions}

    def example(self, seed: int, count_tokens) -> str:
        """The one-shot example: its prompt over the largest haystack within `example_tokens`, then
        its answer, then a blank line."""
        def measure(m):
            prompt, answer, _ = self._sample(m, random.Random(f"{seed}-example"), 3, min(self.num_hops, 10))
            return count_tokens(prompt), prompt + " " + " ".join(answer)

        found = largest_fitting(measure, self.example_tokens, first=8)
        if found is None:
            raise ValueError(f"vt: the one-shot example does not fit in example_tokens={self.example_tokens}")
        return found.payload + "\n\n"

    def ruler_steps(self, length: int, seed: int = 0) -> RulerSteps:
        """RULER's variable_tracking.py: 500 essay words a step; 10 noise sentences, 5 below 4096."""
        if self.type_haystack == "essay":
            return RulerSteps(500)
        return RulerSteps(5 if length < 4096 else 10)

    def build(self, n: int, seed: int, length: int, count_tokens=None, ruler: bool = False
              ) -> tuple[str, list[str], dict]:
        """`ruler` changes nothing here: RULER's vt has no fixed-seed shuffle, and its hops are
        placed as `_sample` places them in both modes."""
        if count_tokens is None:
            raise ValueError("vt needs count_tokens (the tokenizer's count) to size its one-shot example")
        prompt, answers, meta = self._sample(n, random.Random(seed), 5, self.num_hops)
        return prompt.after(self.example(seed, count_tokens)), answers, meta


# RULER's 13 configurations (scripts/synthetic.yaml); qa_1/qa_2 are in qa.py
CONFIGS = {
    "niah_single_1": (NIAH, dict(type_haystack="noise", type_needle_k="words", type_needle_v="numbers")),
    "niah_single_2": (NIAH, dict(type_haystack="essay", type_needle_k="words", type_needle_v="numbers")),
    "niah_single_3": (NIAH, dict(type_haystack="essay", type_needle_k="words", type_needle_v="uuids")),
    "niah_multikey_1": (NIAH, dict(type_haystack="essay", num_needle_k=4)),
    "niah_multikey_2": (NIAH, dict(type_haystack="needle")),
    "niah_multikey_3": (NIAH, dict(type_haystack="needle", type_needle_k="uuids", type_needle_v="uuids")),
    "niah_multivalue": (NIAH, dict(type_haystack="essay", num_needle_v=4)),
    "niah_multiquery": (NIAH, dict(type_haystack="essay", num_needle_q=4)),  # num_needle_k rises to 4
    "vt": (VariableTracking, dict(type_haystack="noise", num_chains=1, num_hops=4)),
    "cwe": (CommonWords, dict(freq_cw=30, freq_ucw=3, num_cw=10)),
    "fwe": (FrequentWords, dict(alpha=2.0)),
}
