"""The report's per-model measures, analysis settings and partial-seed flags, on stores with known
answers (tests/test_report.py's store: alpha has seeds 0 and 1, beta only seed 0 of the planned two)."""

from __future__ import annotations

import json

import pytest
import yaml

from longarch.analysis.findings import Settings
from longarch.analysis.measures import RULER_THRESHOLD
from longarch.analysis.measures_report import settings_of
from longarch.analysis.report import build_report
from longarch.config import AnalysisConfig, ConfigError, load_study
from longarch.runner import plan
from longarch.store import ModelRow, ResultRow, Store
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
    assert ("| none | none |" if ratio is None else f"| {length} | {ratio:.1f}x |") in row


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
    assert all(p["planned_seeds"] == [0, 1] for p in partial)
    flagged = {(p["model"], p["length"], p["depth"]): p["seeds"] for p in partial}
    assert flagged.pop(("alpha", 64, 50.0)) == [0]
    assert len(flagged) == 9 and all(s == [0] for s in flagged.values()) and {m for m, _, _ in flagged} == {"beta"}
    report = paths["md"].read_text()
    by_length = report.split("## Accuracy by length")[1].split("\n## ")[0]
    alpha_row = next(line for line in by_length.splitlines() if line.startswith("| alpha |"))
    assert alpha_row.count("‡") == 1 and alpha_row.rstrip(" |").endswith("‡")  # only its 64 column
    assert "only some of the planned seeds are stored for 10 cells" in report
    assert "alpha needle at 64 depth 50 (1 of 2: seeds 0)" in report


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


def test_analysis_defaults_are_the_findings_defaults():
    analysis, settings = AnalysisConfig(), Settings()
    assert analysis.threshold == pytest.approx(100 * RULER_THRESHOLD)
    for name in ("level", "chance", "min_drop", "factor", "nontrivial", "collapsed", "small_spread", "large_spread"):
        assert getattr(analysis, name) == getattr(settings, name), name


@pytest.mark.parametrize("preset", ["quick", "smoke"])
def test_a_presets_ids_ignore_its_analysis_block(preset):
    study = load_study(preset)
    judged = study.model_copy(update={"analysis": AnalysisConfig(threshold=50, level=0.8, min_drop=0.5, factor=4)})
    assert [c.cell_id for c in plan(study)[1]] == [c.cell_id for c in plan(judged)[1]]


def test_a_chance_per_label_reaches_the_claims(tmp_path):
    study = _load(tmp_path, analysis={"chance": {"mqar": 0.25}})
    assert study.analysis.chance == {"mqar": 0.25}
    assert settings_of(study.model_dump(mode="json")).chance == {"mqar": 0.25}


def _summary(out, analysis: dict | None) -> dict:
    if analysis is not None:
        _with_analysis(out, analysis)
    return json.loads(build_report(out)["summary"].read_text())


def test_a_store_without_analysis_reports_with_the_defaults(tmp_path):
    write_study(tmp_path / "old")
    write_study(tmp_path / "new")
    old = _summary(tmp_path / "old", None)
    new = _summary(tmp_path / "new", AnalysisConfig().model_dump(mode="json"))
    assert old["measures"] == new["measures"] and old["findings"] == new["findings"]


@pytest.mark.parametrize("min_drop, verdict", [(0.0, "supported"), (0.95, "not supported")])
def test_the_report_judges_claims_with_the_studys_bars(tmp_path, min_drop, verdict):
    # alpha drops from 0.8 at T to 0.4 at 64 (beta did not learn and is left out)
    write_study(tmp_path)
    claim = _summary(tmp_path, {"min_drop": min_drop, "level": 0.5})["findings"][0]
    assert claim["evidence"][0]["model"] == "alpha" and claim["evidence"][0]["verdict"] == verdict
    assert claim["verdict"] == {"supported": "inconclusive", "not supported": "not supported"}[verdict]  # beta's family
    assert f"50% interval of the drop is above {min_drop:.2f}" in claim["rule"]
    report = (tmp_path / "report.md").read_text()
    assert "[50% CI]" in report.split("## Per-model measures")[1] and "95%" not in report.split("## Findings")[1]


# --------------------------------------------------------------------------------------------
# a study evaluated on two formats: "a" at depths 0/50/100, "b" without a depth
# --------------------------------------------------------------------------------------------
FORMATS = {("a", 16, 0.0): 1.0, ("a", 16, 50.0): 0.6, ("a", 16, 100.0): 1.0,
           **{("a", n, d): acc for n, acc in ((32, 0.9), (64, 0.5)) for d in (0.0, 50.0, 100.0)},
           ("b", 16, None): 1.0, ("b", 32, None): 0.5, ("b", 64, None): 0.2}


def write_formats(out, missing=(), missing_seed=()) -> None:
    """One model, seeds 0 and 1, 10 samples per cell with exactly FORMATS' accuracy in each seed;
    `missing` cells are stored for no seed, `missing_seed` ones for seed 0 only."""
    with Store(out / "results.sqlite") as store:
        store.set_meta("name", "formats")
        store.set_meta("config", {"name": "formats", "seeds": [0, 1], "min_train_accuracy": 0.95,
                                  "train": {"length": 16}, "eval": {"samples": 10}})
        store.set_meta("planned_tasks", ["a", "b"])
        store.set_meta("planned_lengths", [16, 32, 64])
        store.set_meta("planned_depths", [0.0, 50.0, 100.0])
        store.set_meta("planned_task_depths", {"a": [0.0, 50.0, 100.0], "b": [None]})
        store.set_meta("planned_cells", 2 * len(FORMATS))
        for seed in (0, 1):
            store.put_model(ModelRow(
                model_id=f"rec-{seed}", name="rec", arch="rec", family="state-space", seed=seed, params=1000,
                state_floats=64, state_growth="constant", train_length=16, train_accuracy=1.0, train_seconds=1.0,
                final_loss=0.1, config={}, checkpoint="none"))
            for (label, length, depth), accuracy in FORMATS.items():
                if (label, length, depth) in missing or (seed == 1 and (label, length, depth) in missing_seed):
                    continue
                scores = [1.0] * round(10 * accuracy) + [0.0] * (10 - round(10 * accuracy))
                store.put_result(ResultRow(
                    cell_id=f"rec-{seed}-{label}-{length}-{depth}", model_id=f"rec-{seed}", model="rec",
                    task="needle", knobs={}, length=length, depth=depth, seed=seed, n=10, accuracy=accuracy,
                    scores=scores, seconds=0.01, label=label))


def _section(report: str, heading: str) -> list[str]:
    body = report.split("## Per-model measures")[1].split("## Findings")[0]
    if heading:
        body = body.split(f"### {heading}")[1].split("### ")[0]
    return [line for line in body.splitlines() if line.startswith("| rec ")]


def test_measures_per_format_are_exact(tmp_path):
    write_formats(tmp_path)
    paths = build_report(tmp_path)
    found = json.loads(paths["summary"].read_text())["measures"]["rec"]
    a, b = found["effective_length"]["a"], found["effective_length"]["b"]
    assert (a["length"], a["ratio"], b["length"], b["ratio"]) == (32, 2.0, 16, 1.0)  # a 26/30, .9, .5; b 1, .5, .2
    assert a["accuracy_at_T"]["value"] == pytest.approx(26 / 30, abs=1e-6) and b["accuracy_at_T"]["value"] == 1.0
    assert (a["expected_cells"], a["covered_cells"], a["partial_seeds"]) == (9, 9, False)
    index = found["middle_index"]
    assert list(index) == ["a"] and index["a"]["value"] == pytest.approx(0.4) and index["a"]["low"] > 0
    spreads = {s["length"]: s for s in found["format_spread"]}
    assert spreads[16]["value"] == pytest.approx(4 / 30, abs=1e-6)
    assert (spreads[16]["best"], spreads[16]["worst"]) == ("b", "a")
    assert spreads[32]["value"] == pytest.approx(0.4) and spreads[64]["value"] == pytest.approx(0.3)
    report = paths["md"].read_text()
    rows = _section(report, "")
    assert rows[0].startswith("| rec | a | 16 | 86.7 [") and rows[0].endswith("| 32 | 2.0x | none | 32 |")
    assert rows[1].startswith("| rec | b | 16 | 100.0 [100.0, 100.0] | 16 | 1.0x |")
    middle = _section(report, "Lost in the middle at T")  # b has no depth, so no row
    assert len(middle) == 1 and middle[0].startswith("| rec | a | 100.0 | 60.0 | 40.0 [")
    spread_rows = [row.split(" | ") for row in _section(report, "Format sensitivity")]
    assert [(r[1], r[2].split(" [")[0], r[3], r[4]) for r in spread_rows] == [
        ("16 (T)", "13.3", "b 100.0", "a 86.7 |"), ("32", "40.0", "a 90.0", "b 50.0 |"),
        ("64", "30.0", "a 50.0", "b 20.0 |")]
    marked = [r for r in rows + middle + [" | ".join(r) for r in spread_rows] if "cells)" in r or "‡" in r]
    assert not marked and "only some of the planned seeds are stored" not in report


def test_measures_say_when_cells_or_seeds_are_missing(tmp_path):
    write_formats(tmp_path, missing=[("b", 64, None)], missing_seed=[("a", 64, 50.0)])
    paths = build_report(tmp_path)
    summary = json.loads(paths["summary"].read_text())
    assert summary["partial_seeds"] == [{"model": "rec", "task": "a", "length": 64, "depth": 50.0, "seeds": [0],
                                         "planned_seeds": [0, 1]}]
    found = summary["measures"]["rec"]
    a, b = found["effective_length"]["a"], found["effective_length"]["b"]
    assert (a["length"], a["covered_cells"], a["partial_seeds"]) == (32, 9, True)
    assert (b["length"], b["expected_cells"], b["covered_cells"], b["partial_seeds"]) == (16, 3, 2, False)
    assert not a["accuracy_at_T"]["partial_seeds"] and b["accuracy_at_T"]["covered_cells"] == 1
    at_64 = next(s for s in found["format_spread"] if s["length"] == 64)
    assert at_64["value"] is None
    assert (at_64["expected_cells"], at_64["covered_cells"], at_64["partial_seeds"]) == (4, 3, True)
    report = paths["md"].read_text()
    rows = _section(report, "")
    assert "| 32 ‡ | 2.0x |" in rows[0] and "| 16 (2 of 3 cells) | 1.0x |" in rows[1]
    assert "‡" not in rows[0].split(" | ")[3] and "cells" not in rows[1].split(" | ")[3]  # accuracy at T is complete
    spread_rows = _section(report, "Format sensitivity")
    assert spread_rows[2].startswith("| rec | 64 | — (3 of 4 cells) ‡ |") and "‡" not in spread_rows[1]
    assert "rec a at 64 depth 50 (1 of 2: seeds 0)" in report
    by_length = report.split("### Evaluated on a")[1].split("###")[0]
    a_row = next(line for line in by_length.splitlines() if line.startswith("| rec |"))
    assert a_row.count("‡") == 1 and a_row.rstrip(" |").endswith("‡")
    comparison = report.split("## Format comparison")[1].split("\n## ")[0]
    a_at_t, a_at_64, b_at_t, b_at_64 = next(line for line in comparison.splitlines()
                                            if line.startswith("| rec |")).split(" | ")[1:]
    assert a_at_64.endswith("‡") and "‡" not in a_at_t + b_at_t and b_at_64 == "— |"


def test_a_stored_analysis_block_that_no_longer_validates_is_named(tmp_path):
    write_study(tmp_path)
    _with_analysis(tmp_path, {"threshold": 50, "retired_key": 1})
    paths = build_report(tmp_path)
    section = paths["md"].read_text().split("## Per-model measures")[1].split("## Findings")[0]
    assert "does not validate (retired_key: Extra inputs are not permitted)" in section
    assert "above 85.6%" in section  # judged with the defaults, as it says
