"""A study directory is portable: every path stored in it is relative to it, so a directory that
is moved (or copied, or run from another working directory) resumes, plans and reports without
training or evaluating anything again. Issue 21 found `cd elsewhere; longarch run STUDY --out
/abs/dir` training every model again: checkpoint paths were stored relative to the first run's
working directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from longarch.cli import app
from longarch.controlled import runner
from longarch.kinds import load_study
from longarch.study.store import Store

from test_divergence import Counted
from test_runner import quiet, write_study

cli = CliRunner()


def _stored(out: Path) -> tuple[list, dict]:
    with Store(out / "results.sqlite") as store:
        return sorted((r.model_id, r.checkpoint, r.sha256) for r in store.models()), \
            {r.cell_id: r.scores for r in store.results()}


@pytest.fixture
def relative_run(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """TINY run from tmp_path with a relative --out, as a user types it: (the study file, out)."""
    study_file = write_study(tmp_path)
    monkeypatch.chdir(tmp_path)
    runner.run_study(load_study(str(study_file)), Path("runs") / "tiny", quiet())
    return study_file, tmp_path / "runs" / "tiny"


def test_checkpoints_are_recorded_relative_to_the_study_directory(relative_run):
    _, out = relative_run
    models, _ = _stored(out)
    assert models and all(path.startswith("checkpoints/") for _, path, _ in models)
    assert all((out / path).is_file() for _, path, _ in models)


def test_a_moved_directory_resumes_from_elsewhere_without_work(relative_run, tmp_path, monkeypatch):
    study_file, out = relative_run
    before = _stored(out)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    monkeypatch.chdir(moved.parent)  # neither the first run's directory nor the study's
    counting = Counted(monkeypatch)
    runner.run_study(load_study(str(study_file)), moved, quiet())
    assert (counting.trained, counting.evaluated) == ([], 0)
    assert _stored(moved) == before
    planned = cli.invoke(app, ["plan", str(study_file), "--out", str(moved)])
    assert planned.exit_code == 0 and "remaining: 0 training tokens, 0 evaluation tokens" in planned.output
    status = cli.invoke(app, ["status", "moved"])
    assert status.exit_code == 0 and "models: 2 of 2 trained" in status.output
    (moved / "report.md").unlink()
    assert cli.invoke(app, ["report", "moved"]).exit_code == 0 and (moved / "report.md").is_file()


def test_a_copy_uses_its_own_checkpoints(relative_run, tmp_path, monkeypatch):
    """A copy's store names the copy's files: damaging the original's does not touch the copy."""
    study_file, out = relative_run
    copy = shutil.copytree(out, tmp_path / "copy")
    for path in (out / "checkpoints").glob("*.safetensors"):
        path.write_bytes(b"damaged")
    counting = Counted(monkeypatch)
    runner.run_study(load_study(str(study_file)), copy, quiet())
    assert (counting.trained, counting.evaluated) == ([], 0)


def test_a_store_from_before_finds_its_checkpoints_after_a_move(relative_run, tmp_path, monkeypatch):
    """An older store recorded each checkpoint by the path its first run saw (absolute here);
    after a move that path is gone, and the file of that name in the moved directory is used
    (its recorded hash still has to match)."""
    study_file, out = relative_run
    with Store(out / "results.sqlite") as store, store.db:
        store.db.execute("UPDATE models SET checkpoint = ? || '/' || checkpoint", (str(out),))
    moved = Path(shutil.move(str(out), str(tmp_path / "moved")))
    counting = Counted(monkeypatch)
    runner.run_study(load_study(str(study_file)), moved, quiet())
    assert (counting.trained, counting.evaluated) == ([], 0)
    assert runner.checkpoint_path(moved, str(out / "checkpoints" / "x.safetensors")) == moved / "checkpoints" / "x.safetensors"


# --- input files (a corpus, a plugin) are kept in the study directory and named by content ---

WORDS = " ".join(f"word{i % 40} the of and" for i in range(400))


def _corpus_run(tmp_path, monkeypatch, models=("transformer",)) -> tuple[Path, Path]:
    """A text-haystack study whose corpus file is named relative to the working directory."""
    here = tmp_path / "first"
    here.mkdir()
    (here / "words.txt").write_text(WORDS)
    study_file = write_study(here, task={"name": "needle", "knobs": {"haystack": "text", "corpus": "words.txt"}},
                             models=list(models))
    monkeypatch.chdir(here)
    runner.run_study(load_study(str(study_file)), Path("runs") / "tiny", quiet())
    return study_file, here / "runs" / "tiny"


def _meta(out: Path) -> dict:
    with Store(out / "results.sqlite") as store:
        return store.meta()


def test_a_corpus_is_copied_into_the_study_and_named_relative_to_it(tmp_path, monkeypatch):
    _, out = _corpus_run(tmp_path, monkeypatch)
    named = _meta(out)["config"]["task"]["knobs"]["corpus"]
    assert named.startswith("inputs/") and named.endswith("/words.txt")
    assert (out / named).read_text() == WORDS
    with Store(out / "results.sqlite") as store:
        assert {r.knobs["corpus"] for r in store.results()} == {named}


def test_a_moved_corpus_study_plans_and_reports_without_the_original_file(tmp_path, monkeypatch):
    study_file, out = _corpus_run(tmp_path, monkeypatch)
    moved = Path(shutil.move(str(out), str(tmp_path / "moved")))
    (tmp_path / "first" / "words.txt").unlink()  # only the study directory's copy is left
    monkeypatch.chdir(tmp_path)
    status = cli.invoke(app, ["status", "moved"])
    assert status.exit_code == 0 and "models: 1 of 1 trained" in status.output, status.output
    (moved / "report.md").unlink()
    reported = cli.invoke(app, ["report", "moved"])
    assert reported.exit_code == 0 and "Unknown words in the" in (moved / "report.md").read_text()


def test_the_same_corpus_elsewhere_under_another_name_is_the_same_study(tmp_path, monkeypatch):
    study_file, out = _corpus_run(tmp_path, monkeypatch)
    before = _stored(out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "renamed.txt").write_text(WORDS)
    monkeypatch.chdir(other)
    counting = Counted(monkeypatch)
    runner.run_study(load_study(str(study_file), corpus="renamed.txt"), out, quiet())
    assert (counting.trained, counting.evaluated) == ([], 0)
    assert _stored(out) == before


def test_an_edited_corpus_is_another_study(tmp_path, monkeypatch):
    study_file, out = _corpus_run(tmp_path, monkeypatch)
    (tmp_path / "first" / "words.txt").write_text(WORDS.replace("word1 ", "word7 "))
    result = cli.invoke(app, ["run", str(study_file), "--out", str(out)])
    assert result.exit_code == 2 and "other settings (task.knobs.corpus" in result.output, result.output


def test_a_store_that_named_its_corpus_by_path_is_adopted(tmp_path, monkeypatch):
    """A store written before inputs were kept named the corpus as typed; while that file is
    there, the same study runs into it without work (and names the corpus anew)."""
    study_file, out = _corpus_run(tmp_path, monkeypatch)
    meta = _meta(out)
    config = meta["config"]
    config["task"]["knobs"]["corpus"] = "words.txt"
    with Store(out / "results.sqlite") as store:
        store.set_meta("config", config)
        store.set_meta("identity", {"kind": "controlled", "study_id": "written-before"})
    counting = Counted(monkeypatch)
    runner.run_study(load_study(str(study_file)), out, quiet())
    assert (counting.trained, counting.evaluated) == ([], 0)
    assert _meta(out)["config"]["task"]["knobs"]["corpus"].startswith("inputs/")


def test_a_plugin_is_copied_into_the_study_and_read_from_there(tmp_path, monkeypatch):
    here = tmp_path / "first"
    here.mkdir()
    shutil.copy(Path(__file__).parents[1] / "examples" / "ema.py", here / "ema_plugin.py")
    study_file = write_study(here, plugins=["ema_plugin.py"], models=["ema"])
    monkeypatch.chdir(here)
    runner.run_study(load_study(str(study_file)), Path("runs") / "tiny", quiet())
    out = here / "runs" / "tiny"
    named = _meta(out)["config"]["plugins"]
    assert len(named) == 1 and named[0].startswith("inputs/") and (out / named[0]).is_file()
    shutil.move(str(out), str(tmp_path / "moved"))
    (here / "ema_plugin.py").unlink()
    monkeypatch.chdir(tmp_path)
    status = cli.invoke(app, ["status", "moved"])
    assert status.exit_code == 0 and "models: 1 of 1 trained" in status.output, status.output
    assert cli.invoke(app, ["report", "moved"]).exit_code == 0
