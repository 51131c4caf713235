"""Tokenizer-aware length fitting and the on-disk sample cache.

RULER's length: prompt tokens (the evaluated model's tokenizer, special tokens included) plus the
task's generation budget must be <= the target length. `fit` finds the largest haystack size that
satisfies this by exponential then binary search on the exact token count of the whole prompt
(about 2*log2(n) tokenizations), and refuses a fit that lands below `min_fill` of the target.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path


class FitError(ValueError):
    pass


@dataclass
class TextSample:
    prompt: str
    answers: list[str]
    max_new_tokens: int
    metadata: dict = field(default_factory=dict)


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def tokenizer_identity(tokenizer) -> str:
    """name_or_path plus a hash of the vocabulary, so two tokenizers with one name do not share a cache."""
    vocab = sorted(tokenizer.get_vocab().items())
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]
    return f"{getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__}:{digest}"


def fit(task, tokenizer, length: int, seed: int, min_fill: float = 0.95) -> TextSample:
    """One sample of `task` whose prompt tokens + task.max_new_tokens is <= length and >= min_fill*length."""
    budget = length - task.max_new_tokens
    calls = 0

    def size(n):
        nonlocal calls
        calls += 1
        prompt, answers, meta = task.build(n, seed, length)
        return count_tokens(tokenizer, prompt), (prompt, answers, meta)

    lo_tokens, lo_sample = size(0)
    if lo_tokens > budget:
        raise FitError(f"{type(task).__name__}: the prompt without haystack is already {lo_tokens} tokens, "
                       f"more than {length} - {task.max_new_tokens} (generation budget)")
    lo, hi = 0, 1
    while True:  # grow until the prompt no longer fits
        tokens, sample = size(hi)
        if tokens > budget:
            break
        lo, lo_tokens, lo_sample = hi, tokens, sample
        hi *= 2
    while hi - lo > 1:  # invariant: lo fits, hi does not
        mid = (lo + hi) // 2
        tokens, sample = size(mid)
        if tokens <= budget:
            lo, lo_tokens, lo_sample = mid, tokens, sample
        else:
            hi = mid
    total = lo_tokens + task.max_new_tokens
    if total < min_fill * length:
        raise FitError(f"{type(task).__name__}: best fit is {total} tokens, under {min_fill:.0%} of {length} "
                       f"(one haystack unit is too coarse for this tokenizer)")
    prompt, answers, meta = lo_sample
    meta = dict(meta, length=length, prompt_tokens=lo_tokens, total_tokens=total, seed=seed, fit_calls=calls)
    return TextSample(prompt, answers, task.max_new_tokens, meta)


def default_cache_dir() -> Path:
    return Path(os.environ.get("LONGARCH_TEXT_CACHE", Path.home() / ".cache" / "longarch" / "text"))


def cache_key(name: str, task, tokenizer, length: int, seed: int, n: int) -> str:
    key = {"task": name, "knobs": dataclasses.asdict(task), "tokenizer": tokenizer_identity(tokenizer),
           "length": length, "seed": seed, "n": n}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


def generate(name: str, task, tokenizer, length: int, n: int = 1, seed: int = 0,
             cache_dir: str | Path | None = None) -> list[TextSample]:
    """n fitted samples (sample i uses seed*1_000_003 + i), loaded from the cache when already made."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = directory / f"{name}-{length}-{cache_key(name, task, tokenizer, length, seed, n)}.jsonl"
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            return [TextSample(**json.loads(line)) for line in f if line.strip()]
    samples = [fit(task, tokenizer, length, seed * 1_000_003 + i) for i in range(n)]
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(dataclasses.asdict(s), ensure_ascii=False) + "\n")
    tmp.replace(path)
    return samples
