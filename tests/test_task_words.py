"""common_words and frequent_words: the answer is the set of most frequent word symbols before
QUERY, recoverable by counting in plain Python, and strictly more frequent than every other
word in every sample at every length."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from longarch import tasks
from longarch.tasks.tokens.words import QUERY, WORD0, CommonWordsTask, FrequentWordsTask


def _solve(task, tokens: np.ndarray, k: int) -> tuple[list[int], Counter]:
    """A reference solver for one sample: count the word symbols before the final QUERY; the k
    most frequent (asserted strictly ahead of the rest), most frequent first, and the counts."""
    assert tokens[-1] == QUERY
    counts = Counter(int(t) for t in tokens[:-1] if WORD0 <= t < WORD0 + task.n_words)
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    top = ranked[:k]
    rest = max((counts[w] for w in ranked[k:]), default=0)
    assert min(counts[w] for w in top) > rest, "the answer is well defined"
    return top, counts


# ---------------------------------------------------------------- common_words


def test_common_defaults_and_registry():
    task = tasks.get("common_words")
    assert isinstance(task, CommonWordsTask)
    assert task.knobs == {"n_words": 16, "n_common": 4, "common_freq": 5, "uncommon_freq": 2,
                          "n_filler": 16, "haystack": "noise", "pattern_length": 8}
    assert task.vocab_size == 34 and task.min_length == 4 * 5 + 12 * 2 + 1 == 45 and task.answer_length == 4
    assert task.item_length == 1 and not task.ordered and not task.uses_depth


def test_common_one_sample_decodes_token_by_token():
    task = CommonWordsTask(n_words=4, n_common=1, common_freq=3, uncommon_freq=1, pattern_length=3)
    samples = task.generate(13, 1, seed=2)  # list of 6 words, 6 filler, QUERY
    tokens, names = samples.tokens[0], [task.symbol(int(t)) for t in samples.tokens[0]]
    assert names[-1] == "QUERY"
    words = [t for t in range(12) if names[t][0] == "w"]
    counts = Counter(names[t] for t in words)
    assert len(words) == 6 and sorted(counts.values()) == [1, 1, 1, 3] and len(counts) == 4
    (common,) = [w for w, c in counts.items() if c == 3]
    assert [task.symbol(int(a)) for a in samples.answers[0]] == [common]
    assert samples.meta["common_positions"][0, 0].tolist() == [t for t in words if names[t] == common]
    pattern = np.random.default_rng(0).integers(0, 16, 3) + WORD0 + 4
    assert [tokens[t] for t in range(12) if t not in words] == np.resize(pattern, 6).tolist()
    assert all(names[t][0] == "f" for t in range(12) if t not in words)
    assert samples.meta["answer_counts"][0].tolist() == [3] and samples.meta["margin_count"][0] == 1


@pytest.mark.parametrize("knobs", [{}, {"n_common": 1}, {"uncommon_freq": 0, "common_freq": 1},
                                   {"n_words": 32, "n_common": 10, "common_freq": 3, "haystack": "random"}])
@pytest.mark.parametrize("extra", [0, 1, 6, 300])
def test_common_reference_solver_and_meta(knobs, extra):
    task = CommonWordsTask(**knobs)
    k, cf, uf = task.n_common, task.common_freq, task.uncommon_freq
    length = task.min_length + extra
    samples = task.generate(length, 200, seed=extra)
    position = samples.meta["common_positions"]
    assert position.shape == (200, k, cf)
    for i in range(200):
        tokens, answer = samples.tokens[i], samples.answers[i].tolist()
        top, counts = _solve(task, tokens, k)
        assert sorted(top) == answer  # answers: ascending symbol id
        assert all(counts[w] == cf for w in answer)
        assert all(c == uf for w, c in counts.items() if w not in answer)
        assert len(counts) == (task.n_words if uf else k)
        for j, word in enumerate(answer):
            assert position[i, j].tolist() == np.flatnonzero(tokens == word).tolist()
        if extra == 0:
            assert (tokens[:-1] < WORD0 + task.n_words).all()  # no filler at min_length
    np.testing.assert_allclose(samples.meta["common_depths"], 100 * position / (length - 2))
    assert (samples.meta["answer_counts"] == cf).all() and (samples.meta["margin_count"] == uf).all()
    assert (samples.meta["list_length"] == task.min_length - 1).all()


def test_common_words_vary_and_spread():
    samples = CommonWordsTask().generate(1001, 1000, seed=4)
    chosen = np.bincount(samples.answers.ravel() - WORD0, minlength=16)
    assert chosen.min() > 0.75 * 250 and chosen.max() < 1.25 * 250  # each word common in ~1/4 of samples
    pooled = np.histogram(samples.meta["common_positions"], bins=5, range=(0, 1000))[0]
    assert pooled.min() > 0.9 * 4000 and pooled.max() < 1.1 * 4000


@pytest.mark.parametrize("knobs, message", [
    ({"n_common": 0}, "common_words: n_common must be >= 1, not 0"),
    ({"uncommon_freq": -1}, "common_words: uncommon_freq must be >= 0, not -1"),
    ({"common_freq": 2.5}, "common_words: common_freq must be an integer"),
    ({"n_common": 16}, r"common_words: n_common \(16\) must be < n_words \(16\)"),
    ({"common_freq": 2}, r"common_words: common_freq \(2\) must be > uncommon_freq \(2\)"),
    ({"haystack": "text"}, "common_words: haystack must be one of noise, random, not 'text'"),
])
def test_common_knob_validation(knobs, message):
    with pytest.raises(ValueError, match=message):
        CommonWordsTask(**knobs)


# ---------------------------------------------------------------- frequent_words


def test_frequent_defaults_and_registry():
    task = tasks.get("frequent_words")
    assert isinstance(task, FrequentWordsTask)
    assert task.knobs == {"n_words": 16, "n_top": 3, "alpha": 2.0}
    assert task.vocab_size == 18 and task.min_length == 34 and task.answer_length == 3
    assert task.item_length == 1 and not task.ordered and not task.uses_depth


def test_frequent_one_sample_decodes_token_by_token():
    task = FrequentWordsTask(n_words=4, n_top=1, alpha=1.0)
    samples = task.generate(26, 1, seed=3)  # 25 words: shares 12/25, 6/25, 4/25, 3/25
    names = [task.symbol(int(t)) for t in samples.tokens[0]]
    assert names[-1] == "QUERY" and all(name[0] == "w" for name in names[:-1])
    assert sorted(Counter(names[:-1]).values(), reverse=True) == [12, 6, 4, 3]
    assert [task.symbol(int(a)) for a in samples.answers[0]] == [Counter(names[:-1]).most_common(1)[0][0]]
    assert samples.meta["answer_counts"][0].tolist() == [12] and samples.meta["margin_count"][0] == 6


@pytest.mark.parametrize("knobs", [{}, {"n_top": 1}, {"alpha": 1.0, "n_words": 32, "n_top": 5},
                                   {"alpha": 0.5, "n_words": 8, "n_top": 7}])
@pytest.mark.parametrize("extra", [0, 1, 6, 999])
def test_frequent_reference_solver_and_meta(knobs, extra):
    task = FrequentWordsTask(**knobs)
    k, length = task.n_top, task.min_length + extra
    samples = task.generate(length, 200, seed=extra)
    expected = task.counts(length - 1)
    for i in range(200):
        top, counts = _solve(task, samples.tokens[i], k)
        assert top == samples.answers[i].tolist()  # most frequent first
        assert sorted(counts.values(), reverse=True) == [c for c in expected if c]
        assert [counts[w] for w in top] == samples.meta["answer_counts"][i].tolist()
        assert samples.meta["margin_count"][i] == sorted(counts.values(), reverse=True)[k]
    assert (np.diff(samples.meta["answer_counts"], axis=1) < 0).all()


@pytest.mark.parametrize("knobs", [{}, {"n_top": 1}, {"alpha": 1.0, "n_words": 32, "n_top": 5},
                                   {"alpha": 0.5, "n_words": 8, "n_top": 7}, {"alpha": 3.0, "n_top": 4}])
def test_frequent_counts_are_zipf_and_untied_at_every_length(knobs):
    task = FrequentWordsTask(**knobs)
    shares = np.arange(1, task.n_words + 1) ** -float(task.alpha)
    shares /= shares.sum()
    for words in range(task.min_length - 1, task.min_length + 3000):
        counts = task.counts(words)
        assert counts.sum() == words and (np.diff(counts) <= 0).all()
        assert (np.diff(counts[:task.n_top + 1]) < 0).all(), words
        assert (np.abs(counts - words * shares) < 1).all()


def test_frequent_words_vary_per_sample():
    samples = FrequentWordsTask().generate(40, 6400, seed=5)
    top = np.bincount(samples.answers[:, 0] - WORD0, minlength=16)  # 400 each, sd 19
    assert top.min() > 0.8 * 400 and top.max() < 1.2 * 400


@pytest.mark.parametrize("knobs, message", [
    ({"n_top": 0}, "frequent_words: n_top must be >= 1, not 0"),
    ({"n_top": 16}, r"frequent_words: n_top \(16\) must be < n_words \(16\)"),
    ({"alpha": 0}, "frequent_words: alpha must be a positive number, not 0"),
    ({"alpha": -2.0}, "frequent_words: alpha must be a positive number"),
    ({"alpha": float("inf")}, "frequent_words: alpha must be a positive number"),
    ({"alpha": True}, "frequent_words: alpha must be a positive number"),
    ({"alpha": "2"}, "frequent_words: alpha must be a positive number"),
])
def test_frequent_knob_validation(knobs, message):
    with pytest.raises(ValueError, match=message):
        FrequentWordsTask(**knobs)


# ---------------------------------------------------------------- both


@pytest.mark.parametrize("task", [CommonWordsTask(), FrequentWordsTask()], ids=lambda t: t.name)
def test_scoring_is_a_set_of_words(task):
    samples = task.generate(task.min_length + 20, 50, seed=1)
    answers, k = samples.answers, task.answer_length
    np.testing.assert_array_equal(task.score(samples, answers), np.ones(50))
    np.testing.assert_array_equal(task.score(samples, answers[:, ::-1]), np.ones(50))
    wrong = answers.copy()
    wrong[:, 0] = QUERY
    np.testing.assert_allclose(task.score(samples, wrong), np.full(50, 1 - 1 / k))


@pytest.mark.parametrize("task", [CommonWordsTask(haystack="random"), FrequentWordsTask()], ids=lambda t: t.name)
def test_determinism_lengths_and_errors(task):
    name, m = task.name, task.min_length
    a, b = task.generate(201, 20, seed=9), task.generate(201, 20, seed=9)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.answers, b.answers)
    assert not np.array_equal(a.tokens, task.generate(201, 20, seed=10).tokens)
    for length in (m, m + 1, 2 * m + 1, 333):
        assert task.generate(length, 3, seed=0).tokens.shape == (3, length)
    with pytest.raises(ValueError, match=f"{name}: length {m - 1} is below the minimum {m}"):
        task.generate(m - 1, 2, seed=0)
    with pytest.raises(ValueError, match=f"{name}: this task has no needle depth"):
        task.generate(m, 2, seed=0, depth=50)
    big = task.generate(1_000_000, 2, seed=0)
    assert big.tokens.shape == (2, 1_000_000)
    for i in range(2):
        counts = np.bincount(big.tokens[i, :-1], minlength=task.vocab_size)[WORD0:WORD0 + task.n_words]
        top = np.sort(counts)[::-1]
        found = np.argsort(-counts, kind="stable")[:task.answer_length] + WORD0
        assert set(found.tolist()) == set(big.answers[i].tolist())
        assert top[task.answer_length - 1] > top[task.answer_length]
