"""Every registered token task (the symbol tasks of controlled studies), through the registry: exact lengths from the minimum to a million
symbols, a clear error below the minimum, bitwise determinism, the vocabulary, scoring, and the
way from samples to a training loss and an evaluation score. A new task is covered by adding
its registry line."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from longarch import models, tasks
from longarch.controlled.evaluate import evaluate_samples, predict_at
from longarch.tasks import Samples, UnknownTask
from longarch.controlled.train import samples_loss

NAMES = tasks.names("tokens")  # the text tasks' contract: test_task_contract.py and test_text_*.py


def _lengths(task) -> list[int]:
    m = task.min_length
    return sorted({m, m + 1, m + 2, m + 7, 2 * m + 1, 4097})


def test_registry_lists_every_task_of_the_suite():
    assert {"needle", "mqar", "variable_tracking", "common_words", "frequent_words", "copy",
            "selective_copy"} <= set(NAMES)
    assert len(set(NAMES)) == len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_task_states_its_contract(name):
    task = tasks.get(name)
    assert task.name == name and tasks.describe(name)
    assert task.min_length >= 1 and task.vocab_size >= 2 and task.answer_length >= 1
    assert task.answer_length % task.item_length == 0
    assert isinstance(task.ordered, bool) and isinstance(task.uses_depth, bool)
    assert dataclasses.is_dataclass(task)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(task, dataclasses.fields(task)[0].name, 1)
    assert task.min_length <= 64, "default knobs must fit the quick study's training length"


@pytest.mark.parametrize("name", NAMES)
def test_samples_have_the_exact_shape_dtype_and_vocabulary(name):
    task = tasks.get(name)
    for length in _lengths(task):
        samples = task.generate(length, 7, seed=length)
        assert isinstance(samples, Samples) and samples.task == name and samples.knobs == task.knobs
        assert samples.tokens.shape == (7, length) and samples.tokens.dtype == np.int64
        assert 0 <= samples.tokens.min() and samples.tokens.max() < task.vocab_size
        assert samples.answers.shape == (7, task.answer_length) and samples.answers.dtype == np.int64
        assert 0 <= samples.answers.min() and samples.answers.max() < task.vocab_size
        if samples.answer_positions is not None:
            assert samples.answer_positions.shape == samples.answers.shape
            assert 0 <= samples.answer_positions.min() and samples.answer_positions.max() < length
        np.testing.assert_array_equal(samples.meta["length"], np.full(7, length))
        for key, values in samples.meta.items():
            assert np.asarray(values).shape[0] == 7, key


@pytest.mark.parametrize("name", NAMES)
def test_a_million_symbols(name):
    task = tasks.get(name)
    samples = task.generate(1_000_000, 2, seed=3)
    assert samples.tokens.shape == (2, 1_000_000)
    assert samples.tokens.max() < task.vocab_size and samples.answers.shape == (2, task.answer_length)


@pytest.mark.parametrize("name", NAMES)
def test_a_length_below_the_minimum_names_the_minimum(name):
    task = tasks.get(name)
    for length in (task.min_length - 1, 0):
        with pytest.raises(ValueError, match=f"{name}: length {length} is below the minimum {task.min_length}"):
            task.generate(length, 2, seed=0)


@pytest.mark.parametrize("name", NAMES)
def test_bitwise_deterministic_in_the_seed(name):
    task = tasks.get(name)
    length = task.min_length + 50
    a, b, c = (task.generate(length, 64, seed=s) for s in (7, 7, 8))
    for x, y in ((a.tokens, b.tokens), (a.answers, b.answers), (a.answer_positions, b.answer_positions)):
        assert (x is None and y is None) or (x.tobytes() == y.tobytes() and x.dtype == y.dtype)
    assert a.meta.keys() == b.meta.keys()
    for key in a.meta:
        assert np.asarray(a.meta[key]).tobytes() == np.asarray(b.meta[key]).tobytes(), key
    assert not np.array_equal(a.tokens, c.tokens)
    # the same seed through a fresh task object, too: nothing depends on hidden state
    d = tasks.get(name).generate(length, 64, seed=7)
    assert d.tokens.tobytes() == a.tokens.tobytes()


@pytest.mark.parametrize("name", NAMES)
def test_depth_is_accepted_only_where_the_task_has_one(name):
    task = tasks.get(name)
    length = task.min_length + 40
    if task.uses_depth:
        for depth in (0, 50, 100):
            assert task.generate(length, 3, seed=0, depth=depth).tokens.shape == (3, length)
        for depth in (-1, 100.5):
            with pytest.raises(ValueError, match="outside 0-100"):
                task.generate(length, 3, seed=0, depth=depth)
    else:
        with pytest.raises(ValueError, match="no needle depth"):
            task.generate(length, 3, seed=0, depth=50)


@pytest.mark.parametrize("name", NAMES)
def test_scores_count_answer_items(name):
    task = tasks.get(name)
    n = 10
    samples = task.generate(task.min_length + 30, n, seed=0)
    np.testing.assert_array_equal(task.score(samples, samples.answers.copy()), np.ones(n))
    outside = np.full_like(samples.answers, task.vocab_size)  # a symbol no answer uses
    np.testing.assert_array_equal(task.score(samples, outside), np.zeros(n))
    # one wrong item in every row costs exactly that item's share
    items = task.answer_length // task.item_length
    one_wrong = samples.answers.copy()
    one_wrong[:, :task.item_length] = task.vocab_size
    np.testing.assert_allclose(task.score(samples, one_wrong), np.full(n, 1 - 1 / items))
    with pytest.raises(ValueError, match="shape"):
        task.score(samples, samples.answers[:5])


@pytest.mark.parametrize("name", NAMES)
def test_unknown_knob_is_an_error_naming_it(name):
    with pytest.raises(ValueError, match="no_such_knob"):
        tasks.get(name, no_such_knob=3)


def test_unknown_task_suggests_the_close_name():
    with pytest.raises(UnknownTask, match="did you mean 'needle'"):
        tasks.get("neddle")


@pytest.mark.parametrize("name", NAMES)
def test_samples_train_and_evaluate_through_a_model(name, one_thread):
    """From samples to a finite loss with a gradient, and to per-sample scores in [0, 1], with
    answers after the prompt or inside it; chunked evaluation equals whole evaluation."""
    task = tasks.get(name)
    torch.manual_seed(0)
    model = models.build("mamba2", vocab_size=task.vocab_size, d_model=16)
    samples = task.generate(task.min_length + 9, 4, seed=1)
    loss = samples_loss(model, samples)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    whole = evaluate_samples(model, task, samples, chunk=10_000)
    chunked = evaluate_samples(model, task, samples, chunk=7)
    assert whole.shape == (4,) and ((0 <= whole) & (whole <= 1)).all()
    np.testing.assert_array_equal(whole, chunked)


def test_predict_at_reads_the_logits_at_the_positions(one_thread):
    torch.manual_seed(0)
    model = models.build("transformer", vocab_size=20, d_model=16).eval()
    tokens = np.random.default_rng(0).integers(0, 20, (5, 23))
    positions = np.array([[0, 22, 5], [1, 1, 2], [22, 21, 20], [7, 8, 9], [13, 0, 4]])
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(tokens))
    expected = np.take_along_axis(logits.argmax(-1).numpy(), positions, axis=1)
    for chunk in (1, 4, 7, 23, 100):
        np.testing.assert_array_equal(predict_at(model, tokens, positions, chunk=chunk, tokens_per_batch=46), expected)


def test_predict_at_scales_positions_to_the_length_and_restores_them(one_thread):
    """A RoPE-scaled model answers in-place tasks at L with the factor L / T, as `predict` does,
    and is set back to T afterwards."""
    torch.manual_seed(0)
    model = models.build("transformer-yarn", vocab_size=20, d_model=16).eval()
    T, L = 8, 64
    tokens = np.random.default_rng(1).integers(0, 20, (3, L))
    positions = np.tile(np.arange(L), (3, 1))
    model.set_context(T, L)
    with torch.no_grad():
        scaled = np.take_along_axis(model(torch.from_numpy(tokens))[0].argmax(-1).numpy(), positions, axis=1)
    model.set_context(T, T)
    calls = []
    real = model.set_context
    model.set_context = lambda train_length, length: (calls.append((train_length, length)), real(train_length, length))
    np.testing.assert_array_equal(predict_at(model, tokens, positions, chunk=5, train_length=T), scaled)
    assert calls == [(T, L), (T, T)]
    calls.clear()
    predict_at(model, tokens, positions, chunk=5)
    assert calls == []  # no training length, no scaling
