"""Issue 21: exit statuses a script can trust, and signals taken as Ctrl-C is.

`longarch run` and `longarch eval` exit 0 when every planned cell is stored (skipped cells are
settled), 1 when some failed or were never attempted (one line on stderr names the first error,
after the report is written), 2 for bad input, and 128 + the signal's number when Ctrl-C (130),
SIGTERM (143) or SIGHUP (129) stopped them, with their workers stopped, what is stored kept and
the directory released. summary.json and report.md say what became of the planned cells."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from longarch import cli
from longarch.cli import app
from longarch.controlled import runner
from longarch.pretrained import runner as pretrained_runner
from longarch.study import backends, lock
from test_runner import TINY, write_study

ONE_MODEL = {"models": ["transformer"], "eval": {**TINY["eval"], "samples": 2}}  # 9 cells: 3 lengths x 3 depths


def _run(study: Path, out: Path, *extra: str):
    return CliRunner().invoke(app, ["run", str(study), "--out", str(out), "--workers", "0", *extra])


def _cells(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())["cells"]


def _intact(out: Path) -> None:
    """The store is whole and no run holds the directory."""
    with sqlite3.connect(out / "results.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert lock.held_by(out) is None


def _failing(monkeypatch, module, name: str, error: BaseException) -> None:
    def broken(job):
        raise error
    monkeypatch.setattr(module, name, broken)


# --------------------------------------------------------------------------------------------
# 0 and 1: every planned cell stored or skipped, or not
# --------------------------------------------------------------------------------------------
def test_a_run_whose_every_cell_failed_exits_1_after_writing_its_report(tmp_path, monkeypatch):
    """Both models fail to train (after their retries), so their 18 cells fail with them."""
    _failing(monkeypatch, runner, "train_job", RuntimeError("simulated training failure"))
    out = tmp_path / "out"
    result = _run(write_study(tmp_path), out)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: 18 of 18 cells failed; the first: train transformer seed 0: RuntimeError: simulated training "
        f"failure; longarch status {out} lists them, and running the same command again retries them"]
    assert _cells(out) == {"planned": 18, "stored": 0, "failed": 18, "skipped": 0, "not_attempted": 0}
    report = (out / "report.md").read_text()
    assert "Of 18 planned cells, 0 are stored, 18 failed (see `longarch status`)." in report.split("##")[0]
    _intact(out)


def test_a_failed_cell_exits_1_and_the_run_that_stores_it_exits_0(tmp_path, monkeypatch):
    real = runner.evaluate_samples

    def broken_at_32(model, task, samples, **kwargs):
        if samples.length == 32 and samples.meta["needle_depth"][0] == 50:
            raise RuntimeError("simulated failure at length 32")
        return real(model, task, samples, **kwargs)

    monkeypatch.setattr(runner, "evaluate_samples", broken_at_32)
    study, out = write_study(tmp_path, **ONE_MODEL), tmp_path / "out"
    result = _run(study, out)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: 1 of 9 cells failed; the first: ") and \
        "at 32 depth 50" in result.stderr and "RuntimeError: simulated failure at length 32;" in result.stderr
    assert _cells(out) == {"planned": 9, "stored": 8, "failed": 1, "skipped": 0, "not_attempted": 0}
    assert "Of 9 planned cells, 8 are stored, 1 failed (see `longarch status`)." in (out / "report.md").read_text()

    monkeypatch.setattr(runner, "evaluate_samples", real)  # fixed: the same command stores the last cell
    again = _run(study, out)
    assert again.exit_code == 0, again.output
    assert again.stderr == ""
    assert _cells(out) == {"planned": 9, "stored": 9, "failed": 0, "skipped": 0, "not_attempted": 0}
    assert "planned cells" not in (out / "report.md").read_text()


def test_skipped_cells_are_settled_a_diverged_model_exits_0(tmp_path):
    out = tmp_path / "out"
    result = _run(write_study(tmp_path, models=[{"arch": "transformer", "lr": 1000}]), out)
    assert result.exit_code == 0, result.output
    assert _cells(out) == {"planned": 9, "stored": 0, "failed": 0, "skipped": 9, "not_attempted": 0}
    assert "planned cells" not in (out / "report.md").read_text()


def test_an_interrupted_run_exits_130_and_its_report_counts_the_cells_never_attempted(tmp_path, monkeypatch):
    _failing(monkeypatch, runner, "train_job", KeyboardInterrupt())
    out = tmp_path / "out"
    result = _run(write_study(tmp_path), out)
    assert result.exit_code == 130
    assert result.stderr.startswith("interrupted; stored cells are kept. Run the same command again to continue")
    _intact(out)
    assert not (out / "summary.json").exists()  # a stopped run writes no report: `longarch report` does
    assert CliRunner().invoke(app, ["report", str(out)]).exit_code == 0
    assert _cells(out) == {"planned": 18, "stored": 0, "failed": 0, "skipped": 0, "not_attempted": 18}
    assert "18 were never attempted (the run was interrupted" in (out / "report.md").read_text()


def _eval(tmp_path: Path):
    """`longarch eval` of a checkpoint folder that cannot be loaded (its config is empty): one cell."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    return CliRunner().invoke(app, ["eval", "--model", f"hf:{broken}", "--tasks", "niah_single_1", "--lengths",
                                    "512", "--samples", "2", "--train-length", "256", "--out", str(tmp_path / "out")])


def test_eval_whose_every_cell_failed_exits_1(tmp_path):
    """The pretrained kind: a checkpoint that cannot be loaded fails its cell (no retry)."""
    out = tmp_path / "out"
    result = _eval(tmp_path)
    assert result.exit_code == 1
    line, = result.stderr.splitlines()
    assert line.startswith("error: 1 of 1 cells failed; the first: broken on niah_single_1 at 512: ")
    assert "could not be loaded" in line and line.endswith("running the same command again retries them")
    assert _cells(out) == {"planned": 1, "stored": 0, "failed": 1, "skipped": 0, "not_attempted": 0}


# --------------------------------------------------------------------------------------------
# SIGTERM and SIGHUP, taken as Ctrl-C is
# --------------------------------------------------------------------------------------------
@pytest.fixture
def default_handlers():
    """SIGTERM and SIGHUP at their defaults, as in a terminal (pytest under `nohup` ignores SIGHUP)."""
    previous = {number: signal.signal(number, signal.SIG_DFL) for number in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for number, handler in previous.items():
        signal.signal(number, handler)


@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_raises_stopped_once_and_the_handlers_come_back(number, default_handlers):
    before = signal.getsignal(number)
    with pytest.raises(cli.Stopped) as stopped:
        with cli.stopped_by_signals():
            os.kill(os.getpid(), number)
            time.sleep(5)  # the handler raises in this thread before the sleep ends
    assert stopped.value.signum == number and isinstance(stopped.value, KeyboardInterrupt)
    assert signal.getsignal(number) is before


def test_a_second_signal_does_not_cut_the_clean_up_short(default_handlers):
    cleaned = []
    with pytest.raises(cli.Stopped):
        with cli.stopped_by_signals():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # ignored now
                time.sleep(0.1)
                cleaned.append(True)
    assert cleaned == [True]


def test_an_ignored_signal_stays_ignored(monkeypatch):
    """`nohup longarch run ...`: closing the terminal does not stop the run."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with cli.stopped_by_signals():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.1)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


@pytest.mark.parametrize("number,status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_run_stopped_by_a_signal_exits_128_plus_its_number(tmp_path, monkeypatch, number, status, default_handlers):
    def signalled(job):
        os.kill(os.getpid(), number)
        time.sleep(5)

    monkeypatch.setattr(runner, "train_job", signalled)
    out = tmp_path / "out"
    result = _run(write_study(tmp_path), out)
    assert result.exit_code == status
    assert result.stderr.splitlines() == [f"stopped by {signal.Signals(number).name}; stored cells are kept. "
                                          f"Run the same command again to continue ({out})."]
    _intact(out)
    assert signal.getsignal(number) is signal.SIG_DFL


def test_eval_stopped_by_sigterm_exits_143(tmp_path, monkeypatch, default_handlers):
    def signalled(job):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(pretrained_runner, "text_job", signalled)
    result = _eval(tmp_path)
    assert result.exit_code == 143 and "stopped by SIGTERM; stored cells are kept" in result.stderr
    _intact(tmp_path / "out")


class _FakeRay(types.ModuleType):
    """Enough of `ray` to connect and close; init installs a SIGTERM handler of its own as
    Ray's does (sys.exit(15)), or takes a SIGTERM while it runs."""

    def __init__(self, signalled: bool = False):
        super().__init__("ray")
        self.signalled = signalled

    def is_initialized(self) -> bool:
        return False

    def init(self, address=None, **options) -> None:
        signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(number))
        if self.signalled:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)

    def shutdown(self) -> None:
        pass


def test_ray_init_leaves_the_sigterm_handler_as_it_was(monkeypatch, default_handlers):
    monkeypatch.setitem(sys.modules, "ray", _FakeRay())
    with cli.stopped_by_signals():
        ours = signal.getsignal(signal.SIGTERM)
        backends.RayBackend("auto", threads=1, workers=1).close()
        assert signal.getsignal(signal.SIGTERM) is ours


def test_a_sigterm_inside_ray_init_stops_the_run_as_ours_does(monkeypatch, default_handlers):
    monkeypatch.setitem(sys.modules, "ray", _FakeRay(signalled=True))
    with pytest.raises(cli.Stopped):
        with cli.stopped_by_signals():
            backends.RayBackend("auto", threads=1, workers=1)


# --------------------------------------------------------------------------------------------
# A driver signalled mid-training, with its workers: nothing survives, the store is kept
# --------------------------------------------------------------------------------------------
def _env() -> dict:
    """This environment, with the longarch under test first on the path of a command started here."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(cli.__file__).parents[1]),
                                                                      os.environ.get("PYTHONPATH")]))}


def _signal_the_driver(tmp_path: Path, number: int, *options: str, study: Path) -> tuple[list[str], int, str]:
    """Send `number` to a `longarch run` driver with two workers once both models train
    (test_orphans.signal_the_driver); no process it started may survive. Return the command lines
    of what it had started, its exit status and its stderr."""
    from test_orphans import _training, signal_the_driver  # skips without Ray

    commands, survivors, code, stderr = signal_the_driver(tmp_path, _training, number, *options, study=study)
    assert survivors == []
    return commands, code, stderr


@pytest.mark.slow
@pytest.mark.parametrize("number,status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_pool_driver_signalled_mid_training_stops_its_workers_and_keeps_the_store(tmp_path, number, status):
    pytest.importorskip("ray")  # the process table is read with psutil, which Ray ships
    study = write_study(tmp_path, train={**TINY["train"], "steps": 300})
    commands, code, stderr = _signal_the_driver(tmp_path, number, study=study)
    assert sum("multiprocessing.spawn" in c for c in commands) == 2, commands
    assert code == status, stderr
    assert f"stopped by {signal.Signals(number).name}; stored cells are kept" in stderr and "Traceback" not in stderr
    out = tmp_path / "out"
    _intact(out)
    again = subprocess.run([sys.executable, "-m", "longarch.cli", "run", str(study), "--out", str(out),
                            "--workers", "2"], capture_output=True, text=True, timeout=600,
                           env=_env())
    assert again.returncode == 0, again.stderr[-2000:]
    assert _cells(out) == {"planned": 18, "stored": 18, "failed": 0, "skipped": 0, "not_attempted": 0}


@pytest.mark.slow
def test_a_ray_driver_stopped_by_sigterm_leaves_no_process_of_ray(tmp_path):
    pytest.importorskip("ray")
    study = write_study(tmp_path, train={**TINY["train"], "steps": 1_000_000})
    commands, code, stderr = _signal_the_driver(tmp_path, signal.SIGTERM, "--backend", "ray", study=study)
    assert any("raylet" in c for c in commands) and any("backends.py reap" in c for c in commands), commands
    assert code == 143, stderr
    assert "stopped by SIGTERM; stored cells are kept" in stderr
    _intact(tmp_path / "out")
