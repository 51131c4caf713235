"""The runner: a study resumes after an interruption without recomputing or losing cells, and
ends with the same summary as an uninterrupted run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from longarch.controlled import runner
from longarch.kinds import load_study
from longarch.study.store import Store

TINY = {
    "name": "tiny",
    "task": {"name": "needle", "knobs": {"haystack": "random"}},
    "models": ["transformer", "mamba2"],
    "params": 20000,
    "seeds": [0],
    "train": {"length": 16, "steps": 15, "batch_size": 8, "warmup": 2, "eval_samples": 8},
    "eval": {"max_factor": 4, "depths": [0, 50, 100], "samples": 6, "chunk": 8},
}
N_CELLS = 2 * 3 * 3  # models x lengths x depths


def write_study(directory: Path, **changes) -> Path:
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"))


def run_config(directory: Path, config: dict) -> Path:
    """Write `config` as a study file in `directory`, run it quietly into `directory`/out; that folder."""
    path = directory / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    runner.run_study(load_study(str(path)), directory / "out", quiet())
    return directory / "out"


def summary_models(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())["models"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("full")
    study = load_study(str(write_study(directory)))
    runner.run_study(study, directory / "out", quiet())
    return directory / "out"


def test_plan_ids_are_stable_and_distinct():
    study = load_study("smoke")
    models_a, cells_a = runner.plan(study)
    models_b, cells_b = runner.plan(study)
    assert [c.cell_id for c in cells_a] == [c.cell_id for c in cells_b]
    assert len({c.cell_id for c in cells_a}) == len(cells_a)
    changed = study.model_copy(update={"seeds": [1]})
    _, cells_c = runner.plan(changed)
    assert not {c.cell_id for c in cells_c} & {c.cell_id for c in cells_a}


def test_uninterrupted_run_stores_every_cell(uninterrupted):
    with Store(uninterrupted / "results.sqlite") as store:
        results = store.results()
        assert len(results) == N_CELLS
        assert {r.length for r in results} == {16, 32, 64}
        assert all(r.n == 6 and len(r.scores) == 6 for r in results)
        assert {m.name for m in store.models()} == {"transformer", "mamba2"}
    for name in ("report.md", "report.html", "summary.json"):
        assert (uninterrupted / name).stat().st_size > 0


def test_interrupted_run_resumes_without_recomputing(tmp_path, uninterrupted, monkeypatch):
    study = load_study(str(write_study(tmp_path)))
    out = tmp_path / "out"
    real = runner.evaluate_samples
    calls = {"n": 0}

    def interrupting(*args, **kwargs):
        if calls["n"] == 5:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_samples", interrupting)
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(study, out, quiet())
    with Store(out / "results.sqlite") as store:
        assert len(store.results()) == 5

    counted = {"n": 0}

    def counting(*args, **kwargs):
        counted["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_samples", counting)
    runner.run_study(study, out, quiet())
    assert counted["n"] == N_CELLS - 5  # only the missing cells were evaluated
    assert summary_models(out) == summary_models(uninterrupted)

    counted["n"] = 0
    runner.run_study(study, out, quiet())  # a finished study computes nothing
    assert counted["n"] == 0


def test_damaged_checkpoint_is_retrained(tmp_path, uninterrupted):
    study = load_study(str(write_study(tmp_path)))
    out = tmp_path / "out"
    runner.run_study(study, out, quiet())
    with Store(out / "results.sqlite") as store:
        checkpoint = runner.checkpoint_path(out, store.models()[0].checkpoint)
        with store.db:
            store.db.execute("DELETE FROM results WHERE length = 64")
    checkpoint.write_bytes(b"not a safetensors file")
    runner.run_study(study, out, quiet())
    assert summary_models(out) == summary_models(uninterrupted)


def test_a_model_whose_settings_changed_leaves_the_report_but_not_the_store(tmp_path, uninterrupted):
    """Rerunning a study with one model's settings changed trains that model anew (a new id);
    the report, its summary and its training section read the study as last run, and name the
    stored model they leave out."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(uninterrupted, out)
    with Store(out / "results.sqlite") as store:
        old = {m.name: m.model_id for m in store.models()}
    changed = [{"arch": "transformer"}, {"arch": "mamba2", "lr": 0.0021}]
    runner.run_study(load_study(str(write_study(tmp_path, models=changed))), out, quiet(), force=True)
    with Store(out / "results.sqlite") as store:
        stored = store.models()
        assert len(stored) == 3 and len(store.results()) == N_CELLS + N_CELLS // 2  # nothing deleted
    new = {m.name: m.model_id for m in stored if m.model_id != old["mamba2"]}
    assert new["transformer"] == old["transformer"] and new["mamba2"] != old["mamba2"]
    summary = json.loads((out / "summary.json").read_text())
    assert [m["name"] for m in summary["models"]] == ["transformer", "mamba2"]
    assert summary["stored_cells"] == N_CELLS
    assert summary["left_out_models"] == [f"mamba2 seed 0 ({old['mamba2']}, {N_CELLS // 2} cells)"]
    report = (out / "report.md").read_text()
    assert "Left out: 1 stored model(s)" in report and old["mamba2"] in report
    assert summary["training"]["mamba2"]["lr"] == [0.0021]  # the training section reads the new model only
