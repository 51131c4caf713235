"""One task contract for both families, checked over the whole registry: every task is a frozen
dataclass of knobs with its registered name, a family and a version, behind one `tasks.get`; and
the ids of stored results did not move when the text tasks joined the contract."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle

import pytest

from longarch import tasks
from longarch.kinds import load_study
from longarch.pretrained.runner import plan as plan_pretrained


def _made(name: str, tmp_path):
    """The task with its defaults; a QA task gets a one-question dataset file of its format."""
    if name == "qa_1":
        data = {"data": [{"paragraphs": [{"context": "Bern is the capital.", "qas": [
            {"question": "What is the capital?", "is_impossible": False, "answers": [{"text": "Bern"}]}]}]}]}
    elif name == "qa_2":
        data = [{"question": "Which capital?", "answer": "Bern", "context": [["Bern", ["Bern is the capital."]]],
                 "supporting_facts": [["Bern", 0]]}]
    else:
        return tasks.get(name)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return tasks.get(name, path=str(path))


@pytest.mark.parametrize("name", tasks.names())
def test_every_task_is_a_named_versioned_frozen_set_of_knobs(name, tmp_path):
    cls = tasks.task_class(name)
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    assert cls.name == name and cls.family in ("tokens", "text") and isinstance(cls.version, int) and cls.version >= 1
    assert tasks.describe(name)
    task = _made(name, tmp_path)
    assert type(task) is cls and task.name == name
    field = dataclasses.fields(task)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(task, field, getattr(task, field))
    # the knobs are plain JSON (what a stored result's id is made of); a text task's are its fields
    # as set (a token task may leave out knobs added later at their old value, so old ids hold)
    assert json.loads(json.dumps(task.knobs)) == task.knobs
    assert set(task.knobs) <= {f.name for f in dataclasses.fields(task)} | {"id_offset"}
    if cls.family == "text":
        assert task.knobs == dataclasses.asdict(task)
    assert pickle.loads(pickle.dumps(task)) == task  # a job's task travels to a worker process


@pytest.mark.parametrize("name", tasks.names())
def test_one_get_refuses_unknown_knobs_and_the_other_family(name):
    cls = tasks.task_class(name)
    with pytest.raises(ValueError, match=f"{name!r} has no knob 'no_such_knob'"):
        tasks.get(name, no_such_knob=1)
    other = "text" if cls.family == "tokens" else "tokens"
    with pytest.raises(tasks.UnknownTask, match=f"unknown {'text task' if other == 'text' else 'task'} {name!r}"):
        tasks.get(name, family=other)
    assert name in tasks.names(cls.family) and name not in tasks.names(other)


def test_a_text_task_sets_its_canonical_knobs_once():
    """RULER asks at least as many keys as it queries: set when the task is made (and stored so),
    never after."""
    task = tasks.get("niah_multiquery")
    assert (task.num_needle_q, task.num_needle_k) == (4, 4) and task.knobs["num_needle_k"] == 4


@pytest.mark.parametrize("preset, cells, first, digest, vt_1_digest", [
    ("paper", 679, "a230397ee4858a09", "ea1bb4341ea15cf7", "f18e907c5fe6dd45"),
    ("paper-depth", 294, "c7430167cea3fcad", "9bfe0eea856f281f", "9bfe0eea856f281f"),
])
def test_the_pretrained_presets_keep_their_cell_ids(preset, cells, first, digest, vt_1_digest, monkeypatch):
    """Golden ids, computed before the text tasks became named and frozen (a task's knobs and
    version are part of every cell's id; a change here orphans every stored result). Issue 23
    moved vt to version 2 (its hops never adjacent), which renews the vt cells alone: with vt at
    version 1 the ids are the ones of before."""
    planned, _ = plan_pretrained(load_study(preset))
    assert len(planned) == cells and planned[0].cell_id == first
    assert hashlib.sha256(" ".join(c.cell_id for c in planned).encode()).hexdigest()[:16] == digest
    from longarch.tasks.text.ruler import VariableTracking

    monkeypatch.setattr(VariableTracking, "version", 1)
    before, _ = plan_pretrained(load_study(preset))
    assert hashlib.sha256(" ".join(c.cell_id for c in before).encode()).hexdigest()[:16] == vt_1_digest
    assert {c.task.name for c, b in zip(planned, before) if c.cell_id != b.cell_id} <= {"vt"}
