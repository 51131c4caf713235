"""The needle task, RULER's NIAH family (single, multi-key, multi-value and multi-query needles;
noise, random, text and needles haystacks; symbol, number and uuid keys and values): the layout
and its disjoint alphabets, a reference solver finding every answer, exact lengths, what each
haystack is made of, fixed depths honoured (one needle exactly, several within half a needle),
random depths uniform, scoring, knobs and clear errors, and the default samples pinned bit for
bit to what the single-needle task generated before the family existed. The checks every task
shares are in test_task_registry.py."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from longarch import tasks
from longarch.tasks.tokens.needle import QUERY

HAYSTACKS = ["noise", "random", "text"]
FORMAT_LENGTH = {"symbol": 1, "number": 7, "uuid": 32}


def _task(**knobs):
    return tasks.get("needle", **knobs)


def _where(tokens: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return (tokens >= lo) & (tokens < hi)


def _haystacks(samples) -> np.ndarray:
    """Each single-needle sample with its needle and the final QUERY KEY removed."""
    tokens, position = samples.tokens, samples.meta["needle_position"]
    keep = np.ones(tokens.shape, dtype=bool)
    keep[np.arange(len(samples)), position] = keep[np.arange(len(samples)), position + 1] = False
    keep[:, -2:] = False
    return tokens[keep].reshape(len(samples), -1)


def _solve(task, tokens: np.ndarray) -> tuple[list, dict]:
    """Reference solver for one sample: the queried keys read off the tail, and every key's
    values in body order, found by dropping filler symbols and reading the rest as needles."""
    k, v = task._format_length(task.key), task.item_length
    tail = tokens[len(tokens) - task.queries * (1 + k):].reshape(task.queries, 1 + k)
    assert (tail[:, 0] == QUERY).all()
    body = tokens[:len(tokens) - tail.size]
    filler0 = 2 + task.n_keys + task.n_values
    kept = [int(t) for t in body if not filler0 <= t < filler0 + task.n_filler]
    assert len(kept) % (k + v) == 0 and QUERY not in kept
    found: dict = {}
    value0 = 2 + task.n_keys
    for i in range(0, len(kept), k + v):
        if task.key == "symbol":
            assert 2 <= kept[i] < value0  # a needle's key, not a piece of another needle
        if task.value == "symbol":
            assert value0 <= kept[i + k] < filler0
        found.setdefault(tuple(kept[i:i + k]), []).append(tuple(kept[i + k:i + k + v]))
    return [tuple(int(t) for t in row[1:]) for row in tail], found


# ---------------------------------------------------------------- pinned samples

# Hashes of tokens, answers and needle positions, taken from the single-needle generator before
# the multi-needle knobs were added: existing knobs must keep generating the same samples.
PINNED = [
    ({}, 64, 100, 0, None, "9ceb20ac19120cec"),
    ({}, 4096, 8, 1, None, "915ae8e5cb773c75"),
    ({}, 300, 50, 2, 37.5, "95738acca65f9358"),
    ({"haystack": "random"}, 200, 40, 3, None, "13962a94fc4ed243"),
    ({"haystack": "text", "n_filler": 16}, 200, 40, 4, None, "cb9742b7e9a1681a"),  # the text default before
    ({"haystack": "text"}, 200, 40, 4, None, "6d62354c815b8d52"),  # the default vocabulary since (n_filler 1772)
    ({"haystack": "random", "key": "number", "value": "uuid"}, 300, 20, 5, None, "c2ece1efa9585e21"),
    ({"haystack": "noise", "key": "uuid", "value": "number", "number_length": 5}, 300, 20, 6, 80, "320d93c2631aad99"),
    ({"n_keys": 5, "n_values": 7, "n_filler": 3, "pattern_length": 3}, 100, 20, 7, None, "32342f61a8699f89"),
]


@pytest.mark.parametrize("knobs, length, n, seed, depth, digest", PINNED)
def test_existing_knobs_generate_the_same_samples_as_before(knobs, length, n, seed, depth, digest):
    samples = _task(**knobs).generate(length, n, seed=seed, depth=depth)
    h = hashlib.sha256()
    for array in (samples.tokens, samples.answers, samples.meta["needle_position"]):
        h.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    assert h.hexdigest()[:16] == digest


def test_generation_is_deterministic_in_the_seed():
    task = _task(haystack="needles", needle_keys=3, values_per_key=2, queries=2)
    a, b, c = (task.generate(300, 20, seed=s) for s in (1, 1, 2))
    for key in ("tokens", "answers"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    for key in a.meta:
        np.testing.assert_array_equal(a.meta[key], b.meta[key])
    assert not np.array_equal(a.tokens, c.tokens)


# ---------------------------------------------------------------- layout and alphabets


@pytest.mark.parametrize("haystack", HAYSTACKS)
def test_needle_alphabets_are_disjoint(haystack):
    task = _task(haystack=haystack, n_keys=5, n_values=7, n_filler=3)
    samples = task.generate(120, 50, seed=5)
    tokens = samples.tokens
    key0, value0, filler0 = 2, 2 + task.n_keys, 2 + task.n_keys + task.n_values
    assert task.vocab_size == filler0 + task.n_filler
    keys, values = _where(tokens, key0, value0), _where(tokens, value0, filler0)
    fillers, queries = _where(tokens, filler0, task.vocab_size), tokens == QUERY
    assert (keys | values | fillers | queries).all()  # nothing else, no padding 0
    assert (keys.sum(1) == 2).all() and keys[:, -1].all()  # the needle key and the query key only
    assert (values.sum(1) == 1).all()
    assert (queries.sum(1) == 1).all() and queries[:, -2].all()
    assert _where(samples.answers, value0, filler0).all()
    if haystack != "text":  # text fillers print as words
        assert {task.symbol(t)[0] for t in np.unique(tokens)} <= {"k", "v", "f", "Q"}


def test_a_multi_needle_sample_decodes_symbol_by_symbol():
    task = _task(needle_keys=3, values_per_key=2, queries=2, pattern_length=5)
    samples = task.generate(41, 1, seed=3, depth=40)
    tokens, meta = samples.tokens[0].tolist(), samples.meta
    position = meta["needle_positions"][0].tolist()  # needle i*V + j: key i, value j
    keys = [tokens[position[2 * i]] for i in range(3)]
    values = [tokens[p + 1] for p in position]
    assert len(set(keys)) == 3 and len(set(values)) == 6
    assert all(2 <= key < 18 for key in keys) and all(18 <= value < 34 for value in values)
    for i, p in enumerate(position):
        assert tokens[p] == keys[i // 2]
    assert tokens[-4:] == [QUERY, keys[0], QUERY, keys[1]]  # queries: the first two keys
    assert meta["needle_queried"][0].tolist() == [True] * 4 + [False] * 2
    # depth 40 of span 35 (body 37 - needle 2) is 14, inside the needle that without needle 0
    # would start at 13: needle 0 moves to that needle's start and the other follows it
    assert round(0.4 * (41 - 4 - 2)) == 14 and position[0] == 13 and position[3] == 15
    haystack = [t for i, t in enumerate(tokens[:-4]) if not any(p <= i < p + 2 for p in position)]
    assert len(haystack) == 41 - 4 - 12
    assert haystack == list(np.resize(haystack[:5], len(haystack)))  # the repeated noise pattern
    first = sorted(position[:2])  # key 0's values in body order, then key 1's
    second = sorted(position[2:4])
    assert samples.answers[0].tolist() == [tokens[p + 1] for p in first + second]
    assert task.answer_length == 4 and task.item_length == 1 and task.min_length == 6 * 2 + 4 + 1


# ---------------------------------------------------------------- the reference solver

CONFIGS = [
    dict(),
    dict(needle_keys=4, queries=1),  # multi-key
    dict(values_per_key=3),  # multi-value
    dict(needle_keys=3, values_per_key=2, queries=2),  # multi-query
    dict(haystack="random", needle_keys=5, queries=5),
    dict(haystack="text", needle_keys=2, values_per_key=2, queries=2),
    dict(haystack="needles"),
    dict(haystack="needles", needle_keys=3, values_per_key=2, queries=2),
    dict(haystack="needles", key="number", value="number", needle_keys=2, queries=2),
    dict(haystack="needles", key="uuid", value="symbol", values_per_key=2),
    dict(haystack="noise", key="symbol", value="uuid", needle_keys=2, values_per_key=2),
    dict(haystack="random", key="number", value="number", number_length=3, needle_keys=4, values_per_key=3, queries=3),
    dict(haystack="text", key="uuid", value="uuid", uuid_length=5, needle_keys=2, queries=2),
    dict(haystack="needles", value="uuid", uuid_length=8),
    dict(haystack="noise", value="number", number_length=3, n_keys=8, distractors=14),  # fixed distractors
    dict(haystack="text", key="number", number_length=2, needle_keys=2, queries=2, distractors=3),
]


@pytest.mark.parametrize("knobs", CONFIGS)
def test_the_reference_solver_finds_every_answer(knobs):
    task = _task(**knobs)
    K, V, Q = task.needle_keys, task.values_per_key, task.queries
    for length in (task.min_length, task.min_length + 5, 333, 1000):
        length = max(length, task.min_length)
        samples = task.generate(length, 150, seed=length)
        assert samples.tokens.shape == (150, length) and samples.answers.shape == (150, task.answer_length)
        for tokens, answer in zip(samples.tokens, samples.answers):
            queried, found = _solve(task, tokens)
            assert len(set(queried)) == Q and all(len(found[key]) == V for key in queried)  # no distractor has them
            expected = [t for key in queried for value in found[key] for t in value]
            assert answer.tolist() == expected
            real = [key for key, values in found.items() if len(values) == V and key in queried]
            assert len(real) == Q
        position = samples.meta["needle_positions"]  # (n, S): every needle where meta says
        assert position.shape == (150, K * V)
        assert samples.meta["needle_queried"].sum(axis=1).tolist() == [Q * V] * 150
        ends = np.sort(position, axis=1)
        assert (np.diff(ends, axis=1) >= task._needle_length).all()  # never overlapping
        assert (samples.meta["needle_position"] == position[:, 0]).all()


def test_values_and_keys_stay_distinct_in_a_small_space():
    task = _task(key="number", value="number", number_length=1, needle_keys=9, values_per_key=1, queries=9,
                 haystack="needles")
    samples = task.generate(400, 200, seed=8)
    keys = samples.tokens[:, -9 * 2:].reshape(200, 9, 2)[:, :, 1]
    assert all(len(set(row)) == 9 for row in keys.tolist())
    assert all(len(set(row)) == 9 for row in samples.answers.tolist())
    for tokens, answer in zip(samples.tokens[:20], samples.answers[:20]):
        queried, found = _solve(task, tokens)
        assert answer.tolist() == [t for key in queried for value in found[key] for t in value]


# ---------------------------------------------------------------- formats and exact lengths


@pytest.mark.parametrize("key, value", [("number", "symbol"), ("symbol", "uuid"), ("uuid", "number"),
                                        ("number", "number")])
@pytest.mark.parametrize("length", [None, 64, 1000])  # None: the format's minimum
def test_number_and_uuid_formats_have_exact_lengths_and_find_their_needle(key, value, length):
    task = _task(haystack="random", key=key, value=value)
    k, v = FORMAT_LENGTH[key], FORMAT_LENGTH[value]
    assert task.min_length == 2 * k + v + 2 and task.answer_length == v
    length = max(length or 0, task.min_length)
    samples = task.generate(length, 30, seed=12, depth=50)
    assert samples.tokens.shape == (30, length) and samples.answers.shape == (30, v)
    rows = np.arange(30)[:, None]
    position = samples.meta["needle_position"][:, None]
    needle = samples.tokens[rows, position + np.arange(k + v)]
    assert np.array_equal(needle[:, :k], samples.tokens[:, -k:])  # the queried key is the needle's
    assert np.array_equal(needle[:, k:], samples.answers)
    assert (samples.tokens[:, -k - 1] == QUERY).all()
    digits = {"symbol": None, "number": set("0123456789"), "uuid": set("0123456789abcdef")}
    for fmt, part in ((key, needle[:, :k]), (value, samples.answers)):
        if digits[fmt]:
            assert {task.symbol(int(t)) for t in part.ravel()} <= digits[fmt]
    assert task.vocab_size == 2 + 16 * 3 + 16 and samples.tokens.max() < task.vocab_size
    with pytest.raises(ValueError, match=f"minimum {task.min_length}"):
        task.generate(task.min_length - 1, 1, seed=0)


def test_exact_lengths_and_the_minimum():
    task = _task(haystack="needles", key="number", needle_keys=3, values_per_key=2, queries=2)
    m = 7 + 1
    assert task.min_length == 6 * m + 2 * (1 + 7) + 1
    for length in (task.min_length, task.min_length + 1, task.min_length + 7, 999):
        assert task.generate(length, 5, seed=length).tokens.shape == (5, length)
    big = task.generate(1_000_000, 2, seed=7)
    assert big.tokens.shape == (2, 1_000_000) and big.answers.shape == (2, 4)
    for tokens, answer in zip(big.tokens, big.answers):
        queried, found = _solve(task, tokens)
        assert answer.tolist() == [t for key in queried for value in found[key] for t in value]
    with pytest.raises(ValueError, match=f"minimum {task.min_length}"):
        task.generate(task.min_length - 1, 2, seed=0)


def test_uuid_length_sets_the_hex_string_and_joins_the_knobs_only_when_changed():
    full, short = _task(value="uuid"), _task(value="uuid", uuid_length=8)
    assert "uuid_length" not in full.knobs and short.knobs["uuid_length"] == 8  # old ids unchanged
    assert full.item_length == 32 and short.item_length == 8
    samples = short.generate(64, 50, seed=3)
    hex0 = short._hex0
    assert samples.answers.shape == (50, 8) and ((samples.answers >= hex0) & (samples.answers < hex0 + 16)).all()
    with pytest.raises(ValueError, match="uuid_length must be >= 1"):
        _task(value="uuid", uuid_length=0)


# ---------------------------------------------------------------- haystacks


def test_noise_haystack_is_one_fixed_pattern():
    task = _task(haystack="noise", pattern_length=5)
    a = _haystacks(task.generate(60, 20, seed=6))
    b = _haystacks(task.generate(60, 20, seed=7, depth=30))
    assert (a == a[0]).all() and (b == a[0]).all()
    np.testing.assert_array_equal(a[0], np.resize(a[0][:5], 56))  # a repeated 5-symbol pattern


def test_random_haystack_differs_between_samples():
    haystacks = _haystacks(_task(haystack="random").generate(60, 20, seed=6))
    assert len({row.tobytes() for row in haystacks}) == 20


def test_text_haystack_is_running_english_from_the_corpus():
    from longarch.tasks.corpus import load_corpus

    task = _task(haystack="text", n_filler=101)
    stream = load_corpus(n_words=100)
    absolute = _haystacks(task.generate(300, 8, seed=10, depth=40))
    haystacks = absolute - (task.vocab_size - task.n_filler)  # as corpus ids
    assert haystacks.min() >= 0 and haystacks.max() <= 100
    assert len({row.tobytes() for row in haystacks}) == 8  # different passages per sample
    k = 32  # every haystack's opening words occur in this order in the corpus
    windows = np.lib.stride_tricks.sliding_window_view(np.concatenate([stream.ids, stream.ids[:k]]), k)
    for row in haystacks:
        assert (windows[:len(stream.ids)] == row[:k]).all(axis=1).any()
    words = {task.symbol(int(t)) for t in absolute.ravel()}
    assert {"the", "a", "<unk>"} <= words


def test_default_text_vocabulary_keeps_unknown_words_under_5_percent_at_every_length():
    """n_filler left out: the smallest vocabulary leaving at most 3% of the corpus unknown, so that
    a batch's haystack stays under 5% unknown from 64 to 4096 tokens, seed after seed."""
    from longarch.tasks.corpus import words_for_unknown_share
    from longarch.tasks.tokens.needle import TEXT_UNKNOWN_SHARE

    task = _task(haystack="text")
    assert task.n_filler == words_for_unknown_share(None, TEXT_UNKNOWN_SHARE) + 1 == 1772
    for length in [64 * 2 ** k for k in range(7)]:  # 64 .. 4096
        shares = [task.unknown_share(task.generate(length, 64, seed=seed)) for seed in range(4)]
        assert 0.02 < min(shares) and max(shares) <= 0.05, (length, shares)
    old = _task(haystack="text", n_filler=16)  # the default before: 15 words
    assert old.unknown_share(old.generate(1024, 64, seed=0)) > 0.6
    assert _task().unknown_share(_task().generate(64, 4, seed=0)) is None  # no text, no share


def test_default_text_vocabulary_changes_only_which_words_are_unknown():
    wide, narrow = _task(haystack="text"), _task(haystack="text", n_filler=16)
    a, b = wide.generate(300, 20, seed=12), narrow.generate(300, 20, seed=12)
    np.testing.assert_array_equal(a.answers, b.answers)
    np.testing.assert_array_equal(a.meta["needle_position"], b.meta["needle_position"])
    filler = a.tokens >= 2 + wide.n_keys + wide.n_values
    np.testing.assert_array_equal(filler, b.tokens >= 2 + narrow.n_keys + narrow.n_values)
    np.testing.assert_array_equal(a.tokens[~filler], b.tokens[~filler])
    for x, y in zip(a.tokens[filler], b.tokens[filler]):  # the same passage, fewer words unknown
        assert narrow.symbol(int(y)) in (wide.symbol(int(x)), "<unk>")


def test_unknown_share_counts_the_unknown_symbol_among_haystack_symbols(tmp_path):
    corpus = tmp_path / "mine.txt"
    corpus.write_text("the cat the dog the cat a " * 30, encoding="utf-8")  # the 3, cat 2, a 1, dog 1 of 7
    task = _task(haystack="text", corpus=str(corpus), n_filler=3)  # "the", "cat" and the unknown word
    samples = task.generate(7 * 30 + 2 + 2, 5, seed=0)  # a haystack of the whole corpus once
    assert task.unknown_share(samples) == pytest.approx(2 / 7)
    every = _task(haystack="text", corpus=str(corpus))
    assert every.n_filler == 5  # 3% unknown needs every word: nothing is unknown
    assert every.unknown_share(every.generate(64, 5, seed=0)) == 0


def test_text_haystack_from_a_user_corpus(tmp_path):
    corpus = tmp_path / "mine.txt"
    corpus.write_text("alpha beta gamma delta " * 50, encoding="utf-8")
    task = _task(haystack="text", corpus=str(corpus), n_filler=5)
    samples = task.generate(64, 4, seed=11)
    words = [task.symbol(int(t)) for t in _haystacks(samples)[0]]
    cycle = ["alpha", "beta", "gamma", "delta"]
    start = cycle.index(words[0])
    assert words == [cycle[(start + i) % 4] for i in range(len(words))]
    assert samples.knobs["corpus"] == str(corpus)


def test_a_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _task(haystack="text", corpus=str(tmp_path / "missing.txt"))


def test_a_needle_haystack_is_distractor_needles_after_some_filler():
    task = _task(haystack="needles", n_keys=3, needle_keys=2, key="symbol")
    samples = task.generate(50, 100, seed=5, depth=30)  # body 48: 2 needles, H = 44: 22 distractors
    assert (samples.meta["distractors"] == 22).all()
    pairs = samples.tokens[:, :-2].reshape(100, 24, 2)  # the whole body is KEY VALUE pairs
    assert ((pairs[:, :, 0] >= 2) & (pairs[:, :, 0] < 5)).all() and ((pairs[:, :, 1] >= 5) & (pairs[:, :, 1] < 21)).all()
    assert ((pairs[:, :, 0] == samples.tokens[:, -1:]).sum(axis=1) == 1).all()  # the queried key once
    real = samples.tokens[np.arange(100)[:, None], samples.meta["needle_positions"]]  # (n, 2) the two keys
    third = 2 + 3 + 4 - real.sum(axis=1)  # three key symbols, two real: every distractor has the third
    assert ((pairs[:, :, 0] == third[:, None]).sum(axis=1) == 22).all()
    odd = task.generate(51, 100, seed=6)  # H = 45: one filler symbol, then 22 distractors
    position = odd.meta["needle_positions"]
    keep = np.ones(odd.tokens.shape, dtype=bool)
    for j in range(2):
        keep[np.arange(100), position[:, j]] = keep[np.arange(100), position[:, j] + 1] = False
    haystack = odd.tokens[keep].reshape(100, -1)[:, :-2]  # (n, 45)
    assert (haystack[:, 0] >= 21).all() and (haystack[:, 1:] < 21).all()
    body = odd.tokens[:, :-2]
    pairs = body[body < 21].reshape(100, 24, 2)  # no needle splits a pair: less the filler, all pairs
    assert ((pairs[:, :, 0] < 5) & (pairs[:, :, 1] >= 5)).all()


@pytest.mark.parametrize("haystack", HAYSTACKS)
def test_fixed_distractors_stay_as_many_at_every_length(haystack):
    task = _task(haystack=haystack, value="number", number_length=3, n_keys=8, distractors=14)
    m = task._needle_length
    assert task.min_length == 15 * m + 2 + 1
    for length in (task.min_length, 64, 512, 4096):
        samples = task.generate(length, 60, seed=length)
        assert (samples.meta["distractors"] == 14).all()
        query = samples.tokens[:, -1]
        keys = _where(samples.tokens, 2, 2 + task.n_keys)  # every key symbol in the body: needles only
        assert (keys[:, :-2].sum(axis=1) == 15).all()  # the needle and 14 distractors, whatever the length
        key_at = np.nonzero(keys[:, :-2])
        same = samples.tokens[key_at].reshape(60, 15) == query[:, None]
        assert (same.sum(axis=1) == 1).all()  # no distractor has the queried key
        starts = key_at[1].reshape(60, 15)
        assert (np.diff(starts, axis=1) >= m).all()  # whole needles, none inside another
        position = samples.meta["needle_position"]
        assert (samples.tokens[np.arange(60), position] == query).all()
        rest = np.ones(samples.tokens.shape, dtype=bool)  # less every needle and the tail: the haystack
        for offset in range(m):
            rest[np.repeat(np.arange(60), 15), starts.ravel() + offset] = False
        rest[:, -2:] = False
        haystack_tokens = samples.tokens[rest].reshape(60, length - 15 * m - 2)
        assert _where(haystack_tokens, task._filler0, task._hex0).all()
    spread = task.generate(4096, 400, seed=3).tokens[:, :-2]  # the distractors spread over the body
    where = np.nonzero(_where(spread, 2, 2 + task.n_keys))[1] / spread.shape[1]
    assert where.min() < 0.02 and where.max() > 0.98 and abs(where.mean() - 0.5) < 0.02


def test_no_distractors_keep_the_knobs_and_samples_of_before():
    assert "distractors" not in _task().knobs and "distractors" not in _task(haystack="needles").knobs
    assert _task(distractors=3).knobs["distractors"] == 3
    assert "distractors" not in _task().generate(100, 20, seed=1).meta  # samples: the pinned tests above


# ---------------------------------------------------------------- depth

DEPTH_CONFIGS = [
    dict(), dict(haystack="needles"), dict(haystack="text", needle_keys=3, values_per_key=2),
    dict(haystack="random", key="number", value="uuid", needle_keys=2, queries=2),
    dict(haystack="needles", key="uuid", value="number", needle_keys=2, values_per_key=2),
    dict(haystack="needles", needle_keys=4, values_per_key=2, queries=3),
    dict(haystack="noise", distractors=5), dict(haystack="random", value="number", needle_keys=2, distractors=3),
]


def depth_seed(length: int, depth: float) -> int:
    return length * 1000 + int(depth * 10)


@pytest.mark.parametrize("knobs", DEPTH_CONFIGS + [dict(haystack="random"), dict(haystack="text")])
def test_fixed_depths_are_honoured_within_half_a_needle_and_exactly_for_one(knobs):
    task = _task(**knobs)
    m, k = task._needle_length, task._format_length(task.key)
    alone = (task.needle_keys * task.values_per_key == 1 and task.haystack != "needles"
             and not task.distractors)  # nothing moves it
    low = task.min_length
    for length in sorted({low, low + 1, low + 2, low + 7, 1000, 4097, 100_000}):
        n = 2 if length > 5000 else 40
        tail = length - task._tail_length
        span = tail - m  # the first queried needle starts in 0..span
        for depth in (0, 1, 10, 25, 33.3, 50, 66.7, 90, 99, 100):
            samples = task.generate(length, n, seed=depth_seed(length, depth), depth=depth)
            position = samples.meta["needle_position"]
            assert ((0 <= position) & (position <= span)).all(), (length, depth)
            assert (np.abs(position - depth / 100 * span) <= m / 2 + 0.5).all(), (length, depth)
            if alone:  # round half to even: span 1 at depth 50 is 0, span 3 is 2
                assert (position == np.rint(depth / 100 * span)).all(), (length, depth)
            assert (np.abs(samples.meta["needle_depth"] - depth) <= 100 * m / span).all()  # within one needle
            np.testing.assert_allclose(samples.meta["needle_depth"], 100 * position / span)
            rows = np.arange(n)[:, None]
            needle = samples.tokens[rows, position[:, None] + np.arange(m)]
            assert (needle[:, :k] == samples.tokens[:, tail + 1:tail + 1 + k]).all()  # the first queried key
            assert (samples.tokens[:, tail] == QUERY).all()
            items = samples.answers.reshape(n, -1, task.item_length)  # its value is an answer item
            assert (needle[:, None, k:] == items).all(axis=2).any(axis=1).all()
            assert (samples.meta["length"] == length).all()


def _ks_uniform(x: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance of a sample in [0, 1] from the uniform distribution."""
    x = np.sort(x)
    i = np.arange(1, len(x) + 1)
    return float(max((i / len(x) - x).max(), (x - (i - 1) / len(x)).max()))


@pytest.mark.parametrize("knobs", DEPTH_CONFIGS)
def test_random_depths_are_uniform(knobs):
    task = _task(**knobs)
    n, length = 4000, 4096
    samples = task.generate(length, n, seed=21)
    depth = samples.meta["needle_depth"] / 100
    span = length - task._tail_length - task._needle_length
    # 5% critical value, plus the half-needle the start may move by
    assert _ks_uniform(depth) < 1.36 / np.sqrt(n) + (task._needle_length / 2 + 0.5) / span
    counts, _ = np.histogram(depth, bins=10, range=(0, 1))
    grid = task._needle_length if task.haystack == "needles" else 1  # a needle haystack's starts are m apart
    if span / grid >= 1000:  # (with 10 starts a decile, one more or less is 10%)
        assert ((counts - n / 10) ** 2 / (n / 10)).sum() < 21.67  # chi-square, 9 dof, p = 0.01
    others = samples.meta["needle_depths"][:, 1:] / 100  # the other needles spread too
    if others.size:
        assert others.min() < 0.02 and others.max() > 0.98
    k, tail = task._format_length(task.key), length - task._tail_length  # and the needle is where meta says
    key = samples.tokens[np.arange(n)[:, None], samples.meta["needle_position"][:, None] + np.arange(k)]
    assert (key == samples.tokens[:, tail + 1:tail + 1 + k]).all() and (samples.tokens[:, tail] == QUERY).all()


def test_random_depths_reach_every_start():
    samples = _task().generate(204, 4000, seed=8)  # span 200: starts 0..200, depths 0..100
    np.testing.assert_array_equal(np.unique(samples.meta["needle_position"]), np.arange(201))


@pytest.mark.parametrize("depth", [101, -0.001, float("nan")])  # -1 and 100.5: test_task_registry.py
def test_needle_depth_outside_range_is_an_error(depth):
    with pytest.raises(ValueError, match="^needle: depth .* is outside 0-100"):
        _task().generate(20, 2, seed=0, depth=depth)


# ---------------------------------------------------------------- scoring


def test_multi_symbol_values_are_scored_all_or_nothing():
    task = _task(value="number")
    samples = task.generate(40, 3, seed=13)
    digit0 = task.vocab_size - 16
    predictions = samples.answers.copy()
    predictions[1, 3] = digit0 + (predictions[1, 3] - digit0 + 1) % 10  # one digit wrong
    predictions[2] = digit0 + (predictions[2] - digit0 + 1) % 10  # every digit wrong
    assert task.score(samples, predictions).tolist() == [1.0, 0.0, 0.0]


def test_multi_value_answers_are_scored_as_a_set():
    task = _task(needle_keys=2, values_per_key=3, queries=2, value="number")
    samples = task.generate(200, 50, seed=4)
    answers = samples.answers
    assert task.item_length == 7 and answers.shape == (50, 42) and task.ordered is False
    np.testing.assert_array_equal(task.score(samples, answers), np.ones(50))
    items = answers.reshape(50, 6, 7)
    shuffled = items[:, ::-1].reshape(50, 42)  # any order of the values is right
    np.testing.assert_array_equal(task.score(samples, shuffled), np.ones(50))
    wrong = items.copy()
    wrong[:, 2, :] = task.vocab_size - 16  # the value 0000000, drawn by no sample here
    assert not (items == wrong[:, 2:3]).all(axis=2).any()
    np.testing.assert_allclose(task.score(samples, wrong.reshape(50, 42)), np.full(50, 5 / 6))
    twice = items.copy()
    twice[:, 1] = twice[:, 0]  # one value said twice does not count for a second
    np.testing.assert_allclose(task.score(samples, twice.reshape(50, 42)), np.full(50, 5 / 6))


def test_exact_match_averages_all_or_nothing_items():
    from longarch.tasks import exact_match

    answers = np.array([[1, 2, 3, 4], [1, 2, 3, 4]])
    predictions = np.array([[1, 2, 3, 0], [1, 2, 3, 4]])
    assert exact_match(answers, predictions).tolist() == [0.75, 1.0]  # items of one symbol
    assert exact_match(answers, predictions, item_length=2).tolist() == [0.5, 1.0]
    assert exact_match(answers, predictions, item_length=4).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="items of 3"):
        exact_match(answers, predictions, item_length=3)


# ---------------------------------------------------------------- knobs and errors


def test_knobs_leave_out_what_is_at_its_default():
    """Stored results are keyed by the task's knobs: a knob added later (the corpus, the formats,
    the counts) must not change the key of a study that leaves it at its default."""
    assert set(_task().knobs) == {"n_keys", "n_values", "n_filler", "haystack", "pattern_length"}
    assert "corpus" not in _task(haystack="text").knobs
    # n_filler left out is resolved when the task is made: 16, or for text the default vocabulary
    assert all(_task(haystack=h).knobs["n_filler"] == 16 for h in ("noise", "random", "needles"))
    assert _task(haystack="text").knobs["n_filler"] == 1772 and _task(haystack="text") == _task(haystack="text",
                                                                                                n_filler=1772)
    assert _task(value="uuid").knobs["value"] == "uuid"
    knobs = _task(needle_keys=3, queries=2).knobs
    assert knobs["needle_keys"] == 3 and knobs["queries"] == 2 and "values_per_key" not in knobs
    assert _task(haystack="needles").knobs["haystack"] == "needles"
    assert _task().version == 1


@pytest.mark.parametrize("knobs, message", [
    (dict(n_keys=0), "n_keys must be >= 1"),
    (dict(n_values=0), "n_values must be >= 1"),
    (dict(n_filler=0), "n_filler must be >= 1"),
    (dict(pattern_length=0), "pattern_length must be >= 1"),
    (dict(value="number", number_length=0), "number_length must be >= 1"),
    (dict(needle_keys=0), "needle_keys must be >= 1"),
    (dict(values_per_key=0), "values_per_key must be >= 1"),
    (dict(queries=True), "queries must be an integer"),
    (dict(key="hex"), "key must be one of symbol, number, uuid"),
    (dict(haystack="zeros"), "haystack must be one of noise, random, text, needles"),
    (dict(haystack="text", n_filler=1), "a text haystack needs n_filler >= 2"),
    (dict(haystack="noise", corpus="x.txt"), "corpus is only used with haystack='text'"),
    (dict(needle_keys=2, queries=3), r"queries \(3\) must be <= needle_keys \(2\)"),
    (dict(n_keys=4, needle_keys=5, queries=1), "5 distinct keys need 5 keys, but key='symbol' has 4"),
    (dict(n_keys=4, needle_keys=4, haystack="needles"), "plus distractor keys need 5 keys"),
    (dict(n_keys=4, needle_keys=4, distractors=2), "plus distractor keys need 5 keys"),
    (dict(haystack="needles", distractors=2), "a needles haystack is all distractors"),
    (dict(distractors=-1), "distractors must be >= 0"),
    (dict(distractors=1.5), "distractors must be an integer"),
    (dict(key="number", number_length=1, needle_keys=10, haystack="needles"), "has 10"),
    (dict(n_values=5, needle_keys=2, values_per_key=3), "6 distinct values do not fit value='symbol'"),
])
def test_bad_knobs_are_clear_errors(knobs, message):
    with pytest.raises(ValueError, match=f"^needle: .*{message}"):
        _task(**knobs)
