"""`longarch export` and `--json`: a smoke study and a tiny pretrained study exported as one row
per sample (the store's scores, read back from csv and jsonl, the store left byte for byte as it
was), bad input as one line and exit status 2, and the JSON documents of plan, status, models
and tasks holding the numbers their tables show."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import re
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from typer.testing import CliRunner

from longarch import models, tasks
from longarch.cli import app
from longarch.export import COLUMNS
from longarch.kinds import kind_of, stored_study
from longarch.study.grid import grid_state
from longarch.study.ids import slug
from longarch.study.store import read_only
from test_hf_models import _config, word_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
cli = CliRunner()


def _invoke(*args):
    return cli.invoke(app, [str(a) for a in args])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _scores(out: Path) -> dict[tuple[str, int], float]:
    """(cell_id, sample) -> score, as the store holds them."""
    with read_only(out / "results.sqlite") as store:
        return {(row.cell_id, i): score for row in store.results() for i, score in enumerate(row.scores)}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "smoke"
    result = _invoke("run", "smoke", "--out", out, "--workers", "0")
    assert result.exit_code == 0, result.output
    return out


# ---------------------------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------------------------
def test_csv_export_is_one_row_per_sample_with_the_stores_scores(smoke):
    before, names = _digest(smoke / "results.sqlite"), {p.name for p in smoke.iterdir()}
    result = _invoke("export", smoke, "--format", "csv")
    assert result.exit_code == 0, result.output
    path = smoke / "export.csv"
    assert f"to {path}" in result.stdout
    assert _digest(smoke / "results.sqlite") == before  # read-only: the store is as it was
    assert {p.name for p in smoke.iterdir()} == names | {"export.csv"}  # no SQLite side file either

    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    scores = _scores(smoke)
    assert len(rows) == len(scores)  # one row per sample of every cell
    assert {(r["cell_id"], int(r["sample"])): float(r["score"]) for r in rows} == scores
    assert {r["study"] for r in rows} == {"smoke"} and {r["model"] for r in rows} == {"transformer", "mamba2"}
    assert {r["family"] for r in rows} == {models.family("transformer"), models.family("mamba2")}
    # each sample's predicted and expected symbols, kept beside the store: exact match is the score
    assert all(r["prediction"] and r["answer"] for r in rows)
    assert all((r["prediction"] == r["answer"]) == (float(r["score"]) == 1.0) for r in rows)
    assert 0 < sum(float(r["score"]) == 1.0 for r in rows) < len(rows)  # both kinds of sample are checked
    assert {float(r["depth"]) for r in rows} == {0.0, 50.0, 100.0}
    with read_only(smoke / "results.sqlite") as store:
        counts = sum(row.n for row in store.results())
    assert len(rows) == counts

    # a later run accepts the export beside its store (longarch wrote it)
    assert _invoke("run", "smoke", "--out", smoke, "--workers", "0").exit_code == 0


def test_jsonl_export_to_standard_output_has_numbers_as_numbers(smoke):
    before = _digest(smoke / "results.sqlite")
    result = _invoke("export", smoke, "--format", "jsonl", "--out", "-")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]  # nothing else on stdout
    assert all(tuple(row) == COLUMNS for row in rows)
    assert {(r["cell_id"], r["sample"]): r["score"] for r in rows} == _scores(smoke)
    first = rows[0]
    assert all(isinstance(first[k], int) for k in ("seed", "length", "sample"))
    assert isinstance(first["score"], float) and isinstance(first["depth"], float)
    assert _digest(smoke / "results.sqlite") == before

    to_file = _invoke("export", smoke, "--format", "jsonl", "--out", smoke.parent / "rows.jsonl")
    assert to_file.exit_code == 0
    assert [json.loads(line) for line in (smoke.parent / "rows.jsonl").read_text().splitlines()] == rows


def test_csv_and_jsonl_hold_the_same_table(smoke):
    as_csv = list(csv.DictReader(io.StringIO(_invoke("export", smoke, "--out", "-").stdout)))
    as_jsonl = [json.loads(line) for line in _invoke("export", smoke, "--format", "jsonl", "--out", "-").stdout.splitlines()]
    assert len(as_csv) == len(as_jsonl)
    for text, typed in zip(as_csv, as_jsonl):
        assert text == {k: "" if v is None else str(v) for k, v in typed.items()}


def test_parquet_round_trips_or_fails_with_one_line(smoke, tmp_path):
    dest = tmp_path / "rows.parquet"
    result = _invoke("export", smoke, "--format", "parquet", "--out", dest)
    if importlib.util.find_spec("pyarrow") is None and importlib.util.find_spec("pandas") is None:
        assert result.exit_code == 2 and not dest.exists() and result.stdout == ""
        assert result.stderr.strip().splitlines() == [
            "error: --format parquet needs pyarrow, which is not installed: pip install pyarrow (or use csv or jsonl)"]
        return
    assert result.exit_code == 0, result.output
    if importlib.util.find_spec("pyarrow") is not None:
        import pyarrow.parquet

        columns, rows = pyarrow.parquet.read_table(dest).column_names, pyarrow.parquet.read_table(dest).to_pylist()
    else:
        import pandas

        frame = pandas.read_parquet(dest)
        columns, rows = list(frame.columns), frame.to_dict("records")
    assert tuple(columns) == COLUMNS
    assert {(r["cell_id"], int(r["sample"])): float(r["score"]) for r in rows} == _scores(smoke)


@pytest.mark.parametrize("args, message", [
    (lambda d, t: ["export", t / "empty"], "has no results.sqlite"),
    (lambda d, t: ["export", d, "--format", "xml"], "--format must be one of csv, jsonl, parquet, not 'xml'"),
    (lambda d, t: ["export", d, "--format", "parquet", "--out", "-"], "parquet"),
    (lambda d, t: ["export", d, "--out", d / "results.sqlite"], "export never writes over it"),
    (lambda d, t: ["export", d, "--out", t], "is a directory"),
    (lambda d, t: ["export", t / "corrupt"], "results.sqlite"),
    (lambda d, t: ["export", t / "corrupt", "--format", "jsonl", "--out", "-"], "results.sqlite"),
], ids=["no-store", "unknown-format", "parquet-to-stdout", "over-the-store", "out-is-a-directory", "corrupt-store",
        "corrupt-store-to-stdout"])
def test_bad_input_is_one_line_and_status_2(smoke, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "results.sqlite").write_bytes(b"not a database, not at all" * 10)
    before = _digest(smoke / "results.sqlite")
    result = _invoke(*args(smoke, tmp_path))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0] and result.stdout == ""  # not even a header
    assert not list((tmp_path / "corrupt").glob("export*")) and not list(tmp_path.glob("corrupt/.export*"))
    assert _digest(smoke / "results.sqlite") == before


# ---------------------------------------------------------------------------------------------
# a pretrained study: raw predictions beside the scores
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, monkeypatch_module) -> Path:
    """A tiny random llama evaluated on one needle task at two depths (the predictions files'
    names carry the depth) and on vt, two samples a cell."""
    root = tmp_path_factory.mktemp("pretrained")
    monkeypatch_module.setenv("LONGARCH_TEXT_CACHE", str(root / "text-cache"))
    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    net = transformers.AutoModelForCausalLM.from_config(_config("llama", len(tokenizer)))
    net.save_pretrained(root / "llama")
    tokenizer.save_pretrained(root / "llama")
    short = {"max_new_tokens": 4}
    study = {"kind": "pretrained", "name": "tiny", "models": [{"model": f"hf:{root / 'llama'}", "name": "l"}],
             "tasks": [{"name": "niah_single_1", "label": "depth repeat", "knobs": short, "depths": [0, 100]},
                       {"name": "vt", "knobs": short}],
             "eval": {"lengths": [1024], "samples": 2, "chunk": 100}}
    (root / "study.yaml").write_text(yaml.safe_dump(study))
    result = _invoke("run", root / "study.yaml", "--out", root / "out")
    assert result.exit_code == 0, result.output
    with read_only(root / "out" / "results.sqlite") as store:
        assert store.failures() == [] and len(store.results()) == 3
    return root / "out"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _prediction_lines(out: Path) -> dict[tuple[str, int, float | None], list[dict]]:
    lines = {}
    for path in (out / "predictions" / "l").iterdir():
        match = re.fullmatch(r"(.+)-(\d+)(?:-d([\d.]+))?\.jsonl", path.name)
        key = (match[1], int(match[2]), None if match[3] is None else float(match[3]))
        lines[key] = [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def test_a_pretrained_study_exports_its_raw_predictions(pretrained):
    before = _digest(pretrained / "results.sqlite")
    result = _invoke("export", pretrained, "--format", "jsonl", "--out", "-")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert _digest(pretrained / "results.sqlite") == before
    assert {(r["cell_id"], r["sample"]): r["score"] for r in rows} == _scores(pretrained)
    assert len(rows) == 3 * 2  # (two depths of the needle, and vt) x two samples
    assert {r["family"] for r in rows} == {"attention"} and {r["model"] for r in rows} == {"l"}
    assert {(r["label"], r["depth"]) for r in rows} == {("depth repeat", 0.0), ("depth repeat", 100.0), ("vt", None)}
    files = _prediction_lines(pretrained)
    for row in rows:
        line = files[slug(row["label"]), row["length"], row["depth"]][row["sample"]]
        assert line["index"] == row["sample"] and line["score"] == row["score"]
        assert row["prediction"] == line["prediction"]
        assert row["answer"] == " | ".join(line["answers"]) and row["answer"]


def test_a_missing_predictions_file_leaves_prediction_and_answer_empty(pretrained, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(pretrained, out)
    (out / "predictions" / "l" / "vt-1024.jsonl").unlink()
    result = _invoke("export", out, "--out", out / "rows.csv")
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [
        "warning: 1 of 3 cells have no readable raw predictions file; their prediction and answer are empty"]
    rows = list(csv.DictReader((out / "rows.csv").open(newline="")))
    assert len(rows) == 6
    assert {r["prediction"] == r["answer"] == "" for r in rows if r["label"] == "vt"} == {True}
    assert all(r["answer"] for r in rows if r["label"] != "vt")


# ---------------------------------------------------------------------------------------------
# --json
# ---------------------------------------------------------------------------------------------
def _table_rows(output: str) -> dict[str, list[str]]:
    """A rich table's body rows: first cell -> the other cells."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if line.startswith("│") and cells[0]:
            rows[cells[0]] = cells[1:]
    return rows


def test_status_and_plan_json_hold_the_grid_states_counts(smoke, tmp_path):
    status = _invoke("status", smoke, "--json")
    assert status.exit_code == 0, status.output
    document = json.loads(status.stdout)
    with read_only(smoke / "results.sqlite") as store:
        study = stored_study(store.meta()["config"])
    kind = kind_of(study)(study)
    state = grid_state(kind.plan(), smoke)
    assert document["cells"]["planned"] == len(state.of("eval")) == document["cells"]["stored"]
    assert (document["models"]["planned"], document["models"]["stored"]) == (2, 2)
    assert document["failures"] == [] and document["running"] == [] and document["run_pid"] is None
    assert [r["planned"] for r in document["rows"]] == [len(cells) for _, cells in kind.grid_rows(state)]
    text = _invoke("status", smoke).stdout
    assert f"cells:  {document['cells']['stored']} of {document['cells']['planned']} stored" in text

    plan = _invoke("plan", "smoke", "--out", smoke, "--json")
    assert plan.exit_code == 0, plan.output
    planned = json.loads(plan.stdout)
    assert planned["rows"] == document["rows"] and planned["remaining_cost"]["eval_tokens"] == 0
    table = _table_rows(_invoke("plan", "smoke", "--out", smoke).stdout)
    for row in planned["rows"]:
        assert table[row["cells"]] == [str(row[c]) for c in ("planned", "stored", "failed", "remaining")]

    fresh = _invoke("plan", "smoke", "--out", tmp_path / "new", "--json")
    counts = json.loads(fresh.stdout)["rows"]
    assert [r["stored"] for r in counts] == [0, 0] and all(r["remaining"] == r["planned"] > 0 for r in counts)


def test_plan_json_sends_its_notes_to_stderr(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("not longarch's")
    result = _invoke("plan", "smoke", "--out", tmp_path / "taken", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # the note is not on stdout
    assert "mine.txt" in document["run_refused"] and "would refuse" in result.stderr


def test_status_json_lists_failures_with_their_last_error(tmp_path):
    from longarch.kinds import load_study
    from longarch.study.store import Store

    study = load_study("smoke")
    cell = kind_of(study)(study).plan().cells[0]  # a model to train
    out = tmp_path / "failed"
    with Store(out / "results.sqlite") as store:
        store.set_meta("config", study.model_dump(mode="json"))
        store.put_failure(cell.id, "train", cell.what, 3, "boom: it broke")
    result = _invoke("status", out, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [(f["what"], f["attempts"], f["error"]) for f in document["failures"]] == [(cell.what, 3, "boom: it broke")]
    assert document["models"]["failed"] == 1 and document["rows"][0]["failed"] == 1
    assert "boom: it broke" in _invoke("status", out).stdout


def test_models_json_holds_what_the_table_shows():
    result = _invoke("models", "--json", "--length", "1024")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["length"] == 1024 and [m["name"] for m in document["models"]] == models.names()
    table = _table_rows(_invoke("models", "--length", "1024").stdout)
    for entry in document["models"]:
        assert set(entry) == {"name", "family", "layers", "params", "state_floats", "state_growth", "description"}
        shown = table[entry["name"]]
        assert shown[2] == f"{entry['params']:,}" and shown[3] == f"{entry['state_floats']:,} ({entry['state_growth']})"
        assert shown[0] == (entry["family"] or "(per model)") and shown[1] == entry["layers"]


def test_tasks_json_lists_every_task_with_its_knobs():
    document = json.loads(_invoke("tasks", "--json").stdout)
    assert [t["name"] for t in document["tasks"]] == tasks.names("tokens") + tasks.names("text")
    needle = next(t for t in document["tasks"] if t["name"] == "needle")
    assert needle["family"] == "tokens" and needle["knobs"]["haystack"] == "noise" and needle["min_length"] > 0
    text = json.loads(_invoke("tasks", "--text", "--json").stdout)
    assert [t["name"] for t in text["tasks"]] == tasks.names("text") and {t["family"] for t in text["tasks"]} == {"text"}
    assert all(isinstance(t["knobs"], dict) and t["description"] for t in text["tasks"])
