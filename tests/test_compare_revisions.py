"""benchmarks/compare_revisions.py runs two revisions side by side and writes sane JSON, at tiny
sizes (--quick; its figures are benchmarks, not tests: no timing is checked)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "compare_revisions.py"


def _git_repo() -> bool:
    if shutil.which("git") is None:
        return False
    return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "HEAD^{commit}"],
                          capture_output=True).returncode == 0


def _temporary_worktrees() -> set[str]:
    listing = subprocess.run(["git", "-C", str(REPO), "worktree", "list", "--porcelain"],
                             capture_output=True, text=True).stdout
    return {line for line in listing.splitlines() if line.startswith("worktree ") and "compare-revisions-" in line}


@pytest.mark.skipif(not _git_repo(), reason="needs git and this repository's history")
def test_quick_run_against_head_writes_rounds_and_ratios(tmp_path):
    before_worktrees = _temporary_worktrees()
    out, md = tmp_path / "compare.json", tmp_path / "compare.md"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--before", "HEAD", "--only", "long-stream",
                           "--rounds", "2", "--json", str(out), "--markdown", str(md)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert _temporary_worktrees() <= before_worktrees  # its temporary worktree is gone

    results = json.loads(out.read_text())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert results["revisions"]["before"] == {"rev": "HEAD", "commit": head, "dirty": False}
    assert results["revisions"]["after"]["rev"] == "working tree" and results["revisions"]["after"]["commit"] == head
    assert results["machine"]["cpus"] >= 1 and results["machine"]["torch"]
    assert list(results["benchmarks"]) == ["long-stream"]

    bench = results["benchmarks"]["long-stream"]
    assert [(r["side"], r["round"]) for r in bench["runs"]] == [("before", 0), ("after", 0), ("before", 1), ("after", 1)]
    assert all(r["error"] is None and r["returncode"] == 0 and r["output"]["results"] for r in bench["runs"])
    measures = {row["measure"]: row for row in bench["measures"]}
    assert {"mamba2 start tok/s", "mamba2 end tok/s", "mamba2 end/start", "mamba2 peak RSS MiB"} <= set(measures)
    for row in bench["measures"]:
        for side in ("before", "after"):
            s = row[side]
            assert len(s["values"]) == 2 and s["failed"] is None
            assert s["min"] <= s["median"] <= s["max"] and s["median"] > 0
        assert row["ratio"] == pytest.approx(row["after"]["median"] / row["before"]["median"])
    assert "| long-stream | mamba2 start tok/s |" in md.read_text()


def test_a_failed_side_is_reported_and_has_no_ratio():
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_revisions", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    records = [{"side": "before", "values": None, "error": "failed: no such option: --repeats"},
               {"side": "after", "values": {"tok/s": 100.0}, "error": None},
               {"side": "after", "values": {"tok/s": 300.0}, "error": None}]
    (row,) = module.summarize(records)
    assert row["before"]["failed"] == "failed: no such option: --repeats" and row["ratio"] is None
    assert row["after"]["median"] == 200.0 and module.cell(row["after"]) == "200 [100-300]"
    assert module.cell(row["before"]) == "failed: no such option: --repeats"
