"""Training recipes and what training leaves behind: length curricula, training to a criterion,
per-model learning rates, the stored curves, and mid-training checkpoints that resume to the
same weights as an uninterrupted run (in this process and after `kill -9`)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load as load_weights
from safetensors.torch import save as save_tensors

from longarch import models, tasks
from longarch.controlled import runner
from longarch.study import faults
from longarch.controlled import train as training
from longarch.controlled.config import ConfigError, train_labels
from longarch.kinds import load_study
from longarch.study.store import Store
from longarch.controlled.train import Mixture, TrainSpec, learning_rate, train
from test_runner import TINY, quiet, write_study


def tiny_model(seed: int = 0, vocab_size: int = 50) -> models.LanguageModel:
    torch.manual_seed(seed)
    return models.LanguageModel(models.config("transformer", vocab_size=vocab_size, d_model=16))


TASK = tasks.get("needle", haystack="random")


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Interrupt(Exception):
    pass


def test_training_resumes_from_its_last_checkpoint_to_the_same_weights(tmp_path):
    spec = TrainSpec(length=16, steps=24, batch_size=4, warmup=3, eval_samples=8, checkpoint_every=10)
    whole = tiny_model()
    uninterrupted = train(whole, TASK, spec, seed=3)

    path = tmp_path / "state.safetensors"

    def stop_at_15(step, loss):
        if step == 14:  # 15 steps done; the checkpoint of step 10 is on disk
            raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny_model(), TASK, spec, seed=3, on_step=stop_at_15, state_path=path, state_key="m")
    assert path.is_file()
    steps_run = []
    resumed_model = tiny_model(seed=99)  # a different initialisation: the checkpoint must replace it
    resumed = train(resumed_model, TASK, spec, seed=3, on_step=lambda s, _: steps_run.append(s),
                    state_path=path, state_key="m")
    assert steps_run == list(range(10, 24))  # from the checkpoint at step 10, not from 0
    for name, value in weights(whole).items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name
    assert resumed.losses == uninterrupted.losses
    assert resumed.train_accuracy == uninterrupted.train_accuracy


def test_a_checkpoint_of_another_model_or_a_damaged_one_is_not_resumed(tmp_path):
    spec = TrainSpec(length=16, steps=12, batch_size=4, warmup=2, eval_samples=4, checkpoint_every=5)
    path = tmp_path / "state.safetensors"

    def stop(step, loss):
        if step == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny_model(), TASK, spec, seed=0, on_step=stop, state_path=path, state_key="model-a")
    for damaged in (None, path.read_bytes()[:100]):
        if damaged is not None:
            path.write_bytes(damaged)
        steps_run = []
        train(tiny_model(), TASK, spec, seed=0, on_step=lambda s, _: steps_run.append(s), state_path=path,
              state_key="model-b")
        assert steps_run[0] == 0  # started over


def test_a_state_whose_optimizer_part_does_not_load_changes_nothing(tmp_path):
    """The weights load, the optimizer's groups do not: the model keeps its own weights."""
    donor, model = tiny_model(seed=1), tiny_model(seed=2)
    optimizer = torch.optim.AdamW(donor.parameters(), lr=0.1)
    donor(torch.zeros(1, 4, dtype=torch.long))[0].sum().backward()
    optimizer.step()
    path = tmp_path / "state.safetensors"
    data = training.state_bytes(donor, optimizer, step=5, progress={}, key="m")
    tensors = load_weights(data)
    path.write_bytes(save_tensors(tensors, metadata={"training": json.dumps(
        {"key": "m", "step": 5, "progress": {}, "param_groups": [{"params": [0]}]})}))  # groups that do not fit
    before = weights(model)
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    assert training.load_state(path, model, fresh, key="m") is None
    for name, value in before.items():
        assert torch.equal(value, model.state_dict()[name]), name
    assert not fresh.state_dict()["state"]
    path.write_bytes(data)  # the same state whole: it loads
    assert training.load_state(path, model, fresh, key="m") == (5, {})
    assert all(torch.equal(v, donor.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_curriculum_trains_each_phase_at_its_length_then_T():
    spec = TrainSpec(length=32, phases=({"length": 16, "steps": 4}, {"length": 32, "steps": 3}), batch_size=2,
                     warmup=1, eval_samples=4, check={"every": 100})
    assert spec.steps == 7 and [spec.length_at(s) for s in range(8)] == [16] * 4 + [32] * 4
    lengths = []

    class Recording:
        def __getattr__(self, name):
            return getattr(TASK, name)

        def generate(self, length, n, seed, depth=None):
            lengths.append((length, n))
            return TASK.generate(length=length, n=n, seed=seed, depth=depth)

    train(tiny_model(), Recording(), spec, seed=0)
    batches = [length for length, n in lengths if n == 2]
    assert batches == [16] * 4 + [32] * 3
    assert {length for length, n in lengths if n != 2} == {32}  # checks and the final accuracy at T


def test_the_learning_rate_follows_one_cosine_over_the_plan_then_stays_at_a_tenth():
    spec = TrainSpec(length=16, steps=100, lr=1.0, warmup=10, until={"accuracy": 0.9, "max_steps": 300})
    assert learning_rate(spec, 0) == pytest.approx(0.1)
    assert learning_rate(spec, 9) == pytest.approx(1.0)
    assert learning_rate(spec, 100) == pytest.approx(0.1)
    assert learning_rate(spec, 250) == pytest.approx(0.1)


def test_training_to_a_criterion_stops_at_the_first_check_where_every_judged_task_reaches_it(monkeypatch):
    mixture = Mixture([TASK, tasks.get("needle", haystack="noise")], [1, 1], labels=["random", "noise"])
    # held-out accuracy per check: "noise" reaches the bar at the second check, "random" at the third
    script = iter([{"random": 0.2, "noise": 0.5}, {"random": 0.5, "noise": 0.97}, {"random": 0.96, "noise": 0.95},
                   {"random": 1.0, "noise": 1.0}])
    monkeypatch.setattr(training, "held_out_accuracy", lambda *args, **kwargs: next(script))
    spec = TrainSpec(length=16, steps=10, batch_size=2, warmup=1, eval_samples=4,
                     until={"accuracy": 0.95, "max_steps": 40}, check={"every": 5})
    result = train(tiny_model(), mixture, spec, seed=0)
    assert result.steps_to_criterion == 15 and result.steps == 15
    assert [c["step"] for c in result.checks] == [5, 10, 15]
    assert set(result.task_accuracy) == {"random", "noise"}

    script = iter([{"random": 0.2, "noise": 0.97}] * 3)
    judged = TrainSpec(length=16, steps=10, batch_size=2, warmup=1, eval_samples=4,
                       until={"accuracy": 0.95, "max_steps": 40, "labels": ["noise"]}, check={"every": 5})
    assert train(tiny_model(), mixture, judged, seed=0).steps_to_criterion == 5

    script = iter([{"random": 0.1, "noise": 0.1}] * 10)
    never = train(tiny_model(), mixture, spec, seed=0)
    assert never.steps_to_criterion is None and never.steps == 40  # ran on to max_steps


def test_an_anneal_trains_on_after_the_criterion_with_the_rate_falling_to_zero(monkeypatch):
    monkeypatch.setattr(training, "held_out_accuracy",
                        lambda *a, **k: {"needle": next(script)})
    script = iter([0.5, 0.97] + [1.0] * 10)
    spec = TrainSpec(length=16, steps=10, batch_size=2, lr=1.0, warmup=1, eval_samples=4,
                     until={"accuracy": 0.95, "max_steps": 40, "anneal": 4}, check={"every": 5})
    rates = []
    model = tiny_model()
    real_step = torch.optim.AdamW.step

    def record(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record)
    result = train(model, TASK, spec, seed=0)
    assert result.steps_to_criterion == 10 and result.steps == 14  # met at 10, then 4 steps of anneal
    at_criterion = learning_rate(spec, 10)
    assert rates[10:] == pytest.approx([at_criterion * f for f in (1, 0.75, 0.5, 0.25)])
    assert [c["step"] for c in result.checks] == [5, 10, 14]  # the anneal's end is checked too
    assert spec.max_steps == 44 and spec.end(None) == 40 and spec.end(10) == 14

    script = iter([0.1] * 20)  # never met: no anneal, max_steps as before
    assert train(tiny_model(), TASK, spec, seed=0).steps == 40


def test_an_interrupted_anneal_resumes_to_the_same_weights(tmp_path, monkeypatch):
    accuracy = {"needle": 0.0}
    monkeypatch.setattr(training, "held_out_accuracy", lambda *a, **k: dict(accuracy))
    spec = TrainSpec(length=16, steps=10, batch_size=2, warmup=1, eval_samples=4, checkpoint_every=2,
                     until={"accuracy": 0.95, "max_steps": 30, "anneal": 6}, check={"every": 5})

    def meet_at_10(step, loss):
        if step == 8:
            accuracy["needle"] = 1.0

    whole = tiny_model()
    uninterrupted = train(whole, TASK, spec, seed=1, on_step=meet_at_10)
    assert uninterrupted.steps_to_criterion == 10 and uninterrupted.steps == 16

    accuracy["needle"] = 0.0
    path = tmp_path / "state.safetensors"

    def stop_inside_the_anneal(step, loss):
        meet_at_10(step, loss)
        if step == 13:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny_model(), TASK, spec, seed=1, on_step=stop_inside_the_anneal, state_path=path, state_key="m")
    steps_run = []
    resumed_model = tiny_model(seed=5)
    resumed = train(resumed_model, TASK, spec, seed=1, on_step=lambda s, _: steps_run.append(s),
                    state_path=path, state_key="m")
    assert steps_run == [12, 13, 14, 15]  # from the checkpoint of step 12, inside the anneal
    assert resumed.steps_to_criterion == 10 and resumed.losses == uninterrupted.losses
    for name, value in weights(whole).items():
        assert torch.equal(value, resumed_model.state_dict()[name]), name


def test_focus_draws_each_task_by_its_weight_times_its_error_plus_the_floor():
    mixture = Mixture([TASK, tasks.get("needle", haystack="noise")], [3, 1], labels=["random", "noise"])
    shares = mixture.shares({"random": 1.0, "noise": 0.6}, floor=0.1)
    # random: 0.75 x 0.1 = 0.075; noise: 0.25 x 0.5 = 0.125
    assert shares == pytest.approx([0.075 / 0.2, 0.125 / 0.2])
    assert mixture.shares({}, floor=0.1) == pytest.approx([0.75, 0.25])  # no check yet: the weights
    drawn = [mixture.pick(seed, shares) is TASK for seed in range(4000)]
    assert sum(drawn) / len(drawn) == pytest.approx(0.375, abs=0.03)


def test_with_focus_training_draws_its_steps_where_the_last_check_was_wrong(monkeypatch):
    noise = tasks.get("needle", haystack="noise")
    mixture = Mixture([TASK, noise], [1, 1], labels=["random", "noise"])
    monkeypatch.setattr(training, "held_out_accuracy", lambda *a, **k: {"random": 1.0, "noise": 0.0})
    drawn = []
    real_generate = type(TASK).generate

    def spy(self, *args, **kwargs):
        drawn.append(self is noise)
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(type(TASK), "generate", spy)
    spec = TrainSpec(length=16, steps=210, batch_size=1, warmup=1, eval_samples=2, check={"every": 10},
                     focus=0.01)
    train(tiny_model(), mixture, spec, seed=0)
    before, after = drawn[:10], drawn[10:]
    assert 2 <= sum(before) <= 8  # before the first check: the weights, one half each
    assert sum(after) / len(after) > 0.95  # then 1.01 / 1.02 of the steps go to the unlearned task
    fixed = TrainSpec(length=16, steps=210, batch_size=1, warmup=1, eval_samples=2, check={"every": 10})
    drawn.clear()
    train(tiny_model(), mixture, fixed, seed=0)
    assert 0.35 < sum(drawn[10:]) / len(drawn[10:]) < 0.65


def test_checks_at_the_evaluations_depths_split_their_samples_evenly_among_them(monkeypatch):
    mqar = tasks.get("mqar")
    mixture = Mixture([TASK, mqar], [1, 1], labels=["needle", "mqar"])
    calls = []
    for cls in (type(TASK), type(mqar)):
        real = cls.generate

        def spy(self, *args, _real=real, **kwargs):
            calls.append((self.name, kwargs["n"], kwargs.get("depth")))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "generate", spy)
    model = tiny_model(vocab_size=max(TASK.vocab_size, mqar.vocab_size))
    accuracy = training.held_out_accuracy(model, mixture, 16, 10, seed=5, depths=(0.0, 50.0, 100.0))
    assert calls == [("needle", 4, 0.0), ("needle", 3, 50.0), ("needle", 3, 100.0), ("mqar", 10, None)]
    assert set(accuracy) == {"needle", "mqar"}
    calls.clear()
    training.held_out_accuracy(model, mixture, 16, 10, seed=5)
    assert calls == [("needle", 10, None), ("mqar", 10, None)]  # without depths: a random depth per sample


def test_the_criterion_is_only_read_in_the_last_phase(monkeypatch):
    monkeypatch.setattr(training, "held_out_accuracy", lambda *args, **kwargs: {"needle": 1.0})
    spec = TrainSpec(length=32, phases=({"length": 16, "steps": 10}, {"length": 32, "steps": 5}), batch_size=2,
                     warmup=1, eval_samples=4, until={"accuracy": 0.9, "max_steps": 30}, check={"every": 5})
    result = train(tiny_model(), TASK, spec, seed=0)
    assert result.steps_to_criterion == 15  # checks at 5 and 10 were in the phase at 16


def test_a_diverging_loss_stops_training_with_one_clear_error():
    spec = TrainSpec(length=16, steps=20, batch_size=4, lr=1e9, warmup=1, eval_samples=4, grad_clip=1e30)
    with pytest.raises(FloatingPointError, match="diverged"):
        train(tiny_model(), TASK, spec, seed=0)


def test_ids_of_a_recipe_without_the_new_settings_are_unchanged(tmp_path):
    """The model and cell ids of the quick preset as it was before curricula, criteria, curves and the
    text vocabulary (its text task with n_filler 16, a budget on all parameters), and of the smoke
    preset, as computed before these existed."""
    from importlib import resources

    old_quick = yaml.safe_load(resources.files("longarch.presets").joinpath("quick.yaml").read_text())
    old_quick.pop("params_count")
    for setting in ("phases", "until", "check"):
        old_quick["train"].pop(setting)
    old_quick["train"]["steps"] = 800
    old_quick["eval"]["tasks"][1]["knobs"]["n_filler"] = 16
    path = tmp_path / "old-quick.yaml"
    path.write_text(yaml.safe_dump(old_quick))
    quick_models, quick_cells = runner.plan(load_study(str(path)))
    assert [m.model_id for m in quick_models] == ["b70b405ff21add6f", "5e4b10a8b10b7981", "ec652f8d8106b32c"]
    assert quick_cells[0].cell_id == "251c30b710cd4126"
    smoke_models, smoke_cells = runner.plan(load_study("smoke"))
    assert [m.model_id for m in smoke_models] == ["da0e620b19f36fb1", "a07bbe7cc616a667"]
    assert smoke_cells[0].cell_id == "feb61db225586162"


def test_curriculum_criterion_and_lr_enter_the_model_id_but_checks_and_checkpoints_do_not(tmp_path):
    def ids(**train_changes):
        changes = {k: v for k, v in {**TINY["train"], **train_changes}.items() if v is not None}
        study = load_study(str(write_study(tmp_path, train=changes)))
        return [m.model_id for m in runner.plan(study)[0]]

    base = ids()
    assert ids(checkpoint_every=5) == base and ids(check={"every": 3, "samples": 9}) == base
    curriculum = ids(steps=None, phases=[{"length": 8, "steps": 10}, {"length": 16, "steps": 5}])
    until = ids(until={"accuracy": 0.9, "max_steps": 50})
    assert len({tuple(base), tuple(curriculum), tuple(until)}) == 3
    assert ids(until={"accuracy": 0.9, "max_steps": 50}, check={"every": 3}) != until  # when to stop
    assert ids(until={"accuracy": 0.9, "max_steps": 50, "anneal": 0}) == until  # no anneal: the id as before
    assert ids(until={"accuracy": 0.9, "max_steps": 50, "anneal": 10}) != until
    assert ids(check={"depths": [0, 50, 100]}) == base  # checks without until do not change the weights
    assert ids(until={"accuracy": 0.9, "max_steps": 50}, check={"depths": [0, 50, 100]}) != until

    study = load_study(str(write_study(tmp_path, models=[{"arch": "transformer"}, {"arch": "mamba2", "lr": 0.02}])))
    plans = runner.plan(study)[0]
    assert [p.train_spec.lr for p in plans] == [TINY["train"].get("lr", 3e-3), 0.02]
    assert plans[1].model_id != ids()[1]


@pytest.mark.parametrize("train_changes, message", [
    ({"steps": 10, "phases": [{"length": 8, "steps": 5}, {"length": 16, "steps": 3}]}, "phases' sum"),
    ({"steps": None, "phases": [{"length": 16, "steps": 5}, {"length": 8, "steps": 3}]}, "last phase is at length 8"),
    ({"steps": None, "phases": [{"length": 2, "steps": 5}, {"length": 16, "steps": 3}]}, "below the needle task"),
    ({"until": {"accuracy": 0.9, "max_steps": 5}}, "below the planned steps"),
    ({"until": {"accuracy": 1.5, "max_steps": 50}}, "accuracy"),
    ({"until": {"accuracy": 0.9, "max_steps": 50, "labels": ["nope"]}}, "'nope' is not a trained task"),
    ({"lr": float("inf")}, "lr"),
    ({"until": {"accuracy": 0.9, "max_steps": 50, "anneal": -1}}, "anneal"),
    ({"focus": 0.1}, "focus reweights a mixture"),
    ({"focus": 0}, "focus"),
    ({"check": {"depths": [0, 150]}}, "depth 150.0 is outside 0-100"),
])
def test_impossible_recipes_are_refused_with_one_line(tmp_path, train_changes, message):
    changes = {**TINY["train"], **train_changes}
    changes = {k: v for k, v in changes.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        load_study(str(write_study(tmp_path, train=changes)))


def test_train_labels_follow_the_evaluated_tasks():
    study = load_study("controlled")
    labels = train_labels(study)
    assert labels[:4] == ["noise-number", "text-number", "text-uuid", "needles"]
    assert len(set(labels)) == len(labels)


def test_a_study_stores_curves_and_steps_and_resumes_after_a_kill_inside_training(tmp_path):
    """kill -9 inside the first model's training, after its mid-training checkpoint: the rerun
    resumes from the checkpoint (not from step 0) and stores the weights of an uninterrupted run."""
    changes = {"models": ["transformer"], "train": {**TINY["train"], "steps": 30, "checkpoint_every": 10,
                                                    "check": {"every": 10, "samples": 4}}}
    study_file = write_study(tmp_path, **changes)
    clean = tmp_path / "clean"
    runner.run_study(load_study(str(study_file)), clean, quiet(), workers=0)

    killed = tmp_path / "killed"
    cli = [sys.executable, "-m", "longarch.cli", "run", str(study_file), "--out", str(killed), "--workers", "0"]
    process = subprocess.run(cli, capture_output=True, text=True, timeout=600, start_new_session=True,
                             env={**os.environ, faults.VARIABLE: "step:25"})
    assert process.returncode == -signal.SIGKILL, process.stderr[-2000:]
    states = list((killed / "checkpoints" / "training").glob("*.safetensors"))
    assert len(states) == 1  # the state at step 20
    # the rerun would die at its 11th step; resumed at step 20, it has only 10 to go and finishes
    done = subprocess.run(cli, capture_output=True, text=True, timeout=600, start_new_session=True,
                          env={**os.environ, faults.VARIABLE: "step:11"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list((killed / "checkpoints" / "training").iterdir())  # state removed once the model is stored

    def stored(out):
        with Store(out / "results.sqlite") as store:
            (row,) = store.models()
            return (row, store.curves()[row.model_id],
                    load_weights(runner.checkpoint_path(out, row.checkpoint).read_bytes()))

    (a, curve_a, weights_a), (b, curve_b, weights_b) = stored(clean), stored(killed)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert (a.train_accuracy, a.final_loss, a.steps) == (b.train_accuracy, b.final_loss, b.steps) == (
        a.train_accuracy, a.final_loss, 30)
    assert curve_a == curve_b
    assert [s for s, kind, _, _ in curve_a if kind == "accuracy"] == [10, 20, 30]
    assert [s for s, kind, _, _ in curve_a if kind == "loss"] == [0, 10, 20]
    assert {label for _, kind, label, _ in curve_a if kind == "accuracy"} == {"needle"}
    report = (clean / "report.md").read_text()
    assert "## Training" in report and "30 steps at length 16" in report
    assert "figures/training_curves.png" in report and (clean / "figures" / "training_curves.svg").is_file()
    summary = json.loads((clean / "summary.json").read_text())["training"]
    assert summary["transformer"]["seeds"]["0"]["steps"] == 30


def test_the_driver_shows_a_bar_per_model_in_training_from_the_workers_progress_files(tmp_path):
    from rich.progress import Progress

    study = load_study(str(write_study(tmp_path)))
    plans = {p.model_id: p for p in runner.plan(study)[0]}
    first = next(iter(plans))
    progress = Progress(console=quiet())
    bars = runner._LiveBars(progress, dict(plans), str(tmp_path))
    bars.poll()
    assert not progress.tasks  # nothing reported yet
    runner.progress_path(str(tmp_path), first).write_text(json.dumps(
        {"step": 40, "of": 100, "loss": 0.25, "accuracy": 0.5}))
    bars.poll()
    (task,) = progress.tasks
    assert task.completed == 40 and task.total == 100 and "loss 0.250" in task.fields["info"] and "50%" in task.fields["info"]
    runner.state_path(str(tmp_path), first).write_bytes(b"state")
    bars.done(first)
    assert not progress.tasks and not list(tmp_path.glob(f"{first}*"))


def test_a_store_from_before_curves_gains_the_new_columns(tmp_path):
    path = tmp_path / "results.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE models (model_id TEXT PRIMARY KEY, name TEXT NOT NULL, arch TEXT NOT NULL, "
                   "family TEXT NOT NULL, seed INTEGER NOT NULL, params INTEGER NOT NULL, state_floats INTEGER NOT NULL, "
                   "state_growth TEXT NOT NULL, train_length INTEGER NOT NULL, train_accuracy REAL NOT NULL, "
                   "train_seconds REAL NOT NULL, final_loss REAL NOT NULL, config TEXT NOT NULL, checkpoint TEXT NOT NULL)")
        db.execute("INSERT INTO models VALUES ('m', 'tf', 'transformer', 'attention', 0, 10, 10, 'linear', 16, 0.5, "
                   "1.0, 0.1, '{}', 'x')")
    with Store(path) as store:
        (row,) = store.models()
        assert row.steps is None and row.steps_to_criterion is None and store.curves() == {}


def test_a_non_embedding_budget_sizes_models_without_their_embedding_and_head(tmp_path):
    big_vocab = {"name": "needle", "knobs": {"haystack": "text"}}  # the default word vocabulary: over a thousand words
    for count in ("all", "non-embedding"):
        study = load_study(str(write_study(tmp_path, params=60000, params_count=count, task=big_vocab)))
        for plan_ in runner.plan(study)[0]:
            config = plan_.config
            assert config.vocab_size > 1000
            counted = models.count_params(config, embeddings=count == "all")
            assert abs(counted - 60000) <= 0.02 * 60000, (count, plan_.arch, counted)
            head = config.vocab_size * config.d_model * (1 if config.tie_head else 2)
            assert models.count_params(config) == models.count_params(config, embeddings=False) + head


def test_the_recipe_sentence_names_the_curriculum_the_criterion_and_the_check_interval():
    from longarch.analysis.training_report import recipe

    train = {"length": 64, "steps": 800, "batch_size": 32, "lr": 0.01, "warmup": 50,
             "phases": [{"length": 16, "steps": 400}, {"length": 64, "steps": 400}],
             "check": {"every": None, "samples": 64}}
    text = recipe(train)
    assert "400 steps at length 16, then 400 steps at length 64" in text
    assert "Held-out checks every 80 steps on 64 samples per task." in text  # the default: a tenth of 800
    text = recipe({**train, "check": {"every": 25, "samples": 8},
                   "until": {"accuracy": 0.95, "max_steps": 2000, "labels": ["noise"]}})
    assert "every 25 steps on 8 samples" in text
    assert "reached 95% on noise" in text and "at most 2000 steps" in text
    assert "AdamW with learning rate 0.01, warmup 50 steps" in text
    own = recipe(train, own_lr=True)  # a model trained at its own rate: the sentence sends to the table
    assert "AdamW with each model's learning rate in the table below (the study's default 0.01)" in own
    assert "anneal" not in text and "focus" not in text
    text = recipe({**train, "until": {"accuracy": 0.95, "max_steps": 2000, "anneal": 300}, "focus": 0.1,
                   "tasks": [{"name": "needle"}, {"name": "mqar"}]})
    assert "then 300 more steps with the learning rate falling linearly to zero" in text
    assert "its error at the last held-out check plus 0.1 (focus)" in text
    text = recipe({**train, "check": {"every": 25, "samples": 8, "depths": [0, 50, 100.0]}})
    assert "every 25 steps on 8 samples per task, a needle task's split evenly among depths 0, 50, 100." in text


def test_training_tokens_count_each_phase_at_its_length_and_steps_past_the_plan_at_T():
    spec = TrainSpec(length=64, batch_size=2, phases=[{"length": 16, "steps": 10}, {"length": 64, "steps": 5}],
                     until={"accuracy": 0.9, "max_steps": 40})
    assert spec.tokens() == 2 * (10 * 16 + 5 * 64)
    assert spec.tokens(4) == 2 * 4 * 16
    assert spec.tokens(spec.max_steps) == 2 * (10 * 16 + 30 * 64)


def test_plan_counts_a_curricula_tokens_and_the_most_a_criterion_may_add(tmp_path):
    from typer.testing import CliRunner
    from longarch.cli import app

    recipe = {k: v for k, v in TINY["train"].items() if k != "steps"}
    study = write_study(tmp_path, models=["transformer"], train={**recipe, "length": 16, "phases": [
        {"length": 8, "steps": 10}, {"length": 16, "steps": 10}], "until": {"accuracy": 0.9, "max_steps": 30}})
    batch = TINY["train"]["batch_size"]
    result = CliRunner().invoke(app, ["plan", str(study), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"{batch * (80 + 160) * len(TINY['seeds']):,} training tokens as planned" in text
    assert f"up to {batch * (80 + 20 * 16) * len(TINY['seeds']):,} if training runs to until.max_steps" in text

    study = write_study(tmp_path, models=["transformer"], train={**recipe, "length": 16, "phases": [
        {"length": 8, "steps": 10}, {"length": 16, "steps": 10}], "until": {"accuracy": 0.9, "max_steps": 30,
                                                                            "anneal": 5}})
    result = CliRunner().invoke(app, ["plan", str(study), "--out", str(tmp_path / "out2")])
    text = " ".join(result.output.split())
    assert f"up to {batch * (80 + 25 * 16) * len(TINY['seeds']):,} if training runs" in text  # the anneal at T


# --------------------------------------------------------------------------------------------
# learning-rate sweeps
# --------------------------------------------------------------------------------------------
def _fake_train(outcomes: dict[float, tuple[int | None, dict[str, float]]], calls: list):
    """A stand-in for `train`: per rate, (steps_to_criterion, final accuracy per task)."""
    def fake(model, task, spec, seed, **kwargs):
        calls.append(spec.lr)
        met, accuracy = outcomes[spec.lr]
        return training.TrainResult(1.0, 0.5, sum(accuracy.values()) / len(accuracy), steps=met or spec.max_steps,
                                    steps_to_criterion=met, task_accuracy=accuracy)
    return fake


def test_a_sweep_keeps_the_first_rate_that_meets_the_criterion_else_the_best_lowest_task(monkeypatch):
    until = TrainSpec(length=16, steps=10, until={"accuracy": 0.9, "max_steps": 20}, lr_sweep=(0.1, 0.2, 0.3))
    calls = []
    monkeypatch.setattr(training, "train", _fake_train({0.1: (None, {"a": 0.99, "b": 0.2}), 0.2: (12, {"a": 0.95, "b": 0.93}),
                                                       0.3: (10, {"a": 1.0, "b": 1.0})}, calls))
    kept = training.train_sweep(tiny_model, TASK, until, seed=0)
    assert kept.lr == 0.2 and calls == [0.1, 0.2]  # the first to meet it; 0.3 is never tried
    assert [t["lr"] for t in kept.tries] == [0.1, 0.2] and kept.tries[0]["worst_accuracy"] == 0.2
    assert [t["steps_to_criterion"] for t in kept.tries] == [None, 12]

    calls.clear()  # none meets it: the best lowest task wins (0.3's 0.5 over 0.1's 0.2 and 0.2's 0.4)
    monkeypatch.setattr(training, "train", _fake_train({0.1: (None, {"a": 0.99, "b": 0.2}), 0.2: (None, {"a": 0.4, "b": 0.9}),
                                                       0.3: (None, {"a": 0.5, "b": 0.5})}, calls))
    assert training.train_sweep(tiny_model, TASK, until, seed=0).lr == 0.3 and calls == [0.1, 0.2, 0.3]

    judged = dataclasses.replace(until, until=training.Until(0.9, 20, ("a",)))  # only task a is judged
    assert training.train_sweep(tiny_model, TASK, judged, seed=0).lr == 0.1

    calls.clear()  # without until every rate is tried; a tie goes to the earlier rate
    monkeypatch.setattr(training, "train", _fake_train({0.1: (None, {"a": 0.7}), 0.2: (None, {"a": 0.8}),
                                                       0.3: (None, {"a": 0.8})}, calls))
    plain = TrainSpec(length=16, steps=10, lr_sweep=(0.1, 0.2, 0.3))
    assert training.train_sweep(tiny_model, TASK, plain, seed=0).lr == 0.2 and calls == [0.1, 0.2, 0.3]


def test_an_interrupted_sweep_resumes_inside_its_second_rate_to_the_same_weights(tmp_path):
    spec = TrainSpec(length=16, steps=12, batch_size=4, warmup=2, eval_samples=8, checkpoint_every=5,
                     lr_sweep=(0.003, 0.01))
    whole = training.train_sweep(tiny_model, TASK, spec, seed=1)
    assert [t["lr"] for t in whole.tries] == [0.003, 0.01]

    def path(index):
        return tmp_path / f"try{index}.safetensors"

    seen: list[tuple[float, int]] = []
    rate = {}

    def stop_in_second(step, loss):
        seen.append((rate["lr"], step))
        if rate["lr"] == 0.01 and step == 7:  # 8 steps of the second rate done; its state of step 5 is on disk
            raise Interrupt

    with pytest.raises(Interrupt):
        training.train_sweep(tiny_model, TASK, spec, seed=1, attempt_path=path, state_key="m",
                             on_try=lambda i, lr: rate.update(lr=lr), on_step=stop_in_second)
    assert path(0).is_file() and path(1).is_file()
    seen.clear()
    resumed = training.train_sweep(lambda: tiny_model(seed=42), TASK, spec, seed=1, attempt_path=path, state_key="m",
                                   on_try=lambda i, lr: rate.update(lr=lr),
                                   on_step=lambda step, loss: seen.append((rate["lr"], step)))
    # the finished first rate is read back, not trained again; the second goes on from step 5
    assert seen == [(0.01, s) for s in range(5, 12)]
    assert resumed.lr == whole.lr and resumed.tries == [{**t, "seconds": r["seconds"]} for t, r in zip(whole.tries, resumed.tries)]
    for name, value in weights(whole.model).items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_a_study_with_a_sweep_stores_and_reports_every_rate_tried(tmp_path):
    study_file = write_study(tmp_path, models=["transformer", {"arch": "mamba2", "lr": [0.003, 0.01]}],
                             train={**TINY["train"], "checkpoint_every": 5})
    study = load_study(str(study_file))
    plans = runner.plan(study)[0]
    assert plans[1].train_spec.lr_sweep == (0.003, 0.01) and "lr_sweep" not in plans[0].train_spec.to_dict()
    assert plans[1].model_id != runner.plan(load_study(str(write_study(tmp_path, models=["transformer", {
        "arch": "mamba2", "lr": 0.003}], train={**TINY["train"], "checkpoint_every": 5}))))[0][1].model_id
    out = tmp_path / "out"
    runner.run_study(study, out, quiet(), workers=0)
    with Store(out / "results.sqlite") as store:
        rows = {r.arch: r for r in store.models()}
    train_record = rows["mamba2"].config["train"]
    assert [t["lr"] for t in train_record["sweep"]] == [0.003, 0.01]  # no until: both tried
    kept = max(train_record["sweep"], key=lambda t: t["worst_accuracy"])
    assert train_record["lr"] == kept["lr"]
    assert rows["mamba2"].train_seconds == pytest.approx(sum(t["seconds"] for t in train_record["sweep"]))
    assert "sweep" not in rows["transformer"].config["train"]
    assert not list((out / "checkpoints" / "training").glob("*"))  # every try's state removed once stored
    report = " ".join((out / "report.md").read_text().split())
    assert "Learning-rate sweeps" in report and "mamba2 seed 0 tried 0.003 (15 steps" in report
    assert f"and kept {kept['lr']:g}" in report
    summary = json.loads((out / "summary.json").read_text())["training"]
    assert [t["lr"] for t in summary["mamba2"]["seeds"]["0"]["sweep"]] == [0.003, 0.01]


@pytest.mark.parametrize("lr, message", [
    ([], "1 to 8 rates"), ([0.001 * i for i in range(1, 10)], "1 to 8 rates"), ([0.01, 0.01], "repeats"),
    ([0.01, -0.1], "positive and finite"), ([0.01, float("nan")], "positive and finite"), (0, "positive and finite"),
])
def test_impossible_sweeps_are_refused_with_one_line(tmp_path, lr, message):
    with pytest.raises(ConfigError, match=message):
        load_study(str(write_study(tmp_path, models=[{"arch": "transformer", "lr": lr}])))


def test_plan_counts_every_rate_of_a_sweep_in_its_upper_bound(tmp_path):
    from typer.testing import CliRunner
    from longarch.cli import app

    study = write_study(tmp_path, models=[{"arch": "transformer", "lr": [0.001, 0.003, 0.01]}],
                        train={**TINY["train"], "until": {"accuracy": 0.9, "max_steps": 30}})
    batch, length = TINY["train"]["batch_size"], TINY["train"]["length"]
    result = CliRunner().invoke(app, ["plan", str(study), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"{batch * 15 * length:,} training tokens as planned" in text  # one rate, if it meets the bar
    assert f"up to {batch * 30 * length * 3:,} if training runs" in text  # every rate to max_steps


def test_a_sweeps_bar_names_the_rate_it_is_training(tmp_path):
    from rich.progress import Progress

    study = load_study(str(write_study(tmp_path, models=[{"arch": "transformer", "lr": [0.003, 0.01]}])))
    plan_ = runner.plan(study)[0][0]
    progress = Progress(console=quiet())
    bars = runner._LiveBars(progress, {plan_.model_id: plan_}, str(tmp_path))
    live = runner._Live(runner.TrainJob(plan_, None, None, str(tmp_path)))
    live.rate(1, 0.01)
    live.step(39, 0.25)
    bars.poll()
    (task,) = progress.tasks
    assert task.completed == 40 and "loss 0.250" in task.fields["info"] and "lr 0.01 (2 of 2)" in task.fields["info"]
