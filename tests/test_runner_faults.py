"""The runner under faults and on every backend: kill -9 at chosen points then resume, to a
store identical to an uninterrupted run; the same numbers in this process, in a local process
pool and on Ray; failing cells retried, reported and never stopping the grid; one run per
directory; pickled checkpoints never loaded; `plan` and `status` telling the truth."""

from __future__ import annotations

import os
import pickle
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from longarch.controlled import runner
from longarch.study import faults
from longarch.study import lock
from longarch.cli import app
from longarch.kinds import load_study
from longarch.study.store import Store
from test_runner import N_CELLS, TINY, quiet, write_study

def contents(database: Path) -> tuple[list, list]:
    """Everything in a store that is a result (not a timing or a path), sorted."""
    with sqlite3.connect(database) as db:
        results = sorted(db.execute("SELECT cell_id, model_id, model, label, knobs, length, depth, seed, n, accuracy, "
                                    "scores FROM results").fetchall())
        models = sorted(db.execute("SELECT model_id, name, arch, seed, params, state_floats, train_length, "
                                   "train_accuracy, final_loss FROM models").fetchall())
    return results, models


def command(study: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "longarch.cli", "run", str(study), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """An uninterrupted run in a subprocess, as the killed runs are."""
    directory = tmp_path_factory.mktemp("reference")
    study = write_study(directory)
    done = subprocess.run(command(study, directory / "out", "--workers", "0"), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return study, directory / "out"


def _checkpoint_size(reference_out: Path) -> int:
    sizes = {p.stat().st_size for p in (reference_out / "checkpoints").glob("*.safetensors")}
    return min(sizes)


@pytest.mark.slow
def test_kill_9_at_chosen_points_then_resume(tmp_path, reference):
    """Ten runs, each killed at a point this test chooses (LONGARCH_KILL_AT, see longarch.study.faults):
    inside training, halfway through writing a checkpoint at a random byte, right after a model
    or a cell is committed. Every kill lands with work left; the next run resumes; the last one
    finishes with a store identical to an uninterrupted run's. The in-process runner trains the
    transformer (15 steps), evaluates its 9 cells, then trains Mamba-2 and evaluates its 9."""
    study, reference_out = reference
    out = tmp_path / "out"
    rng = random.Random(4)
    size = _checkpoint_size(reference_out)
    points = [
        f"step:{rng.randint(1, 14)}",                  # inside the transformer's training: nothing stored
        f"checkpoint:1:{rng.randrange(size)}",         # its checkpoint cut at a random byte
        "model:1",                                     # the transformer committed, Mamba-2 not started
        f"step:{rng.randint(1, 14)}",                  # its 9 cells evaluated first, then inside Mamba-2's training
        f"checkpoint:1:{rng.randrange(size)}",         # Mamba-2's checkpoint cut at a random byte
        "model:1",                                     # both models committed, Mamba-2's cells to come
        "cell:1",
        f"cell:{rng.randint(2, 4)}",
        f"cell:{rng.randint(1, 2)}",
        "cell:1",                                      # at most 17 of the 18 cells stored
    ]
    stored = []
    for point in points:
        process = subprocess.run(command(study, out, "--workers", "0"), capture_output=True, text=True,
                                 timeout=600, start_new_session=True, env={**os.environ, faults.VARIABLE: point})
        assert process.returncode == -signal.SIGKILL, (point, process.stderr[-2000:])
        with sqlite3.connect(out / "results.sqlite") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        results, models = contents(out / "results.sqlite")
        stored.append((len(models), len(results)))
    # What each kill left: nothing until the first commit, then one more model or a few more cells.
    half = N_CELLS // 2
    assert stored[:6] == [(0, 0), (0, 0), (1, 0), (1, half), (1, half), (2, half)]
    cells = [n for _, n in stored[6:]]
    assert cells[0] == half + 1 and cells[-1] < N_CELLS
    assert [b - a for a, b in zip(cells, cells[1:])] == [int(p.split(":")[1]) for p in points[7:]]
    finished = subprocess.run(command(study, out, "--workers", "0"), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert contents(out / "results.sqlite") == contents(reference_out / "results.sqlite")
    results, models = contents(out / "results.sqlite")
    assert len(results) == N_CELLS and len({r[0] for r in results}) == N_CELLS and len(models) == 2
    assert not list((out / "checkpoints").glob("*.tmp"))


@pytest.mark.slow
def test_a_checkpoint_cut_short_is_never_taken_for_a_whole_one(tmp_path, reference):
    """A kill halfway through a checkpoint leaves only a .tmp file; no store row points at it."""
    study, reference_out = reference
    out = tmp_path / "out"
    cut = random.Random(7).randrange(1, _checkpoint_size(reference_out))
    process = subprocess.run(command(study, out, "--workers", "0"), capture_output=True, text=True, timeout=600,
                             start_new_session=True, env={**os.environ, faults.VARIABLE: f"checkpoint:1:{cut}"})
    assert process.returncode == -signal.SIGKILL
    partial = list((out / "checkpoints").glob("*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size == cut
    assert not list((out / "checkpoints").glob("*.safetensors"))
    assert contents(out / "results.sqlite") == ([], [])


@pytest.mark.parametrize("spec", ["cell", "cell:x", "checkpoint:1", "nowhere:1"])
def test_a_malformed_kill_point_is_refused(monkeypatch, spec):
    monkeypatch.setenv(faults.VARIABLE, spec)
    with pytest.raises(ValueError, match=faults.VARIABLE):
        faults.reached("cell")


@pytest.mark.slow
def test_local_pool_and_ray_give_identical_results(tmp_path):
    study = load_study(str(write_study(tmp_path)))
    runner.run_study(study, tmp_path / "pool", quiet(), backend="local", workers=2)
    runner.run_study(study, tmp_path / "ray", quiet(), backend="ray", workers=2)
    pool, ray = contents(tmp_path / "pool" / "results.sqlite"), contents(tmp_path / "ray" / "results.sqlite")
    assert len(pool[0]) == N_CELLS and pool == ray


def test_a_failing_cell_is_retried_reported_and_does_not_stop_the_grid(tmp_path, monkeypatch):
    study = load_study(str(write_study(tmp_path, eval={**TINY["eval"], "samples": 2})))
    real = runner.evaluate_samples
    attempts = {"n": 0}

    def broken_at_32(model, task, samples, **kwargs):
        if samples.length == 32 and samples.meta["needle_depth"][0] == 50:
            attempts["n"] += 1
            raise RuntimeError("simulated failure at length 32")
        return real(model, task, samples, **kwargs)

    monkeypatch.setattr(runner, "evaluate_samples", broken_at_32)
    out = tmp_path / "out"
    runner.run_study(study, out, quiet(), retries=2)
    with Store(out / "results.sqlite") as store:
        assert len(store.results()) == N_CELLS - 2  # one cell per model failed, every other cell ran
        failures = store.failures()
    assert attempts["n"] == 2 * 3  # each failing cell tried 1 + 2 times
    assert [f["attempts"] for f in failures] == [3, 3]
    assert all("simulated failure at length 32" in f["error"] and "at 32 depth 50" in f["what"] for f in failures)
    assert "simulated failure at length 32" in (out / "run.log").read_text()

    status = CliRunner().invoke(app, ["status", str(out)])
    assert status.exit_code == 0
    assert "16 of 18 stored, 2 failed" in status.output and "simulated failure" in status.output

    monkeypatch.setattr(runner, "evaluate_samples", real)  # fixed: the next run retries only those two
    runner.run_study(study, out, quiet())
    with Store(out / "results.sqlite") as store:
        assert len(store.results()) == N_CELLS and store.failures() == []


def test_a_second_run_on_the_same_directory_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = lock.StudyLock(out).__enter__()
    try:
        assert lock.held_by(out) == os.getpid()
        result = CliRunner().invoke(app, ["run", str(write_study(tmp_path)), "--out", str(out)])
        assert result.exit_code == 2 and "another longarch run" in result.output and str(os.getpid()) in result.output
        assert not (out / "results.sqlite").exists()
    finally:
        holder.__exit__(None, None, None)
    assert lock.held_by(out) is None


class _Payload:
    """Unpickling this would create a file: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickled_checkpoint_is_never_loaded(tmp_path):
    study = load_study(str(write_study(tmp_path, eval={**TINY["eval"], "samples": 2})))
    out = tmp_path / "out"
    runner.run_study(study, out, quiet())
    before = contents(out / "results.sqlite")
    marker = tmp_path / "executed"
    with Store(out / "results.sqlite") as store:
        checkpoint = runner.checkpoint_path(out, store.models()[0].checkpoint)
        with store.db:
            store.db.execute("DELETE FROM results")
    checkpoint.write_bytes(pickle.dumps(_Payload(marker)))
    runner.run_study(study, out, quiet())
    assert not marker.exists()  # never unpickled
    assert contents(out / "results.sqlite") == before  # retrained to the same weights and results
    assert checkpoint.read_bytes()[:8] != pickle.dumps(_Payload(marker))[:8]


def test_plan_counts_what_is_stored_and_what_remains(tmp_path):
    study_path = write_study(tmp_path, eval={**TINY["eval"], "samples": 2})
    out = tmp_path / "out"
    before = CliRunner().invoke(app, ["plan", str(study_path), "--out", str(out)])
    assert before.exit_code == 0, before.output
    assert "│       2 │      0 │      0 │         2 │" in before.output  # models: planned, stored, failed, remaining
    assert "│      18 │      0 │      0 │        18 │" in before.output
    assert "unknown until some of it has run" in before.output
    runner.run_study(load_study(str(study_path)), out, quiet())
    with Store(out / "results.sqlite") as store, store.db:
        store.db.execute("DELETE FROM results WHERE length = 64")
    after = CliRunner().invoke(app, ["plan", str(study_path), "--out", str(out)])
    assert "│      18 │     12 │      0 │         6 │" in after.output
    assert "estimated time" in after.output and "unknown" not in after.output


@pytest.mark.slow
def test_ctrl_c_stops_a_pool_run_at_once_and_keeps_what_is_stored(tmp_path):
    """Ctrl-C reaches the whole process group; the driver stops its workers and exits 130 with
    one line saying how to continue, and the next run finishes the study."""
    study = write_study(tmp_path, train={**TINY["train"], "steps": 2000})
    out = tmp_path / "out"

    def as_in_a_terminal():  # a shell's background job would ignore SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.setsid()

    process = subprocess.Popen(command(study, out, "--workers", "2"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, preexec_fn=as_in_a_terminal)
    log = out / "run.log"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and "models to train" in log.read_text()):
        time.sleep(0.1)
    time.sleep(2)  # the workers are training
    assert process.poll() is None
    os.killpg(process.pid, signal.SIGINT)
    start = time.time()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and time.time() - start < 20
    assert "interrupted; stored cells are kept" in stderr and "Traceback" not in stderr
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert lock.held_by(out) is None  # the lock went with the process
