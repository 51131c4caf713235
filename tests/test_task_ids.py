"""Symbol ids across tasks: a study of several task names gives each name a disjoint range of ids
(tasks of one name share theirs), a shifted task is its task plus the offset, scored the same, and
a study of one task name keeps every id it had."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml
from rich.console import Console

from longarch import tasks
from longarch.controlled import config, runner
from longarch.kinds import load_study
from longarch.study.store import Store
from longarch.tasks.shifted import Shifted

pytestmark = pytest.mark.usefixtures("one_thread")

MIXED = {
    "name": "mixed",
    "models": ["transformer"],
    "params": 15000,
    "seeds": [0],
    "train": {"length": 32, "steps": 4, "batch_size": 4, "warmup": 1, "eval_samples": 4,
              "tasks": [{"name": "needle", "weight": 2, "knobs": {"haystack": "noise"}},
                        {"name": "variable_tracking", "weight": 1},
                        {"name": "copy", "weight": 1}]},
    "eval": {"max_factor": 1, "depths": [50], "samples": 2, "chunk": 16,
             "tasks": [{"name": "needle", "label": "noise", "knobs": {"haystack": "noise"}},
                       {"name": "needle", "label": "number", "knobs": {"haystack": "noise", "value": "number"}},
                       {"name": "copy", "label": "copy"}]},
}


def _study(tmp_path: Path, data: dict | None = None):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data or MIXED))
    return load_study(str(path))


def _ids(samples) -> set[int]:
    return set(np.unique(samples.tokens)) | set(np.unique(samples.answers))


def test_task_names_get_disjoint_ranges_the_vocabulary_covers(tmp_path):
    study = _study(tmp_path)
    offsets = study.id_offsets()
    # needle's range is its widest task's (numbers add digits); first appearance orders the names
    widest_needle = tasks.get("needle", haystack="noise", value="number").vocab_size
    vt, copy = tasks.get("variable_tracking").vocab_size, tasks.get("copy").vocab_size
    assert offsets == {"needle": 0, "variable_tracking": widest_needle, "copy": widest_needle + vt}
    assert study.vocab_size() == widest_needle + vt + copy
    ranges = {name: range(start, start + width) for name, start, width in
              zip(offsets, offsets.values(), [widest_needle, vt, copy])}
    used: dict[str, set[int]] = {}
    made = [t for t, _ in study.train_tasks()] + [t for _, t in study.eval_tasks()]
    for task in made:
        samples = task.generate(length=64, n=8, seed=1)
        ids = _ids(samples)
        assert min(ids) >= ranges[task.name].start and max(ids) < ranges[task.name].stop, task.name
        assert max(ids) < study.vocab_size() and task.vocab_size <= study.vocab_size()
        used.setdefault(task.name, set()).update(ids)
    assert not used["needle"] & used["variable_tracking"] and not used["needle"] & used["copy"]
    assert not used["variable_tracking"] & used["copy"]
    # the first name keeps its ids and its tasks; the others are shifted, their labels unchanged
    assert [type(t).__name__ for t in made] == ["NeedleTask", "Shifted", "Shifted", "NeedleTask", "NeedleTask",
                                                "Shifted"]
    assert [label for label, _ in study.eval_tasks()] == ["noise", "number", "copy"]


def test_only_the_shifted_tasks_change_their_ids(tmp_path):
    study = _study(tmp_path)
    for _, task in study.eval_tasks():
        unshifted = task.task if isinstance(task, Shifted) else task
        assert (runner.task_id(task) == runner.task_id(unshifted)) == (task.name == "needle")
    assert study.eval_tasks()[-1][1].knobs == {**tasks.get("copy").knobs, "id_offset": study.id_offsets()["copy"]}


def test_a_study_of_one_task_name_keeps_its_ids(monkeypatch):
    study = load_study("quick")
    assert set(study.id_offsets().values()) == {0}
    made = [t for t, _ in study.train_tasks()] + [t for _, t in study.eval_tasks()]
    assert not any(isinstance(t, Shifted) for t in made)
    entries = [study.task] + list(study.eval.tasks or [])
    assert study.vocab_size() == max(tasks.get(e.name, **e.knobs).vocab_size for e in entries)
    models_now, cells_now = runner.plan(study)
    # the plan as it was before id ranges existed: the tasks as made, never shifted
    monkeypatch.setattr(config, "shifted", lambda task, offset: task)
    models_before, cells_before = runner.plan(study)
    assert [m.model_id for m in models_now] == [m.model_id for m in models_before]
    assert [c.cell_id for c in cells_now] == [c.cell_id for c in cells_before]


@pytest.mark.parametrize("name", ["needle", "variable_tracking", "copy", "mqar", "common_words", "frequent_words"])
def test_a_shifted_task_is_its_task_plus_the_offset(name):
    task = tasks.get(name)
    moved = Shifted(task, 100)
    assert (moved.name, moved.version, moved.vocab_size) == (task.name, task.version, task.vocab_size + 100)
    assert (moved.min_length, moved.answer_length, moved.item_length, moved.ordered, moved.uses_depth) == \
        (task.min_length, task.answer_length, task.item_length, task.ordered, task.uses_depth)
    assert moved.knobs == {**task.knobs, "id_offset": 100}
    length = max(64, task.min_length)
    plain, shifted = task.generate(length, 6, seed=3), moved.generate(length, 6, seed=3)
    assert np.array_equal(shifted.tokens, plain.tokens + 100) and np.array_equal(shifted.answers, plain.answers + 100)
    assert shifted.meta.keys() == plain.meta.keys()
    assert all(np.array_equal(shifted.meta[k], plain.meta[k]) for k in plain.meta)
    assert (shifted.answer_positions is None) == (plain.answer_positions is None)
    assert shifted.knobs == moved.knobs and shifted.task == task.name
    # scoring: the same predictions, shifted, score the same; unshifted ids are never right
    rng = np.random.default_rng(0)
    guesses = [plain.answers, rng.integers(0, task.vocab_size, plain.answers.shape), plain.answers[::-1]]
    for guess in guesses:
        assert np.array_equal(moved.score(shifted, guess + 100), task.score(plain, guess))
    assert not moved.score(shifted, plain.answers).any()
    assert moved.symbol(int(shifted.tokens[0, -1])) == task.symbol(int(plain.tokens[0, -1]))
    assert moved.symbol(5) == "<5>" and moved.symbol(moved.vocab_size) == f"<{moved.vocab_size}>"


def test_a_shifted_task_pickles_and_forwards_its_knobs():
    task = Shifted(tasks.get("needle", haystack="text"), 7)
    again = pickle.loads(pickle.dumps(task))
    assert again == task and hash(again) == hash(task) and again.haystack == "text"
    with pytest.raises(AttributeError):
        again.no_such_knob
    # a helper of the task reads samples of the shifted task as the task wrote them
    plain, moved = task.task.generate(64, 4, seed=0), task.generate(64, 4, seed=0)
    assert task.unknown_share(moved) == task.task.unknown_share(plain)
    with pytest.raises(ValueError):
        Shifted(tasks.get("copy"), 0)


def test_a_mixture_study_stores_the_offsets_in_the_knobs(tmp_path):
    study = _study(tmp_path)
    runner.run_study(study, tmp_path / "out", Console(file=open(os.devnull, "w")))
    offsets = study.id_offsets()
    with Store(tmp_path / "out" / "results.sqlite") as store:
        results = store.results()
    assert {r.label for r in results} == {"noise", "number", "copy"}
    for result in results:
        if result.task == "needle":
            assert "id_offset" not in result.knobs
        else:
            assert result.knobs["id_offset"] == offsets[result.task] > 0
    assert (tmp_path / "out" / "report.md").stat().st_size > 0
