"""Issue 19: a model whose training diverges is a result, not a crash (stored with its step, its
cells skipped with the reason, a rerun trains and runs nothing, the report names it and every
analysis leaves it out), and a stored checkpoint is used only when it is the one stored (its
recorded sha256, or, in a store from before hashes, its model id and an exact load)."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import sqlite3
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_weights
from safetensors.torch import save as save_tensors
from typer.testing import CliRunner

from longarch.cli import app
from longarch.controlled import runner
from longarch.controlled import train as training
from longarch.controlled.train import Diverged, TrainSpec, train
from longarch.kinds import build_report, load_study
from longarch.study.store import Store
from test_runner import quiet, write_study
from test_training import TASK, tiny_model

DIVERGING = [{"arch": "transformer", "lr": 1000}, "mamba2"]  # the transformer's loss goes NaN within 15 steps
CELLS_PER_MODEL = 9  # 3 lengths x 3 depths


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("clean")
    runner.run_study(load_study(str(write_study(directory))), directory / "out", quiet())
    return directory / "out"


@pytest.fixture(scope="module")
def diverged(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("diverged")
    report = runner.run_study(load_study(str(write_study(directory, models=DIVERGING, analysis={"claims": "paper"}))),
                              directory / "out", quiet())
    assert report == directory / "out" / "report.md"  # the run ended normally
    return directory / "out"


def results(out: Path, model: str | None = None) -> dict[str, tuple[float, list[float]]]:
    with Store(out / "results.sqlite") as store:
        return {r.cell_id: (r.accuracy, r.scores) for r in store.results() if model in (None, r.model)}


def rows(out: Path) -> dict[str, object]:
    with Store(out / "results.sqlite") as store:
        return {r.name: r for r in store.models()}


class Counted:
    """Counts the trainings (by model id) and evaluations a run does."""

    def __init__(self, monkeypatch):
        self.trained: list[str] = []
        self.evaluated = 0
        real_train, real_sweep, real_evaluate = runner.train, runner.train_sweep, runner.evaluate_samples

        def counting_train(*args, **kwargs):
            self.trained.append(kwargs.get("state_key"))
            return real_train(*args, **kwargs)

        def counting_sweep(*args, **kwargs):
            self.trained.append(kwargs.get("state_key"))
            return real_sweep(*args, **kwargs)

        def counting_evaluate(*args, **kwargs):
            self.evaluated += 1
            return real_evaluate(*args, **kwargs)

        monkeypatch.setattr(runner, "train", counting_train)
        monkeypatch.setattr(runner, "train_sweep", counting_sweep)
        monkeypatch.setattr(runner, "evaluate_samples", counting_evaluate)


def copy_study(source: Path, target: Path) -> Path:
    """A copy of a study directory: its store records its checkpoints relative to it, so the copy
    uses its own."""
    shutil.copytree(source, target)
    return target


def checkpoint(out: Path, row) -> Path:
    return runner.checkpoint_path(out, row.checkpoint)


# --------------------------------------------------------------------------------------------
# training: a non-finite loss or non-finite weights raise Diverged; a sweep goes on
# --------------------------------------------------------------------------------------------
def test_a_diverging_loss_carries_its_step_and_the_curve_before_it():
    spec = TrainSpec(length=16, steps=20, batch_size=4, lr=1e9, warmup=1, eval_samples=4, grad_clip=1e30)
    with pytest.raises(Diverged) as caught:
        train(tiny_model(), TASK, spec, seed=0)
    error = caught.value
    assert isinstance(error, FloatingPointError) and error.what == "loss" and 0 <= error.step < 20
    assert f"diverged at step {error.step}" in str(error) and error.steps == error.step + 1
    assert all(step < error.step and loss == loss for step, loss in error.losses)  # the finite losses before it
    again = pickle.loads(pickle.dumps(error))  # crosses from a worker process whole
    assert (again.step, again.what, again.losses, str(again)) == (error.step, "loss", error.losses, str(error))


def test_weights_that_go_non_finite_while_the_loss_stays_finite_are_a_divergence():
    """An update can blow the weights up on the last step, whose loss was still finite: no later
    loss shows it, so the weights are checked at the end."""
    model = tiny_model()
    spec = TrainSpec(length=16, steps=6, batch_size=4, warmup=1, eval_samples=4)

    def poison_last(step: int, loss: float) -> None:
        if step == 5:
            with torch.no_grad():
                next(model.parameters())[0] = float("inf")

    with pytest.raises(Diverged) as caught:
        train(model, TASK, spec, seed=0, on_step=poison_last)
    assert (caught.value.what, caught.value.step, caught.value.steps) == ("weights", 5, 6)
    assert "weights diverged at step 5" in str(caught.value)


def _diverging_train(diverge: dict[float, int], calls: list):
    """A stand-in for `train`: a rate in `diverge` diverges at its step, the others train."""
    def fake(model, task, spec, seed, **kwargs):
        calls.append(spec.lr)
        if spec.lr in diverge:
            raise Diverged(diverge[spec.lr])
        return training.TrainResult(1.0, 0.5, spec.lr, steps=spec.steps, task_accuracy={"a": spec.lr})
    return fake


def test_a_sweep_goes_on_past_a_rate_that_diverges(monkeypatch):
    calls: list[float] = []
    monkeypatch.setattr(training, "train", _diverging_train({0.3: 4}, calls))
    sweep = training.train_sweep(tiny_model, TASK, TrainSpec(length=16, steps=10, lr_sweep=(0.3, 0.1, 0.2)), seed=0)
    assert calls == [0.3, 0.1, 0.2] and sweep.lr == 0.2  # the best of the rates that trained
    assert sweep.tries[0] == {"lr": 0.3, "steps": 5, "steps_to_criterion": None, "worst_accuracy": None,
                              "seconds": 0.0, "diverged": 4}
    assert "diverged" not in sweep.tries[1]

    calls.clear()  # every rate diverges: the sweep diverges, with every try
    monkeypatch.setattr(training, "train", _diverging_train({0.3: 4, 0.1: 9}, calls))
    with pytest.raises(Diverged) as caught:
        training.train_sweep(tiny_model, TASK, TrainSpec(length=16, steps=10, lr_sweep=(0.3, 0.1)), seed=0)
    assert calls == [0.3, 0.1] and [t["diverged"] for t in caught.value.tries] == [4, 9]


def test_a_sweep_job_keeps_the_rate_after_one_that_diverged(tmp_path):
    study = load_study(str(write_study(tmp_path, models=[{"arch": "transformer", "lr": [1000, 0.003]}])))
    (plan,) = runner.plan(study)[0]
    trained = runner.train_job(runner.TrainJob(plan, runner.training_task(study), None))
    record = trained.row.config["train"]
    assert trained.row.diverged is None and record["lr"] == 0.003 and trained.weights
    assert isinstance(record["sweep"][0]["diverged"], int) and "diverged" not in record["sweep"][1]


# --------------------------------------------------------------------------------------------
# a study: the diverged model is stored as such, its cells skipped, the rest goes on
# --------------------------------------------------------------------------------------------
def test_a_diverged_model_is_stored_with_its_step_and_its_cells_skipped(diverged, clean):
    stored = rows(diverged)
    bad, good = stored["transformer"], stored["mamba2"]
    assert isinstance(bad.diverged, int) and 0 <= bad.diverged < 15 and bad.steps == bad.diverged + 1
    assert bad.checkpoint == "" and bad.sha256 is None and bad.train_accuracy == 0.0
    assert bad.config["diverged"]["what"] == "loss" and bad.config["train"]["lr"] == 1000
    assert good.diverged is None and good.sha256 == hashlib.sha256(checkpoint(diverged, good).read_bytes()).hexdigest()
    with Store(diverged / "results.sqlite") as store:
        assert store.failures() == []  # a result, not a failure
        skipped = store.skipped()
        curve = store.curves()[bad.model_id]
    assert len(skipped) == CELLS_PER_MODEL and {s["kind"] for s in skipped} == {"eval"}
    assert all(s["what"].startswith("transformer s0 on needle") for s in skipped)
    assert {s["reason"] for s in skipped} == {f"transformer seed 0 diverged at step {bad.diverged}: its loss became "
                                              f"non-finite ({bad.config['diverged']['value']})"}
    assert curve and all(step < bad.diverged for step, kind, _, _ in curve if kind == "loss")
    # the fine model's cells are stored, as a study without the diverging model stores them
    assert len(results(diverged)) == CELLS_PER_MODEL
    assert results(diverged) == results(clean, "mamba2")


def test_status_lists_the_diverged_model_and_its_skipped_cells(diverged):
    result = CliRunner().invoke(app, ["status", str(diverged)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "models: 2 of 2 trained (1 diverged), 0 failed" in said
    assert f"cells: {CELLS_PER_MODEL} of {2 * CELLS_PER_MODEL} stored, 0 failed, {CELLS_PER_MODEL} skipped, " \
           "0 not yet run" in said
    assert f"skipped {CELLS_PER_MODEL} (not run, not retried): transformer seed 0 diverged at step" in said


def test_the_report_names_the_diverged_model_and_every_analysis_leaves_it_out(diverged):
    step = rows(diverged)["transformer"].diverged
    report = " ".join((diverged / "report.md").read_text().split())
    assert f"**transformer diverged** (seed 0 at step {step}, its loss becoming non-finite)" in report
    assert "| transformer | attention |" in report and f"| diverged (seed 0 at step {step}) | 0 (1 seed) |" in report
    assert "| transformer (diverged) |" in report and "planned evaluation cells are not stored" not in report
    summary = json.loads((diverged / "summary.json").read_text())
    assert [(d["name"], d["seed"], d["step"]) for d in summary["diverged_models"]] == [("transformer", 0, step)]
    assert summary["missing_cells"] == 0  # its cells were skipped, not lost
    assert "transformer" not in summary["measures"]
    for finding in summary["findings"]:
        assert {"model": "transformer", "family": "attention",
                "reason": f"did not learn: its training diverged (seed 0 at step {step})"} in finding["excluded"]
    assert summary["training"]["transformer"]["seeds"]["0"]["diverged"] == step


def test_a_rerun_of_a_study_with_a_diverged_model_trains_and_runs_nothing(diverged, tmp_path, monkeypatch):
    out = copy_study(diverged, tmp_path / "out")
    before = results(out)
    counted = Counted(monkeypatch)
    runner.run_study(load_study(str(write_study(tmp_path, models=DIVERGING))), out, quiet())
    assert counted.trained == [] and counted.evaluated == 0
    assert results(out) == before
    with Store(out / "results.sqlite") as store:
        assert store.failures() == [] and len(store.skipped()) == CELLS_PER_MODEL


# --------------------------------------------------------------------------------------------
# checkpoints: used only when they are the ones stored
# --------------------------------------------------------------------------------------------
def _rerun_after(out: Path, tmp_path: Path, monkeypatch) -> Counted:
    """Rerun TINY into `out` with its cells at the longest length deleted (evaluated again from the
    weights the run takes)."""
    with Store(out / "results.sqlite") as store, store.db:
        store.db.execute("DELETE FROM results WHERE length = 64")
    counted = Counted(monkeypatch)
    runner.run_study(load_study(str(write_study(tmp_path))), out, quiet())
    return counted


def _assert_as_clean(out: Path, clean: Path) -> None:
    """The same results and weights as the clean run, each checkpoint recorded by its hash."""
    assert results(out) == results(clean)
    for name, row in rows(out).items():
        data = checkpoint(out, row).read_bytes()
        assert row.sha256 == hashlib.sha256(data).hexdigest()
        # tensors and metadata, not bytes: safetensors writes its metadata keys in no fixed order
        expected = checkpoint(clean, rows(clean)[name]).read_bytes()
        assert runner._metadata(data) == runner._metadata(expected)
        mine, theirs = load_weights(data), load_weights(expected)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_a_checkpoint_with_other_weights_of_the_same_shapes_is_retrained(clean, tmp_path, monkeypatch):
    out = copy_study(clean, tmp_path / "out")
    row = rows(out)["transformer"]
    path = checkpoint(out, row)
    tensors = {k: v + 0.5 if v.is_floating_point() else v for k, v in load_weights(path.read_bytes()).items()}
    path.write_bytes(save_tensors(tensors, metadata={"model_id": row.model_id, "arch": "transformer"}))
    counted = _rerun_after(out, tmp_path, monkeypatch)
    assert counted.trained == [row.model_id] and counted.evaluated == 2 * 3  # 2 models x 3 depths at 64
    _assert_as_clean(out, clean)


def test_another_architectures_checkpoint_is_retrained(clean, tmp_path, monkeypatch):
    out = copy_study(clean, tmp_path / "out")
    stored = rows(out)
    shutil.copyfile(checkpoint(out, stored["mamba2"]), checkpoint(out, stored["transformer"]))
    counted = _rerun_after(out, tmp_path, monkeypatch)
    assert counted.trained == [stored["transformer"].model_id]
    with Store(out / "results.sqlite") as store:
        assert store.failures() == []
    _assert_as_clean(out, clean)


def _as_before_issue_19(path: Path) -> None:
    """The store as written before divergence and checkpoint hashes were recorded."""
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE models DROP COLUMN diverged")
        db.execute("ALTER TABLE models DROP COLUMN sha256")
        db.execute("DROP TABLE skipped")


def test_a_store_from_before_hashes_reports_identically_and_keeps_the_checkpoints_that_load(clean, tmp_path,
                                                                                            monkeypatch):
    same = copy_study(clean, tmp_path / "same")
    old = copy_study(clean, tmp_path / "old")
    _as_before_issue_19(old / "results.sqlite")
    build_report(same)
    build_report(old)
    for name in ("report.md", "summary.json"):
        assert (old / name).read_text() == (same / name).read_text()
    summary = json.loads((old / "summary.json").read_text())
    assert "diverged_models" not in summary and all("diverged" not in m for m in summary["models"])
    stored = rows(old)
    assert all(r.sha256 is None and r.diverged is None for r in stored.values())

    # its mamba2 checkpoint names its model and loads: kept (and its hash recorded); the
    # transformer's is another architecture's file: retrained
    shutil.copyfile(checkpoint(old, stored["mamba2"]), checkpoint(old, stored["transformer"]))
    counted = _rerun_after(old, tmp_path, monkeypatch)
    assert counted.trained == [stored["transformer"].model_id]
    _assert_as_clean(old, clean)
