"""decay-scale-fit (controlled/interventions.py, controlled/decay_fit.py): the decay scaling factor
s = (T/L)^p with p calibrated per model and length. Its arithmetic on the mixers (the identity at
L <= T, exactly (T/L)^p past T, p = 1 exactly decay-scale), the calibration (the argmin of losses
computed here independently, ties to the smaller p, a case whose answer is known), its ids and
knob, and a small study run end to end: its store, prediction lines, report sentence and export."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from longarch import mixers, models, tasks
from longarch.cli import app
from longarch.controlled import decay_fit, grid, interventions, runner
from longarch.controlled.train import answer_loss, batch_seed
from longarch.kinds import load_study
from longarch.mixers.base import DecayScaled, set_decay_exponent
from longarch.study import eval_seed
from longarch.study.driver import Runtime
from longarch.study.store import Store
from test_bad_input import one_error_line
from test_runner import TINY, run_config

pytestmark = pytest.mark.usefixtures("one_thread")

T = 16
NAME = "decay-scale-fit"
GRID = interventions.DECAY_EXPONENTS
NEEDLE = tasks.get("needle", haystack="random")
DECAYS = [  # (arch, module, reference function, index of its decay argument)
    ("mamba", "mamba", "selective_scan_reference", 1),
    ("mamba2", "mamba2", "ssd_reference", 1),
    ("s4d", "s4d", "s4d_reference", 1),
    ("gla", "gla", "gla_reference", 3),
    ("retnet", "retnet", "retention_reference", 3),
    ("hawk", "rglru", "rglru_reference", 1),
    ("rwkv6", "rwkv6", "wkv6_reference", 3),
    ("gated-deltanet", "deltanet", "delta_rule_reference", 4),
]


def _study(tmp_path, **changes):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return load_study(str(path))


def _model(arch: str = "mamba2", seed: int = 0, task=NEEDLE, **options) -> models.LanguageModel:
    torch.manual_seed(seed)
    return models.LanguageModel(models.config(arch, vocab_size=task.vocab_size, d_model=16, **options)).eval()


# --------------------------------------------------------------------------------------------
# the mixers: s = (T/L)^p
# --------------------------------------------------------------------------------------------
def test_every_mixer_that_declares_decay_scale_declares_decay_scale_fit():
    for arch in mixers.ARCHITECTURES:
        for declared in models.layer_interventions(models.config(arch, vocab_size=40)):
            assert ("decay-scale" in declared) == (NAME in declared), (arch, declared)

    class Plugin(DecayScaled, torch.nn.Module):  # a plugin mixer using the mixin gets it for free
        pass

    assert NAME in Plugin.inference_interventions(None)


@pytest.mark.parametrize("p", GRID)
def test_it_is_the_identity_at_L_up_to_T(p):
    model = _model()
    tokens = torch.randint(0, NEEDLE.vocab_size, (2, T))
    with torch.no_grad():
        plain = model(tokens)[0]
        set_decay_exponent(model, p)
        for length in (T // 2, T):
            model.set_context(T, length, NAME)
            assert {b.mixer.decay_factor for b in model.blocks} == {1.0}
            assert torch.equal(model(tokens)[0], plain)
    # and nothing is calibrated there: the task is never asked for samples
    assert decay_fit.calibrate(model, None, T, T, 4, 0) is None


@pytest.mark.parametrize("arch, module, function, index", DECAYS)
def test_with_p_forced_the_log_decays_are_scaled_by_T_over_L_to_the_p(monkeypatch, arch, module, function, index):
    torch.manual_seed(0)
    model = models.LanguageModel(models.config(arch, vocab_size=40, d_model=16, n_layers=1, init="torch"))
    mixer, x = model.blocks[0].mixer.double(), torch.randn(2, 3 * T, 16, dtype=torch.float64)
    seen = []
    target = importlib.import_module(f"longarch.mixers.{module}")
    original = getattr(target, function)
    monkeypatch.setattr(target, function, lambda *a: seen.append(a[index]) or original(*a))

    def run(intervention, length, exponent=1.0, reference=True):
        assert set_decay_exponent(model, exponent) == 1
        mixer.set_context(T, length, intervention)
        try:
            return mixer(x, reference=reference)[0], seen[-1]
        finally:
            mixer.set_context(T, T)

    _, plain = run(None, 4 * T)
    for p in GRID:
        out, decay = run(NAME, 4 * T, p)
        assert mixer.decay_factor == 1.0  # restored
        torch.testing.assert_close(decay, plain * 0.25 ** p, rtol=1e-12, atol=0)
        torch.testing.assert_close(run(NAME, 4 * T, p, reference=False)[0], out, rtol=1e-7, atol=1e-9)
    scaled, scaled_decay = run("decay-scale", 4 * T)
    fitted, fitted_decay = run(NAME, 4 * T, 1.0)  # p = 1 is decay-scale, exactly
    assert torch.equal(fitted, scaled) and torch.equal(fitted_decay, scaled_decay)
    baseline, _ = run(None, 4 * T)
    assert torch.equal(run(NAME, 4 * T, 0.0)[0], baseline)  # p = 0 is the baseline, exactly


def test_the_factor_reaches_only_decay_layers_and_a_bad_exponent_is_refused():
    model = _model("mamba2-attn")
    assert set_decay_exponent(model, 0.5) == 3  # the three Mamba-2 layers, not the attention
    model.set_context(T, 4 * T, NAME)
    assert [b.mixer.decay_factor for b in model.blocks if b.kind == "mamba2"] == [0.25 ** 0.5] * 3
    attention = model.blocks[2].mixer
    assert attention.rope_override is None and attention.window_override is None
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="decay exponent"):
            set_decay_exponent(model, bad)


# --------------------------------------------------------------------------------------------
# the calibration
# --------------------------------------------------------------------------------------------
def _independent_losses(model, samples, length: int) -> list[float]:
    """Each p's answer loss the way training computes it: the whole batch in one pass."""
    positions = None if samples.answer_positions is None else torch.from_numpy(samples.answer_positions)
    out = []
    for p in GRID:
        set_decay_exponent(model, p)
        model.set_context(T, length, NAME)
        with torch.no_grad():
            out.append(answer_loss(model, torch.from_numpy(samples.tokens), torch.from_numpy(samples.answers),
                                   positions).item())
    model.set_context(T, T)
    return out


@pytest.mark.parametrize("task", [NEEDLE, tasks.get("mqar", n_pairs=4)], ids=["needle", "mqar"])
def test_the_chosen_p_is_the_argmin_of_the_calibration_losses(task):
    model = _model(task=task, seed=3)
    length, n, model_seed = 4 * T, 6, 5
    found = decay_fit.calibrate(model, task, T, length, n, model_seed, chunk=5)  # chunks that split the answers
    seed = decay_fit.calibration_seed(model_seed, length)
    samples = task.generate(length=length, n=n, seed=seed)
    losses = _independent_losses(model, samples, length)
    assert found["calibration_seed"] == seed and found["samples"] == n and found["exponents"] == list(GRID)
    np.testing.assert_allclose(found["losses"], losses, rtol=1e-5)
    assert len(set(losses)) > 1  # the decay matters to this model: a real choice
    assert found["exponent"] == GRID[int(np.argmin(found["losses"]))]
    # the model is left as trained: p back to 1, set for T
    assert {b.mixer.decay_factor for b in model.blocks} == {1.0}


def test_the_calibration_seed_is_none_of_the_evaluations_or_the_trainings():
    seeds = {decay_fit.calibration_seed(s, L) for s in range(3) for L in (32, 64, 128)}
    assert len(seeds) == 9
    others = {eval_seed(base, L, d, s) for base in (0, 1234) for L in (32, 64, 128) for d in (None, 0, 50, 100)
              for s in range(3)}
    others |= {batch_seed(s, step) for s in range(3) for step in range(200)}
    assert not seeds & others


def test_ties_go_to_the_smaller_p_and_a_loss_that_is_not_a_number_is_never_chosen():
    assert decay_fit.chosen([2.0, 1.0, 1.0, 3.0, 1.0]) == 0.25
    assert decay_fit.chosen([1.0] * 5) == 0.0
    assert decay_fit.chosen([float("nan"), 2.0, float("inf"), 1.5, 1.5]) == 0.75
    assert decay_fit.chosen([float("nan")] * 5) == 0.0


def test_a_model_whose_answer_does_not_depend_on_the_decay_chooses_the_baseline():
    model = _model(seed=1)
    for block in model.blocks:  # the mixers add nothing: the decays cannot change a logit
        torch.nn.init.zeros_(block.mixer.out_proj.weight)
    found = decay_fit.calibrate(model, NEEDLE, T, 4 * T, 4, 0)
    assert len(set(found["losses"])) == 1 and found["exponent"] == 0.0


@pytest.mark.parametrize("best", GRID)
def test_the_p_whose_factor_the_loss_prefers_is_chosen(monkeypatch, best):
    """A loss known in advance: the distance of the layers' factor from (T/L)^best. Each p's loss
    is measured with the layers set to (T/L)^p, so p = best is chosen."""
    target = 0.25 ** best
    monkeypatch.setattr(decay_fit, "answer_loss_in_chunks",
                        lambda model, samples, chunk: abs(model.blocks[0].mixer.decay_factor - target))
    found = decay_fit.calibrate(_model(), NEEDLE, T, 4 * T, 2, 0)
    assert found["exponent"] == best and min(found["losses"]) == 0.0


# --------------------------------------------------------------------------------------------
# ids and the knob
# --------------------------------------------------------------------------------------------
def _cells(study):
    return runner.plan(study)[1]


def test_it_adds_cells_on_the_models_decay_scale_applies_to_and_changes_no_id(tmp_path):
    base = [c.cell_id for c in _cells(_study(tmp_path))]
    both = _cells(_study(tmp_path, interventions=["decay-scale", NAME]))
    assert [c.cell_id for c in both if not c.intervention] == base
    scaled = [c for c in both if c.intervention == "decay-scale"]
    fitted = [c for c in both if c.intervention == NAME]
    assert [c.cell_id for c in scaled] == [c.cell_id for c in _cells(_study(tmp_path, interventions=["decay-scale"]))
                                           if c.intervention]
    assert [(c.model.model_id, c.label, c.length, c.depth) for c in fitted] == \
        [(c.model.model_id, c.label, c.length, c.depth) for c in scaled]
    assert {c.model.label for c in fitted} == {"mamba2"} and {c.name for c in fitted} == {f"mamba2+{NAME}"}
    assert not {c.cell_id for c in fitted} & ({c.cell_id for c in scaled} | set(base))
    assert {json.dumps(c.knobs) for c in fitted} == {json.dumps({"samples": interventions.DECAY_FIT_SAMPLES})}


def test_the_samples_knob_enters_the_ids_only_when_set_to_other_than_its_default(tmp_path):
    plain = _cells(_study(tmp_path, interventions=["decay-scale", NAME]))
    default = _cells(_study(tmp_path, interventions=["decay-scale", {"name": NAME,
                                                                     "samples": interventions.DECAY_FIT_SAMPLES}]))
    eight = _cells(_study(tmp_path, interventions=["decay-scale", {"name": NAME, "samples": 8}]))
    assert [c.cell_id for c in default] == [c.cell_id for c in plain]
    for before, after in zip(plain, eight):
        assert (before.cell_id == after.cell_id) == (before.intervention != NAME)
    assert {c.knobs["samples"] for c in eight if c.intervention == NAME} == {8}
    # the stored configuration of a study that does not set it has no samples key (its identity is as before)
    dumped = _study(tmp_path, interventions=["tbptt", NAME]).model_dump(mode="json")["interventions"]
    assert dumped == [{"name": "tbptt", "pieces": None}, {"name": NAME, "pieces": None}]


@pytest.mark.parametrize("entry, fragments", [
    ({"name": NAME, "samples": 0}, ["samples", "greater than or equal to 1"]),
    ({"name": "decay-scale", "samples": 8},
     ["intervention 'decay-scale' takes no samples (only decay-scale-fit does)"]),
    ({"name": "tbptt", "samples": 8}, ["intervention 'tbptt' takes no samples"]),
    ({"name": NAME, "pieces": 4}, ["intervention 'decay-scale-fit' takes no pieces (only tbptt does)"]),
])
def test_a_bad_knob_is_one_error_line(tmp_path, monkeypatch, entry, fragments):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**TINY, "interventions": [entry]}))
    result = CliRunner().invoke(app, ["plan", str(path)])
    one_error_line(result.exit_code, result.stderr, result.output, fragments)


def test_the_plans_cost_counts_the_calibration(tmp_path):
    study = _study(tmp_path, interventions=[{"name": NAME, "samples": 3}])
    cells = {(c.intervention, c.length): c for c in _cells(study) if c.model.label == "mamba2"}
    n = study.eval.samples
    assert grid._eval_tokens(study, cells[(NAME, T)]) == n * T  # the identity at T: nothing calibrated
    assert grid._eval_tokens(study, cells[(NAME, 4 * T)]) == (n + len(GRID) * 3) * 4 * T
    assert grid._eval_tokens(study, cells[("", 4 * T)]) == n * 4 * T


def test_a_mixture_calibrates_on_its_first_task(tmp_path):
    study = _study(tmp_path, interventions=[NAME], train={**TINY["train"], "tasks": [
        {"name": "mqar", "knobs": {"n_pairs": 2}}, {"name": "needle", "knobs": {"haystack": "random"}}]})
    kind = runner.Controlled(study)
    cells = [c for c in _cells(study) if c.intervention == NAME]
    runtime = Runtime(tmp_path, 1, True)
    jobs = {c.length: kind.job(runner.Cell(c.cell_id, "eval", "", c), {c.model.model_id: b""}, runtime)[1]
            for c in cells}
    assert jobs[T].calibration_task is None  # nothing to calibrate at T
    assert jobs[4 * T].calibration_task.name == "mqar" == runner.training_task(study).tasks[0].name


# --------------------------------------------------------------------------------------------
# a study, end to end
# --------------------------------------------------------------------------------------------
SMALL = {**TINY, "train": {**TINY["train"], "steps": 4},
         "eval": {"max_factor": 2, "depths": [0, 100], "samples": 3, "chunk": 8},
         "interventions": [{"name": NAME, "samples": 4}]}


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    return run_config(tmp_path_factory.mktemp("decay_fit"), SMALL)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_study_runs_with_it_end_to_end(ran, tmp_path):
    with Store(ran / "results.sqlite") as store:
        results, meta, rows = store.results(), store.meta(), {m.name: m for m in store.models()}
    fitted = [r for r in results if r.intervention == NAME]
    assert {r.model for r in fitted} == {f"mamba2+{NAME}"} and len(fitted) == 2 * 2  # lengths x depths
    baseline = {(r.length, r.depth): r for r in results if r.model == "mamba2"}
    records = meta[interventions.DECAY_FIT_KEY]
    assert set(records) == {r.cell_id for r in fitted if r.length > T}
    chosen = set()
    for row in fitted:
        lines = _lines(runner.outputs_file(ran, row))
        assert len(lines) == row.n == 3
        if row.length == T:  # the identity: the baseline's answers, nothing calibrated
            assert row.scores == baseline[(T, row.depth)].scores
            assert all("decay_exponent" not in line for line in lines)
            continue
        record = records[row.cell_id]
        assert (record["model"], record["length"], record["samples"]) == ("mamba2", 2 * T, 4)
        assert {line["decay_exponent"] for line in lines} == {record["exponent"]}
        assert lines[0]["decay_losses"] == dict(zip(map(str, GRID), record["losses"]))
        chosen.add((record["exponent"], tuple(record["losses"])))
    assert len(chosen) == 1  # every cell of the model at that length chose the same p, from the same losses
    # the stored choice is the calibration of the stored checkpoint
    study = load_study(str(ran.parent / "study.yaml"))
    plan_ = next(c for c in _cells(study) if c.intervention == NAME).model
    model = runner.model_from_weights(plan_, (ran / rows["mamba2"].checkpoint).read_bytes())
    again = decay_fit.calibrate(model, runner.training_task(study), T, 2 * T, 4, 0, chunk=8)
    assert (again["exponent"], tuple(again["losses"])) == chosen.pop()
    # the report says it, one sentence for the model
    report = (ran / "report.md").read_text()
    section = report[report.index("## What recovers extrapolation"):]
    assert f"mamba2 chose p = {again['exponent']:g} at 2T." in section
    assert "transformer chose" not in section
    # and the export has the intervention column
    result = CliRunner().invoke(app, ["export", str(ran), "--out", str(tmp_path / "x.csv")])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "x.csv", newline="") as file:
        exported = {(r["model"], r["intervention"]) for r in csv.DictReader(file)}
    assert exported == {("transformer", ""), ("mamba2", ""), (f"mamba2+{NAME}", NAME)}
