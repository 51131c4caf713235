"""`longarch bench`: what it measures is right (FLOPs, peak memory) and the command runs, at tiny sizes.

The speed figures themselves are benchmarks, not tests; they are recorded in the README."""

import json
import re
import statistics
import sys
import types

import pytest
import torch
from typer.testing import CliRunner

from longarch import bench
from longarch.cli import app

runner = CliRunner()


def test_flops_of_a_linear_layer_are_counted():
    layer = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64)
    m = bench.measure("linear", "fwd", 1, 8, lambda: layer(x), repeats=1)
    assert m.flops == 2 * 8 * 64 * 32
    assert m.seconds > 0 and m.tokens_per_s == 8 / m.seconds
    assert m.times == [m.seconds]  # the best of the timed calls, all of them kept


@pytest.mark.parametrize("causal", [False, True])
def test_cpu_attention_flops_are_counted_causal_at_half(causal):
    q = torch.randn(2, 4, 128, 16, requires_grad=True)
    m = bench.measure("sdpa", "fwd+bwd", 128, 2, lambda: torch.nn.functional.scaled_dot_product_attention(
        q, q, q, is_causal=causal).sum().backward(), repeats=1)
    # One (L x d) by (d x L) matmul is 2BHL^2d FLOPs: 2 of them forward, 5 backward (torch's
    # count, which includes recomputing the scores).
    full = 7 * 2 * 2 * 4 * 128 * 128 * 16
    assert m.flops == (full // 2 if causal else full)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is read from /proc")
def test_peak_memory_sees_a_temporary_allocation():
    size = 64 * 2 ** 20  # 64 MiB, allocated, written and freed inside the call

    def call():
        torch.ones(size // 4).sum()

    m = bench.measure("alloc", "fwd", 1, 1, call, repeats=1)
    assert 0.9 * size <= m.peak_bytes <= 1.5 * size


class _HandsAViewOfItsWeightOn(torch.nn.Module):
    """As transformers' hub-kernel layers do (Mamba's causal_conv1d_forward since 5.25): a view of
    a parameter, taken inside the forward, passed as an argument to a submodule."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(8, 8, 4, groups=8)
        self.inner = _Scale()

    def forward(self, x):
        return self.inner(x, self.conv.weight.squeeze(1))


class _Scale(torch.nn.Module):
    def forward(self, x, weight):
        return x * weight.sum()


@pytest.mark.parametrize("mode", bench.MODES)
def test_a_parameter_view_handed_to_a_submodule_is_measured_in_both_modes(mode):
    # Under no_grad alone the view still says requires_grad, and the FLOP counter's module
    # tracker failed on it ("Expected gradient function to be set").
    module, x = _HandsAViewOfItsWeightOn(), torch.randn(2, 8)
    m = bench.measure("view", mode, 1, 2, bench._calls(lambda: module(x), module, mode), repeats=1)
    assert m.error is None and m.seconds > 0
    assert all(p.requires_grad == (mode == "fwd+bwd") for p in module.parameters())


def test_matmul_peak_is_a_rate():
    assert bench.matmul_peak(n=128, repeats=2) > 1e6


def test_parse_lengths():
    assert bench.parse_lengths("1K,4k, 100") == [1024, 4096, 100]
    for bad in ("", "x", "1K,-3", "4M"):
        with pytest.raises(ValueError):
            bench.parse_lengths(bad)


@pytest.mark.parametrize("layer", bench.HF_LAYERS)
def test_layer_pairs_take_and_give_the_same_shapes(layer):
    (ours, our_call), (theirs, their_call) = bench.layer_pair(layer, 32, 24)
    x = torch.randn(2, 24, 32)
    with torch.no_grad():
        assert our_call(x).shape == their_call(x).shape == x.shape
    # Same sizes: the parameter counts differ only by biases and norms the two designs place differently.
    ours_n, theirs_n = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
    assert abs(ours_n - theirs_n) <= 0.1 * theirs_n


def test_bench_command_prints_a_row_per_cell_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "transformer", "mamba2", "--lengths", "32,64", "--batch", "2",
                                 "--d-model", "32", "--repeats", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    cells = {(m["name"], m["mode"], m["length"]) for m in saved["measurements"]}
    assert cells == {(n, mode, L) for n in ("transformer", "mamba2") for mode in bench.MODES for L in (32, 64)}
    assert all(m["flops"] > 0 and m["seconds"] > 0 for m in saved["measurements"])
    assert "matmul peak" in result.output


def test_bench_against_hf_prints_ratios(tmp_path):
    out = tmp_path / "hf.json"
    result = runner.invoke(app, ["bench", "--against", "hf", "--lengths", "16", "--batch", "1",
                                 "--d-model", "32", "--repeats", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    for layer in bench.HF_LAYERS:
        assert layer in result.output
    # both modes by default; a speed-up with its min-max per layer and mode
    assert len(re.findall(r"\d\.\d\dx \(\d+\.\d\d-\d+\.\d\d\)", result.output)) == 2 * len(bench.HF_LAYERS)
    assert "median (min-max) of 2" in " ".join(result.output.split())
    saved = json.loads(out.read_text())["measurements"]
    assert {(m["name"].split(" ")[0], m["mode"]) for m in saved} == {
        (bench.ARCH_LAYERS[n], mode) for n in bench.ARCH_LAYERS for mode in bench.MODES}
    assert all(len(m["times"]) == 2 and m["seconds"] == statistics.median(m["times"]) for m in saved)


def test_the_two_sides_are_timed_alternately(monkeypatch):
    calls = []
    ticks = iter(range(1000))

    def fake_pair(layer, d_model, length):
        module = torch.nn.Linear(4, 4)
        return ((module, lambda x: calls.append("ours") or x),
                (module, lambda x: calls.append("theirs") or x))

    monkeypatch.setattr(bench, "layer_pair", fake_pair)
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    ours, theirs = bench.bench_layer_pair("mamba", 4, 4, 1, "fwd", repeats=3)
    # one first call each (FLOPs, memory), then ours and theirs taking turns
    assert calls == ["ours", "theirs"] + ["ours", "theirs"] * 3
    assert ours.times == theirs.times == [1.0, 1.0, 1.0] and ours.seconds == 1.0
    assert bench.speedups(ours, theirs) == [1.0, 1.0, 1.0]


def test_time_alternately_takes_turns_with_any_clock():
    order, now = [], [0.0]

    def clock():
        now[0] += 1
        return now[0]

    times = bench.time_alternately([lambda: order.append("a"), lambda: order.append("b")], 2, clock=clock)
    assert order == ["a", "b", "a", "b"]
    assert times == [[1.0, 1.0], [1.0, 1.0]]


def test_a_pair_row_is_median_and_min_max():
    ours = bench.Measurement("x (longarch)", "fwd", 100, 2, 2.0, None, 0, times=[1.0, 2.0, 4.0])
    theirs = bench.Measurement("x (transformers)", "fwd", 100, 2, 4.0, None, 0, times=[3.0, 4.0, 4.0])
    row = bench.pair_row("x", "fwd", 100, 2, ours, theirs)
    assert row[:4] == ["x", "fwd", "100", "2"]
    assert row[4] == "100 (50-200)" and row[5] == "50 (50-67)"  # 200 tokens per call
    assert row[6] == "2.00x (1.00-3.00)"  # 3/1, 4/2, 4/4
    assert len(row) == len(bench.columns("hf"))


@pytest.mark.parametrize("args, message", [
    (["bench", "no-such-arch"], "unknown architecture"),
    (["bench", "--lengths", "abc"], "--lengths"),
    (["bench", "--mode", "sideways"], "--mode"),
    (["bench", "--against", "jax"], "--against"),
    (["bench", "s4d", "--against", "hf"], "no matching layer"),
])
def test_bench_bad_input_is_one_line_and_exit_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output.lower() or message in result.output
    assert "Traceback" not in result.output


def test_an_allocation_failure_is_a_row_not_a_crash():
    def call():
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    m = bench.measure("huge", "fwd", 1, 1, call, repeats=1)
    assert m.error == "out of memory" and bench._rate(m) == "n/a"
    with pytest.raises(RuntimeError, match="other"):
        bench.measure("bug", "fwd", 1, 1, lambda: (_ for _ in ()).throw(RuntimeError("other")), repeats=1)
