"""variable_tracking: two-symbol statements (variable, source) in chain order inside a filler
haystack, QUERY value at the end, and the answer is every variable bound to that value,
recoverable by running the assignments in plain Python."""

from __future__ import annotations

import numpy as np
import pytest

from longarch import tasks
from longarch.tasks.tokens.variable_tracking import QUERY, VariableTrackingTask


def _solve(task: VariableTrackingTask, tokens: np.ndarray) -> tuple[set[int], list[tuple[int, int]]]:
    """A reference solver for one sample: run the statements left to right; the variables whose
    value is the queried one, and the statements read as (start, variable)."""
    assert tokens[-2] == QUERY
    variables = range(task._var0, task._value0)
    values = range(task._value0, task._filler0)
    bound, statements, i = {}, [], 0
    while i < len(tokens) - 2:
        t = int(tokens[i])
        if t in variables:
            source = int(tokens[i + 1])
            assert t not in bound, "every variable is assigned once"
            if source in values:
                bound[t] = source
            else:
                assert source in variables and source in bound, "a hop reads a variable assigned before it"
                bound[t] = bound[source]
            statements.append((i, t))
            i += 2
        else:
            assert task._filler0 <= t < task.vocab_size, "outside statements there is only filler"
            i += 1
    query = int(tokens[-1])
    return {v for v, value in bound.items() if value == query}, statements


def test_defaults_and_registry():
    task = tasks.get("variable_tracking")
    assert isinstance(task, VariableTrackingTask)
    assert task.knobs == {"n_chains": 2, "n_hops": 4, "n_vars": 16, "n_values": 16, "n_filler": 16,
                          "haystack": "noise", "pattern_length": 8}
    assert task.vocab_size == 50 and task.min_length == 22 and task.answer_length == 5
    assert task.item_length == 1 and not task.ordered and not task.uses_depth
    assert VariableTrackingTask(n_chains=3, n_hops=2).min_length == 2 * 9 + 2


def test_one_sample_decodes_token_by_token():
    task = VariableTrackingTask(n_chains=1, n_hops=2, pattern_length=3)
    samples = task.generate(13, 1, seed=5)  # 3 statements (6 symbols), 5 filler, QUERY v
    tokens, names = samples.tokens[0], [task.symbol(int(t)) for t in samples.tokens[0]]
    answer = [task.symbol(int(a)) for a in samples.answers[0]]
    position = samples.meta["statement_positions"][0].tolist()
    assert names[-2] == "QUERY" and names[-1][0] == "v"
    x0, x1, x2 = answer
    assert len(set(answer)) == 3 and all(name[0] == "x" for name in answer)
    assert [names[p:p + 2] for p in position] == [[x0, names[-1]], [x1, x0], [x2, x1]]
    assert position == sorted(position) and all(b - a >= 2 for a, b in zip(position, position[1:]))
    in_statement = {p + d for p in position for d in (0, 1)}
    filler = [tokens[t] for t in range(11) if t not in in_statement]
    pattern = np.random.default_rng(0).integers(0, 16, 3) + task._filler0
    assert filler == np.resize(pattern, 5).tolist()
    assert all(name[0] == "f" for t, name in enumerate(names[:11]) if t not in in_statement)
    np.testing.assert_allclose(samples.meta["statement_depths"][0], [100 * p / 9 for p in position])
    assert samples.meta["chain_extent"][0] == position[-1] - position[0]
    assert samples.answer_positions is None


@pytest.mark.parametrize("knobs", [{}, {"n_hops": 0}, {"n_chains": 3, "n_hops": 3},
                                   {"n_chains": 2, "n_hops": 1, "haystack": "random"},
                                   {"n_chains": 4, "n_hops": 3, "n_vars": 16, "n_values": 4}])
@pytest.mark.parametrize("extra", [0, 1, 7, 100])
def test_reference_solver_and_meta(knobs, extra):
    task = VariableTrackingTask(**knobs)
    C, h1 = task.n_chains, 1 + task.n_hops
    length = task.min_length + extra
    samples = task.generate(length, 200, seed=extra)
    positions = samples.meta["chain_positions"]
    assert positions.shape == (200, C, h1) and samples.meta["statement_positions"].shape == (200, h1)
    np.testing.assert_array_equal(samples.meta["statement_positions"], positions[:, 0])
    for i in range(200):
        tokens, answer = samples.tokens[i], samples.answers[i].tolist()
        found, statements = _solve(task, tokens)
        assert found == set(answer) and len(answer) == h1
        assert sorted(p for p, _ in statements) == sorted(positions[i].ravel().tolist())
        chain = positions[i, 0]
        assert (np.diff(positions[i], axis=1) >= 2).all(), "hops keep their order"
        np.testing.assert_array_equal(tokens[chain], answer)  # chain order: the variable assigned
        assert tokens[chain[0] + 1] == tokens[-1]  # first statement: the queried value
        np.testing.assert_array_equal(tokens[chain[1:] + 1], answer[:-1])  # then the previous variable
        values = tokens[positions[i, :, 0] + 1]
        assert len(set(values.tolist())) == C  # distinct values per chain
        assert len(set(tokens[positions[i].ravel()].tolist())) == C * h1  # distinct variables
    span = length - 4
    np.testing.assert_allclose(samples.meta["statement_depths"], 100 * positions[:, 0] / max(span, 1))
    assert (samples.meta["length"] == length).all() and (samples.meta["n_hops"] == task.n_hops).all()
    if extra == 0:  # no filler: the statements fill the body
        assert (np.sort(positions.reshape(200, -1), axis=1) == 2 * np.arange(C * h1)).all()


def test_chains_interleave_and_positions_spread():
    samples = VariableTrackingTask(n_chains=2, n_hops=1).generate(1010, 2000, seed=2)
    first = samples.meta["chain_positions"][:, :, 0]  # (n, 2)
    assert 0.4 < (first[:, 0] < first[:, 1]).mean() < 0.6
    positions = samples.meta["chain_positions"].reshape(2000, -1)
    interleaved = (positions[:, 1] > positions[:, 2]) & (positions[:, 3] > positions[:, 0])
    assert interleaved.mean() > 0.2
    pooled = np.histogram(positions, bins=5, range=(0, 1008))[0]  # every statement: uniform points
    assert pooled.min() > 0.9 * 1600 and pooled.max() < 1.1 * 1600


def test_scoring_is_a_set_of_variables():
    task = VariableTrackingTask()
    samples = task.generate(40, 50, seed=1)
    answers = samples.answers
    np.testing.assert_array_equal(task.score(samples, answers), np.ones(50))
    np.testing.assert_array_equal(task.score(samples, answers[:, ::-1]), np.ones(50))  # any order
    wrong = answers.copy()
    wrong[:, 2] = QUERY
    np.testing.assert_allclose(task.score(samples, wrong), np.full(50, 0.8))
    repeated = np.repeat(answers[:, :1], 5, axis=1)
    np.testing.assert_allclose(task.score(samples, repeated), np.full(50, 0.2))


@pytest.mark.parametrize("knobs, message", [
    ({"n_chains": 0}, "variable_tracking: n_chains must be >= 1, not 0"),
    ({"n_hops": -1}, "variable_tracking: n_hops must be >= 0, not -1"),
    ({"n_hops": 2.0}, "variable_tracking: n_hops must be an integer"),
    ({"n_vars": True}, "variable_tracking: n_vars must be an integer"),
    ({"n_chains": 4, "n_hops": 4},
     "variable_tracking: 4 chains of 4 hops bind 20 distinct variables, but n_vars is 16"),
    ({"n_chains": 3, "n_hops": 0, "n_values": 2}, "variable_tracking: 3 chains need as many distinct values"),
    ({"haystack": "text"}, "variable_tracking: haystack must be one of noise, random, not 'text'"),
])
def test_knob_validation(knobs, message):
    with pytest.raises(ValueError, match=message):
        VariableTrackingTask(**knobs)


def test_determinism_lengths_and_errors():
    task = VariableTrackingTask(n_chains=2, haystack="random")
    a, b = task.generate(101, 20, seed=9), task.generate(101, 20, seed=9)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.answers, b.answers)
    assert not np.array_equal(a.tokens, task.generate(101, 20, seed=10).tokens)
    m = task.min_length
    for length in (m, m + 1, 2 * m + 1, 333):
        assert task.generate(length, 3, seed=0).tokens.shape == (3, length)
    with pytest.raises(ValueError, match=f"variable_tracking: length {m - 1} is below the minimum {m}"):
        task.generate(m - 1, 2, seed=0)
    with pytest.raises(ValueError, match="variable_tracking: this task has no needle depth"):
        task.generate(m, 2, seed=0, depth=50)
    big = VariableTrackingTask().generate(1_000_000, 2, seed=0)
    assert big.tokens.shape == (2, 1_000_000)
    for i in range(2):
        assert _solve(VariableTrackingTask(), big.tokens[i])[0] == set(big.answers[i].tolist())
