"""The evaluation grid a study plans: per-task needle depths, and `scale`, the one knob that
grows a controlled study for bigger machines."""

from __future__ import annotations

import copy

import pytest
import yaml
from typer.testing import CliRunner

from longarch import cli
from longarch.controlled.config import ConfigError
from longarch.kinds import load_study
from longarch.controlled.runner import plan

pytestmark = pytest.mark.usefixtures("one_thread")

STUDY = {
    "name": "grid",
    "task": {"name": "needle", "knobs": {"haystack": "random"}},
    "models": ["transformer"],
    "params": 20000,
    "seeds": [0, 5],
    "train": {"length": 32, "steps": 5, "batch_size": 4},
    "eval": {"max_factor": 2, "depths": [0, 50, 100], "samples": 3, "tasks": [
        {"name": "needle", "label": "ablation", "knobs": {"haystack": "random"}},
        {"name": "needle", "label": "random depth", "knobs": {"haystack": "noise"}, "depths": "random"},
        {"name": "needle", "label": "two depths", "knobs": {"haystack": "text"}, "depths": [10, 90]},
        {"name": "mqar", "label": "mqar"},
    ]},
}


def _write(tmp_path, data):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def test_each_task_is_planned_at_its_own_depths(tmp_path):
    study = load_study(_write(tmp_path, STUDY))
    assert study.task_depths() == {"ablation": [0, 50, 100], "random depth": [None], "two depths": [10, 90],
                                   "mqar": [None]}
    _, cells = plan(study)
    grid = {}
    for cell in cells:
        grid.setdefault((cell.model.seed, cell.label, cell.length), []).append(cell.depth)
    assert grid[(0, "ablation", 64)] == [0, 50, 100]
    assert grid[(5, "random depth", 32)] == [None]
    assert grid[(5, "two depths", 64)] == [10, 90]
    assert grid[(0, "mqar", 32)] == [None]
    assert len(cells) == 2 * 2 * (3 + 1 + 2 + 1)  # seeds x lengths x depths of each task
    samples = cells[0].task.generate(length=32, n=200, seed=1, depth=None)  # "random" draws every depth
    assert samples.meta["needle_depth"].std() > 20


@pytest.mark.parametrize("depths, message", [([120], "outside 0-100"), ([], "at least one depth"),
                                             ("middle", "depths")])
def test_bad_task_depths_are_one_line_errors(tmp_path, depths, message):
    data = copy.deepcopy(STUDY)
    data["eval"]["tasks"][0]["depths"] = depths
    with pytest.raises(ConfigError, match=message):
        load_study(_write(tmp_path, data))


def test_scale_multiplies_seeds_and_samples_and_keeps_the_unscaled_ids(tmp_path):
    path = _write(tmp_path, STUDY)
    base, scaled = load_study(path), load_study(path, scale=3)
    assert scaled.seeds == [0, 5, 1, 2, 3, 4] and scaled.eval.samples == 9
    base_models, _ = plan(base)
    scaled_models, _ = plan(scaled)
    assert {m.model_id for m in base_models} < {m.model_id for m in scaled_models}  # trained models reused
    assert load_study(_write(tmp_path, {**STUDY, "scale": 3})).seeds == scaled.seeds  # from the YAML too
    assert load_study(_write(tmp_path, {**STUDY, "scale": 3}), scale=1).seeds == [0, 5]  # --scale wins
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="scale must be an integer"):
            load_study(_write(tmp_path, {**STUDY, "scale": bad}))


def test_scale_on_the_command_line(tmp_path):
    path = _write(tmp_path, STUDY)
    result = CliRunner().invoke(cli.app, ["plan", path, "--scale", "2", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "4 models" in result.output  # 1 architecture x 4 seeds
    result = CliRunner().invoke(cli.app, ["plan", path, "--scale", "0"])
    assert result.exit_code == 2


def test_the_controlled_preset_is_the_study_issues_7_and_16_ask_for():
    from longarch import models

    study = load_study("controlled")
    archs = [entry.arch for entry in study.models]
    assert {"transformer", "mamba2", "mamba2-attn"} <= set(archs)  # the paper's controlled trio
    assert {"deltanet", "gla", "retnet", "hawk"} <= set(archs)
    assert {models.family(a) for a in archs} == {models.family(n) for n in models.names()}
    assert len(study.seeds) >= 2 and study.params is not None  # two within 100 min on 2 cores; --scale for more
    assert max(study.eval_lengths()) >= 64 * study.train.length and min(study.eval_lengths()) == study.train.length
    depths = study.task_depths()
    formats = ["noise-number", "text-number", "text-uuid", "needles"]
    assert all(depths[label] == [0, 20, 40, 50, 60, 80, 100] for label in formats)
    knobs = {label: task.knobs for label, task in study.eval_tasks()}
    assert knobs["noise-number"]["haystack"] == "noise" and knobs["noise-number"]["value"] == "number"
    assert knobs["text-uuid"]["haystack"] == "text" and knobs["text-uuid"]["value"] == "uuid"
    assert knobs["needles"]["haystack"] == "needles"
    assert [label for label, _ in study.eval_tasks()] == formats + ["mqar"]
    trained = [task for task, _ in study.train_tasks()]
    assert all(any(t == task for t in trained) for _, task in study.eval_tasks())  # every evaluated task is trained
    # issue 16's recipe: a curriculum ending at T, trained until every task is at the bar
    assert study.train.phases[-1].length == study.train.length and study.train.phases[0].length < study.train.length
    assert study.train.until.accuracy >= study.analysis.learned_bar_fraction


def test_a_store_of_another_sample_count_is_refused_and_kept(tmp_path):
    tiny = {**STUDY, "seeds": [0], "train": {"length": 32, "steps": 2, "batch_size": 2, "eval_samples": 2},
            "eval": {**STUDY["eval"], "max_factor": 1, "depths": [50], "samples": 2}}
    path, out = _write(tmp_path, tiny), tmp_path / "out"
    runner = CliRunner()
    first = runner.invoke(cli.app, ["run", path, "--out", str(out), "--workers", "0"])
    assert first.exit_code == 0, first.output
    stored = _contents(out)
    from longarch.analysis.findings_report import plan_of
    from longarch.controlled.report import load

    data = load(out)  # the report's plan: each task at its own depths, so none counts as missing
    planned = plan_of(data.meta, data.cells)
    assert planned.depths_of("ablation") == (50.0,) and planned.depths_of("two depths") == (10.0, 90.0)
    assert planned.depths_of("random depth") == (None,) and planned.depths_of("mqar") == (None,)
    assert set(planned.keys("transformer")) == set(data.cells) and data.missing_cells() == 0
    again = runner.invoke(cli.app, ["run", path, "--out", str(out), "--workers", "0", "--scale", "2"])
    assert again.exit_code == 2 and "eval.samples 2; this study has 4" in again.output
    assert len(again.output.strip().splitlines()) == 1
    assert _contents(out) == stored and stored[1]["eval"]["samples"] == 2


def _contents(out):
    from longarch.study.store import Store

    with Store(out / "results.sqlite") as store:
        return [(r.cell_id, list(r.scores)) for r in store.results()], store.meta()["config"]
