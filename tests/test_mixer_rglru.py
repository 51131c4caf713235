"""RG-LRU (Griffin recurrent block): the chunked scan against its step-by-step reference (extreme
decays included), the published decay range, the recurrent width, and long float32 runs. The
module's contract (pieces, reference path, causality, gradients, state size) is in
test_mixers.py."""

from __future__ import annotations

import pytest
import torch
from mixer_checks import (assert_backward_equals_reference, assert_chunked_equals_reference,
                           assert_split_sequence_continues, chunked_cases)

from longarch.mixers.rglru import RGLRUConfig, RGLRUMixer, rglru_chunked, rglru_reference

pytestmark = pytest.mark.usefixtures("one_thread")


def _scan_inputs(L: int, dtype: torch.dtype, decay: float, seed: int = 0, b: int = 2, D: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, D, generator=g, dtype=torch.float64)  # (b, L, D)
    log_a = -decay * torch.rand(b, L, D, generator=g, dtype=torch.float64)  # (b, L, D), <= 0
    h0 = torch.randn(b, D, generator=g, dtype=torch.float64)  # (b, D)
    return [t.to(dtype) for t in (x, log_a, h0)]


def _mixer(d_model: int = 16, dtype=torch.float64, **options) -> RGLRUMixer:
    torch.manual_seed(1)
    options = {"n_heads": 2, "chunk_size": 8, **options}
    return RGLRUMixer(RGLRUConfig(d_model=d_model, **options)).to(dtype)


# ---------------------------------------------------------------- the scan

CASES = chunked_cases(float64=[(37, 1), (37, 5), (37, 8), (37, 37), (37, 64), (130, 16), (130, 7), (1, 4)],
                      float32=[(37, 8), (37, 64), (130, 16), (300, 48)])


@pytest.mark.parametrize("decay", [2.0, 0.3, 0.02], ids=["fast-decay", "mid-decay", "slow-decay"])
@pytest.mark.parametrize("dtype,L,chunk,with_state", CASES)
def test_chunked_equals_reference(dtype, L, chunk, with_state, decay):
    assert_chunked_equals_reference(rglru_chunked, rglru_reference, _scan_inputs(L, dtype, decay), chunk, with_state)


def test_scan_is_stable_with_extreme_decays_in_float32():
    # Decays from none to total (exp(-1e4)) in one chunk: no inf or nan, and still the reference.
    x, _, h0 = _scan_inputs(200, torch.float32, 1.0)
    g = torch.Generator().manual_seed(3)
    log_a = -torch.exp(torch.empty(2, 200, 5).uniform_(-12, 9, generator=g))  # (b, L, D)
    h_ref, last_ref = rglru_reference(x, log_a, h0)
    h, last = rglru_chunked(x, log_a, 64, h0)
    assert torch.isfinite(h).all()
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, last_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("decay", [2.0, 0.02], ids=["fast-decay", "slow-decay"])
@pytest.mark.parametrize("L,chunk", [(1, 4), (7, 8), (16, 8), (37, 8), (37, 64)])
def test_backward_equals_autograd_through_the_reference(L, chunk, decay):
    # RGLRUScan's reverse scan against autograd through the step loop: dx, d log_a and dh0.
    inputs = _scan_inputs(L, torch.float64, decay)
    assert_backward_equals_reference(rglru_chunked, rglru_reference, inputs, chunk, "RGLRUScanBackward",
                                     gradcheck=L <= 16)


def test_initial_state_continues_a_split_sequence():
    assert_split_sequence_continues(rglru_chunked, _scan_inputs(40, torch.float64, decay=0.2), atol=1e-12)


# ---------------------------------------------------------------- the module's own


@pytest.mark.parametrize("d_model", [4, 5, 16, 33, 128])
def test_recurrent_width_follows_expand(d_model):
    assert abs(RGLRUConfig(d_model=d_model, n_heads=4, expand=4 / 3).d_rnn - 4 / 3 * d_model) < 4


def test_init_puts_the_decay_in_the_published_range():
    mixer = RGLRUMixer(RGLRUConfig(d_model=96))
    a = torch.exp(-torch.nn.functional.softplus(mixer.a_param))  # a_t = a^(c r_t)
    assert a.min() >= 0.9 - 1e-6 and a.max() <= 0.999 + 1e-6
    assert a.max() - a.min() > 0.05  # spread over the range, not one value


def test_long_input_in_pieces_stays_finite_and_bounded_in_float32():
    # 8K tokens in pieces of 1024 with decays pushed to both extremes: h stays on the input's scale.
    torch.manual_seed(1)
    mixer = RGLRUMixer(RGLRUConfig(d_model=8, n_heads=2, chunk_size=64))
    with torch.no_grad():
        mixer.a_param[: mixer.config.d_rnn // 2] = -12.0  # a ~ 1 - 6e-6: almost no decay
        mixer.a_param[mixer.config.d_rnn // 2:] = 12.0    # a ~ 6e-6: total decay
        state = None
        for _ in range(8):
            y, state = mixer(torch.randn(1, 1024, 8), state)
            assert torch.isfinite(y).all() and torch.isfinite(state.h).all()
        assert state.h.abs().max() < 50
