"""The command line: the smoke preset end to end, the listing commands, and bad input as one
line on stderr with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from longarch import models, tasks
from longarch.cli import app

LONGARCH = str(Path(sys.executable).parent / "longarch")
cli = CliRunner()


def test_run_smoke_end_to_end(tmp_path):
    out = tmp_path / "smoke"
    done = subprocess.run([LONGARCH, "run", "smoke", "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("report.md", "report.html", "summary.json", "results.sqlite"):
        assert (out / name).is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["study"] == "smoke"
    assert [m["name"] for m in summary["models"]] == ["transformer", "mamba2"]
    for model in summary["models"]:
        assert {s["length"] for s in model["scores"]} == {16, 32, 64}
        assert {s["depth"] for s in model["scores"]} == {0, 50, 100}
        assert all(s["n"] == 8 and 0 <= s["accuracy"] <= 1 for s in model["scores"])
    assert "report:" in done.stdout

    # `longarch report` rebuilds the same summary from the database alone.
    before = (out / "summary.json").read_text()
    (out / "summary.json").unlink()
    rebuilt = cli.invoke(app, ["report", str(out)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert (out / "summary.json").read_text() == before


def test_models_lists_the_registry():
    result = cli.invoke(app, ["models"])
    assert result.exit_code == 0
    for name in models.names():
        assert name in result.output
        assert models.family(name) in result.output


def test_tasks_lists_the_registry():
    result = cli.invoke(app, ["tasks"])
    assert result.exit_code == 0
    for name in tasks.names():
        assert name in result.output


def test_sample_prints_the_needle_and_answer():
    result = cli.invoke(app, ["sample", "needle", "--length", "24", "--depth", "50", "--seed", "3"])
    assert result.exit_code == 0, result.output
    generated = tasks.get("needle").generate(length=24, n=1, seed=3, depth=50)
    task = tasks.get("needle")
    assert f"answer: {task.symbol(int(generated.answers[0, 0]))}" in result.output
    assert "needle_position: 10" in result.output  # round(0.5 * (24 - 4))
    assert "unknown words" not in result.output  # a noise haystack has no words


def test_sample_of_a_text_haystack_prints_its_unknown_word_share():
    result = cli.invoke(app, ["sample", "needle", "--length", "200", "--seed", "1", "--knob", "haystack=text"])
    assert result.exit_code == 0, result.output
    task = tasks.get("needle", haystack="text")
    share = task.unknown_share(task.generate(length=200, n=1, seed=1))
    assert f"unknown words: {100 * share:.1f}% of the haystack" in result.output


def _study(tmp_path: Path, **changes) -> str:
    base = yaml.safe_load((Path(__file__).parents[1] / "src/longarch/presets/smoke.yaml").read_text())
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**base, **changes}))
    return str(path)


BAD_COMMANDS = [
    (lambda p: ["run", "no-such-preset"], "neither a preset"),
    (lambda p: ["run", str(p / "missing.yaml")], "does not exist"),
    (lambda p: ["run", _study(p, colour="red")], "unknown key 'colour'"),
    (lambda p: ["run", _study(p, models=["transfomer"])], "did you mean 'transformer'"),
    (lambda p: ["run", _study(p, eval={"depths": [0, 120]})], "outside 0-100"),
    (lambda p: ["run", _study(p, params=10)], "parameters within"),
    (lambda p: ["report", str(p)], "no results.sqlite"),
    (lambda p: ["sample", "needle", "--length", "2"], "below the minimum"),
    (lambda p: ["sample", "needle", "--length", "20", "--depth", "101"], "outside 0-100"),
    (lambda p: ["sample", "hay", "--length", "20"], "unknown task 'hay'"),
    (lambda p: ["sample", "needle", "--length", "20", "--knob", "colour=red"], "no knob 'colour'"),
    (lambda p: ["sample", "needle", "--length", "20", "--knob", "colour"], "KEY=VALUE"),
]


@pytest.mark.parametrize("make_args, message", BAD_COMMANDS)
def test_bad_input_is_one_line_and_exit_2(tmp_path, make_args, message):
    result = cli.invoke(app, make_args(tmp_path))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.output


def test_bad_study_leaves_stored_results_alone(tmp_path):
    """A rejected study never touches an existing output directory."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.sqlite").write_bytes(b"kept")
    result = cli.invoke(app, ["run", _study(tmp_path, train={"length": 2}), "--out", str(out)])
    assert result.exit_code == 2
    assert (out / "results.sqlite").read_bytes() == b"kept"
    assert sorted(p.name for p in out.iterdir()) == ["results.sqlite"]


def test_status_reads_a_store_written_before_issue_15(tmp_path):
    """A stored config with the old names (top-level min_train_accuracy, analysis.threshold in
    percent, claim-2 settings that no longer exist) is still a study `status` can read."""
    from longarch.kinds import load_study
    from longarch.study.store import Store

    old = {k: v for k, v in load_study("smoke").model_dump(mode="json").items() if k != "analysis"}
    old.update(min_train_accuracy=0.95, analysis={"threshold": 85.6, "labels": None, "gate": None, "chance": 0.0,
                                                  "level": 0.95, "min_drop": 0.2, "factor": 2, "nontrivial": 0.1,
                                                  "collapsed": 0.05, "small_spread": 0.1, "large_spread": 0.3})
    out = tmp_path / "old"
    out.mkdir()
    with Store(out / "results.sqlite") as store:
        store.set_meta("config", old)
    result = cli.invoke(app, ["status", str(out)])
    assert result.exit_code == 0, result.output
    assert "smoke" in result.output and "0 of 2 trained" in result.output
