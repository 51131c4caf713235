"""mqar: the pairs come first, each query key sits at an even offset of the query region followed
by FILLER, and the answer at a query's position is its value, recoverable by a plain lookup."""

from __future__ import annotations

import numpy as np
import pytest

from longarch import tasks
from longarch.tasks.tokens.mqar import FILLER, MQARTask


def _solve(task: MQARTask, tokens: np.ndarray) -> tuple[list[int], list[int]]:
    """A reference solver for one sample: the pairs as a dict, then every key after them."""
    P = task.n_pairs
    table = {int(tokens[2 * i]): int(tokens[2 * i + 1]) for i in range(P)}
    positions, values = [], []
    for t in range(2 * P, len(tokens)):
        if int(tokens[t]) != FILLER:
            positions.append(t)
            values.append(table[int(tokens[t])])
    return positions, values


def test_defaults_and_registry():
    task = tasks.get("mqar")
    assert isinstance(task, MQARTask)
    assert (task.n_pairs, task.n_queries, task.queries, task.n_keys, task.n_values) == (4, None, 4, 32, 32)
    assert task.min_length == 16 and task.vocab_size == 66 and task.answer_length == 4
    assert task.item_length == 1 and task.ordered and not task.uses_depth
    assert task.knobs == {"n_pairs": 4, "n_queries": None, "n_keys": 32, "n_values": 32}
    assert MQARTask(n_pairs=8, n_queries=3).min_length == 22


def test_one_sample_decodes_token_by_token():
    task = MQARTask(n_pairs=3, n_queries=2, n_keys=5, n_values=4)
    samples = task.generate(21, 1, seed=11)  # region of 15: 7 slots and a trailing FILLER
    tokens = samples.tokens[0]
    names = [task.symbol(int(t)) for t in tokens]
    keys, values = names[0:6:2], names[1:6:2]
    assert all(k[0] == "k" and 0 <= int(k[1:]) < 5 for k in keys) and len(set(keys)) == 3
    assert all(v[0] == "v" and 0 <= int(v[1:]) < 4 for v in values) and len(set(values)) == 3
    region = names[6:]
    queried = [t for t, name in enumerate(region) if name != "_"]
    assert len(queried) == 2 and all(t % 2 == 0 for t in queried)
    assert all(region[t] in keys for t in queried) and len({region[t] for t in queried}) == 2
    assert region[-1] == "_" and all(region[t + 1] == "_" for t in queried)
    np.testing.assert_array_equal(samples.answer_positions[0], [6 + t for t in queried])
    assert [task.symbol(int(a)) for a in samples.answers[0]] == [values[keys.index(region[t])] for t in queried]


@pytest.mark.parametrize("knobs", [{}, {"n_pairs": 8}, {"n_pairs": 6, "n_queries": 2, "n_keys": 6, "n_values": 9}])
@pytest.mark.parametrize("extra", [0, 1, 7, 48, 241])
def test_reference_solver_recovers_every_answer(knobs, extra):
    task = MQARTask(**knobs)
    length = task.min_length + extra
    samples = task.generate(length, 300, seed=extra)
    P, Q = task.n_pairs, task.queries
    tokens = samples.tokens
    assert samples.answers.shape == samples.answer_positions.shape == (300, Q)
    assert samples.answer_positions.dtype == np.int64
    for i in range(300):
        keys, values = tokens[i, 0:2 * P:2], tokens[i, 1:2 * P:2]
        assert len(set(keys.tolist())) == P and len(set(values.tolist())) == P
        assert ((keys >= 2) & (keys < 2 + task.n_keys)).all() and (values >= 2 + task.n_keys).all()
        positions, answers = _solve(task, tokens[i])
        assert positions == samples.answer_positions[i].tolist()
        assert answers == samples.answers[i].tolist()
        assert len(set(tokens[i, positions].tolist())) == Q  # each queried key once
        assert all((p - 2 * P) % 2 == 0 and tokens[i, p + 1] == FILLER for p in positions)
    key_position, query_position = samples.meta["key_position"], samples.meta["query_position"]
    np.testing.assert_array_equal(query_position, samples.answer_positions)
    rows = np.arange(300)[:, None]
    np.testing.assert_array_equal(tokens[rows, key_position], tokens[rows, query_position])
    np.testing.assert_array_equal(tokens[rows, key_position + 1], samples.answers)
    np.testing.assert_array_equal(samples.meta["distance"], query_position - key_position)
    assert (samples.meta["length"] == length).all()


def test_queries_cover_the_slots_uniformly_and_spread_with_the_length():
    task = MQARTask()
    samples = task.generate(41, 3000, seed=5)  # 16 slots and a trailing FILLER, 4 queried
    slots = (samples.answer_positions - 8) // 2
    counts = np.bincount(slots.ravel(), minlength=16)
    assert len(counts) == 16 and counts.min() > 0.85 * 750 and counts.max() < 1.15 * 750
    asked = samples.meta["key_position"] // 2  # which pair each query asks, in a random order
    assert not (asked == np.sort(asked, axis=1)).all()
    assert np.bincount(asked[:, 0], minlength=4).min() > 600  # the first query is any pair
    short, long = (task.generate(length, 500, seed=1).meta["distance"].mean() for length in (64, 1024))
    assert long > 10 * short


@pytest.mark.parametrize("length", [16, 17, 33, 64, 65, 1001])
def test_exact_lengths(length):
    samples = MQARTask().generate(length, 3, seed=2)
    assert samples.tokens.shape == (3, length)


def test_a_million_symbols():
    samples = MQARTask().generate(1_000_000, 2, seed=0)
    assert samples.tokens.shape == (2, 1_000_000)
    assert (samples.answer_positions < 1_000_000 - 1).all()
    for i in range(2):
        assert np.count_nonzero(samples.tokens[i, 8:] != FILLER) == 4


def test_too_short_or_a_depth_is_an_error():
    task = MQARTask(n_pairs=5, n_queries=3)
    with pytest.raises(ValueError, match="minimum 16"):
        task.generate(15, 2, seed=0)
    assert task.generate(16, 2, seed=0).length == 16
    with pytest.raises(ValueError, match="no needle depth"):
        task.generate(40, 2, seed=0, depth=50)


def test_deterministic_in_the_seed():
    task = MQARTask()
    a, b, c = (task.generate(64, 50, seed=s) for s in (3, 3, 4))
    for x, y in ((a.tokens, b.tokens), (a.answers, b.answers), (a.answer_positions, b.answer_positions)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.tokens, c.tokens)


def test_score_counts_each_query_in_its_place():
    task = MQARTask()
    samples = task.generate(64, 40, seed=9)
    answers = samples.answers
    np.testing.assert_array_equal(task.score(samples, answers.copy()), np.ones(40))
    wrong = answers.copy()
    wrong[:, 2] = FILLER
    np.testing.assert_allclose(task.score(samples, wrong), np.full(40, 0.75))
    swapped = answers[:, [1, 0, 2, 3]]  # values of a sample are distinct: two items out of place
    np.testing.assert_allclose(task.score(samples, swapped), np.full(40, 0.5))


@pytest.mark.parametrize("knobs, message", [
    ({"n_pairs": 0}, "mqar: n_pairs must be >= 1, not 0"),
    ({"n_pairs": True}, "mqar: n_pairs must be an integer"),
    ({"n_keys": 2.0}, "mqar: n_keys must be an integer"),
    ({"n_queries": 0}, "mqar: n_queries must be >= 1, not 0"),
    ({"n_queries": 5}, r"mqar: n_queries \(5\) must be <= n_pairs \(4\)"),
    ({"n_keys": 3}, r"mqar: n_keys \(3\) must be >= n_pairs \(4\)"),
    ({"n_values": 3}, r"mqar: n_values \(3\) must be >= n_pairs \(4\)"),
])
def test_knob_validation(knobs, message):
    with pytest.raises(ValueError, match=message):
        MQARTask(**knobs)


def test_symbols():
    task = MQARTask(n_keys=4, n_values=5)
    assert [task.symbol(t) for t in range(task.vocab_size)] == \
        ["<0>", "_", "k0", "k1", "k2", "k3", "v0", "v1", "v2", "v3", "v4"]
