"""`longarch compare`: several study directories in one report, each model labelled with its
study, the numbers each study's own results give, the stores left untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from longarch.cli import app
from longarch.controlled import runner
from longarch.kinds import load_study
from longarch.study.store import Store

from test_runner import quiet, write_study

cli = CliRunner()


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> tuple[Path, Path]:
    """Two stored studies: TINY (T = 16, lengths 16 to 64) and a copy named `other` with one model."""
    root = tmp_path_factory.mktemp("compare")
    first, second = root / "tiny", root / "other"
    runner.run_study(load_study(str(write_study(root))), first, quiet())
    (root / "second").mkdir()
    other = write_study(root / "second", name="other", models=["mamba2"], seeds=[1])
    runner.run_study(load_study(str(other)), second, quiet())
    return first, second


def _digest(directory: Path) -> str:
    return hashlib.sha256((directory / "results.sqlite").read_bytes()).hexdigest()


def _accuracy(directory: Path, model: str, length: int) -> float:
    """The mean over seeds of each seed's accuracy at `length`, pooled over depths (%)."""
    with Store(directory / "results.sqlite") as store:
        per_seed: dict[int, list] = {}
        for row in store.results():
            if row.model == model and row.length == length:
                per_seed.setdefault(row.seed, []).extend(row.scores)
    return 100 * float(np.mean([np.mean(scores) for scores in per_seed.values()]))


def test_two_studies_side_by_side_with_each_studys_numbers(studies, tmp_path):
    first, second = studies
    before = [_digest(first), _digest(second)]
    out = tmp_path / "cmp"
    result = cli.invoke(app, ["compare", str(first), str(second), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [_digest(first), _digest(second)] == before  # read only
    report = (out / "report.md").read_text()
    assert report.startswith("# Comparison: tiny, other")
    rows = {line.split(" | ")[0].lstrip("| ").replace(" (did not learn)", ""): line.split(" | ")
            for line in report.splitlines()
            if line.startswith("| ") and ("(tiny)" in line or "(other)" in line)}
    assert set(rows) >= {"transformer (tiny)", "mamba2 (tiny)", "mamba2 (other)"}
    lengths = [16, 32, 64]
    for name, directory in [("transformer", first), ("mamba2", first), ("mamba2", second)]:
        study = "tiny" if directory == first else "other"
        cells = rows[f"{name} ({study})"][3:3 + len(lengths)]
        for cell, length in zip(cells, lengths):
            assert float(cell.split(" [")[0]) == pytest.approx(_accuracy(directory, name, length), abs=0.05)
    summary = json.loads((out / "summary.json").read_text())
    assert [c["study"] for c in summary["compared"]] == ["tiny", "other"]
    assert (out / "figures" / "compare-needle.png").is_file() and (out / "report.html").is_file()
    assert "figures/compare-needle.png" in report


def test_two_runs_of_one_study_are_told_apart_by_their_directories(studies, tmp_path):
    first, _ = studies
    again = tmp_path / "again"
    runner.run_study(load_study(str(write_study(tmp_path))), again, quiet())
    result = cli.invoke(app, ["compare", str(first), str(again), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "mamba2 (tiny in tiny)" in report and "mamba2 (tiny in again)" in report


def test_a_model_that_did_not_learn_at_t_is_marked(studies, tmp_path):
    """TINY's models train 15 steps: none reaches the learned bar at T, and each row says so."""
    first, second = studies
    cli.invoke(app, ["compare", str(first), str(second), "--out", str(tmp_path / "cmp")])
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    learned = [row["learned"] for row in summary["labels"]["needle"]]
    assert learned == [False, False, False]
    assert (tmp_path / "cmp" / "report.md").read_text().count("(did not learn)") == 3


@pytest.mark.parametrize("arguments,message", [
    (lambda a, b, t: [str(a)], "two or more different study directories"),
    (lambda a, b, t: [str(a), str(a)], "two or more different study directories"),
    (lambda a, b, t: [str(a), str(t)], "has no results.sqlite"),
    (lambda a, b, t: [str(a), str(b), "--out", str(a)], "is a study directory"),
])
def test_bad_input_is_one_line(studies, tmp_path, arguments, message):
    first, second = studies
    result = cli.invoke(app, ["compare", *arguments(first, second, tmp_path)])
    assert result.exit_code == 2 and message in result.output
