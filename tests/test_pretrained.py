"""Pretrained studies end to end on the CPU: tiny random `transformers` models of every supported
kind saved to tmp folders, a tokenizer trained here, no network. Checks the store, the raw
predictions, the beyond-training marks, resuming, skips, failures and the report's arithmetic."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
import yaml

import torch
import transformers
from typer.testing import CliRunner

from longarch.pretrained import report as pretrained_report
from longarch.cli import app
from longarch.kinds import build_report, load_study, stored_study
from longarch.study.schema import ConfigError
from longarch.pretrained import runner as pretrained_runner
from longarch.study.store import ResultRow, Store
from test_hf_models import KINDS, _config, word_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """kind -> folder holding a tiny random model of that kind and the tokenizer."""
    tokenizer = word_tokenizer()
    folders = {}
    for kind in KINDS:
        torch.manual_seed(0)
        net = transformers.AutoModelForCausalLM.from_config(_config(kind, len(tokenizer)))
        folder = tmp_path_factory.mktemp(kind)
        net.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[kind] = folder
    return folders


@pytest.fixture(autouse=True)
def text_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGARCH_TEXT_CACHE", str(tmp_path / "text-cache"))


def _write_study(path, models, tasks, lengths=(1024, 2048), samples=2, **extra):
    study = {"kind": "pretrained", "name": "tiny", "models": models, "tasks": tasks,
             "eval": {"lengths": list(lengths), "samples": samples, "chunk": 100}, **extra}
    path.write_text(yaml.safe_dump(study))
    return path


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_kind_end_to_end_with_marks_predictions_and_resume(checkpoints, tmp_path):
    short = {"max_new_tokens": 6}
    models = [{"model": f"hf:{checkpoints[k]}", "name": k} for k in KINDS]
    models[KINDS.index("jamba")]["train_length"] = 1024  # the study's word beats the config's (256)
    study = _write_study(tmp_path / "study.yaml", models,
                         [{"name": "niah_single_1", "knobs": short}, {"name": "vt", "knobs": short}])
    out = tmp_path / "out"
    result = _invoke("run", study, "--out", out)
    assert result.exit_code == 0, result.output

    with Store(out / "results.sqlite") as store:
        rows, results, failures = store.pretrained(), store.results(), store.failures()
    assert not failures
    assert {r["name"]: r["kind"] for r in rows} == {k: k for k in KINDS}
    assert {r["name"]: r["family"] for r in rows}["jamba"] == "hybrid"
    declared = {r["name"]: r["train_length"] for r in rows}
    assert declared == {"llama": 32, "mamba": None, "mamba2": None, "rwkv": 64, "recurrent_gemma": None, "jamba": 1024}
    assert len(results) == len(KINDS) * 2 * 2 and all(r.n == 2 for r in results)

    for kind in KINDS:
        for task in ("niah_single_1", "vt"):
            for length in (1024, 2048):
                lines = _lines(out / "predictions" / kind / f"{task}-{length}.jsonl")
                assert len(lines) == 2
                for line in lines:
                    # RULER's length: prompt + generation budget never over, within 5% under
                    assert 0.95 * length <= line["total_tokens"] <= length
                    limit = declared[kind]
                    assert line["beyond_training"] == (limit is not None and line["total_tokens"] > limit)
                    assert 0 <= line["score"] <= 1 and isinstance(line["prediction"], str)

    report = (out / "report.md").read_text()
    assert all(kind in report for kind in KINDS)
    table = report.split("## Average over 2 tasks")[1].split("\n\n")[1]
    marks = {line.split("|")[1].strip(): line.count("†") for line in table.splitlines()[2:]}
    # beyond training: llama (32) and rwkv (64) at both lengths, jamba (1024) at 2048 only
    assert marks == {"llama": 2, "mamba": 0, "mamba2": 0, "rwkv": 2, "recurrent_gemma": 0, "jamba": 1}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == set(KINDS)
    (out / "report.md").unlink()
    rebuilt = _invoke("report", out)  # `longarch report` knows a pretrained study's directory
    assert rebuilt.exit_code == 0 and (out / "report.md").read_text() == report

    again = _invoke("run", study, "--out", out)  # everything stored: nothing is evaluated again
    assert again.exit_code == 0, again.output
    assert "0 cells to evaluate" in (out / "run.log").read_text().splitlines()[-2]
    with Store(out / "results.sqlite") as store:
        assert {r.cell_id: r.seconds for r in store.results()} == {r.cell_id: r.seconds for r in results}


@pytest.mark.slow
def test_a_process_pool_gives_the_same_predictions_as_this_process(checkpoints, tmp_path):
    study = _write_study(tmp_path / "s.yaml", [{"model": f"hf:{checkpoints['mamba2']}", "name": "m"}],
                         [{"name": "niah_single_1", "knobs": {"max_new_tokens": 5}}], lengths=(1024,), samples=3)
    for workers in ("0", "1"):
        result = _invoke("run", study, "--out", tmp_path / workers, "--workers", workers)
        assert result.exit_code == 0, result.output
    here, pool = (_lines(tmp_path / w / "predictions" / "m" / "niah_single_1-1024.jsonl") for w in ("0", "1"))
    assert [p["prediction"] for p in here] == [p["prediction"] for p in pool] and len(here) == 3


def test_eval_command_flags_and_a_model_that_fails_to_load(checkpoints, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    out = tmp_path / "out"
    result = _invoke("eval", "--model", f"hf:{checkpoints['llama']}", "--model", f"hf:{broken}",
                     "--tasks", "niah_single_1", "--lengths", "1024", "--samples", "2", "--train-length", "1000",
                     "--effective-length-bar", "0.5", "--out", out)
    assert result.exit_code == 1, result.output  # a cell failed (test_exit_status.py)
    with Store(out / "results.sqlite") as store:
        results, failures, rows = store.results(), store.failures(), store.pretrained()
        assert store.meta()["config"]["analysis"]["effective_length_bar_fraction"] == 0.5
    assert json.loads((out / "summary.json").read_text())["effective_length_bar_fraction"] == 0.5
    assert [(r.model, r.length, r.n) for r in results] == [(checkpoints["llama"].name, 1024, 2)]  # named after its folder
    assert rows[0]["train_length"] == 1000 and rows[0]["train_length_source"] == "study"
    # a checkpoint that cannot be loaded fails its cells once each, without retries
    assert [(f["what"], f["attempts"]) for f in failures] == [("broken on niah_single_1 at 1024", 1)]
    assert "could not be loaded" in failures[0]["error"]
    status = _invoke("status", out)
    assert status.exit_code == 0 and "1 failed" in status.output


def test_mamba_ssm_checkpoints_run_through_the_same_pipeline(tmp_path):
    """The paper's mamba_ssm-format checkpoints (tiny ones here): a pure Mamba-2 with its own
    tokenizer files and a Mamba-2/attention hybrid given a separate tokenizer."""
    from mamba_ssm_checks import mamba_ssm_config, random_state_dict, save_checkpoint, save_tokenizer

    tokenizer = save_tokenizer(tmp_path / "tokenizer")
    pure = mamba_ssm_config(n_layer=2)
    hybrid = mamba_ssm_config(n_layer=3, attn_layer_idx=[1], attn_cfg={
        "num_heads": 4, "head_dim": 16, "rotary_emb_dim": 8, "causal": True, "qkv_proj_bias": False,
        "out_proj_bias": False})
    models = [{"name": "M2", "model": save_checkpoint(tmp_path / "m2", pure, random_state_dict(pure, 1), tokenizer),
               "train_length": 800},
              {"name": "M2A", "model": save_checkpoint(tmp_path / "m2a", hybrid, random_state_dict(hybrid, 2)),
               "tokenizer": str(tokenizer), "train_length": 800}]
    study = _write_study(tmp_path / "s.yaml", models, [{"name": "niah_single_1", "knobs": {"max_new_tokens": 5}}],
                         lengths=(1024,))
    out = tmp_path / "out"
    assert _invoke("run", study, "--out", out).exit_code == 0
    with Store(out / "results.sqlite") as store:
        assert not store.failures()
        kinds = {r["name"]: (r["kind"], r["family"], r["train_length"]) for r in store.pretrained()}
        assert kinds == {"M2": ("mamba_ssm-mamba2", "state-space", 800), "M2A": ("mamba_ssm-hybrid", "hybrid", 800)}
        assert sorted((r.model, r.n) for r in store.results()) == [("M2", 2), ("M2A", 2)]
    for name in ("M2", "M2A"):
        for line in _lines(out / "predictions" / name / "niah_single_1-1024.jsonl"):
            assert 0.95 * 1024 <= line["total_tokens"] <= 1024 and line["beyond_training"]


def test_chat_template_tokens_count_towards_the_length(checkpoints, tmp_path):
    import shutil

    from longarch.models.hf import prompt_ids

    folder = tmp_path / "chat-llama"
    shutil.copytree(checkpoints["llama"], folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = ("{% for m in messages %}question " + "the " * 40 + "{{ m['content'] }} {% endfor %}"
                               "{% if add_generation_prompt %}answer{% endif %}")  # 42 tokens of its own
    tokenizer.save_pretrained(folder)
    out = tmp_path / "out"
    result = _invoke("eval", "--model", f"hf:{folder}", "--tasks", "niah_single_1", "--lengths", "1024",
                     "--samples", "2", "--template", "chat", "--out", out)
    assert result.exit_code == 0, result.output
    from longarch import tasks
    from longarch.tasks import text

    for line in _lines(out / "predictions" / "chat-llama" / "niah_single_1-1024.jsonl"):
        assert 0.95 * 1024 <= line["total_tokens"] <= 1024
    # the prompts decoded are the fitted samples under the template, prefix after "answer"
    [sample] = text.generate("niah_single_1", tasks.get("niah_single_1"), tokenizer, 1024, n=1,
                             seed=pretrained_runner.eval_seed(0, 1024, None), counting="chat",
                             prompt_tokens=lambda body, prefix: len(prompt_ids(tokenizer, body, "chat", prefix)))
    ids = prompt_ids(tokenizer, sample.body, "chat", sample.answer_prefix)
    assert _lines(out / "predictions" / "chat-llama" / "niah_single_1-1024.jsonl")[0]["prompt_tokens"] == len(ids)
    words = tokenizer.convert_ids_to_tokens(ids)
    assert words[:41] == ["question"] + ["the"] * 40
    prefix = tokenizer.convert_ids_to_tokens(tokenizer(sample.answer_prefix, add_special_tokens=False)["input_ids"])
    assert sample.answer_prefix and words[-len(prefix) - 1:] == ["answer"] + prefix


def test_depth_ablation_cells_sit_at_their_depths_and_lengths(checkpoints, tmp_path):
    study = _write_study(tmp_path / "study.yaml", [{"model": f"hf:{checkpoints['mamba2']}", "name": "m",
                                                    "train_length": 700}],
                         [{"name": "niah_single_1", "label": "depth repeat", "knobs": {"max_new_tokens": 4},
                           "depths": [0, 100], "length_factors": [1, 2]}], samples=2)
    out = tmp_path / "out"
    assert _invoke("run", study, "--out", out).exit_code == 0
    with Store(out / "results.sqlite") as store:
        cells = sorted((r.length, r.depth) for r in store.results())
    assert cells == [(700, 0.0), (700, 100.0), (1400, 0.0), (1400, 100.0)]
    for length in (700, 1400):
        for depth in (0, 100):
            for line in _lines(out / "predictions" / "m" / f"depth_repeat-{length}-d{depth}.jsonl"):
                assert line["metadata"]["depths"] == [float(depth)]
                assert line["beyond_training"] == (length == 1400)
    report = (out / "report.md").read_text()
    assert "## Needle depth ablation" in report and "m at 1.4K †" in report
    assert (out / "figures" / "depth_m_depth_repeat.png").is_file()


def test_qa_is_skipped_without_its_file_and_runs_with_it(checkpoints, tmp_path):
    models = [{"model": f"hf:{checkpoints['llama']}", "name": "l"}]
    out = tmp_path / "out"
    study = _write_study(tmp_path / "s.yaml", models, [{"name": "qa_1", "knobs": {"max_new_tokens": 4}},
                                                       {"name": "vt", "knobs": {"max_new_tokens": 4}}], lengths=(1024,))
    result = _invoke("run", study, "--out", out)
    assert result.exit_code == 0 and "skipped qa_1: give a SQuAD v2 dev file" in " ".join(result.output.split())
    assert "qa_1 was skipped" in (out / "report.md").read_text()
    squad = tmp_path / "dev.json"
    paragraphs = [{"context": f"Paragraph {i} says the cat sat on mat number {i}.",
                   "qas": [{"question": f"Where did the cat sit in paragraph {i}?", "is_impossible": False,
                            "answers": [{"text": f"mat number {i}"}]}]} for i in range(40)]
    squad.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}))
    out2 = tmp_path / "out2"
    result = _invoke("run", study, "--out", out2, "--squad", squad)
    assert result.exit_code == 0, result.output
    with Store(out2 / "results.sqlite") as store:
        assert sorted(r.label for r in store.results()) == ["qa_1", "vt"]


@pytest.mark.parametrize("args, message", [
    (["eval", "--model", "nope"], "must look like hf:<path or hub id>"),
    (["eval", "--model", "hf:/no/such/folder"], "/no/such/folder does not exist"),
    (["eval", "--model", "hf:./x", "--tasks", "niah_single_9"], "unknown text task 'niah_single_9'"),
    (["eval", "--model", "hf:org/name", "--lengths", "1K,x"], "--lengths expects"),
    (["eval", "--model", "hf:org/name", "--template", "fancy"], "eval.template"),
    (["eval", "--model", "hf:org/name", "--squad", "/no/such.json"], "squad file /no/such.json does not exist"),
    (["run", "quick", "--squad", "x.json"], "--squad is for pretrained studies"),
    (["eval", "--model", "hf:org/name", "--effective-length-bar", "85.6"],
     "--effective-length-bar is an accuracy as a fraction in [0, 1], not 85.6 (a percent? 85.6% is 0.856)"),
    (["eval", "--model", "hf:org/name", "--effective-length-bar", "-0.1"], "fraction in [0, 1], not -0.1"),
    (["eval", "--model", "hf:org/name", "--threshold", "85.6"],
     "--threshold was renamed: use --effective-length-bar, a fraction (85.6 -> 0.856)"),
])
def test_bad_input_is_one_line_and_status_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("extra, message", [
    ({"eval": {"threshold": 85.6}}, "eval: 'threshold' was renamed: use analysis.effective_length_bar_fraction, "
                                    "a fraction (85.6 -> 0.856)"),
    ({"analysis": {"threshold": 85.6}}, "analysis: 'threshold' was renamed: use effective_length_bar_fraction"),
    ({"analysis": {"effective_length_bar_fraction": 85.6}}, "analysis.effective_length_bar_fraction"),
    ({"analysis": {"labels": ["niah"]}}, "analysis: 'niah' is not a task averaged over the study's lengths "
                                         "(those are: vt)"),
])
def test_bad_analysis_settings_of_a_pretrained_study(tmp_path, extra, message):
    study = _write_study(tmp_path / "s.yaml", ["hf:org/name"], ["vt"], **extra)
    with pytest.raises(ConfigError) as error:
        load_study(str(study))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_pretrained_study_takes_the_same_analysis_settings(tmp_path):
    from longarch.analysis.settings import AnalysisSettings

    study = load_study(str(_write_study(tmp_path / "s.yaml", ["hf:org/name"], ["vt", "cwe"],
                                        analysis={"effective_length_bar_fraction": 0.5, "labels": ["vt"]})))
    assert isinstance(study.analysis, AnalysisSettings)
    assert study.analysis.effective_length_bar_fraction == 0.5 and study.analysis.labels == ["vt"]
    assert load_study("paper").analysis == AnalysisSettings()


def test_relative_lengths_need_a_training_length(tmp_path):
    study = _write_study(tmp_path / "s.yaml", ["hf:org/name"],
                         [{"name": "niah_single_1", "depths": [50], "length_factors": [1]}])
    with pytest.raises(ConfigError, match="needs train_length"):
        load_study(str(study))


def test_a_tokenizer_is_only_for_mamba_ssm_checkpoints(tmp_path):
    study = _write_study(tmp_path / "s.yaml", [{"model": "hf:org/name", "tokenizer": "org/tok"}], ["vt"])
    with pytest.raises(ConfigError, match="an hf: model uses its own tokenizer"):
        load_study(str(study))


def test_paper_preset_plans_the_papers_grid():
    study = load_study("paper")
    assert study.eval.lengths == [1024, 2048, 4096, 8192, 16384] and study.eval.samples == 250
    assert [m.label for m in study.models] == ["Mamba2", "M2A", "TPP", "SL", "SL-IT", "RG", "RG-IT", "RWKV"]
    assert {m.label for m in study.models} >= set(pretrained_report.REFERENCES["huang2025"]["averages"])
    cells, skipped = pretrained_runner.plan(study)
    # without QA files and remote code: 11 tasks x 5 lengths x 7 models + 3 formats x 7 depths x {T, 2T} x 7
    assert len(cells) == 11 * 5 * 7 + 3 * 7 * 2 * 7
    assert sorted(what for what, _ in skipped) == ["RWKV", "qa_1", "qa_2"]
    trusted = load_study("paper", overrides={"trust_remote_code": True})
    assert len(pretrained_runner.plan(trusted)[0]) == 11 * 5 * 8 + 3 * 7 * 2 * 8
    ablation = {(c.model.label, c.length) for c in cells if c.depth is not None}
    assert ("Mamba2", 4096) in ablation and ("RG", 16384) in ablation and ("Mamba2", 1024) not in ablation
    assert load_study("paper-depth").tasks == study.tasks[-3:]


# ---------------------------------------------------------------------------------------------
# the report's arithmetic on a store with known scores
# ---------------------------------------------------------------------------------------------
def _fake_store(out, scores, suite, config_extra=None, train_lengths=None):
    """scores: (model, task, length) -> list of per-sample scores."""
    config = {"kind": "pretrained", "name": "fake", "tasks": [{"name": t} for t in suite],
              "eval": {"lengths": sorted({n for _, _, n in scores})}, **(config_extra or {})}
    with Store(out / "results.sqlite") as store:
        store.set_meta("config", config)
        store.set_meta("name", "fake")
        for model in dict.fromkeys(m for m, _, _ in scores):
            store.put_pretrained(f"id-{model}", model, f"hf:{model}",
                                 {"kind": "llama", "family": "attention", "params": 10,
                                  "train_length": (train_lengths or {}).get(model), "train_length_source": "study"})
        for i, ((model, task, length), values) in enumerate(scores.items()):
            store.put_result(ResultRow(cell_id=f"c{i}", model_id=f"id-{model}", model=model, task=task, label=task,
                                       knobs={}, length=length, depth=None, seed=0, n=len(values),
                                       accuracy=sum(values) / len(values), scores=values, seconds=0.1))


def _right(n: int, of: int = 100) -> list[float]:
    return [1.0] * n + [0.0] * (of - n)


# good: 100% at 1K, 85% at 2K (below RULER's 85.6), 97.5% at 4K; hole: 100% wherever stored, b missing at 2K;
# gap: only a at 1K
SCORES = {("good", "a", 1024): _right(100), ("good", "b", 1024): _right(100),
          ("good", "a", 2048): _right(90), ("good", "b", 2048): _right(80),
          ("good", "a", 4096): _right(100), ("good", "b", 4096): _right(95),
          **{("hole", t, n): _right(100) for t in "ab" for n in (1024, 2048, 4096) if (t, n) != ("b", 2048)},
          ("gap", "a", 1024): _right(100)}


def test_averages_effective_length_and_incomplete_cells(tmp_path):
    _fake_store(tmp_path, SCORES, ["a", "b"], train_lengths={"good": 2048})
    build_report(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["effective_length_bar_fraction"] == 0.856 and summary["interval_level_fraction"] == 0.95
    good = summary["models"]["good"]
    assert good["average"] == {"1024": 100.0, "2048": 85.0, "4096": 97.5}
    low, high = good["average_interval"]["1024"]
    assert 98 < low < 100 and high == 100.0  # 200 of 200: the interval keeps its width
    # by the lower bounds: 1K only (2K falls below the bar); RULER's rule on the averages: 4K, past the dip
    assert (good["effective_length"], good["ruler_effective_length"]) == (1024, 4096)
    assert good["effective_length_from_upper_bounds"] == 4096  # 2K's interval reaches above 85.6
    hole = summary["models"]["hole"]  # an incomplete average is not effective: 2K ends the run, 4K still counts
    assert hole["tasks_in_average"] == {"1024": 2, "2048": 1, "4096": 2}
    assert (hole["effective_length"], hole["ruler_effective_length"]) == (1024, 4096)
    gap = summary["models"]["gap"]
    assert gap["tasks_in_average"]["1024"] == 1 and gap["average"]["1024"] == 100.0
    assert gap["effective_length"] is None and gap["ruler_effective_length"] is None  # incomplete: not counted
    report = (tmp_path / "report.md").read_text()
    assert "(1 of 2 tasks)" in report and "bootstrap" not in report
    averages = report.split("## Average over 2 tasks")[1]
    row = next(line for line in averages.splitlines() if line.startswith("| good |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[:2] == ["good", "2048"] and cells[-2:] == ["1K", "4K"]
    assert re.fullmatch(r"100\.0 \[98\.\d, 100\.0\]", cells[2]) and re.fullmatch(r"85\.0 \[[\d.]+, [\d.]+\]", cells[3])
    assert re.fullmatch(r"97\.5 \[[\d.]+, [\d.]+\] †", cells[4])  # past the training length
    assert "lower end of the average's 95% interval is above 85.6" in averages
    assert "95% Jeffreys interval" in report


def test_the_effective_length_bar_comes_from_the_analysis_block(tmp_path):
    _fake_store(tmp_path, SCORES, ["a", "b"], config_extra={"analysis": {"effective_length_bar_fraction": 0.75}})
    summary = build_report(tmp_path)["summary"]
    good = json.loads(summary.read_text())["models"]["good"]
    assert (good["effective_length"], good["ruler_effective_length"]) == (4096, 4096)  # 85% now clears the bar
    assert "above 75 (`analysis.effective_length_bar_fraction`; " in (tmp_path / "report.md").read_text()


def test_a_store_with_the_old_percent_threshold_still_reports(tmp_path):
    _fake_store(tmp_path, SCORES, ["a", "b"], config_extra={"eval": {"lengths": [1024, 2048, 4096], "threshold": 75}})
    build_report(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["effective_length_bar_fraction"] == 0.75  # 75 (a percent) read as a fraction
    assert summary["models"]["good"]["effective_length"] == 4096
    report = (tmp_path / "report.md").read_text()
    assert ("this study was stored before issue 15: its eval.threshold 75 (a percent) is read as "
            "analysis.effective_length_bar_fraction 0.75") in report.lower()
    with Store(tmp_path / "results.sqlite") as store:  # `longarch status` reads it too
        config = {**store.meta()["config"], "models": ["hf:org/good"]}
    assert stored_study(config).analysis.effective_length_bar_fraction == 0.75


def test_analysis_labels_choose_the_tasks_averaged(tmp_path):
    _fake_store(tmp_path, SCORES, ["a", "b"], config_extra={"analysis": {"labels": ["a"]}})
    build_report(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["suite"] == ["a"] and summary["models"]["good"]["average"]["2048"] == 90.0
    assert summary["models"]["gap"]["effective_length"] == 1024  # complete now: a is all it averages


def test_published_averages_are_shown_beside_the_runs_own(tmp_path):
    scores = {("Mamba2", "a", 1024): [1.0, 0.0], ("Mamba2", "a", 2048): [0.0, 0.0]}
    depths = [0, 20, 40, 50, 60, 80, 100]
    ablation = {"name": "niah_single_1", "label": "d", "depths": depths, "length_factors": [1]}
    _fake_store(tmp_path, scores, ["a"], config_extra={"reference": "huang2025"}, train_lengths={"Mamba2": 2048})
    with Store(tmp_path / "results.sqlite") as store:
        config = store.meta()["config"]
        store.set_meta("config", {**config, "tasks": config["tasks"] + [ablation]})
        for depth in depths:
            store.put_result(ResultRow(cell_id=f"d{depth}", model_id="id-Mamba2", model="Mamba2", task="niah_single_1",
                                       label="d", knobs={}, length=2048, depth=float(depth), seed=0, n=4,
                                       accuracy=0.25, scores=[1.0, 0.0, 0.0, 0.0], seconds=0.1))
    build_report(tmp_path)
    report = (tmp_path / "report.md").read_text()
    assert "Beside the published averages" in report
    assert "| Mamba2 | 50.0 / 38.52 | 0.0 / 32.91 |" in report
    published = " / ".join(f"{v:g}" for v in pretrained_report.REFERENCES["huang2025"]["depth_averages"][1]["Mamba2"])
    assert f"| Mamba2 at 2K | {' | '.join(['25.0'] * 7)} | {published} |" in report


def test_store_keeps_pretrained_rows_in_first_seen_order(tmp_path):
    with Store(tmp_path / "r.sqlite") as store:
        store.put_pretrained("b", "B", "hf:b", {"kind": "mamba"})
        store.put_pretrained("a", "A", "hf:a", {"kind": "llama"})
        store.put_pretrained("b", "B", "hf:b", {"kind": "mamba2"})
        assert [(r["name"], r["kind"]) for r in store.pretrained()] == [("B", "mamba2"), ("A", "llama")]
    assert sqlite3.connect(tmp_path / "r.sqlite").execute("SELECT count(*) FROM pretrained").fetchone() == (2,)
