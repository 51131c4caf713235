"""The report is rebuilt from the store alone: aggregation over seeds, warnings, files, intervals."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from longarch.kinds import build_report, summary_table
from longarch.study.store import ModelRow, ResultRow, Store

LENGTHS = [16, 32, 64]
DEPTHS = [0.0, 50.0, 100.0]
TRAIN_LENGTH = 16


def written_scores(name: str, seed: int, length: int, depth: float) -> list[float]:
    """The per-sample scores written for each cell: known, uneven, and different per seed.

    alpha seed 0 has 4 samples per cell and seed 1 has 6, so pooling by sample differs from
    averaging the two seeds' accuracies (the report does the latter); beta has 3 samples, so some accuracies are thirds.
    """
    level = LENGTHS.index(length) + DEPTHS.index(depth)  # 0..4
    if name == "alpha" and seed == 0:
        return [1.0] * (4 - min(level, 4)) + [0.0] * min(level, 4)
    if name == "alpha" and seed == 1:
        return [1.0] * (6 - level) + [0.0] * level
    return [1.0] * (level % 3 == 0) + [0.0] * (2 + (level % 3 != 0))  # beta: 1/3 or 0/3


SEEDS = {"alpha": [0, 1], "beta": [0]}
TRAIN_ACCURACY = {("alpha", 0): 1.0, ("alpha", 1): 0.96, ("beta", 0): 0.81}


# alpha's accuracy at T is 79.2% (its training check 98%), beta's 11.1% (its check 81%): at this bar
# alpha learned its task and beta did not; at the default 0.95 neither did (test_learned_is_judged_...)
BAR = 0.75


def write_study(out: Path, planned_cells: int | None = None, learned_bar_fraction: float = BAR,
                max_factor: int = 4, meta: bool = True) -> int:
    """A store written row by row, as the runner would; returns the number of result rows."""
    stored = 0
    with Store(out / "results.sqlite") as store:
        if meta:
            store.set_meta("name", "unit-study")
            store.set_meta("config", {"name": "unit-study", "seeds": [0, 1],
                                      "analysis": {"learned_bar_fraction": learned_bar_fraction},
                                      "task": {"name": "needle", "knobs": {}},
                                      "train": {"length": TRAIN_LENGTH, "steps": 10},
                                      "eval": {"max_factor": max_factor, "lengths": None, "depths": DEPTHS}})
            store.set_meta("command", "longarch run unit.yaml")
            store.set_meta("versions", {"torch": "2.13.0", "numpy": "2.4.6"})
            store.set_meta("git_commit", "0123abcd")
            store.set_meta("planned_lengths", [TRAIN_LENGTH * 2 ** k for k in range(max_factor.bit_length())])
            store.set_meta("planned_depths", DEPTHS)
            if planned_cells is not None:
                store.set_meta("planned_cells", planned_cells)
        for name, seeds in SEEDS.items():
            for seed in seeds:
                model_id = f"{name}-{seed}"
                store.put_model(ModelRow(
                    model_id=model_id, name=name, arch=name, family="ssm" if name == "alpha" else "attention",
                    seed=seed, params=1000 + 2 * seed, state_floats=256, state_growth="constant",
                    train_length=TRAIN_LENGTH, train_accuracy=TRAIN_ACCURACY[name, seed], train_seconds=12.0,
                    final_loss=0.1, config={}, checkpoint="none"))
                for length in LENGTHS:
                    for depth in DEPTHS:
                        scores = written_scores(name, seed, length, depth)
                        store.put_result(ResultRow(
                            cell_id=f"{model_id}-{length}-{depth}", model_id=model_id, model=name, task="needle",
                            knobs={}, length=length, depth=depth, seed=seed, n=len(scores),
                            accuracy=float(np.mean(scores)), scores=scores, seconds=0.01))
                        stored += 1
    return stored


@pytest.fixture
def study(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    stored = write_study(tmp_path)
    assert stored == 27
    return tmp_path, build_report(tmp_path)


def test_summary_averages_seed_means(study):
    out, paths = study
    summary = json.loads(paths["summary"].read_text())
    assert summary["study"] == "unit-study"
    models = {m["name"]: m for m in summary["models"]}
    assert [m["name"] for m in summary["models"]] == ["alpha", "beta"]
    alpha, beta = models["alpha"], models["beta"]
    assert alpha["seeds"] == [0, 1] and beta["seeds"] == [0]
    assert alpha["params"] == 1000  # the first seed's
    assert alpha["family"] == "ssm" and alpha["train_length"] == TRAIN_LENGTH
    assert alpha["train_accuracy"] == pytest.approx(0.98)  # mean of 1.0 and 0.96
    assert alpha["solved_at_train_length"] is True and beta["solved_at_train_length"] is False

    by_cell = {(s["length"], s["depth"]): s for s in alpha["scores"]}
    # (16, 0): seed 0 scores 4/4, seed 1 scores 6/6
    assert by_cell[16, 0.0]["accuracy"] == 1.0 and by_cell[16, 0.0]["n"] == 10
    # (32, 50): level 2 -> seed 0 has 2 of 4, seed 1 has 4 of 6: the mean of the seed means, 0.5833,
    # which the interval is centred on (pooling by sample would give 6/10)
    assert by_cell[32, 50.0]["accuracy"] == pytest.approx(7 / 12, abs=1e-6) and by_cell[32, 50.0]["n"] == 10
    # (64, 100): level 4 -> seed 0 has 0 of 4, seed 1 has 2 of 6: (0 + 1/3) / 2
    assert by_cell[64, 100.0]["accuracy"] == pytest.approx(1 / 6, abs=1e-6)
    beta_cells = {(s["length"], s["depth"]): s for s in beta["scores"]}
    assert beta_cells[16, 0.0]["accuracy"] == 0.333333 and beta_cells[16, 0.0]["n"] == 3
    assert beta_cells[16, 50.0]["accuracy"] == 0.0

    for model in summary["models"]:
        keys = [(s["task"], s["length"], s["depth"]) for s in model["scores"]]
        assert keys == sorted(keys) and len(keys) == len(LENGTHS) * len(DEPTHS)
        for cell in model["scores"]:
            per_seed = [written_scores(model["name"], seed, cell["length"], cell["depth"])
                        for seed in SEEDS[model["name"]]]
            assert cell["n"] == sum(len(scores) for scores in per_seed)
            assert cell["accuracy"] == round(float(np.mean([np.mean(scores) for scores in per_seed])), 6)
            assert 0 <= cell["accuracy"] <= 1


def test_warning_names_only_the_unsolved_model(study):
    out, paths = study
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert ("**beta did not learn the task**: 11.1% on needle at T=16, pooled over the depths (its final training "
            "check at T read 81.0%); learned means at least 75% at T on every format evaluated "
            "(`analysis.learned_bar_fraction`). Its accuracy past the training length says nothing about "
            "extrapolation and is not interpreted.") in md
    assert "<strong>beta did not learn the task</strong>: 11.1% on needle at T=16" in page
    assert "alpha did not learn" not in md and "alpha did not learn" not in page


def test_the_learned_bar_comes_from_the_analysis_settings(tmp_path):
    write_study(tmp_path, learned_bar_fraction=0.1)
    paths = build_report(tmp_path)
    assert "did not learn the task" not in paths["md"].read_text()  # beta's 11.1% at T reaches 10%
    summary = json.loads(paths["summary"].read_text())
    assert all(m["solved_at_train_length"] for m in summary["models"]) and summary["learned_bar_fraction"] == 0.1
    assert summary["analysis"]["learned_bar_fraction"] == 0.1


def test_a_store_from_before_issue_15_keeps_its_bar_and_says_so(tmp_path):
    """The old top-level min_train_accuracy is read as analysis.learned_bar_fraction, with a warning."""
    write_study(tmp_path)
    with Store(tmp_path / "results.sqlite") as store:
        config = {k: v for k, v in store.meta()["config"].items() if k != "analysis"}
        store.set_meta("config", {**config, "min_train_accuracy": 0.1, "analysis": {"threshold": 85.6, "level": 0.95}})
    paths = build_report(tmp_path)
    md = paths["md"].read_text()
    assert "did not learn the task" not in md  # beta's 11.1% at T reaches the old bar 0.1
    assert json.loads(paths["summary"].read_text())["learned_bar_fraction"] == 0.1
    section = md.split("## Per-model measures")[1].split("## Findings")[0]
    assert "names from before issue 15 (threshold, level)" in section
    assert "top-level min_train_accuracy from before issue 15 (0.1), read as analysis.learned_bar_fraction" in section


def test_report_tables(study):
    out, paths = study
    md = paths["md"].read_text()
    assert "| alpha | ssm | 1,000 | 256 | constant | 16 |" in md  # setup row, thousands separator
    assert "| model | 16 (T) | 32 | 64 |" in md                     # training length column marked
    # alpha at length 16 over depths: levels 0, 1, 2 -> seed 0 (4+3+2)/12, seed 1 (6+5+4)/18; their mean 79.2%
    assert "| alpha | 79.2 [" in md
    assert "longarch run unit.yaml" in md and "0123abcd" in md and "torch" in md
    assert "learned_bar_fraction: 0.75" in md  # the config as YAML


def test_files_and_figures_exist(study):
    out, paths = study
    for key in ("md", "html", "summary"):
        assert paths[key].exists() and paths[key].stat().st_size > 0
    for stem in ("accuracy_vs_length", "heatmap_alpha", "heatmap_beta"):
        png, svg = out / "figures" / f"{stem}.png", out / "figures" / f"{stem}.svg"
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert "<svg" in svg.read_text()
        assert paths[f"figures/{stem}.png"] == png
    assert "](figures/accuracy_vs_length.png)" in paths["md"].read_text()


def test_html_needs_nothing_external(study):
    out, paths = study
    page = paths["html"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, flags=re.I)
    sources = re.findall(r"""src="([^"]*)\"""", page)
    assert len(sources) == 3  # the line plot and one heatmap per model
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(b"\x89PNG")


def test_missing_cells_are_noted_and_dashed(tmp_path):
    stored = write_study(tmp_path, planned_cells=40, max_factor=8)  # plans lengths 16..128; 128 never ran
    md = build_report(tmp_path)["md"].read_text()
    assert f"{40 - stored} of 40 planned evaluation cells are not stored" in md
    assert "| model | 16 (T) | 32 | 64 | 128 |" in md
    alpha_row = next(line for line in md.splitlines() if line.startswith("| alpha | 79.2"))
    assert alpha_row.endswith("| — |")


def test_no_missing_note_when_everything_is_stored(tmp_path):
    stored = write_study(tmp_path, planned_cells=27)
    assert stored == 27
    md = build_report(tmp_path)["md"].read_text()
    assert "missing" not in md and "—" not in md.split("## Accuracy by length")[1].split("![")[0]


def test_report_without_metadata(tmp_path):
    write_study(tmp_path, meta=False)
    paths = build_report(tmp_path)
    summary = json.loads(paths["summary"].read_text())
    assert summary["study"] == "study"
    assert "beta did not learn the task" in paths["md"].read_text()  # the default learned bar, 0.95
    assert "not recorded" in paths["md"].read_text()


def test_summary_table_for_the_terminal(study):
    out, _ = study
    console = Console(record=True, width=200)
    console.print(summary_table(out))
    text = console.export_text()
    assert "16 (T)" in text and "79.2" in text and "did not learn" in text


def test_missing_store_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path)


# ---------------------------------------------------------------------------------------------
# the intervals of the length tables
# ---------------------------------------------------------------------------------------------
def test_length_tables_use_the_intervals_for_these_seeds(study):
    """The accuracy-by-length table and summary.json show the Jeffreys interval for these seeds
    (counts pooled over seeds), never a bootstrap's, and say so."""
    out, paths = study
    summary = json.loads(paths["summary"].read_text())
    alpha = next(m for m in summary["models"] if m["name"] == "alpha")
    full = next(c for c in alpha["scores"] if (c["length"], c["depth"]) == (16, 0.0))  # 10 of 10 correct
    assert full["accuracy"] == 1.0 and full["interval"][1] == 1.0 and 0.75 < full["interval"][0] < 0.9  # not [1, 1]
    assert summary["interval_level_fraction"] == 0.95 and summary["learned_bar_fraction"] == BAR
    md = paths["md"].read_text()
    assert "bootstrap interval" not in md
    assert "Jeffreys interval for the mean accuracy of these trained seeds" in md


def test_the_interval_level_comes_from_the_analysis_settings(tmp_path):
    levels = {}
    for level in (0.95, 0.5):
        out = tmp_path / str(level)
        out.mkdir()
        write_study(out)
        with Store(out / "results.sqlite") as store:
            store.set_meta("config", {**store.meta()["config"], "analysis": {"interval_level_fraction": level}})
        paths = build_report(out)
        summary = json.loads(paths["summary"].read_text())
        levels[level] = next(m for m in summary["models"] if m["name"] == "alpha")["by_length"][1]["interval"]
        assert summary["interval_level_fraction"] == level
        assert f"{100 * level:g}% interval for these seeds" in paths["md"].read_text()
    (wide_low, wide_high), (low, high) = levels[0.95], levels[0.5]
    assert wide_low < low < high < wide_high


def test_findings_section_checks_the_four_claims(study):
    out, paths = study
    report = paths["md"].read_text()
    section = report.split("## Findings")[1].split("## How to read")[0]
    assert [int(n) for n in re.findall(r"### Claim (\d):", section)] == [1, 2, 3, 4]
    assert len(re.findall(r"\*\*Verdict: (supported|not supported|inconclusive at this sample size)\.\*\*", section)) == 4
    findings = json.loads(paths["summary"].read_text())["findings"]
    assert [f["claim"] for f in findings] == [1, 2, 3, 4]
    for finding in findings:  # beta did not learn its task (11.1% at T, under 75%): never used as evidence
        assert [x["model"] for x in finding["excluded"]] == ["beta"]
        assert all(e["model"] == "alpha" for e in finding["evidence"])
    degradation = findings[0]["evidence"][0]  # alpha: T = 16 against every length past it, pooled over depths, seeds
    assert degradation["cells"] and {c[2] for c in degradation["cells"]} == {16, 32, 64}


def test_findings_say_when_planned_cells_are_missing(tmp_path):
    write_study(tmp_path)
    with Store(tmp_path / "results.sqlite") as store:
        store.set_meta("planned_tasks", ["needle"])
        store.db.execute("DELETE FROM results WHERE cell_id IN ('alpha-0-64-50.0', 'alpha-1-64-50.0')")
        store.db.commit()
    paths = build_report(tmp_path)
    degradation = json.loads(paths["summary"].read_text())["findings"][0]
    assert degradation["verdict"] == "inconclusive" and not degradation["complete"]
    assert degradation["covered_cells"] == degradation["expected_cells"] - 1
    assert "planned cells this claim needs are not stored" in paths["md"].read_text()


def test_models_are_reported_in_the_studys_order_not_the_order_they_finished(tmp_path):
    write_study(tmp_path)  # alpha's rows are stored first
    with Store(tmp_path / "results.sqlite") as store:
        config = store.meta()["config"]
        store.set_meta("config", {**config, "models": [{"arch": "b", "name": "beta"}, {"arch": "alpha", "name": None}]})
    summary = json.loads(build_report(tmp_path)["summary"].read_text())
    assert [m["name"] for m in summary["models"]] == ["beta", "alpha"]
    assert list(summary["measures"]) == ["beta", "alpha"]


def test_setup_gives_the_unknown_word_share_of_each_text_haystack(tmp_path):
    """Rebuilt from the stored configuration: a line for the text task at T and at the longest
    length, measured on 64 samples of seed 0; none for the noise task."""
    from longarch import tasks
    from longarch.tasks.corpus import load_corpus

    write_study(tmp_path)
    with Store(tmp_path / "results.sqlite") as store:
        config = store.meta()["config"]
        store.set_meta("config", {**config, "models": ["transformer"], "eval": {**config["eval"], "tasks": [
            {"name": "needle", "label": "noise", "knobs": {}},
            {"name": "needle", "label": "prose", "knobs": {"haystack": "text"}}]}})
    md = build_report(tmp_path)["md"].read_text()
    task = tasks.get("needle", haystack="text")
    stream = load_corpus(n_words=task.n_filler - 1)
    shares = []
    for length in (TRAIN_LENGTH, 64):  # max_factor 4
        tokens = task.generate(length, 64, seed=0).tokens
        filler = tokens[tokens >= 2 + task.n_keys + task.n_values]  # the haystack: filler symbols only
        shares.append(np.mean(filler == 2 + task.n_keys + task.n_values + stream.unknown))
    assert 0 < shares[1] < 0.05
    line = (f"Unknown words in the `prose` haystack: {100 * shares[0]:.1f}% at T = 16, {100 * shares[1]:.1f}% at 64 "
            f"(words outside its {task.n_filler - 1:,}-word vocabulary, all one symbol; 64 samples).")
    assert line in md
    setup = md.split("## Setup")[1].split("## Accuracy by length")[0]
    assert line in setup and "`noise` haystack" not in md


def test_a_rebuilt_report_has_the_same_svg_files_whatever_the_process(study):
    """SVG element ids come from a salt that is random in each process unless fixed: a report
    rebuilt by another process must still give the same files."""
    import matplotlib

    out, first = study
    before = {key: path.read_bytes() for key, path in first.items() if key.endswith(".svg")}
    with matplotlib.rc_context({"svg.hashsalt": "another process"}):
        again = build_report(out)
    assert before and {key: again[key].read_bytes() for key in before} == before


# ---------------------------------------------------------------------------------------------
# one rule for "learned" (analysis/learned.py), whoever reads the results
# ---------------------------------------------------------------------------------------------
def test_learned_is_judged_on_the_evaluation_at_T_everywhere(tmp_path):
    """alpha's final training check read 98% but its evaluated accuracy at T is 79.2%: at the default
    bar (95%) it did not learn its task, and the report's warning, its tables, summary.json, the
    findings and `compare` all say so; none of them reads its results past T as extrapolation."""
    from longarch.analysis.compare import read as compare_read

    write_study(tmp_path, learned_bar_fraction=0.95)
    paths = build_report(tmp_path)
    md = paths["md"].read_text()
    assert ("**alpha did not learn the task**: 79.2% on needle at T=16, pooled over its 2 seeds and the depths "
            "(its final training check at T read 98.0%)") in md
    assert "| alpha (did not learn) | 79.2 [" in md  # the accuracy-by-length table
    assert "| alpha (did not learn) | needle | 16 |" in md  # the per-model measures
    summary = json.loads(paths["summary"].read_text())
    assert {m["name"]: m["solved_at_train_length"] for m in summary["models"]} == {"alpha": False, "beta": False}
    for finding in summary["findings"]:
        assert not finding["evidence"] and {x["model"] for x in finding["excluded"]} == {"alpha", "beta"}
        reason = next(x["reason"] for x in finding["excluded"] if x["model"] == "alpha")
        assert reason == "did not learn its task: 79.2% on needle at T=16, below the 95% bar"
    _, rows = compare_read(tmp_path)
    assert {r.model: r.learned for r in rows["needle"]} == {"alpha": False, "beta": False}

    # at a bar alpha's 79.2% reaches, every reader takes alpha and leaves beta (11.1%) out
    (tmp_path / "low").mkdir()
    write_study(tmp_path / "low", learned_bar_fraction=0.75)
    paths = build_report(tmp_path / "low")
    summary = json.loads(paths["summary"].read_text())
    assert {m["name"]: m["solved_at_train_length"] for m in summary["models"]} == {"alpha": True, "beta": False}
    assert all([x["model"] for x in f["excluded"]] == ["beta"] for f in summary["findings"])
    _, rows = compare_read(tmp_path / "low")
    assert {r.model: r.learned for r in rows["needle"]} == {"alpha": True, "beta": False}


def test_with_nothing_evaluated_at_T_the_training_check_decides():
    """The rule's fallback: no cell at T on any label, so the final training check decides (an
    unknown one counts as learned); a label with nothing at T is not learned under the label gate."""
    from longarch.analysis.learned import AtT

    nothing = {"noise": float("nan"), "text": float("nan")}
    assert AtT(nothing, 0.97).learned(0.95) and not AtT(nothing, 0.9).learned(0.95)
    assert AtT(nothing, float("nan")).learned(0.95)
    assert AtT(nothing, 0.9).describe(0.95) == "90.0% on its final training check (nothing evaluated)"
    some = AtT({"noise": 0.99, "text": float("nan")}, 0.1)  # a stored label decides, the check does not
    assert some.learned(0.95) and some.label_learned("noise", 0.95) and not some.label_learned("text", 0.95)
    short = AtT({"noise": 0.9, "text": 0.498}, 0.99)
    assert not short.learned(0.95) and short.worst(0.95) == "text 49.8%"
    assert short.describe(0.95) == "90.0% on noise and 49.8% on text"
