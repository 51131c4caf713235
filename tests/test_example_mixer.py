"""examples/ema.py, the mixer the README offers as the pattern for a new one, keeps the contract
of mixers/base.py: the same checks every registered mixer passes in test_mixers.py, and its
reference's gradients equal its chunked path's."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from longarch.mixers.base import Mixer, MixerConfig

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ema.py"


@pytest.fixture(scope="module")
def ema():
    spec = importlib.util.spec_from_file_location("example_ema", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _mixer(ema, chunk_size=5):
    torch.manual_seed(0)
    return ema.EMAMixer(ema.EMAConfig(d_model=8, chunk_size=chunk_size)).double()


def test_the_example_is_short_and_keeps_the_written_contract(ema):
    assert len(EXAMPLE.read_text().splitlines()) <= 80
    mixer = _mixer(ema)
    assert isinstance(mixer, Mixer) and isinstance(mixer.config, MixerConfig)
    y, state = mixer(torch.randn(2, 11, 8, dtype=torch.float64))
    assert y.shape == (2, 11, 8) and state.shape == (2, 8)
    assert ema.EMAMixer.state_floats(mixer.config, 10) == ema.EMAMixer.state_floats(mixer.config, 10_000) == 8


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 64])
def test_the_chunked_path_equals_the_reference_values_state_and_gradients(ema, chunk_size):
    mixer = _mixer(ema, chunk_size)
    u = torch.randn(2, 13, 8, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    results = []
    for reference in (False, True):
        y, last = mixer(u, h0, reference=reference)
        grads = torch.autograd.grad((y ** 2).sum() + last.sum(), [u, h0, *mixer.parameters()])
        results.append((y, last, grads))
    (y, last, grads), (y_ref, last_ref, grads_ref) = results
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=0, atol=1e-10)
    for got, want in zip(grads, grads_ref):  # du, dh0, then every parameter's
        torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def test_pieces_equal_the_whole_and_the_state_matters(ema):
    mixer = _mixer(ema)
    u = torch.randn(2, 23, 8, dtype=torch.float64)
    with torch.no_grad():
        whole, last = mixer(u)
        first, state = mixer(u[:, :9])
        rest, state = mixer(u[:, 9:], state)
        fresh, _ = mixer(u[:, 9:])
    torch.testing.assert_close(torch.cat([first, rest], 1), whole, rtol=0, atol=1e-10)
    torch.testing.assert_close(state, last, rtol=0, atol=1e-10)
    assert (fresh - rest).abs().max() > 1e-3


def test_causal_and_batch_independent(ema):
    mixer = _mixer(ema)
    u = torch.randn(3, 17, 8, dtype=torch.float64)
    changed = u.clone()
    changed[:, 11:] += 1.0
    with torch.no_grad():
        y, _ = mixer(u)
        y_changed, _ = mixer(changed)
        alone = torch.cat([mixer(u[i:i + 1])[0] for i in range(3)])
    torch.testing.assert_close(y_changed[:, :11], y[:, :11], rtol=0, atol=0)
    assert (y_changed[:, 11:] - y[:, 11:]).abs().max() > 1e-4
    torch.testing.assert_close(alone, y, rtol=0, atol=1e-10)
