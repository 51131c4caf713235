"""A study directory is never damaged (issue 19): it holds one study of one kind, and a command
that would write anything else into it is refused with one line and exit status 2 before a byte
changes; commands that only read work on a study that cannot be written; a file-system failure
during a run is one line, and the next run resumes."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from longarch.cli import app
from longarch.kinds import load_study
from longarch.study.lock import held_by
from longarch.study.store import Store
from study_checks import snapshot

pytestmark = pytest.mark.usefixtures("one_thread")

STUDY = {"name": "tiny", "task": {"name": "needle", "knobs": {"haystack": "random"}}, "models": ["transformer"],
         "params": 20000, "train": {"length": 16, "steps": 3, "batch_size": 4, "warmup": 1, "eval_samples": 4},
         "eval": {"max_factor": 2, "depths": [50], "samples": 3, "chunk": 16}}
PRETRAINED = {"kind": "pretrained", "name": "ckpt", "models": ["hf:org/model"], "tasks": ["vt"],
              "eval": {"lengths": [1024], "samples": 2}}
LONGARCH = str(Path(sys.executable).parent / "longarch")


def _yaml(directory: Path, data: dict, name: str = "study.yaml") -> str:
    path = directory / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def refused(result, *fragments) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished controlled study (copied by each test that changes it)."""
    directory = tmp_path_factory.mktemp("finished")
    result = _invoke("run", _yaml(directory, STUDY), "--out", directory / "out", "--workers", "0")
    assert result.exit_code == 0, result.output
    return directory / "out"


@pytest.fixture
def study_dir(finished, tmp_path) -> Path:
    out = tmp_path / "study"
    shutil.copytree(finished, out)
    return out


@pytest.fixture
def pretrained_store(tmp_path) -> Path:
    """A directory holding a pretrained study's store (as `longarch eval` leaves it)."""
    out = tmp_path / "eval"
    study = load_study(_yaml(tmp_path, PRETRAINED, "ckpt.yaml"))
    with Store(out / "results.sqlite") as store:
        for key, value in {"kind": "pretrained", "name": "ckpt", "config": study.model_dump(mode="json")}.items():
            store.set_meta(key, value)
    return out


def test_a_pretrained_run_into_a_controlled_study_is_refused_and_touches_nothing(study_dir):
    before = snapshot(study_dir)
    refused(_invoke("eval", "--model", "hf:org/model", "--tasks", "vt", "--out", study_dir),
            str(study_dir), "holds a controlled study ('tiny')", "this is a pretrained study")
    assert snapshot(study_dir) == before
    again = _invoke("run", _yaml(study_dir.parent, STUDY), "--out", study_dir, "--workers", "0")
    assert again.exit_code == 0, again.output  # the study itself still resumes (nothing to do)


def test_a_controlled_run_into_a_pretrained_study_is_refused(pretrained_store, tmp_path):
    before = snapshot(pretrained_store)
    refused(_invoke("run", _yaml(tmp_path, STUDY), "--out", pretrained_store, "--workers", "0", "--force"),
            "holds a pretrained study ('ckpt')", "this is a controlled study")  # --force never mixes kinds
    assert snapshot(pretrained_store) == before


def test_another_study_is_refused_naming_what_differs(study_dir):
    before = snapshot(study_dir)
    changed = {**STUDY, "train": {**STUDY["train"], "steps": 4}, "seeds": [0, 1]}
    line = refused(_invoke("run", _yaml(study_dir.parent, changed, "other.yaml"), "--out", study_dir),
                   "holds study 'tiny' with other settings", "seeds [0]; this study has [0, 1]",
                   "train.steps 3; this study has 4", "--force")
    assert "description" not in line
    assert snapshot(study_dir) == before


def test_what_only_changes_the_report_is_the_same_study(study_dir):
    """The description and the analysis settings change no result: the run goes on (and the
    report follows the new settings)."""
    shown = {**STUDY, "description": "now described", "analysis": {"learned_bar_fraction": 0.5}}
    result = _invoke("run", _yaml(study_dir.parent, shown, "shown.yaml"), "--out", study_dir, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "now described" in (study_dir / "report.md").read_text()


def test_a_store_from_before_identities_is_adopted_when_it_is_the_same_study(study_dir):
    with Store(study_dir / "results.sqlite") as store:
        store.db.execute("DELETE FROM study WHERE key IN ('identity', 'kind')")
        store.db.commit()
        config = store.meta()["config"]
        del config["kind"]  # as a store written before studies named their kind
        store.set_meta("config", config)
    result = _invoke("run", _yaml(study_dir.parent, STUDY), "--out", study_dir, "--workers", "0")
    assert result.exit_code == 0, result.output
    with Store(study_dir / "results.sqlite") as store:
        assert store.meta()["identity"]["kind"] == "controlled"
    refused(_invoke("run", _yaml(study_dir.parent, {**STUDY, "seeds": [3]}, "s3.yaml"), "--out", study_dir),
            "seeds [0]; this study has [3]")


def test_files_longarch_did_not_write_are_refused_unless_forced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my own notes")
    before = snapshot(out)
    study = _yaml(tmp_path, STUDY)
    refused(_invoke("run", study, "--out", out, "--workers", "0"), "holds files longarch did not write (notes.txt)",
            "--force")
    assert snapshot(out) == before
    forced = _invoke("run", study, "--out", out, "--workers", "0", "--force")
    assert forced.exit_code == 0, forced.output
    assert (out / "notes.txt").read_text() == "my own notes" and (out / "report.md").is_file()


def test_a_users_own_report_is_never_overwritten_even_when_forced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("# my report\n")
    (out / "summary.json").write_text("{}\n")
    before = snapshot(out)
    for force in ([], ["--force"]):
        refused(_invoke("run", _yaml(tmp_path, STUDY), "--out", out, "--workers", "0", *force),
                "report.md, summary.json", "longarch would write")
        assert snapshot(out) == before


def test_a_sqlite_file_that_is_not_a_store_is_left_as_it_is(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    db = sqlite3.connect(out / "results.sqlite")
    db.execute("CREATE TABLE customers (name TEXT)")
    db.execute("INSERT INTO customers VALUES ('ada')")
    db.commit()
    db.close()
    before = snapshot(out)
    refused(_invoke("run", _yaml(tmp_path, STUDY), "--out", out, "--workers", "0"),
            "is not a longarch results database", "customers")
    refused(_invoke("status", out), "is not a longarch results database")
    refused(_invoke("report", out), "is not a longarch results database")
    assert snapshot(out) == before


def test_the_lock_is_held_until_the_report_is_written(tmp_path, monkeypatch):
    from longarch.analysis import report as report_module

    seen = []
    real = report_module.finish

    def finish(out, console, failed, report):
        seen.append(held_by(out))  # another run would be refused while the report is written
        return real(out, console, failed, report)

    monkeypatch.setattr(report_module, "finish", finish)
    result = _invoke("run", _yaml(tmp_path, STUDY), "--out", tmp_path / "out", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert seen == [os.getpid()] and held_by(tmp_path / "out") is None


@contextmanager
def read_only(directory: Path):
    """The directory and everything in it made read-only: immutable for root (whom permissions
    do not stop), permissions for anyone else."""
    paths = [directory, *directory.rglob("*")]
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: no way to make a directory read-only here")
        for path in reversed(paths):
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
                subprocess.run(["chattr", "-R", "-i", str(directory)], capture_output=True)
                pytest.skip("this file system does not take the immutable attribute")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-R", "-i", str(directory)], check=True)
    else:
        modes = {p: p.stat().st_mode for p in paths}
        for path in reversed(paths):
            path.chmod(modes[path] & ~0o222)
        try:
            yield
        finally:
            for path in paths:
                path.chmod(modes[path])


def test_status_plan_and_report_work_on_a_read_only_study(study_dir, tmp_path):
    before = snapshot(study_dir)
    with read_only(study_dir):
        status = _invoke("status", study_dir)
        assert status.exit_code == 0 and "1 of 1 trained" in status.output and "2 of 2 stored" in status.output, \
            status.output
        plan = _invoke("plan", _yaml(tmp_path, STUDY), "--out", study_dir)
        assert plan.exit_code == 0 and "refuse" not in plan.output, plan.output
        refused(_invoke("report", study_dir), "is read-only", "--out")
        elsewhere = _invoke("report", study_dir, "--out", tmp_path / "report")
        assert elsewhere.exit_code == 0, elsewhere.output
        refused(_invoke("run", _yaml(tmp_path, STUDY), "--out", study_dir, "--workers", "0"), str(study_dir))
    assert snapshot(study_dir) == before
    assert (tmp_path / "report" / "report.md").read_text() == (study_dir / "report.md").read_text()


@pytest.mark.parametrize("blocker", ["checkpoints", "report.md", "run.lock", "results.sqlite"])
def test_a_path_of_the_wrong_type_is_one_line_and_the_next_run_resumes(finished, tmp_path, blocker):
    """A file where a folder must be, or a folder where a file must be."""
    out = tmp_path / "study"
    shutil.copytree(finished, out)
    with Store(out / "results.sqlite") as store:  # forget the model, so that its checkpoint is written again
        store.db.execute("DELETE FROM results")
        store.db.execute("DELETE FROM models")
        store.db.commit()
    target = out / blocker
    if target.is_dir():
        shutil.rmtree(target)
        target.write_text("not a folder")
    else:
        target.unlink()
        for side in ("-wal", "-shm"):
            (out / f"{blocker}{side}").unlink(missing_ok=True)
        target.mkdir()
    study = _yaml(tmp_path, STUDY)
    refused(_invoke("run", study, "--out", out, "--workers", "0"), blocker)
    if target.is_dir():
        target.rmdir()
    else:
        target.unlink()
    if blocker == "results.sqlite":
        return  # the store is gone: the study starts again, as a new one
    result = _invoke("run", study, "--out", out, "--workers", "0")
    assert result.exit_code == 0, result.output
    with Store(out / "results.sqlite") as store:
        assert len(store.models()) == 1 and len(store.results()) == 2


def test_out_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    refused(_invoke("run", _yaml(tmp_path, STUDY), "--out", tmp_path / "file" / "sub", "--workers", "0"),
            str(tmp_path / "file"))
    refused(_invoke("plan", _yaml(tmp_path, STUDY), "--out", tmp_path / "file"), "is a file, not a directory")


def _limited(max_bytes: int):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))  # writes past it fail: EFBIG
    return limit


def test_a_full_disk_is_one_line_nothing_is_lost_and_the_next_run_resumes(tmp_path):
    """A file-size limit stands for a full disk: the store keeps every committed row, the run ends
    with one line naming the file and the cause, and a run with room finishes the study."""
    study = _yaml(tmp_path, {**STUDY, "models": ["transformer", "mamba2"]})
    out = tmp_path / "out"
    first = subprocess.run([LONGARCH, "run", study, "--out", str(out), "--workers", "0"], capture_output=True,
                           text=True, preexec_fn=_limited(100_000), timeout=600)
    assert first.returncode == 2, first.stdout + first.stderr
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in first.stderr, first.stderr
    assert "too large" in lines[0] or "full" in lines[0], lines[0]
    with Store(out / "results.sqlite") as store:
        assert store.db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {r.cell_id: r.scores for r in store.results()}
    second = subprocess.run([LONGARCH, "run", study, "--out", str(out), "--workers", "0"], capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    with Store(out / "results.sqlite") as store:
        after = {r.cell_id: r.scores for r in store.results()}
        assert len(store.models()) == 2 and len(after) == 4
    assert {k: after[k] for k in stored} == stored  # what was stored is kept as it was


def test_a_study_over_the_free_disk_is_refused_with_the_estimate_before_anything_is_written(study_dir, tmp_path,
                                                                                           monkeypatch):
    from longarch.study import limits

    monkeypatch.setattr(limits, "free_disk", lambda path: 1000)
    new = tmp_path / "new"
    line = refused(_invoke("run", _yaml(tmp_path, STUDY), "--out", new, "--workers", "0"),
                   "the 3 cells left needs at least", "of disk;", "1000 B free")
    assert "KiB of disk" in line and not new.exists()  # the model's weights alone: 4 bytes a parameter
    # a finished study has nothing left to write: it needs no room
    result = _invoke("run", _yaml(tmp_path, STUDY), "--out", study_dir, "--workers", "0")
    assert result.exit_code == 0, result.output
