"""copy and selective_copy: the content symbols sit where meta says among BLANKs, SEP ends the
sample, and the answer is the content in order, recoverable by reading the non-blank symbols."""

from __future__ import annotations

import numpy as np
import pytest

from longarch import tasks
from longarch.tasks.tokens.copy import BLANK, CONTENT0, SEP, CopyTask, SelectiveCopyTask

TASKS = [CopyTask, SelectiveCopyTask]


def _solve(tokens: np.ndarray) -> list[int]:
    """A reference solver for one sample: the non-blank symbols before the final SEP."""
    assert tokens[-1] == SEP
    return [int(t) for t in tokens[:-1] if t != BLANK]


def test_defaults_and_registry():
    copy, selective = tasks.get("copy"), tasks.get("selective_copy")
    assert isinstance(copy, CopyTask) and isinstance(selective, SelectiveCopyTask)
    for task in (copy, selective):
        assert task.knobs == {"span": 6, "n_symbols": 16}
        assert task.vocab_size == 19 and task.answer_length == 6 and task.item_length == 1 and task.ordered
    assert copy.min_length == 8 and copy.uses_depth
    assert selective.min_length == 7 and not selective.uses_depth
    assert CopyTask(span=3).min_length == 5 and SelectiveCopyTask(span=3).min_length == 4


# ---------------------------------------------------------------- copy


def test_copy_one_sample_decodes_token_by_token():
    task = CopyTask(span=3, n_symbols=4)
    samples = task.generate(11, 1, seed=0, depth=50)  # 7 blanks, the span after round(3.5) = 4 of them
    names = [task.symbol(int(t)) for t in samples.tokens[0]]
    assert names[:4] == ["_"] * 4 and names[7:10] == ["_"] * 3 and names[10] == "SEP"
    assert all(name[0] == "c" and 0 <= int(name[1:]) < 4 for name in names[4:7])
    assert [task.symbol(int(a)) for a in samples.answers[0]] == names[4:7]
    assert samples.meta["span_position"][0] == 4 and samples.meta["span_depth"][0] == pytest.approx(400 / 7)
    assert samples.answer_positions is None


@pytest.mark.parametrize("depth", [None, 0, 10, 33.3, 50, 90, 100])
@pytest.mark.parametrize("extra", [0, 1, 5, 56, 249])
def test_copy_reference_solver_and_meta(depth, extra):
    task = CopyTask()
    S, length = task.span, task.min_length + extra
    samples = task.generate(length, 200, seed=extra, depth=depth)
    H = length - S - 1
    start = samples.meta["span_position"]
    for i in range(200):
        tokens = samples.tokens[i]
        assert _solve(tokens) == samples.answers[i].tolist()
        span = tokens[start[i]:start[i] + S]
        np.testing.assert_array_equal(span, samples.answers[i])
        assert (tokens[:start[i]] == BLANK).all() and (tokens[start[i] + S:-1] == BLANK).all()
    assert ((samples.answers >= CONTENT0) & (samples.answers < task.vocab_size)).all()
    np.testing.assert_allclose(samples.meta["span_depth"], 100 * start / H)
    if depth is not None:
        assert (start == round(depth / 100 * H)).all()
    assert (samples.meta["length"] == length).all()


def test_copy_depth_zero_is_the_classic_copy_and_hundred_ends_before_sep():
    task = CopyTask()
    first = task.generate(30, 20, seed=1, depth=0)
    np.testing.assert_array_equal(first.tokens[:, :6], first.answers)
    last = task.generate(30, 20, seed=1, depth=100)
    np.testing.assert_array_equal(last.tokens[:, -7:-1], last.answers)
    assert (last.meta["span_depth"] == 100).all()


def test_copy_random_depth_is_uniform():
    depth = CopyTask().generate(107, 4000, seed=3).meta["span_depth"]  # 100 blanks
    counts = np.histogram(depth, bins=5, range=(0, 100))[0]
    assert counts.min() > 0.85 * 800 and counts.max() < 1.15 * 800


# ---------------------------------------------------------------- selective_copy


def test_selective_one_sample_decodes_token_by_token():
    task = SelectiveCopyTask(span=3, n_symbols=4)
    samples = task.generate(12, 1, seed=4)
    names = [task.symbol(int(t)) for t in samples.tokens[0]]
    assert names[-1] == "SEP"
    content = [t for t, name in enumerate(names[:-1]) if name != "_"]
    assert len(content) == 3 and all(names[t][0] == "c" and 0 <= int(names[t][1:]) < 4 for t in content)
    assert [task.symbol(int(a)) for a in samples.answers[0]] == [names[t] for t in content]
    assert samples.meta["content_position"][0].tolist() == content
    np.testing.assert_allclose(samples.meta["content_depth"][0], [100 * t / 10 for t in content])


@pytest.mark.parametrize("knobs", [{}, {"span": 1}, {"span": 12, "n_symbols": 3}])
@pytest.mark.parametrize("extra", [0, 1, 4, 57, 250])
def test_selective_reference_solver_and_meta(knobs, extra):
    task = SelectiveCopyTask(**knobs)
    length = task.min_length + extra
    samples = task.generate(length, 300, seed=extra)
    position = samples.meta["content_position"]
    assert position.shape == (300, task.span) and samples.meta["content_depth"].shape == (300, task.span)
    for i in range(300):
        assert _solve(samples.tokens[i]) == samples.answers[i].tolist()
        assert (np.diff(position[i]) > 0).all()
        np.testing.assert_array_equal(samples.tokens[i, position[i]], samples.answers[i])
    assert (position >= 0).all() and (position < length - 1).all()
    depth = samples.meta["content_depth"]
    assert (depth >= 0).all() and (depth <= 100).all()
    if extra == 0:  # no blanks: the region is the content
        np.testing.assert_array_equal(position, np.broadcast_to(np.arange(task.span), position.shape))


def test_selective_positions_are_uniform():
    position = SelectiveCopyTask().generate(101, 2000, seed=6).meta["content_position"]  # region of 100
    counts = np.bincount(position.ravel(), minlength=100).reshape(5, 20).sum(axis=1)
    assert counts.min() > 0.9 * 2400 and counts.max() < 1.1 * 2400


# ---------------------------------------------------------------- both


@pytest.mark.parametrize("cls", TASKS)
@pytest.mark.parametrize("extra", [0, 1, 2, 3, 994])
def test_exact_lengths(cls, extra):
    task = cls()
    samples = task.generate(task.min_length + extra, 3, seed=extra)
    assert samples.tokens.shape == (3, task.min_length + extra)


@pytest.mark.parametrize("cls", TASKS)
def test_a_million_symbols(cls):
    samples = cls().generate(1_000_000, 2, seed=0)
    assert samples.tokens.shape == (2, 1_000_000)
    for i in range(2):
        assert _solve(samples.tokens[i]) == samples.answers[i].tolist()


@pytest.mark.parametrize("cls", TASKS)
def test_too_short_is_an_error_naming_the_minimum(cls):
    task = cls(span=4)
    with pytest.raises(ValueError, match=f"minimum {task.min_length}"):
        task.generate(task.min_length - 1, 2, seed=0)


def test_depth_rules():
    with pytest.raises(ValueError, match="no needle depth"):
        SelectiveCopyTask().generate(40, 2, seed=0, depth=50)
    with pytest.raises(ValueError, match="outside 0-100"):
        CopyTask().generate(40, 2, seed=0, depth=101)


@pytest.mark.parametrize("cls", TASKS)
def test_deterministic_in_the_seed(cls):
    task = cls()
    a, b, c = (task.generate(64, 50, seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.answers, b.answers)
    for key in a.meta:
        np.testing.assert_array_equal(a.meta[key], b.meta[key])
    assert not np.array_equal(a.tokens, c.tokens)


@pytest.mark.parametrize("cls", TASKS)
def test_score_counts_each_symbol_in_its_place(cls):
    task = cls(span=4)
    samples = task.generate(40, 60, seed=2)
    answers = samples.answers
    np.testing.assert_array_equal(task.score(samples, answers.copy()), np.ones(60))
    wrong = answers.copy()
    wrong[:, 1] = BLANK
    np.testing.assert_allclose(task.score(samples, wrong), np.full(60, 0.75))
    swapped = answers[:, [1, 0, 2, 3]]  # out of order: right only where the two symbols agree
    expected = np.where(answers[:, 0] == answers[:, 1], 1.0, 0.5)
    np.testing.assert_allclose(task.score(samples, swapped), expected)
    assert (expected == 0.5).any()


@pytest.mark.parametrize("cls", TASKS)
@pytest.mark.parametrize("knobs, message", [
    ({"span": 0}, "span must be >= 1, not 0"),
    ({"n_symbols": 0}, "n_symbols must be >= 1, not 0"),
    ({"span": True}, "span must be an integer"),
    ({"n_symbols": 4.0}, "n_symbols must be an integer"),
])
def test_knob_validation(cls, knobs, message):
    with pytest.raises(ValueError, match=f"^{cls.name}: {message}"):
        cls(**knobs)


def test_symbols():
    task = CopyTask(n_symbols=3)
    assert [task.symbol(t) for t in range(task.vocab_size)] == ["<0>", "_", "SEP", "c0", "c1", "c2"]
