"""The needle task places its needle where it says, in every haystack and format; the checks
every task shares are in test_task_registry.py."""

from __future__ import annotations

import numpy as np
import pytest

from longarch import tasks
from longarch.tasks.tokens.needle import QUERY

HAYSTACKS = ["noise", "random", "text"]


# ---------------------------------------------------------------- needle


def _needle(haystack="noise", **knobs):
    return tasks.get("needle", haystack=haystack, **knobs)


def _where(tokens: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return (tokens >= lo) & (tokens < hi)


@pytest.mark.parametrize("haystack", HAYSTACKS)
def test_needle_depth_zero_puts_the_key_first(haystack):
    samples = _needle(haystack).generate(40, 16, seed=1, depth=0)
    assert (samples.tokens[:, 0] == samples.tokens[:, -1]).all()
    assert (samples.tokens[:, 1] == samples.answers[:, 0]).all()
    assert (samples.meta["needle_position"] == 0).all() and (samples.meta["needle_depth"] == 0).all()


@pytest.mark.parametrize("haystack", HAYSTACKS)
@pytest.mark.parametrize("length", [5, 6, 40])
def test_needle_depth_hundred_ends_right_before_the_query(haystack, length):
    samples = _needle(haystack).generate(length, 16, seed=2, depth=100)
    tokens = samples.tokens
    assert (tokens[:, -4] == tokens[:, -1]).all()  # KEY
    assert (tokens[:, -3] == samples.answers[:, 0]).all()  # VALUE
    assert (tokens[:, -2] == QUERY).all()
    assert (samples.meta["needle_depth"] == 100).all()


@pytest.mark.parametrize("length", [5, 6, 7, 40, 41, 1001])
def test_needle_depth_fifty_is_the_middle(length):
    samples = _needle().generate(length, 4, seed=3, depth=50)
    assert (samples.meta["needle_position"] == round(0.5 * (length - 4))).all()


@pytest.mark.parametrize("haystack", HAYSTACKS)
@pytest.mark.parametrize("depth", [0, 10, 25, 33.3, 50, 66.7, 90, 100])
@pytest.mark.parametrize("length", [5, 9, 64, 300])
def test_needle_sits_where_meta_says(haystack, depth, length):
    task = _needle(haystack)
    samples = task.generate(length, 12, seed=4, depth=depth)
    tokens, n = samples.tokens, len(samples)
    H = length - 4  # KEY VALUE ... QUERY KEY
    position = samples.meta["needle_position"]
    rows = np.arange(n)
    assert ((0 <= position) & (position <= H)).all()
    assert (tokens[rows, position] == tokens[:, -1]).all()  # the query key is the needle key
    assert (tokens[rows, position + 1] == samples.answers[:, 0]).all()  # the answer follows it
    np.testing.assert_allclose(samples.meta["needle_depth"], 100 * position / H)
    assert (np.abs(samples.meta["needle_depth"] - depth) <= 50 / H + 1e-9).all()  # half a symbol
    assert (samples.meta["length"] == length).all()


@pytest.mark.parametrize("haystack", HAYSTACKS)
def test_needle_alphabets_are_disjoint(haystack):
    task = _needle(haystack, n_keys=5, n_values=7, n_filler=3)
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


def _haystacks(samples) -> np.ndarray:
    """Each sample with its needle and the final QUERY KEY removed."""
    tokens, position = samples.tokens, samples.meta["needle_position"]
    keep = np.ones(tokens.shape, dtype=bool)
    keep[np.arange(len(samples)), position] = keep[np.arange(len(samples)), position + 1] = False
    keep[:, -2:] = False
    return tokens[keep].reshape(len(samples), -1)


def test_noise_haystack_is_one_fixed_pattern():
    task = _needle("noise", pattern_length=5)
    a = _haystacks(task.generate(60, 20, seed=6))
    b = _haystacks(task.generate(60, 20, seed=7, depth=30))
    assert (a == a[0]).all() and (b == a[0]).all()
    np.testing.assert_array_equal(a[0], np.resize(a[0][:5], 56))  # a repeated 5-symbol pattern


def test_random_haystack_differs_between_samples():
    haystacks = _haystacks(_needle("random").generate(60, 20, seed=6))
    assert len({row.tobytes() for row in haystacks}) == 20


def test_random_depth_spreads_over_the_range():
    samples = _needle().generate(204, 4000, seed=8)  # H = 200
    depth = samples.meta["needle_depth"]
    assert depth.min() <= 2 and depth.max() >= 98
    counts, _ = np.histogram(depth, bins=4, range=(0, 100))
    assert (counts > 0.2 * 4000).all() and (counts < 0.3 * 4000).all()
    assert len(np.unique(samples.meta["needle_position"])) > 150


def test_needle_large_batch_is_correct_too():
    samples = _needle("random").generate(4096, 1000, seed=9)
    rows = np.arange(1000)
    assert (samples.tokens[rows, samples.meta["needle_position"]] == samples.tokens[:, -1]).all()
    assert (samples.tokens[:, -2] == QUERY).all()


@pytest.mark.parametrize("depth", [-1, 101, -0.001, 100.5, float("nan")])
def test_needle_depth_outside_range_is_an_error(depth):
    with pytest.raises(ValueError, match="depth"):
        _needle().generate(20, 2, seed=0, depth=depth)


@pytest.mark.parametrize("knobs", [{"n_keys": 0}, {"n_values": 0}, {"n_filler": 0}, {"pattern_length": 0},
                                   {"haystack": "zeros"}])
def test_needle_bad_knob_values_are_errors(knobs):
    with pytest.raises(ValueError):
        tasks.get("needle", **knobs)


def test_text_haystack_is_running_english_from_the_corpus():
    from longarch.tasks.corpus import load_corpus

    task = _needle("text", n_filler=101)
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


def test_text_haystack_from_a_user_corpus(tmp_path):
    corpus = tmp_path / "mine.txt"
    corpus.write_text("alpha beta gamma delta " * 50, encoding="utf-8")
    task = _needle("text", corpus=str(corpus), n_filler=5)
    samples = task.generate(64, 4, seed=11)
    words = [task.symbol(int(t)) for t in _haystacks(samples)[0]]
    cycle = ["alpha", "beta", "gamma", "delta"]
    start = cycle.index(words[0])
    assert words == [cycle[(start + i) % 4] for i in range(len(words))]
    assert samples.knobs["corpus"] == str(corpus)


def test_text_haystack_bad_knobs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _needle("text", corpus=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="only used with haystack='text'"):
        _needle("noise", corpus="x.txt")
    with pytest.raises(ValueError, match="n_filler >= 2"):
        _needle("text", n_filler=1)


def test_knobs_leave_out_an_unset_corpus():
    """Stored results are keyed by the task's knobs: the corpus knob, added later, must not
    change the key of a study that does not use it."""
    assert "corpus" not in _needle("noise").knobs
    assert "corpus" not in _needle("text").knobs


@pytest.mark.parametrize("key, value", [("number", "symbol"), ("symbol", "uuid"), ("uuid", "number"),
                                        ("number", "number")])
@pytest.mark.parametrize("length", [None, 64, 1000])  # None: the format's minimum
def test_number_and_uuid_formats_have_exact_lengths_and_find_their_needle(key, value, length):
    task = _needle("random", key=key, value=value)
    k, v = {"symbol": 1, "number": 7, "uuid": 32}[key], {"symbol": 1, "number": 7, "uuid": 32}[value]
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


def test_multi_symbol_values_are_scored_all_or_nothing():
    task = _needle(value="number")
    samples = task.generate(40, 3, seed=13)
    digit0 = task.vocab_size - 16
    predictions = samples.answers.copy()
    predictions[1, 3] = digit0 + (predictions[1, 3] - digit0 + 1) % 10  # one digit wrong
    predictions[2] = digit0 + (predictions[2] - digit0 + 1) % 10  # every digit wrong
    assert task.score(samples, predictions).tolist() == [1.0, 0.0, 0.0]


def test_exact_match_averages_all_or_nothing_items():
    from longarch.tasks import exact_match

    answers = np.array([[1, 2, 3, 4], [1, 2, 3, 4]])
    predictions = np.array([[1, 2, 3, 0], [1, 2, 3, 4]])
    assert exact_match(answers, predictions).tolist() == [0.75, 1.0]  # items of one symbol
    assert exact_match(answers, predictions, item_length=2).tolist() == [0.5, 1.0]
    assert exact_match(answers, predictions, item_length=4).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match="items of 3"):
        exact_match(answers, predictions, item_length=3)


def test_formats_are_validated_and_kept_out_of_default_knobs():
    with pytest.raises(ValueError, match="key must be one of symbol, number, uuid"):
        _needle(key="hex")
    with pytest.raises(ValueError, match="number_length"):
        _needle(value="number", number_length=0)
    assert set(_needle().knobs) == {"n_keys", "n_values", "n_filler", "haystack", "pattern_length"}
    assert _needle(value="uuid").knobs["value"] == "uuid"
