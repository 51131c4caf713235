"""Interventions (controlled/interventions.py): the ids each changes and the ids it leaves alone,
where each applies (by what the mixers can do), the inference interventions' arithmetic (the
decay scaled by exactly T/L, the identity at T, the chunked path equal to the reference), the
training interventions' initial states (seen through a spy on the model), and a small study with
two of them run end to end: its store, its report's section and its export."""

from __future__ import annotations

import csv
import dataclasses
import importlib
import json
import sqlite3

import pytest
import torch
import yaml
from typer.testing import CliRunner

from longarch import models, tasks
from longarch.cli import app
from longarch.controlled import interventions, runner, train as training
from longarch.controlled.train import TrainIntervention, TrainSpec, answer_loss
from longarch.kinds import load_study
from longarch.mixers.attention import AttentionConfig, CausalSelfAttention, LocalAttentionConfig
from longarch.study.store import SCHEMA, Store
from test_bad_input import one_error_line
from test_runner import TINY, run_config

pytestmark = pytest.mark.usefixtures("one_thread")

T = 16
NEEDLE = tasks.get("needle", haystack="random")


def _study(tmp_path, **changes):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return load_study(str(path))


def _ids(study) -> tuple[list[str], list[str]]:
    model_plans, cells = runner.plan(study)
    return [m.model_id for m in model_plans], [c.cell_id for c in cells]


# --------------------------------------------------------------------------------------------
# ids
# --------------------------------------------------------------------------------------------
def test_without_interventions_the_ids_and_the_stored_configuration_are_as_before(tmp_path):
    plain, empty = _study(tmp_path), _study(tmp_path, interventions=[])
    assert _ids(plain) == _ids(empty)
    assert "interventions" not in plain.model_dump(mode="json")  # the study directory's identity is unchanged
    assert "planned_interventions" not in runner.Controlled(plain).plan().meta


@pytest.mark.parametrize("name", list(interventions.REGISTRY))
def test_each_intervention_adds_ids_on_the_models_it_applies_to_and_changes_none(tmp_path, name):
    base_models, base_cells = _ids(_study(tmp_path))
    study = _study(tmp_path, interventions=[name])
    model_plans, cells = runner.plan(study)
    assert [m.model_id for m in model_plans][:len(base_models)] == base_models
    assert [c.cell_id for c in cells if not c.applied] == base_cells
    added = [c for c in cells if c.applied]
    assert {c.applied for c in added} == {name} and len({c.cell_id for c in cells}) == len(cells)
    per_model = len(base_cells) // len(base_models)
    # TINY has a transformer (global RoPE attention) and mamba2 (a decaying recurrent state)
    applies_to = {"transformer"} if name.startswith("rope") or name == "window" else {"mamba2"}
    new_models = model_plans[len(base_models):]
    if interventions.get(name).stage == interventions.TRAIN:
        assert [m.label for m in new_models] == [f"mamba2+{name}"]
        assert new_models[0].model_id not in base_models and new_models[0].train_spec.intervention.name == name
        assert {c.model.model_id for c in added} == {new_models[0].model_id} and len(added) == per_model
    else:
        assert new_models == []  # evaluated on the baseline's own checkpoint
        assert {c.model.label for c in added} == applies_to and len(added) == per_model
        assert {c.name for c in added} == {f"{label}+{name}" for label in applies_to}


def test_tbptt_pieces_enter_the_model_id(tmp_path):
    default = runner.plan(_study(tmp_path, interventions=["tbptt"]))[0][-1]
    eight = runner.plan(_study(tmp_path, interventions=[{"name": "tbptt", "pieces": 8}]))[0][-1]
    assert default.train_spec.pieces == interventions.TBPTT_PIECES and eight.train_spec.pieces == 8
    assert default.model_id != eight.model_id


def test_state_passing_with_steps_post_trains_the_baselines_model(tmp_path):
    """`state-passing` with `steps` is a post-training: a recipe of that many steps at T, a tenth
    of the rate, no curriculum and no criterion, started from the baseline model of the same entry
    and seed, whose id enters its own; its training cell needs the baseline's."""
    study = _study(tmp_path, interventions=[{"name": "state-passing", "steps": 5}])
    scratch = runner.plan(_study(tmp_path, interventions=["state-passing"]))[0][-1]
    model_plans, _ = runner.plan(study)
    baseline = next(p for p in model_plans if p.label == "mamba2")
    post = model_plans[-1]
    assert post.label == "mamba2+state-passing" and post.start_from == baseline.model_id
    assert scratch.start_from == "" and scratch.model_id != post.model_id
    spec = post.train_spec
    assert (spec.steps, spec.phases, spec.until, spec.lr_sweep) == (5, None, None, None)
    assert spec.lr == pytest.approx(baseline.train_spec.lr * training.POST_TRAINING_RATE)
    assert spec.intervention == TrainIntervention("state-passing", steps=5) and spec.length == T
    assert spec.to_dict()["intervention"] == {"name": "state-passing", "steps": 5}
    other = runner.plan(_study(tmp_path, interventions=[{"name": "state-passing", "steps": 6}]))[0][-1]
    assert other.model_id != post.model_id
    cells = runner.Controlled(study).plan().cells
    trained = next(c for c in cells if c.id == post.model_id)
    assert trained.stage == "train" and trained.needs == (baseline.model_id,)
    assert cells.index(trained) > cells.index(next(c for c in cells if c.id == baseline.model_id))


def test_steps_on_another_intervention_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**TINY, "interventions": [{"name": "noise-state", "steps": 5}]}))
    result = CliRunner().invoke(app, ["plan", str(path)])
    one_error_line(result.exit_code, result.stderr, result.output,
                   ["'noise-state' takes no steps", "only state-passing"])


def test_a_post_training_starts_from_the_given_weights_on_its_own_batches(monkeypatch, tmp_path):
    """The job builds the model from the baseline's weights (not the seed's initialisation) and
    trains it on another stream of batches than the baseline's."""
    study = _study(tmp_path, interventions=[{"name": "state-passing", "steps": 2}])
    model_plans, _ = runner.plan(study)
    post = model_plans[-1]
    torch.manual_seed(7)
    start = models.LanguageModel(post.config)
    weights = runner.save_weights({k: v.contiguous() for k, v in start.state_dict().items()})
    seen = {}

    def spy(model, task, spec, seed, **hooks):
        seen.update(weights={k: v.clone() for k, v in model.state_dict().items()}, seed=seed, spec=spec)
        return real(model, task, spec, seed, **hooks)

    real = runner.train
    monkeypatch.setattr(runner, "train", spy)
    trained = runner.train_job(runner.TrainJob(post, runner.training_task(study), 1, start=weights))
    assert all(torch.equal(seen["weights"][k], v) for k, v in start.state_dict().items())
    assert seen["seed"] == training.post_training_seed(post.seed) != post.seed
    assert seen["spec"].intervention.steps == 2 and trained.row.steps == 2
    assert trained.row.config["train"]["from"] == post.start_from


# --------------------------------------------------------------------------------------------
# where each applies: by what the mixers can do
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch, expected", [
    ("transformer", {"rope-pi", "rope-ntk", "rope-yarn", "window"}),
    ("transformer-nope", {"window"}),
    ("transformer-pi", {"window"}),  # it scales RoPE already
    ("sliding-window", {"rope-pi", "rope-ntk", "rope-yarn", "state-passing", "tbptt", "noise-state"}),
    ("mamba2", {"decay-scale", "decay-scale-fit", "token-filter", "state-passing", "tbptt", "noise-state"}),
    ("mamba", {"decay-scale", "decay-scale-fit", "token-filter", "state-passing", "tbptt", "noise-state"}),
    ("gla", {"decay-scale", "decay-scale-fit", "token-filter", "state-passing", "tbptt", "noise-state"}),
    ("hawk", {"decay-scale", "decay-scale-fit", "token-filter", "state-passing", "tbptt", "noise-state"}),
    ("rwkv6", {"decay-scale", "decay-scale-fit", "token-filter", "state-passing", "tbptt", "noise-state"}),
    # a fixed decay selects no token
    ("s4d", {"decay-scale", "decay-scale-fit", "state-passing", "tbptt", "noise-state"}),
    ("retnet", {"decay-scale", "decay-scale-fit", "state-passing", "tbptt", "noise-state"}),
    ("deltanet", {"state-passing", "tbptt", "noise-state"}),  # no decay to scale
    ("gated-deltanet", {"decay-scale", "decay-scale-fit", "token-filter", "state-passing", "tbptt", "noise-state"}),
    ("mamba2-attn", set(interventions.REGISTRY)),
])
def test_each_applies_by_its_mixers_capabilities(arch, expected):
    config = models.config(arch, vocab_size=40)
    assert {name for name, i in interventions.REGISTRY.items() if i.applies(config)} == expected


# --------------------------------------------------------------------------------------------
# inference interventions
# --------------------------------------------------------------------------------------------
DECAYS = [  # (arch, module, reference function, index of its decay argument, what it is)
    ("mamba", "mamba", "selective_scan_reference", 1, "dt"),
    ("mamba2", "mamba2", "ssd_reference", 1, "log_a"),
    ("s4d", "s4d", "s4d_reference", 1, "log_dA"),
    ("gla", "gla", "gla_reference", 3, "log_a"),
    ("retnet", "retnet", "retention_reference", 3, "log_gamma"),
    ("hawk", "rglru", "rglru_reference", 1, "log_a"),
    ("rwkv6", "rwkv6", "wkv6_reference", 3, "log_w"),
    ("gated-deltanet", "deltanet", "delta_rule_reference", 4, "log_alpha"),
]


def _layer(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    model = models.LanguageModel(models.config(arch, vocab_size=40, d_model=16, n_layers=1, init="torch"))
    return model.blocks[0].mixer.double()


@pytest.mark.parametrize("arch, module, function, index, what", DECAYS)
def test_decay_scale_multiplies_the_log_decay_by_T_over_L_on_both_paths(monkeypatch, arch, module, function, index,
                                                                         what):
    mixer, x = _layer(arch), torch.randn(2, 3 * T, 16, dtype=torch.float64)
    seen = []
    target = importlib.import_module(f"longarch.mixers.{module}")
    original = getattr(target, function)
    monkeypatch.setattr(target, function, lambda *a: seen.append(a[index]) or original(*a))

    def run(length, reference):
        mixer.set_context(T, length, "decay-scale")
        try:
            return mixer(x, reference=reference)[0]
        finally:
            mixer.set_context(T, T)

    plain = run(T, True)  # at L = T: s = 1, the training behaviour
    assert torch.equal(plain, mixer(x, reference=True)[0])
    scaled = run(4 * T, True)
    assert torch.allclose(seen[-1], seen[0] * (T / (4 * T)), rtol=1e-12, atol=0), f"{what} is not scaled by T/L"
    assert (scaled - plain).abs().max() > 1e-3 * plain.abs().max()  # past T the outputs change
    torch.testing.assert_close(run(4 * T, False), scaled, rtol=1e-7, atol=1e-9)  # chunked = reference
    assert mixer.decay_factor == 1.0  # restored


def test_an_inference_intervention_reaches_only_the_layers_that_implement_it():
    torch.manual_seed(0)
    model = models.LanguageModel(models.config("mamba2-attn", vocab_size=40, d_model=16)).eval()
    attention = model.blocks[2].mixer
    tokens = torch.randint(0, 40, (2, T))
    with torch.no_grad():
        plain = model(tokens)[0]
        for name in ("decay-scale", "rope-ntk", "window"):
            model.set_context(T, T, name)  # the identity at L = T, whichever it is
            assert torch.equal(model(tokens)[0], plain), name
        model.set_context(T, 4 * T, "decay-scale")
        assert [b.mixer.decay_factor for b in model.blocks if b.kind == "mamba2"] == [0.25] * 3
        assert attention.rope_override is None and attention.window_override is None
        model.set_context(T, 4 * T, "window")
        assert attention.window_override == T and {b.mixer.decay_factor for b in model.blocks if b.kind == "mamba2"} == {1.0}
        model.set_context(T, 4 * T, "rope-yarn")
        assert (attention.rope_override, attention.rope_factor) == ("yarn", 4.0)
        model.set_context(T, T)
        assert attention.rope_override is None and attention.window_override is None and attention.rope_factor == 1.0


def _attention_pair(config_b):
    torch.manual_seed(1)
    a = CausalSelfAttention(AttentionConfig(d_model=16, n_heads=2)).double()
    b = CausalSelfAttention(config_b).double()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("reference", [False, True])
def test_window_is_global_attention_made_a_sliding_window_of_T_past_T(reference):
    global_, local = _attention_pair(LocalAttentionConfig(d_model=16, n_heads=2, window=T))
    x = torch.randn(2, 4 * T, 16, dtype=torch.float64)
    global_.set_context(T, 4 * T, "window")
    torch.testing.assert_close(global_(x, reference=reference)[0], local(x, reference=reference)[0])
    # fed in pieces through its cache, as the evaluation does
    first, cache = global_(x[:, :T + 3])
    torch.testing.assert_close(torch.cat([first, global_(x[:, T + 3:], cache)[0]], dim=1), local(x)[0])
    global_.set_context(T, T)
    assert not torch.allclose(global_(x)[0], local(x)[0])


@pytest.mark.parametrize("method", ["pi", "ntk", "yarn"])
def test_rope_interventions_are_the_configured_scalings(method):
    plain, scaled = _attention_pair(AttentionConfig(d_model=16, n_heads=2, rope_scaling=method))
    x = torch.randn(2, 4 * T, 16, dtype=torch.float64)
    plain.set_context(T, 4 * T, f"rope-{method}")
    scaled.set_context(T, 4 * T)
    torch.testing.assert_close(plain(x)[0], scaled(x)[0], rtol=0, atol=0)
    torch.testing.assert_close(plain(x, reference=True)[0], plain(x)[0])


# --------------------------------------------------------------------------------------------
# training interventions: the state each training call starts from
# --------------------------------------------------------------------------------------------
def _spied_training(monkeypatch, arch: str, intervention: TrainIntervention | None, steps: int = 3):
    """Train a tiny model a few steps; every call of the model while training: (tokens shape,
    whether gradients were on, the state it was given, the state it returned)."""
    torch.manual_seed(0)
    model = models.LanguageModel(models.config(arch, vocab_size=NEEDLE.vocab_size, d_model=16))
    calls = []
    forward = model.forward

    def spy(tokens, state=None, last_only=False):
        logits, out = forward(tokens, state, last_only)
        if model.training:
            calls.append((tuple(tokens.shape), torch.is_grad_enabled(), state, out))
        return logits, out

    monkeypatch.setattr(model, "forward", spy)
    spec = TrainSpec(length=T, steps=steps, batch_size=2, warmup=1, eval_samples=2, intervention=intervention)
    training.train(model, NEEDLE, spec, seed=0)
    return calls


def _ssm(layer_state) -> torch.Tensor:
    return layer_state.ssm


def test_without_an_intervention_every_batch_starts_from_zeros(monkeypatch):
    calls = _spied_training(monkeypatch, "mamba2", None)
    assert len(calls) == 3 and all(state is None for _, _, state, _ in calls)


def test_state_passing_starts_each_batch_from_the_last_ones_final_state_detached(monkeypatch):
    calls = _spied_training(monkeypatch, "mamba2-attn", TrainIntervention("state-passing"))
    assert len(calls) == 3 and calls[0][2] is None
    for (_, _, _, left), (_, _, given, _) in zip(calls, calls[1:]):
        assert given[2] is None  # global attention's cache is never carried
        for layer in (0, 1, 3):
            assert torch.equal(_ssm(given[layer]), _ssm(left[layer])) and _ssm(given[layer]).abs().sum() > 0
            assert not _ssm(given[layer]).requires_grad


def test_noise_state_starts_each_batch_from_a_random_prefixs_state(monkeypatch):
    calls = _spied_training(monkeypatch, "mamba2", TrainIntervention("noise-state"))
    prefixes = [c for c in calls if not c[1]]  # fed without gradients
    trained = [c for c in calls if c[1]]
    assert len(prefixes) == len(trained) == 3
    for (shape, _, _, left), (_, _, given, _) in zip(prefixes, trained):
        assert shape == (2, T)  # as long as the batch's samples
        assert all(torch.equal(_ssm(g), _ssm(p)) and _ssm(g).abs().sum() > 0 for g, p in zip(given, left))
    assert not torch.equal(_ssm(trained[0][2][0]), _ssm(trained[1][2][0]))  # a new prefix each step


def test_tbptt_feeds_longer_samples_in_pieces_carrying_the_state(monkeypatch):
    calls = _spied_training(monkeypatch, "mamba2", TrainIntervention("tbptt", 3), steps=2)
    k = NEEDLE.generate(length=T, n=1, seed=0).answers.shape[1]
    assert [(shape, grad) for shape, grad, _, _ in calls] == [((2, T), False), ((2, T), False), ((2, T + k - 1), True)] * 2
    for step in (0, 3):
        assert calls[step][2] is None  # each batch starts from zeros
        for piece in (1, 2):
            given, left = calls[step + piece][2], calls[step + piece - 1][3]
            assert all(torch.equal(_ssm(g), _ssm(p)) and _ssm(g).abs().sum() > 0 for g, p in zip(given, left))


@pytest.mark.parametrize("task", [NEEDLE, tasks.get("mqar", n_pairs=4)], ids=["needle", "mqar"])
def test_tbptt_loss_is_the_whole_sequences_loss(task):
    """Fed in pieces through the state, the forward pass is the whole sequence's: the same loss
    (only the gradients are truncated)."""
    torch.manual_seed(0)
    model = models.LanguageModel(models.config("mamba2", vocab_size=task.vocab_size, d_model=16)).double()
    samples = task.generate(length=4 * T, n=3, seed=1)
    positions = None if samples.answer_positions is None else torch.from_numpy(samples.answer_positions)
    whole = answer_loss(model, torch.from_numpy(samples.tokens), torch.from_numpy(samples.answers), positions)
    pieces, _ = training._piecewise_backward(model, samples, 4, None)
    assert pieces == pytest.approx(whole.item(), rel=1e-9)


# --------------------------------------------------------------------------------------------
# a study, end to end
# --------------------------------------------------------------------------------------------
SMALL = {**TINY, "train": {**TINY["train"], "steps": 4},
         "eval": {"max_factor": 2, "depths": [50], "samples": 4, "chunk": 8},
         "interventions": [{"name": "state-passing", "steps": 3}, "decay-scale"],
         "diagnostics": {"measures": ["retention", "state-norm"], "max_factor": 2, "samples": 2}}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    return run_config(tmp_path_factory.mktemp("interventions"), SMALL)


def test_a_study_stores_each_row_with_its_intervention(ran):
    with Store(ran / "results.sqlite") as store:
        trained = {(m.name, m.intervention) for m in store.models()}
        evaluated = {(r.model, r.intervention) for r in store.results()}
    assert trained == {("transformer", ""), ("mamba2", ""), ("mamba2+state-passing", "state-passing")}
    assert evaluated == trained | {("mamba2+decay-scale", "decay-scale")}


def test_a_post_trained_model_is_stored_with_the_model_it_started_from(ran):
    with Store(ran / "results.sqlite") as store:
        rows = {m.name: m for m in store.models()}
    post = rows["mamba2+state-passing"]
    assert post.config["train"]["from"] == rows["mamba2"].model_id
    assert post.steps == 3 and post.config["train"]["intervention"] == {"name": "state-passing", "steps": 3}


def test_diagnostics_are_of_the_baseline_models_alone(ran):
    """A study with interventions and diagnostics diagnoses its baseline models, as its other
    sections read them: retention where a recurrent layer is, state norms everywhere."""
    with Store(ran / "results.sqlite") as store:
        diagnosed = {(d.model, d.measure) for d in store.diagnostics()}
    assert diagnosed == {("transformer", "state-norm"), ("mamba2", "state-norm"), ("mamba2", "retention")}
    report = (ran / "report.md").read_text()
    assert report.index("## Diagnostics") < report.index("## What recovers extrapolation")


def test_the_report_has_the_section_with_a_row_per_model_and_a_column_per_intervention(ran):
    report = (ran / "report.md").read_text()
    section = report[report.index("## What recovers extrapolation"):]
    section = section[:section.index("\n## ", 1)]
    tables = [line for line in section.splitlines() if line.startswith("| model | baseline")]
    assert len(tables) == 2 and all(t == "| model | baseline | state-passing | decay-scale |" for t in tables)
    assert "### Accuracy at 2T, 32 tokens (the longest evaluated)" in section
    rows = [line for line in section.splitlines() if line.startswith("| transformer |")]
    assert rows and all(row.count("n/a") == 2 for row in rows)  # neither applies to global attention
    mamba2 = [line for line in section.splitlines() if line.startswith("| mamba2 |")]
    assert len(mamba2) == 2 and "n/a" not in "".join(mamba2)
    assert "figures/interventions.png" in section and (ran / "figures" / "interventions.png").is_file()
    # every other section reads the baseline alone
    before = report[:report.index("## What recovers extrapolation")]
    assert "+state-passing" not in before and "+decay-scale" not in before
    summary = json.loads((ran / "summary.json").read_text())
    assert [m["name"] for m in summary["models"]] == ["transformer", "mamba2"]
    assert summary["interventions"]["columns"] == ["baseline", "state-passing", "decay-scale"]
    assert summary["interventions"]["models"]["transformer"]["decay-scale"] is None


def test_export_has_the_intervention_column(ran, tmp_path):
    result = CliRunner().invoke(app, ["export", str(ran), "--out", str(tmp_path / "x.csv")])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "x.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert {(r["model"], r["intervention"]) for r in rows} >= {("mamba2", ""), ("mamba2+decay-scale", "decay-scale")}


def test_a_store_from_before_interventions_gains_the_column(tmp_path):
    path = tmp_path / "results.sqlite"
    old = "\n".join(line for line in SCHEMA.splitlines() if "intervention" not in line)
    old = old.replace("sha256         TEXT,", "sha256         TEXT").replace("seconds   REAL NOT NULL,", "seconds   REAL NOT NULL")
    with sqlite3.connect(path) as db:
        db.executescript(old)
        db.execute("INSERT INTO results (cell_id, model_id, model, task, label, knobs, length, depth, seed, n, "
                   "accuracy, scores, seconds) VALUES ('c', 'm', 'mamba2', 'needle', 'needle', '{}', 16, 50, 0, 1, "
                   "1.0, '[1.0]', 0.1)")
    with Store(path) as store:
        assert [(r.model, r.intervention) for r in store.results()] == [("mamba2", "")]


def test_an_unknown_intervention_is_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**TINY, "interventions": ["decay-scale", "dt-scal"]}))
    result = CliRunner().invoke(app, ["plan", str(path)])
    one_error_line(result.exit_code, result.stderr, result.output, ["unknown intervention 'dt-scal'", "decay-scale"])


# --------------------------------------------------------------------------------------------
# the interventions preset
# --------------------------------------------------------------------------------------------
def test_the_interventions_preset_measures_every_intervention_where_it_applies():
    """The issue's preset: the controlled trio plus GLA and Hawk, the noise and text formats to
    64T, every intervention of the registry, and the diagnostics beside them."""
    study = load_study("interventions")
    assert [m.arch for m in study.models] == ["transformer", "mamba2", "mamba2-attn", "gla", "hawk"]
    assert [label for label, _ in study.eval_tasks()] == ["noise", "text"]
    assert max(study.eval_lengths()) == 64 * study.train.length
    assert [i.name for i in study.interventions] == list(interventions.REGISTRY)
    assert study.interventions[0].options["steps"] == 400  # state passing as a post-training
    assert study.diagnostics is not None and study.diagnostics.max_factor == 64
    model_plans, cells = runner.plan(study)
    for intervention in study.interventions:  # each one is measured on some model
        assert any(p.intervention == intervention.name for p in model_plans) or \
            any(c.intervention == intervention.name for c in cells), intervention.name


def test_a_model_that_did_not_learn_under_a_column_is_not_read(ran):
    """The section reads a model's accuracy past T under a column only when that model learned the
    task at T: the baseline's (and an inference intervention's) by the baseline model, a training
    intervention's by its own model; otherwise the cell says so, with the training accuracy."""
    from longarch.controlled import interventions_report as section
    from longarch.controlled.report import load

    data = load(ran)

    def with_bar(bar):
        return dataclasses.replace(data, settings=data.settings.model_copy(update={"learned_bar_fraction": bar}))

    def table_text(d):
        return "\n".join(str(b) for b in section.intervention_blocks(d, {}))

    everything = table_text(with_bar(0.0))  # every model learned: numbers everywhere they apply
    assert "did not learn (" not in everything and "+" in everything.split("Accuracy at")[1]
    nothing = with_bar(1.0)  # four training steps: no model is at 100%
    found = section.measured(nothing)
    assert all(entry is None or not entry["learned"] for row in found.values() for entry in row.values())
    text = table_text(nothing)
    from longarch.analysis.learned import accuracy_at

    def lowest_at_t(cells, name):  # the cell names the task furthest below the bar at T
        label, accuracy = min(((t, accuracy_at(cells.values(), name, t, T)) for t in data.tasks), key=lambda x: x[1])
        return f"did not learn ({label} {100 * accuracy:.1f}% at T)"

    assert lowest_at_t(data.cells, "mamba2") in text
    assert lowest_at_t(data.intervention_cells, "mamba2+state-passing") in text
    assert all(change is None for entry in found["mamba2"].values() if entry for _, change in entry["at"].values())
