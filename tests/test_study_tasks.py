"""A study that trains on a mixture and evaluates several tasks and formats: the plan, the store
and the report keep the evaluated tasks apart, tasks without a needle depth get one cell per
length, and a store written before task labels existed still reads."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from longarch.controlled import runner
from longarch.kinds import summary_table
from longarch.kinds import load_study
from longarch.study.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")

STUDY = {
    "name": "formats",
    "task": {"name": "needle", "knobs": {"haystack": "noise"}},
    "models": ["transformer"],
    "params": 16000,  # a transformer within 2% at the vocabularies of needle alone and of needle + mqar
    "seeds": [0],
    "train": {"length": 32, "steps": 6, "batch_size": 4, "warmup": 1, "eval_samples": 4,
              "tasks": [{"name": "needle", "weight": 2}, {"name": "mqar", "weight": 1}]},
    "eval": {"max_factor": 2, "depths": [0, 100], "samples": 3, "chunk": 16,
             "tasks": [{"name": "needle", "knobs": {"haystack": "noise"}},
                       {"name": "needle", "knobs": {"haystack": "text", "n_filler": 16}},  # noise's vocabulary
                       {"name": "mqar"}]},
}
LABELS = ["needle haystack=noise", "needle haystack=text", "mqar"]


def _study(tmp_path: Path, **changes):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}))
    return load_study(str(path))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("formats")
    runner.run_study(_study(directory), directory / "out", Console(file=open(os.devnull, "w")))
    return directory / "out"


def test_plan_has_depth_cells_only_for_tasks_with_a_depth(tmp_path):
    models, cells = runner.plan(_study(tmp_path))
    assert len(models) == 1
    per_task = {label: [c for c in cells if c.label == label] for label in LABELS}
    assert sorted((c.length, c.depth) for c in per_task["needle haystack=text"]) == \
        [(32, 0.0), (32, 100.0), (64, 0.0), (64, 100.0)]
    assert sorted((c.length, c.depth) for c in per_task["mqar"]) == [(32, None), (64, None)]
    assert len(cells) == 10 and len({c.cell_id for c in cells}) == 10


def test_the_training_mixture_is_part_of_the_model_id(tmp_path):
    mixed = runner.plan(_study(tmp_path))[0][0].model_id
    reweighted = runner.plan(_study(tmp_path, train={**STUDY["train"], "tasks": [
        {"name": "needle", "weight": 1}, {"name": "mqar", "weight": 1}]}))[0][0].model_id
    needle_only = dict(STUDY["train"])
    del needle_only["tasks"]
    single = runner.plan(_study(tmp_path, train=needle_only))[0][0].model_id
    assert len({mixed, reweighted, single}) == 3


def test_a_noise_cell_keeps_its_id_when_formats_are_added(tmp_path):
    """Adding a text evaluation does not invalidate the noise results already stored."""
    plain = {k: v for k, v in STUDY["eval"].items() if k != "tasks"}
    train = {k: v for k, v in STUDY["train"].items() if k != "tasks"}
    formats = {**plain, "tasks": STUDY["eval"]["tasks"][:2]}  # noise and text share one vocabulary
    before = {c.cell_id for c in runner.plan(_study(tmp_path, eval=plain, train=train))[1]}
    after = {c.cell_id for c in runner.plan(_study(tmp_path, eval=formats, train=train))[1] if c.label == LABELS[0]}
    assert len(before) == 4 and before == after


def test_results_are_stored_per_task_label(finished):
    with Store(finished / "results.sqlite") as store:
        rows = store.results()
    assert len(rows) == 10
    assert {r.label for r in rows} == set(LABELS)
    assert {r.depth for r in rows if r.label == "mqar"} == {None}
    assert {r.knobs.get("haystack") for r in rows if r.task == "needle"} == {"noise", "text"}


def test_report_compares_the_formats(finished):
    summary = json.loads((finished / "summary.json").read_text())
    assert {s["task"] for s in summary["models"][0]["scores"]} == set(LABELS)
    report = (finished / "report.md").read_text()
    assert "## Format comparison" in report
    for label in LABELS:
        assert f"### Evaluated on {label}" in report and f"{label} at T" in report
    figures = {p.name for p in (finished / "figures").iterdir()}
    assert {"format_comparison.png", "format_comparison.svg", "accuracy_vs_length_mqar.png",
            "accuracy_vs_length_needle_haystack_text.png"} <= figures
    assert "heatmap_transformer_needle_haystack_text.png" in figures
    assert not any(name.startswith("heatmap_transformer_mqar") for name in figures)  # mqar has no depth
    table = summary_table(finished)
    assert [c.header for c in table.columns][:2] == ["model", "evaluated on"] and table.row_count == 3


def test_a_store_from_before_labels_is_read_and_labelled(tmp_path):
    path = tmp_path / "results.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE results (cell_id TEXT PRIMARY KEY, model_id TEXT NOT NULL, model TEXT NOT NULL,
            task TEXT NOT NULL, knobs TEXT NOT NULL, length INTEGER NOT NULL, depth REAL NOT NULL,
            seed INTEGER NOT NULL, n INTEGER NOT NULL, accuracy REAL NOT NULL, scores TEXT NOT NULL,
            seconds REAL NOT NULL);
        INSERT INTO results VALUES ('c1', 'm1', 'mamba2', 'needle', '{}', 64, 50.0, 0, 2, 0.5, '[1, 0]', 0.1);
    """)
    db.commit()
    db.close()
    with Store(path) as store:
        [row] = store.results()
    assert row.label == "needle" and row.depth == 50.0 and row.scores == [1, 0]
