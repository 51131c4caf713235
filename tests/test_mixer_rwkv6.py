"""RWKV-6 time mixing: the chunked WKV against its step-by-step reference (extreme decays
included), the published init, the attention width, and long float32 runs. The module's
contract (pieces, token shift carried in the state, reference path, causality, gradients after
a first step, state size) is in test_mixers.py."""

from __future__ import annotations

import pytest
import torch
from mixer_checks import (assert_backward_equals_reference, assert_chunked_equals_reference,
                           assert_split_sequence_continues, chunked_cases)

from longarch.mixers import rwkv6
from longarch.mixers.rwkv6 import RWKV6Config, RWKV6Mixer, wkv6_chunked, wkv6_reference

pytestmark = pytest.mark.usefixtures("one_thread")


def _wkv_inputs(L: int, dtype: torch.dtype, decay: float, seed: int = 0, b: int = 2, H: int = 3, K: int = 4,
                V: int = 5):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(b, L, H, K, generator=g, dtype=torch.float64)  # (b, L, H, K)
    k = torch.randn(b, L, H, K, generator=g, dtype=torch.float64)
    v = torch.randn(b, L, H, V, generator=g, dtype=torch.float64)  # (b, L, H, V)
    log_w = -decay * torch.rand(b, L, H, K, generator=g, dtype=torch.float64)  # (b, L, H, K), <= 0
    u = torch.randn(H, K, generator=g, dtype=torch.float64)  # (H, K)
    S0 = torch.randn(b, H, K, V, generator=g, dtype=torch.float64)  # (b, H, K, V)
    return [t.to(dtype) for t in (r, k, v, log_w, u, S0)]


# ---------------------------------------------------------------- the WKV op

CASES = chunked_cases(float64=[(37, 1), (37, 5), (37, 8), (37, 37), (37, 64), (70, 16), (1, 4)],
                      float32=[(37, 8), (37, 64), (130, 16), (130, 12)])


@pytest.mark.parametrize("decay", [2.0, 0.3, 0.02], ids=["fast-decay", "mid-decay", "slow-decay"])
@pytest.mark.parametrize("dtype,L,chunk,with_state", CASES)
def test_chunked_equals_reference(dtype, L, chunk, with_state, decay):
    assert_chunked_equals_reference(wkv6_chunked, wkv6_reference, _wkv_inputs(L, dtype, decay), chunk, with_state)


def test_chunked_is_stable_with_extreme_decays_in_float32():
    # Per-channel decays from none to exp(-54) (the module's cap) inside one chunk.
    r, k, v, _, u, S0 = _wkv_inputs(100, torch.float32, 1.0)
    g = torch.Generator().manual_seed(3)
    log_w = -torch.exp(torch.empty(r.shape).uniform_(-12, 4, generator=g))  # (b, L, H, K)
    o_ref, S_ref = wkv6_reference(r, k, v, log_w, u, S0)
    o, S = wkv6_chunked(r, k, v, log_w, u, 16, S0)
    assert torch.isfinite(o).all()
    torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(S, S_ref, rtol=1e-4, atol=1e-4)


def test_initial_state_continues_a_split_sequence():
    assert_split_sequence_continues(wkv6_chunked, _wkv_inputs(40, torch.float64, decay=0.2), atol=1e-12,
                                    per_head=(4,))


# ---------------------------------------------------------------- the module's own


@pytest.mark.parametrize("decay", [2.0, 0.02], ids=["fast-decay", "slow-decay"])
@pytest.mark.parametrize("L,chunk", [(1, 4), (7, 8), (16, 8), (37, 8), (37, 64)])
def test_backward_equals_autograd_through_the_reference(L, chunk, decay):
    # WKV6Scan's hand-written backward against autograd through the step loop: dr, dk, dv,
    # d log_w, du and dS0.
    inputs = _wkv_inputs(L, torch.float64, decay)
    assert_backward_equals_reference(wkv6_chunked, wkv6_reference, inputs, chunk, "WKV6ScanBackward",
                                     gradcheck=L <= 16)


def test_chunks_in_several_groups_give_the_same_values_and_gradients(monkeypatch):
    # A budget of one chunk's (chunk, chunk, K) tensors: every group holds one chunk.
    monkeypatch.setattr(rwkv6, "GROUP_ELEMENTS", 1)
    inputs = _wkv_inputs(37, torch.float64, 0.3)
    assert_chunked_equals_reference(wkv6_chunked, wkv6_reference, inputs, 8, with_state=True)
    assert_backward_equals_reference(wkv6_chunked, wkv6_reference, inputs, 8, "WKV6ScanBackward",
                                     gradcheck=False)


@pytest.mark.parametrize("d_model", [4, 5, 16, 33, 128])
def test_attention_width_rounds_up_to_whole_heads(d_model):
    assert d_model <= RWKV6Config(d_model=d_model, n_heads=4).d_att < d_model + 4


def test_init_follows_the_rwkv6_schedule():
    mixer = RWKV6Mixer(RWKV6Config(d_model=64))
    w = torch.exp(-torch.exp(mixer.w0.detach()))  # decay per channel at init (LoRA is a no-op)
    assert w.max().item() == pytest.approx(torch.exp(-torch.exp(torch.tensor(-6.0))).item())
    assert w.min().item() == pytest.approx(torch.exp(-torch.exp(torch.tensor(-1.0))).item())
    assert mixer.mix_down.abs().max() == 0 and mixer.decay_down.abs().max() == 0
    assert (mixer.mu >= -0.3).all() and (mixer.mu <= 1).all() and mixer.u.shape == (4, 16)


def test_long_input_in_pieces_stays_finite_in_float32():
    # 8K tokens in pieces of 1024 with one half of the channels barely decaying, the other
    # decaying completely: outputs and state stay finite.
    mixer = RWKV6Mixer(RWKV6Config(d_model=8, n_heads=2, chunk_size=16))
    with torch.no_grad():
        mixer.w0[: 4] = -12.0
        mixer.w0[4:] = 10.0  # past the cap
        state = None
        for _ in range(8):
            y, state = mixer(torch.randn(1, 1024, 8), state)
            assert torch.isfinite(y).all() and torch.isfinite(state.wkv).all()
