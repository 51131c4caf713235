"""mixers/checks.py catches what it claims: examples/ema.py passes every check, and copies of it
broken one way each (written to tmp_path by replacing a line of its text) fail the check meant
to catch that breakage, with a line that says what is wrong."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from longarch.mixers import checks

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ema.py"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def _run(module, **kwargs) -> dict[str, checks.Outcome]:
    return {o.name: o for o in checks.run(module.EMAConfig, module.EMAMixer, **kwargs)}


def _broken(tmp_path: Path, old: str, new: str):
    """examples/ema.py with `old` (which must occur once) replaced by `new`."""
    text = EXAMPLE.read_text()
    assert text.count(old) == 1, old
    path = tmp_path / "ema_broken.py"
    path.write_text(text.replace(old, new))
    return _load(path, f"ema_broken_{abs(hash((old, new)))}")


def test_the_example_passes_every_check():
    outcomes = checks.run(*(lambda m: (m.EMAConfig, m.EMAMixer))(_load(EXAMPLE, "example_ema_checked")))
    assert [o.name for o in outcomes] == list(checks.CHECKS)
    assert [o for o in outcomes if not o.passed] == []
    for outcome in outcomes:
        assert outcome.detail.startswith("ok: ") and "\n" not in outcome.detail
    details = {o.name: o.detail for o in outcomes}
    assert "chunk sizes 3, 5, 7, 64" in details["paths"]
    if not torch.cuda.is_available():
        assert "cuda not checked" in details["dtype-device"]  # says so rather than claiming it


MASK = "        powers = powers.masked_fill((lags < 0)[..., None], 0.0)  # no output sees a later input\n"
OUTPUT = "return self.out_proj(h * F.silu(gate)), last"

# name -> (old text, new text, {check: phrase of its failure line}, checks that still pass)
BREAKAGES = {
    "chunk-mask-dropped": (MASK, "", {"causal": "when only the input from position 17 on changed",
                                      "paths": "output, fast vs reference, differs by"}, ["batch", "state"]),
    "output-sees-the-next-token": (OUTPUT, "return self.out_proj(h.roll(-1, 1) * F.silu(gate)), last",
                                   {"causal": "it sees the future"}, ["batch", "state"]),
    "state-ignored": ("else state  # (B, D)", "else state * 0  # (B, D)",
                      {"streaming": "the state does not carry the sequence",
                       "state": "state part 'state' does not reach the output"}, ["batch", "dtype-device"]),
    "state-returned-unchanged": (OUTPUT, "return self.out_proj(h * F.silu(gate)), h0",
                                 {"streaming": "is the one passed in, not the state after its last token"}, ["causal"]),
    "reference-wrong-power": ("h = a * h + b[:, t]", "h = a * a * h + b[:, t]",
                              {"paths": "output, fast vs reference, differs by",
                               "gradients": "fast vs reference, differs by"},
                              ["streaming", "state", "causal", "batch", "dtype-device"]),
    "state-floats-lie": ("        return config.d_model\n", "        return 2 * config.d_model\n",
                         {"state": "state_floats(config, 13) = 32, but the state after 13 tokens holds 16"},
                         ["paths", "streaming", "gradients", "causal", "batch", "dtype-device"]),
    "float32-breaks": ("a = torch.sigmoid(self.decay)  # (D,)", "a = torch.sigmoid(self.decay).double()  # (D,)",
                       {"dtype-device": "moved to float32, the mixer fails: RuntimeError"},
                       ["paths", "streaming", "state", "gradients", "causal", "batch"]),
    "no-meta-build": ("torch.linspace(-2.0, 4.0, D)", "torch.tensor(torch.linspace(-2.0, 4.0, D).tolist())",
                      {"dtype-device": "building under torch.device('meta') fails"}, ["paths", "causal"]),
    "constant-output": (OUTPUT, "return self.out_proj.weight.sum() + 0 * u, last",
                        {"causal": "the output does not depend on the input (a constant mixer?)"}, []),
}


@pytest.mark.parametrize("old,new,failing,passing", BREAKAGES.values(), ids=BREAKAGES)
def test_a_broken_mixer_fails_the_check_for_it(tmp_path, old, new, failing, passing):
    outcomes = _run(_broken(tmp_path, old, new))
    for name, phrase in failing.items():
        outcome = outcomes[name]
        assert not outcome.passed, outcome
        assert outcome.detail.startswith(f"{name}: ") and phrase in outcome.detail, outcome.detail
        assert "\n" not in outcome.detail
    for name in passing:
        assert outcomes[name].passed, outcomes[name]


def test_an_unexpected_exception_is_a_failed_outcome_not_a_crash(tmp_path):
    module = _broken(tmp_path, "scan = ema_reference if reference", "scan = ema_missing if reference")
    outcomes = _run(module)
    assert list(outcomes) == list(checks.CHECKS)  # every check ran
    assert outcomes["paths"] == checks.Outcome("paths", False, "NameError: name 'ema_missing' is not defined")
    assert not outcomes["gradients"].passed and outcomes["causal"].passed


def test_a_mixer_that_does_not_build_fails_every_check():
    class Broken:
        def __init__(self, config):
            raise ValueError("no such layer\nsecond line")

    outcomes = checks.run(_load(EXAMPLE, "example_ema_config").EMAConfig, Broken)
    assert {(o.passed, o.detail) for o in outcomes} == {(False, "ValueError: no such layer second line")}


def test_options_the_config_lacks_are_dropped_and_only_picks_checks():
    ema = _load(EXAMPLE, "example_ema_options")
    subject = checks.Subject(ema.EMAConfig, ema.EMAMixer, {"n_heads": 2, "chunk_size": 6}, d_model=8)
    assert subject.config() == ema.EMAConfig(d_model=8, chunk_size=6)
    assert subject.chunk_sizes([3, 6]) == [3, 6]
    outcomes = checks.run(ema.EMAConfig, ema.EMAMixer, {"n_heads": 2}, d_model=8, only=["state", "causal"])
    assert [(o.name, o.passed) for o in outcomes] == [("state", True), ("causal", True)]  # CHECKS' order
    with pytest.raises(ValueError, match="no check named nope"):
        checks.run(ema.EMAConfig, ema.EMAMixer, only=["nope"])


@dataclass
class _GatedConfig:
    d_model: int


class _Gated(nn.Module):
    """A zero-initialised gate: closed until moved off zero."""

    def __init__(self, config: _GatedConfig):
        super().__init__()
        self.config, self.gate = config, nn.Parameter(torch.zeros(config.d_model))


def test_a_built_mixer_is_float64_the_same_each_time_and_its_zeros_moved():
    subject = checks.Subject(_GatedConfig, _Gated)
    with torch.no_grad():
        subject.build().gate.add_(1.0)  # a fresh build shares nothing with an earlier one
    first, second, published = subject.build(), subject.build(), subject.build(published=True)
    assert first.gate.dtype == torch.float64 and torch.equal(first.gate, second.gate)
    assert first.gate.all() and not published.gate.any()


def test_the_gpu_comparison_runs_where_there_is_a_gpu(monkeypatch):
    """Without a GPU the detail says cuda was not checked; with one (here the CPU standing in for
    it, so that the comparison's code runs on every machine) it compares the two devices."""
    ema = _load(EXAMPLE, "example_ema_gpu")
    monkeypatch.setattr(checks, "_gpu", lambda: None)
    assert "cuda not checked: no GPU here" in checks.run(ema.EMAConfig, ema.EMAMixer, only=["dtype-device"])[0].detail
    monkeypatch.setattr(checks, "_gpu", lambda: torch.device("cpu"))
    outcome, = checks.run(ema.EMAConfig, ema.EMAMixer, only=["dtype-device"])
    assert outcome.passed and "on cpu equals the CPU" in outcome.detail, outcome
