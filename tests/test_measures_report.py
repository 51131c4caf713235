"""The report's per-model measures, analysis settings and partial-seed flags, on stores with known
answers (tests/test_report.py's store: alpha has seeds 0 and 1, beta only seed 0 of the planned two;
FORMATS below: one model on two formats, 10 samples per seed and cell)."""

from __future__ import annotations

import json

import pytest
import yaml

from longarch.analysis.measures import RULER_BAR
from longarch.analysis.measures_report import read_settings, settings_of
from longarch.kinds import build_report
from longarch.analysis.settings import AnalysisSettings
from longarch.controlled.config import ConfigError
from longarch.kinds import load_study
from longarch.controlled.runner import plan
from longarch.study.store import ModelRow, ResultRow, Store
from test_report import write_study


def _with_analysis(out, analysis: dict | None, **top) -> None:
    """Replace the stored config's `analysis:` block (None: remove it) and set top-level keys."""
    with Store(out / "results.sqlite") as store:
        config = {k: v for k, v in store.meta()["config"].items() if k != "analysis"}
        store.set_meta("config", {**config, **top, **({} if analysis is None else {"analysis": analysis})})


def _measures_section(report: str) -> str:
    return report.split("## Per-model measures")[1].split("## Findings")[0]


# --------------------------------------------------------------------------------------------
# the settings: one definition, read from the stored config
# --------------------------------------------------------------------------------------------
def test_analysis_settings_come_from_the_study():
    settings = settings_of({"train": {"tasks": [{"name": "needle"}]}, "analysis": {
        "labels": ["a"], "sharp_drop_fraction": 0.5, "learned_bar_fraction": 0.9}})
    assert isinstance(settings, AnalysisSettings)
    assert settings.gate == "label" and settings.labels == ["a"]  # a mixture is judged label by label
    assert settings.sharp_drop_fraction == 0.5 and settings.learned_bar_fraction == 0.9
    assert settings_of({}).gate == "model" and settings_of({"analysis": {"gate": "model"},
                                                            "train": {"tasks": [{}]}}).gate == "model"
    assert read_settings({"analysis": AnalysisSettings().model_dump(mode="json")}) == (
        AnalysisSettings(gate="model"), "")  # a store written now reads back without a note


def test_an_old_stored_block_is_read_with_its_new_names_and_a_note():
    settings, note = read_settings({"min_train_accuracy": 0.8, "analysis": {
        "threshold": 50, "level": 0.9, "min_drop": 0.3, "factor": 4, "chance": {"a": 0.25}, "labels": ["a"]}})
    assert settings.effective_length_bar_fraction == 0.5  # a percent, read as a fraction
    assert (settings.interval_level_fraction, settings.sharp_drop_fraction, settings.learned_bar_fraction) == \
        (0.9, 0.3, 0.8)
    assert settings.labels == ["a"]
    assert "names from before issue 15 (threshold, level, min_drop, factor, chance)" in note
    assert "min_train_accuracy from before issue 15 (0.8), read as analysis.learned_bar_fraction" in note


def test_the_default_bar_is_rulers():
    assert AnalysisSettings().effective_length_bar_fraction == RULER_BAR == 0.856


STUDY = {"name": "a", "models": ["transformer"], "params": 20000, "train": {"length": 16, "steps": 2},
         "eval": {"max_factor": 2, "depths": [50], "samples": 2,
                  "tasks": [{"name": "needle", "label": "noise"}, {"name": "mqar", "label": "mqar"}]}}


def _load(tmp_path, **extra):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **extra}))
    return load_study(str(path))


def test_analysis_never_changes_result_ids(tmp_path):
    base = plan(_load(tmp_path))
    judged = plan(_load(tmp_path, analysis={"effective_length_bar_fraction": 0.5, "labels": ["noise"],
                                            "learned_bar_fraction": 0.5, "interval_level_fraction": 0.8}))
    assert [m.model_id for m in base[0]] == [m.model_id for m in judged[0]]
    assert [c.cell_id for c in base[1]] == [c.cell_id for c in judged[1]]


@pytest.mark.parametrize("analysis, message", [
    ({"labels": ["nois"]}, "'nois' is not an eval task label"),
    ({"effective_length_bar_fraction": 85.6}, "analysis.effective_length_bar_fraction"),
    ({"gate": "seed"}, "analysis.gate"),
    ({"thresold": 50}, "unknown key 'analysis.thresold'"),
    ({"threshold": 85.6}, "'threshold' was renamed: use effective_length_bar_fraction (a fraction: 85.6 -> 0.856)"),
    ({"small_spread": 0.1}, "'small_spread' was renamed: use small_spread_fraction"),
    ({"chance": {"mqar": 0.1}}, "'chance' was renamed: use none"),
])
def test_bad_analysis_settings_are_one_line_errors(tmp_path, analysis, message):
    with pytest.raises(ConfigError) as error:
        _load(tmp_path, analysis=analysis)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_old_top_level_bar_is_refused_with_its_new_name(tmp_path):
    with pytest.raises(ConfigError, match=r"'min_train_accuracy' was renamed: use analysis\.learned_bar_fraction"):
        _load(tmp_path, min_train_accuracy=0.9)


@pytest.mark.parametrize("preset", ["quick", "smoke"])
def test_a_presets_ids_ignore_its_analysis_block(preset):
    study = load_study(preset)
    judged = study.model_copy(update={"analysis": AnalysisSettings(
        effective_length_bar_fraction=0.5, interval_level_fraction=0.8, sharp_drop_fraction=0.5)})
    assert [c.cell_id for c in plan(study)[1]] == [c.cell_id for c in plan(judged)[1]]


def _summary(out, analysis: dict | None, **top) -> dict:
    _with_analysis(out, analysis, **top)
    return json.loads(build_report(out)["summary"].read_text())


def test_a_store_without_analysis_reports_with_the_defaults(tmp_path):
    """A store without an `analysis:` block was written before `claims` existed, when every report
    judged the paper's claims: it reports with the defaults and the claims, as a new study that
    asks for them (`claims: paper`) does."""
    write_study(tmp_path / "old")
    write_study(tmp_path / "new")
    old = _summary(tmp_path / "old", None)
    new = _summary(tmp_path / "new", {**AnalysisSettings().model_dump(mode="json"), "claims": "paper"})
    assert old["measures"] == new["measures"] and old["findings"] == new["findings"]
    assert old["analysis"] == new["analysis"] == {**AnalysisSettings().model_dump(mode="json"), "gate": "model",
                                                  "claims": "paper"}
    section = _measures_section((tmp_path / "old" / "report.md").read_text())
    assert "before issue 15" not in section and "does not validate" not in section


def test_a_store_written_before_issue_15_still_reports_and_says_so(tmp_path):
    write_study(tmp_path)
    summary = _summary(tmp_path, {"threshold": 50, "level": 0.95, "min_drop": 0.2, "factor": 2, "nontrivial": 0.1,
                                  "collapsed": 0.05, "chance": 0.0, "small_spread": 0.1, "large_spread": 0.3},
                       min_train_accuracy=0.95)
    assert summary["analysis"]["effective_length_bar_fraction"] == 0.5
    assert [f["claim"] for f in summary["findings"]] == [1, 2, 3, 4]
    section = _measures_section((tmp_path / "report.md").read_text())
    assert "> ⚠ The stored `analysis:` block uses names from before issue 15 (threshold, level, min_drop" in section
    assert "above 50%" in section  # judged at the old threshold, read as a fraction


def test_a_stored_analysis_block_that_no_longer_validates_is_named(tmp_path):
    write_study(tmp_path)
    _with_analysis(tmp_path, {"effective_length_bar_fraction": 0.5, "retired_key": 1})
    section = _measures_section(build_report(tmp_path)["md"].read_text())
    assert "does not validate (retired_key: Extra inputs are not permitted)" in section
    assert "above 85.6%" in section  # judged with the defaults, as it says


@pytest.mark.parametrize("sharp_drop, verdict", [(0.0, "supported"), (0.95, "not supported")])
def test_the_report_judges_claims_with_the_studys_bars(tmp_path, sharp_drop, verdict):
    # alpha drops from 0.79 at T to 0.375 at 64 (beta, 11% at T, did not learn and is left out)
    write_study(tmp_path)
    claim = _summary(tmp_path, {"sharp_drop_fraction": sharp_drop, "interval_level_fraction": 0.5,
                                "learned_bar_fraction": 0.75})["findings"][0]
    assert claim["evidence"][0]["model"] == "alpha" and claim["evidence"][0]["verdict"] == verdict
    assert claim["verdict"] == {"supported": "inconclusive", "not supported": "not supported"}[verdict]  # beta's family
    assert f"above {100 * sharp_drop:g} points" in claim["rule"] and "50%" in claim["rule"]
    report = (tmp_path / "report.md").read_text()
    assert "[50% interval]" in _measures_section(report) and "[95%" not in _measures_section(report)


def test_measures_say_which_interval_they_use(tmp_path):
    write_study(tmp_path)
    section = _measures_section(build_report(tmp_path)["md"].read_text())
    assert ("95% Jeffreys interval for the mean accuracy of these trained seeds (the counts pooled over seeds x "
            "samples); seed-to-seed spread is not in it") in section
    assert "bootstrap" not in section


# --------------------------------------------------------------------------------------------
# a study evaluated on two formats: "a" at depths 0/50/100, "b" without a depth
# --------------------------------------------------------------------------------------------
FORMATS = {("a", 16, 0.0): 1.0, ("a", 16, 50.0): 0.6, ("a", 16, 100.0): 1.0,
           **{("a", n, d): acc for n, acc in ((32, 0.9), (64, 0.5)) for d in (0.0, 50.0, 100.0)},
           ("b", 16, None): 1.0, ("b", 32, None): 0.5, ("b", 64, None): 0.2}
# Their 95% intervals (Jeffreys, 2 seeds x 10 samples per cell): a at 16 52/60 [0.764, 0.935], at 32
# 54/60 [0.805, 0.957], at 64 30/60 [0.376, 0.624]; b at 16 20/20 [0.883, 1], at 32 10/20
# [0.293, 0.707], at 64 4/20 [0.072, 0.408].


def write_formats(out, missing=(), missing_seed=(), accuracies=FORMATS, analysis: dict | None = None) -> None:
    """One model, seeds 0 and 1, 10 samples per cell with exactly `accuracies` in each seed;
    `missing` cells are stored for no seed, `missing_seed` ones for seed 0 only."""
    with Store(out / "results.sqlite") as store:
        store.set_meta("name", "formats")
        # rec is at 86.7% on "a" at T (60% at depth 50): it learned its task at a bar of 80%
        store.set_meta("config", {"name": "formats", "seeds": [0, 1],
                                  "analysis": {"learned_bar_fraction": 0.8, **(analysis or {})},
                                  "train": {"length": 16}, "eval": {"samples": 10}})
        store.set_meta("planned_tasks", ["a", "b"])
        store.set_meta("planned_lengths", [16, 32, 64])
        store.set_meta("planned_depths", [0.0, 50.0, 100.0])
        store.set_meta("planned_task_depths", {"a": [0.0, 50.0, 100.0], "b": [None]})
        store.set_meta("planned_cells", 2 * len(accuracies))
        for seed in (0, 1):
            store.put_model(ModelRow(
                model_id=f"rec-{seed}", name="rec", arch="rec", family="state-space", seed=seed, params=1000,
                state_floats=64, state_growth="constant", train_length=16, train_accuracy=1.0, train_seconds=1.0,
                final_loss=0.1, config={}, checkpoint="none"))
            for (label, length, depth), accuracy in accuracies.items():
                if (label, length, depth) in missing or (seed == 1 and (label, length, depth) in missing_seed):
                    continue
                scores = [1.0] * round(10 * accuracy) + [0.0] * (10 - round(10 * accuracy))
                store.put_result(ResultRow(
                    cell_id=f"rec-{seed}-{label}-{length}-{depth}", model_id=f"rec-{seed}", model="rec",
                    task="needle", knobs={}, length=length, depth=depth, seed=seed, n=10, accuracy=accuracy,
                    scores=scores, seconds=0.01, label=label))


def _section(report: str, heading: str) -> list[str]:
    body = _measures_section(report)
    if heading:
        body = body.split(f"### {heading}")[1].split("### ")[0]
    return [line for line in body.splitlines() if line.startswith("| rec ")]


@pytest.mark.parametrize("bar, a, b", [
    # bar: (lower-bound length, RULER's point rule, from upper bounds) of a, then of b
    (0.856, (None, 32, 32), (16, 16, 16)),  # a's point values pass, its lower bound at T does not
    (0.78, (None, 32, 32), (16, 16, 16)),   # a at 32 clears the bar by its lower bound, but 16 does not first
    (0.7, (32, 32, 32), (16, 16, 32)),   # b at 32: 50% [29, 71], only its upper bound clears 0.7
    (0.25, (64, 64, 64), (32, 32, 64)),
])
def test_effective_length_by_lower_bounds_beside_rulers_rule(tmp_path, bar, a, b):
    write_formats(tmp_path, analysis={"effective_length_bar_fraction": bar})
    paths = build_report(tmp_path)
    found = json.loads(paths["summary"].read_text())["measures"]["rec"]["effective_length"]
    for label, expected in (("a", a), ("b", b)):
        got = found[label]
        assert (got["length"], got["ruler_length"], got["from_upper_bounds"]) == expected, label
        assert got["ratio"] == (None if expected[0] is None else expected[0] / 16) and got["bar_fraction"] == bar
    rows = _section(paths["md"].read_text(), "")
    a_row = rows[0].split(" | ")
    assert a_row[4:8] == [str(a[0]).replace("None", "none"), "none" if a[0] is None else f"{a[0] / 16:.1f}x",
                          str(a[1]), f"{a[2]} |"]
    assert f"above {100 * bar:g}% (`analysis.effective_length_bar_fraction`)" in paths["md"].read_text()


def test_measures_per_format_are_exact(tmp_path):
    write_formats(tmp_path)
    paths = build_report(tmp_path)
    found = json.loads(paths["summary"].read_text())["measures"]["rec"]
    a, b = found["effective_length"]["a"], found["effective_length"]["b"]
    assert a["accuracy_at_T"]["value"] == pytest.approx(26 / 30, abs=1e-6) and b["accuracy_at_T"]["value"] == 1.0
    assert a["accuracy_at_T"]["low"] == pytest.approx(0.7641, abs=1e-4) and b["accuracy_at_T"]["high"] == 1.0
    assert b["accuracy_at_T"]["low"] == pytest.approx(0.8834, abs=1e-4)  # 20 of 20: the interval keeps its width
    assert (a["expected_cells"], a["covered_cells"], a["partial_seeds"]) == (9, 9, False)
    spreads = {s["length"]: s for s in found["format_spread"]}
    assert spreads[16]["value"] == pytest.approx(4 / 30, abs=1e-6) and spreads[16]["low"] == 0.0
    assert (spreads[16]["best"], spreads[16]["worst"]) == ("b", "a")
    assert spreads[32]["value"] == pytest.approx(0.4) and spreads[32]["low"] > 0
    assert spreads[64]["value"] == pytest.approx(0.3)
    report = paths["md"].read_text()
    rows = _section(report, "")
    assert rows[0] == "| rec | a | 16 | 86.7 [76.4, 93.5] | none | none | 32 | 32 |"
    assert rows[1] == "| rec | b | 16 | 100.0 [88.3, 100.0] | 16 | 1.0x | 16 | 16 |"
    spread_rows = [row.split(" | ") for row in _section(report, "Format sensitivity")]
    assert [(r[1], r[2].split(" [")[0], r[3], r[4]) for r in spread_rows] == [
        ("16 (T)", "13.3", "b 100.0", "a 86.7 |"), ("32", "40.0", "a 90.0", "b 50.0 |"),
        ("64", "30.0", "a 50.0", "b 20.0 |")]
    marked = [r for r in rows + [" | ".join(r) for r in spread_rows] if "cells)" in r or "‡" in r]
    assert not marked and "only some of the planned seeds are stored" not in report


def test_lost_in_the_middle_shows_primacy_recency_and_the_u_index(tmp_path):
    # a at T: start 1.0, middle 0.6, end 1.0 (a U); at 32 flat at 0.9; b has no depth, so no row
    write_formats(tmp_path)
    paths = build_report(tmp_path)
    index = json.loads(paths["summary"].read_text())["measures"]["rec"]["middle_index"]
    assert list(index) == ["a"] and [entry["length"] for entry in index["a"]] == [16, 32]
    at_t = index["a"][0]
    assert (at_t["start_depth"], at_t["end_depth"], at_t["middle_depths"]) == (0.0, 100.0, [50.0])
    for what in ("primacy", "recency", "u_index"):
        assert at_t[what]["value"] == pytest.approx(0.4) and at_t[what]["low"] > 0
    assert index["a"][1]["u_index"]["value"] == pytest.approx(0.0) and index["a"][1]["u_index"]["low"] < 0
    rows = _section(paths["md"].read_text(), "Lost in the middle")
    assert len(rows) == 2 and rows[0].startswith("| rec | a | 16 (T) | 100.0 | 60.0 | 100.0 | 40.0 [")


def test_recency_alone_is_not_lost_in_the_middle(tmp_path):
    """Accuracy rising toward the question (lowest at the start) is recency: the U index stays at or
    below zero however large the recency."""
    rising = {**FORMATS, ("a", 16, 0.0): 0.0, ("a", 16, 50.0): 0.5, ("a", 16, 100.0): 1.0}
    write_formats(tmp_path, accuracies=rising)
    at_t = json.loads(build_report(tmp_path)["summary"].read_text())["measures"]["rec"]["middle_index"]["a"][0]
    assert at_t["recency"]["value"] == pytest.approx(0.5) and at_t["recency"]["low"] > 0
    assert at_t["primacy"]["value"] == pytest.approx(-0.5) and at_t["u_index"]["value"] == pytest.approx(-0.5)
    assert at_t["u_index"]["high"] < 0


def test_lost_in_the_middle_marks_lengths_at_the_ceiling(tmp_path):
    # with the ceiling at 85%: T (86.7%) and 32 (90%) are at the ceiling; 64 (50%) is the first length read
    write_formats(tmp_path, analysis={"ceiling_fraction": 0.85, "middle_lengths_read": 1})
    paths = build_report(tmp_path)
    index = json.loads(paths["summary"].read_text())["measures"]["rec"]["middle_index"]["a"]
    assert [(e["length"], e["at_ceiling"]) for e in index] == [(16, True), (64, False)]
    rows = _section(paths["md"].read_text(), "Lost in the middle")
    assert rows[0].startswith("| rec | a | 16 (T) (at the ceiling) |") and rows[1].startswith("| rec | a | 64 |")


def test_measures_say_when_cells_or_seeds_are_missing(tmp_path):
    write_formats(tmp_path, missing=[("b", 64, None)], missing_seed=[("a", 64, 50.0)],
                  analysis={"effective_length_bar_fraction": 0.7})
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
