"""Tokenizer-aware length fitting and the on-disk sample cache.

RULER's length: prompt tokens (the evaluated model's tokenizer) plus the task's generation budget
must be <= the target length. A task builds a prompt from `n` haystack units (words, sentences,
distractor needles, documents...); `fit` finds the largest `n` whose prompt fits, counting the
whole prompt exactly (special tokens included, so one stricter than RULER, which counts
`tokenizer.tokenize` without them). Like RULER, it never cuts a unit, so where one unit is a large
share of the target (a uuid-keyed distractor needle at 1K, a QA document at 1K-4K) the best fit can
land well under it; `fit` refuses a fit under `min_fill` of the target (a pretrained study's
`fit_tolerance`, 0.95 by default) with a FitError that says so and names the knob.

Two fit modes (a pretrained study's `eval.fit`):

    exact   `fit`: each sample as close to the length as whole units allow, at least
            `fit_tolerance` of it (the default).
    ruler   `ruler_fit`: RULER's own procedure (its scripts/data/synthetic/*.py), so that published
            RULER numbers can be reproduced: one haystack size per cell, by a binary search on one
            sample, then each sample shrunk by a fixed step until it fits; no minimum, so fills of
            35-90% occur. The tasks then also shuffle as RULER does (a fixed seed, so a permutation
            depends on the list's size alone). See `ruler_start` and `ruler_fit`.

The search measures a small haystack, estimates the tokens per unit, jumps near the answer and
closes in by interpolation (bisection when interpolation stalls): typically 4-12 tokenizations
of the whole prompt where plain bisection from 1 needed about 2*log2(n).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


class FitError(ValueError):
    """No haystack size satisfies the length rule. `best_total` is the largest prompt + budget that
    fits (None when even the empty haystack does not), `next_total` the same with one more unit."""

    def __init__(self, message: str, length: int, best_total: int | None = None, next_total: int | None = None,
                 units: int | None = None):
        super().__init__(message)
        self.length, self.best_total, self.next_total, self.units = length, best_total, next_total, units


@dataclass
class TextSample:
    prompt: str               # the whole prompt, answer prefix included (as a base model reads it)
    answers: list[str]
    max_new_tokens: int
    metadata: dict = field(default_factory=dict)
    answer_prefix: str = ""   # the end of `prompt` that a chat template puts in the assistant's turn

    @property
    def body(self) -> str:
        return self.prompt[:len(self.prompt) - len(self.answer_prefix)]


@dataclass
class Search:
    n: int                  # the largest unit count that fits
    tokens: int             # its measure
    payload: Any            # what measure(n) returned beside the count
    next_tokens: int        # the measure of n + 1 units (over the budget)
    calls: int              # how many times measure ran


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def tokenizer_identity(tokenizer) -> str:
    """name_or_path plus a hash of the vocabulary, so two tokenizers with one name do not share a cache."""
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]
    return f"{getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}:{digest}"


def largest_fitting(measure: Callable[[int], tuple[int, Any]], budget: int, first: int = 64,
                    limit: int = 10**8) -> Search | None:
    """The largest n >= 0 with measure(n)[0] <= budget, for a measure that grows with n; None when
    even n = 0 is over. Exact for a monotone measure: the answer fits and n + 1 was measured over."""
    calls = 0

    def run(n):
        nonlocal calls
        calls += 1
        return measure(n)

    base, payload = run(0)
    if base > budget:
        return None
    lo, lo_tokens, lo_payload = 0, base, payload
    hi, hi_tokens = None, None
    n, bisect = first, False
    while True:
        tokens, payload = run(n)
        width = None if hi is None else hi - lo
        if tokens <= budget:
            lo, lo_tokens, lo_payload = n, tokens, payload
        else:
            hi, hi_tokens = n, tokens
        if hi is not None and hi - lo <= 1:
            return Search(lo, lo_tokens, lo_payload, hi_tokens, calls)
        if hi is None:  # still unbounded: extrapolate from the tokens per unit seen so far
            rate = (lo_tokens - base) / lo
            step = (budget - lo_tokens) / rate if rate > 0 else math.inf
            n = lo + max(1, min(int(step) + 1, 8 * lo + first))  # aim just past the edge, so it brackets
            if n > limit:
                raise ValueError(f"no haystack of up to {limit} units exceeds {budget} tokens")
            continue
        bisect = width is not None and (hi - lo) * 2 > width  # the last step did not halve the bracket
        if bisect:
            n = (lo + hi) // 2
        else:  # linear interpolation between the bracket's ends
            n = lo + int((budget - lo_tokens) * (hi - lo) / (hi_tokens - lo_tokens))
        n = min(max(n, lo + 1), hi - 1)


FITS = ("exact", "ruler")
TOLERANCE = 0.95  # the default fit_tolerance


def measurer(task, tokenizer, length: int, seed: int, prompt_tokens: Callable[[str, str], int] | None = None,
             ruler: bool = False) -> Callable[..., tuple[int, Any]]:
    """measure(n, partial=0) -> (prompt tokens, (prompt, answers, metadata)) of `task`'s sample
    `seed` over n haystack units; `ruler` asks the task for RULER's fixed-seed shuffles."""
    def count(text: str) -> int:
        return count_tokens(tokenizer, text)

    def measure(n, partial: int = 0):
        extra = {"partial": partial} if partial else {}
        if ruler:
            extra["ruler"] = True
        prompt, answers, meta = task.build(n, seed, length, count, **extra)
        if prompt_tokens is None:
            return count(prompt), (prompt, answers, meta)
        prefix = getattr(prompt, "answer_prefix", "")
        return prompt_tokens(prompt[:len(prompt) - len(prefix)], prefix), (prompt, answers, meta)
    return measure


def fit(task, tokenizer, length: int, seed: int, min_fill: float = TOLERANCE,
        prompt_tokens: Callable[[str, str], int] | None = None) -> TextSample:
    """One sample of `task` whose prompt tokens + task.max_new_tokens is <= length and >= min_fill*length
    (`fit: exact`; `min_fill` is the study's `fit_tolerance`).

    `prompt_tokens(body, answer_prefix)` counts the prompt as the model will read it (with a chat
    template, say); by default the tokenizer's count of the whole text."""
    budget = length - task.max_new_tokens
    name = type(task).__name__
    measure = measurer(task, tokenizer, length, seed, prompt_tokens)

    found = largest_fitting(measure, budget)
    if found is None:
        empty = measure(0)[0]
        raise FitError(f"{name}: the prompt without haystack is already {empty} tokens, more than "
                       f"{length} - {task.max_new_tokens} (generation budget)", length)
    total = found.tokens + task.max_new_tokens
    partial = 0
    if total < min_fill * length and getattr(task, "takes_partial", False):
        # whole units leave too much room: add the first k words of one more distractor unit
        # (never a unit that holds an answer), k as large as fits
        more = largest_fitting(lambda k: measure(found.n, k), budget, first=8)
        if more is not None and more.n > 0:
            partial, calls = more.n, found.calls + more.calls
            found = Search(found.n, more.tokens, more.payload, found.next_tokens, calls)
            total = found.tokens + task.max_new_tokens
    if total < min_fill * length:
        unit = found.next_tokens - found.tokens
        raise FitError(
            f"{name}: best fit is {total} tokens ({found.n} haystack units), under {min_fill:.0%} of {length}: "
            f"one more unit adds {unit} tokens and makes {found.next_tokens + task.max_new_tokens} > {length}. "
            f"RULER never cuts a unit either; accept this fit with fit_tolerance {math.floor(100 * total / length) / 100:g} "
            f"or lower (the study's eval.fit_tolerance, or --fit-tolerance), or use fit: ruler",
            length, total, found.next_tokens + task.max_new_tokens, found.n)
    prompt, answers, meta = found.payload
    meta = dict(meta, length=length, prompt_tokens=found.tokens, total_tokens=total, seed=seed,
                partial_words=partial, fit_calls=found.calls)
    return TextSample(str(prompt), answers, task.max_new_tokens, meta, getattr(prompt, "answer_prefix", ""))


@dataclass(frozen=True)
class RulerSteps:
    """How RULER's prepare script for a task sizes its haystack, in RULER's own unit (a task's
    `ruler_steps(length, seed)` gives it). RULER's unit is `build`'s n plus `offset` (cwe counts
    the common words among its words, QA the golden documents among its documents).

    Searched (niah, vt, cwe, qa): `step` is RULER's `incremental`, both the binary search's lower
    bound and the shrinking step; tokens per unit are estimated on `probe` units (RULER: `step`
    units; cwe: 4096 words), and the search's upper bound is int(length / that * 3) (cwe:
    int(length // that) * 2), at least 2 * step.
    Grown (fwe, `grow`): from `start` units up by `step` while the prompt is under the length minus
    the generation budget, then one step back; each sample then steps down while over it."""
    step: int
    offset: int = 0
    probe: int | None = None
    bound: str = "x3"           # x3: int(length / per_unit * 3); floor x2: int(length // per_unit) * 2
    grow: bool = False
    start: int = 0              # grown: the first size tried

    def upper(self, length: int, per_unit: float) -> int:
        if per_unit <= 0:
            return 2 * self.step
        estimate = int(length // per_unit) * 2 if self.bound == "floor x2" else int(length / per_unit * 3)
        return max(estimate, 2 * self.step)


def ruler_start(task, tokenizer, length: int, probe_seed: int,
                prompt_tokens: Callable[[str, str], int] | None = None) -> int:
    """The haystack size (in RULER's unit) that RULER's prepare script settles on for a cell, from one
    probe sample (RULER probes with fresh random draws; here the cell's first sample, so the size is
    reproducible). Searched: a plain binary search for the largest size whose prompt + generation
    budget fits, between RULER's bounds (`RulerSteps`), or `step` when none fits. Grown (fwe):
    RULER's upward walk. `ruler_fit` then fits each sample from there."""
    steps = task.ruler_steps(length, probe_seed)
    measure = measurer(task, tokenizer, length, probe_seed, prompt_tokens, ruler=True)

    def prompt_size(units: int) -> int:
        return measure(max(units - steps.offset, 0))[0]

    if steps.grow:
        limit = length - task.max_new_tokens
        units = steps.start
        while prompt_size(units) < limit:
            units += steps.step
        return units - steps.step
    per_unit = prompt_size(steps.probe or steps.step) / (steps.probe or steps.step)
    low, high, best = steps.step, steps.upper(length, per_unit), None
    while low <= high:
        mid = (low + high) // 2
        if prompt_size(mid) + task.max_new_tokens <= length:
            best, low = mid, mid + 1
        else:
            high = mid - 1
    return steps.step if best is None else best


def ruler_fit(task, tokenizer, length: int, seed: int, start: int,
              prompt_tokens: Callable[[str, str], int] | None = None) -> TextSample:
    """One sample as RULER's prepare script makes it (`fit: ruler`): from the cell's size `start`
    (`ruler_start`), down by RULER's fixed step until prompt + generation budget <= length. No
    minimum fill: the sample keeps whatever share of the length that leaves. Where RULER would loop
    for ever (even its smallest size is over the length) this raises a FitError."""
    name = type(task).__name__
    steps = task.ruler_steps(length, seed)
    measure = measurer(task, tokenizer, length, seed, prompt_tokens, ruler=True)
    units, calls = start, 0
    while True:
        n = max(units - steps.offset, 0)
        tokens, payload = measure(n)
        calls += 1
        if tokens + task.max_new_tokens <= length:
            break
        if units - steps.step <= 0 or (not steps.grow and units <= steps.step):
            raise FitError(f"{name}: RULER's smallest haystack ({units} units) is {tokens + task.max_new_tokens} "
                           f"tokens with the generation budget, over {length}", length)
        units -= steps.step
    prompt, answers, meta = payload
    total = tokens + task.max_new_tokens
    meta = dict(meta, length=length, prompt_tokens=tokens, total_tokens=total, seed=seed, partial_words=0,
                fit_calls=calls, fit="ruler", ruler_units=units, ruler_start=start, ruler_step=steps.step)
    return TextSample(str(prompt), answers, task.max_new_tokens, meta, getattr(prompt, "answer_prefix", ""))


def fit_samples(task, tokenizer, length: int, n: int = 1, seed: int = 0, fit_mode: str = "exact",
                fit_tolerance: float = TOLERANCE,
                prompt_tokens: Callable[[str, str], int] | None = None) -> list[TextSample]:
    """n fitted samples of `task` (sample i uses seed*1_000_003 + i), without the cache: by `fit`
    (`fit_mode` "exact", refusing fills under `fit_tolerance`) or by RULER's procedure ("ruler":
    the cell's size from sample 0, then each sample stepped down from it)."""
    if fit_mode not in FITS:
        raise ValueError(f"fit must be exact or ruler, not {fit_mode!r}")
    seeds = [seed * 1_000_003 + i for i in range(n)]
    if fit_mode == "exact":
        return [fit(task, tokenizer, length, s, min_fill=fit_tolerance, prompt_tokens=prompt_tokens) for s in seeds]
    start = ruler_start(task, tokenizer, length, seeds[0], prompt_tokens)
    return [ruler_fit(task, tokenizer, length, s, start, prompt_tokens) for s in seeds]


def default_cache_dir() -> Path:
    return Path(os.environ.get("LONGARCH_TEXT_CACHE", Path.home() / ".cache" / "longarch" / "text"))


def cache_key(name: str, task, tokenizer, length: int, seed: int, n: int, counting: str = "base",
              fit_mode: str = "exact", fit_tolerance: float = TOLERANCE) -> str:
    """The cache file's key. The task's version, the fit mode and the tolerance enter it only when
    not their first or default values, so the samples cached before they existed are still found."""
    key = {"task": name, "knobs": dataclasses.asdict(task), "tokenizer": tokenizer_identity(tokenizer),
           "length": length, "seed": seed, "n": n, "counting": counting}
    version = getattr(task, "version", 1)
    if version != 1:
        key["version"] = version
    if fit_mode != "exact":
        key["fit"] = fit_mode
    if fit_tolerance != TOLERANCE:
        key["fit_tolerance"] = fit_tolerance
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def generate(name: str, task, tokenizer, length: int, n: int = 1, seed: int = 0,
             cache_dir: str | Path | None = None, prompt_tokens: Callable[[str, str], int] | None = None,
             counting: str = "base", fit_mode: str = "exact", fit_tolerance: float = TOLERANCE) -> list[TextSample]:
    """n fitted samples (`fit_samples`), loaded from the cache when already made. `prompt_tokens`
    as for `fit`; `counting` names it in the cache key ("base", "chat")."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(name, task, tokenizer, length, seed, n, counting, fit_mode, fit_tolerance)
    path = directory / f"{name}-{length}-{key}.jsonl"
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            return [TextSample(**json.loads(line)) for line in f if line.strip()]
    samples = fit_samples(task, tokenizer, length, n, seed, fit_mode, fit_tolerance, prompt_tokens)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(dataclasses.asdict(s), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return samples
