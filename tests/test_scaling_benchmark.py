"""benchmarks/scaling.py runs and writes sane JSON, at tiny sizes (its speed figures are
benchmarks, not tests)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scaling.py"


@pytest.fixture(scope="module")
def scaling():
    spec = importlib.util.spec_from_file_location("scaling_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scaling_writes_a_row_per_architecture_and_length(scaling, tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "scaling.json"
    try:
        scaling.main(["--lengths", "32,64", "--archs", "sliding-window,mamba2", "--d-model", "16",
                      "--repeats", "1", "--ratio-lengths", "64,32", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    results = json.loads(out.read_text())
    assert results["settings"]["lengths"] == [32, 64] and results["settings"]["threads"] == 1
    assert set(results["architectures"]) == {"sliding-window", "mamba2"}
    for name, rows in results["architectures"].items():
        assert [row["length"] for row in rows] == [32, 64]
        for row in rows:
            assert row["skipped"] is None and row["error"] is None and row["batch"] == 1
            assert row["tokens_per_s"] > 0 and math.isclose(row["tokens_per_s"], row["length"] / row["seconds"])
            assert row["peak_mib"] is None or row["peak_mib"] >= 0
        assert results["ratios"][name] == pytest.approx(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"])


def test_a_length_too_big_for_memory_is_skipped(scaling, monkeypatch):
    monkeypatch.setattr(scaling, "available_bytes", lambda: 2 ** 20)  # 1 MiB free
    rows = scaling.measure_architecture("transformer", [1 << 20], batch=1, d_model=16, repeats=1)
    assert rows[0]["tokens_per_s"] is None and rows[0]["skipped"].startswith("skipped: needs")


def test_memory_is_extrapolated_by_the_measured_growth(scaling):
    assert scaling.estimate_bytes([(1000, 10), (2000, 20)], 8000, floor=1) == 160  # linear: as L^1.5
    assert scaling.estimate_bytes([(1000, 10), (2000, 25)], 8000, floor=1) == 400  # faster: as L^2
    assert scaling.estimate_bytes([(1000, 10)], 2000, floor=1) == 40  # one length: assume quadratic
    assert scaling.estimate_bytes([], 2000, floor=7) == 7


def test_short_lengths_are_timed_over_as_many_tokens(scaling):
    assert scaling.timed_calls(2, 16384) == 2 and scaling.timed_calls(2, 65536) == 2
    assert scaling.timed_calls(2, 1024) == 32 and scaling.timed_calls(2, 64) == scaling.MAX_CALLS


def test_a_chunked_feed_goes_through_the_state_as_the_evaluation_does(scaling, tmp_path, monkeypatch):
    """--chunk N feeds each length N tokens at a time through models.forward_in_chunks (the
    evaluation's path), records N, and is refused for a backward pass."""
    from longarch import bench, models

    fed = []
    real = models.forward_in_chunks

    def spy(model, tokens, chunk, state=None):
        fed.append((tokens.shape[1], chunk))
        return real(model, tokens, chunk, state)

    monkeypatch.setattr(models, "forward_in_chunks", spy)
    threads = torch.get_num_threads()
    out = tmp_path / "chunked.json"
    try:
        scaling.main(["--lengths", "64", "--archs", "sliding-window", "--d-model", "16", "--repeats", "1",
                      "--ratio-lengths", "64,64", "--chunk", "16", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    results = json.loads(out.read_text())
    assert results["settings"]["chunk"] == 16 and fed and set(fed) == {(64, 16)}
    assert results["architectures"]["sliding-window"][0]["tokens_per_s"] > 0
    with pytest.raises(ValueError, match="forward only"):
        bench.bench_architecture("sliding-window", 16, 64, 1, "fwd+bwd", 1, chunk=16)
