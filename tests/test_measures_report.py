"""The report's per-model measures, analysis settings and partial-seed flags, on stores with known
answers (tests/test_report.py's store: alpha has seeds 0 and 1, beta only seed 0 of the planned two)."""

from __future__ import annotations

import json

import pytest
import yaml

from longarch.analysis.measures_report import settings_of
from longarch.analysis.report import build_report
from longarch.config import ConfigError, load_study
from longarch.runner import plan
from longarch.store import Store
from test_report import write_study


def _with_analysis(out, analysis: dict) -> None:
    with Store(out / "results.sqlite") as store:
        config = store.meta()["config"]
        store.set_meta("config", {**config, "analysis": analysis})


@pytest.mark.parametrize("threshold, length, ratio", [(85.6, None, None), (70, 16, 1.0), (50, 32, 2.0), (30, 64, 4.0)])
def test_effective_length_is_exact_on_known_accuracies(tmp_path, threshold, length, ratio):
    # alpha pooled over depths and seeds: 24/30 = 0.8 at 16 (T), 18/30 = 0.6 at 32, 12/30 = 0.4 at 64
    write_study(tmp_path)
    _with_analysis(tmp_path, {"threshold": threshold})
    paths = build_report(tmp_path)
    found = json.loads(paths["summary"].read_text())["measures"]["alpha"]["effective_length"]["needle"]
    assert found["length"] == length and found["ratio"] == ratio
    assert found["accuracy_at_T"]["value"] == pytest.approx(0.8)
    section = paths["md"].read_text().split("## Per-model measures")[1].split("## Findings")[0]
    assert f"above {threshold:g}%" in section
    row = next(line for line in section.splitlines() if line.startswith("| alpha | needle"))
    assert ("none" if ratio is None else f"| {ratio:g}x |") in row


def test_lost_in_the_middle_index_at_t_is_exact(tmp_path):
    # alpha at T = 16: depth 0 10/10, depth 100 6/10 (ends 16/20 = 0.8), depth 50 8/10 (middle 0.8)
    write_study(tmp_path)
    summary = json.loads(build_report(tmp_path)["summary"].read_text())
    index = summary["measures"]["alpha"]["middle_index"]["needle"]
    assert index["value"] == pytest.approx(0.0) and index["ends"] == [0.0, 100.0] and index["middle"] == [50.0]
    assert index["low"] < 0 < index["high"]


def test_cells_stored_for_some_seeds_are_flagged(tmp_path):
    write_study(tmp_path)
    with Store(tmp_path / "results.sqlite") as store:
        store.db.execute("DELETE FROM results WHERE cell_id = 'alpha-1-64-50.0'")
        store.db.commit()
    paths = build_report(tmp_path)
    partial = json.loads(paths["summary"].read_text())["partial_seeds"]
    flagged = {(p["model"], p["length"], p["depth"]): p["seeds"] for p in partial}
    assert flagged.pop(("alpha", 64, 50.0)) == [0]
    assert len(flagged) == 9 and all(s == [0] for s in flagged.values()) and {m for m, _, _ in flagged} == {"beta"}
    report = paths["md"].read_text()
    by_length = report.split("## Accuracy by length")[1].split("\n## ")[0]
    alpha_row = next(line for line in by_length.splitlines() if line.startswith("| alpha |"))
    assert alpha_row.count("‡") == 1 and alpha_row.rstrip(" |").endswith("‡")  # only its 64 column
    assert "10 cells are stored for only some of their planned seeds" in report


def test_analysis_settings_come_from_the_study(tmp_path):
    settings = settings_of({"train": {"tasks": [{"name": "needle"}]}, "analysis": {
        "labels": ["a"], "chance": {"a": 0.25}, "min_drop": 0.5, "factor": 4}}, 0.9)
    assert settings.gate == "label" and settings.labels == ("a",) and settings.chance == {"a": 0.25}
    assert settings.min_drop == 0.5 and settings.factor == 4 and settings.min_train_accuracy == 0.9
    assert settings_of({}).gate == "model" and settings_of({"analysis": {"gate": "model"},
                                                            "train": {"tasks": [{}]}}).gate == "model"


STUDY = {"name": "a", "models": ["transformer"], "params": 20000, "train": {"length": 16, "steps": 2},
         "eval": {"max_factor": 2, "depths": [50], "samples": 2,
                  "tasks": [{"name": "needle", "label": "noise"}, {"name": "mqar", "label": "mqar"}]}}


def _load(tmp_path, **extra):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **extra}))
    return load_study(str(path))


def test_analysis_never_changes_result_ids(tmp_path):
    base = plan(_load(tmp_path))
    judged = plan(_load(tmp_path, analysis={"threshold": 50, "labels": ["noise"], "chance": {"mqar": 0.1}}))
    assert [m.model_id for m in base[0]] == [m.model_id for m in judged[0]]
    assert [c.cell_id for c in base[1]] == [c.cell_id for c in judged[1]]


@pytest.mark.parametrize("analysis, message", [
    ({"labels": ["nois"]}, "'nois' is not an eval task label"),
    ({"chance": {"copy": 0.1}}, "'copy' is not an eval task label"),
    ({"chance": 1.5}, "not a fraction"),
    ({"threshold": 120}, "threshold"),
    ({"gate": "seed"}, "gate"),
    ({"thresold": 50}, "thresold"),
])
def test_bad_analysis_settings_are_one_line_errors(tmp_path, analysis, message):
    with pytest.raises(ConfigError, match=message) as error:
        _load(tmp_path, analysis=analysis)
    assert "\n" not in str(error.value)
