"""Mamba (selective SSM, S6): the parallel scan and the chunked selective scan against their
step-by-step references, the module's two paths, feeding in pieces through the state, causality,
gradients, the chunk loop and the init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mixer_checks import assert_backward_equals_reference

from longarch.mixers import mamba
from longarch.mixers.mamba import (MambaConfig, MambaMixer, parallel_scan, selective_scan_chunked,
                                   selective_scan_reference)

pytestmark = pytest.mark.usefixtures("one_thread")


def _scan_inputs(L: int, dtype: torch.dtype, dt_scale: float, seed: int = 0, b: int = 2, D: int = 5, N: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, D, generator=g, dtype=torch.float64)  # (b, L, D)
    dt = dt_scale * torch.rand(b, L, D, generator=g, dtype=torch.float64)  # (b, L, D), >= 0
    A = -torch.arange(1, N + 1, dtype=torch.float64).repeat(D, 1) * torch.rand(D, 1, generator=g, dtype=torch.float64)
    B = torch.randn(b, L, N, generator=g, dtype=torch.float64)  # (b, L, N)
    C = torch.randn(b, L, N, generator=g, dtype=torch.float64)  # (b, L, N)
    h0 = torch.randn(b, D, N, generator=g, dtype=torch.float64)  # (b, D, N)
    return [t.to(dtype) for t in (x, dt, A, B, C, h0)]


def _mixer(d_model: int = 16, dtype=torch.float64, **options) -> MambaMixer:
    torch.manual_seed(1)
    options = {"d_state": 8, "chunk_size": 8, **options}
    return MambaMixer(MambaConfig(d_model=d_model, **options)).to(dtype)


# ---------------------------------------------------------------- the scans


@pytest.mark.parametrize("T", [1, 2, 3, 4, 5, 7, 8, 13, 16, 33])
def test_parallel_scan_equals_a_loop(T):
    g = torch.Generator().manual_seed(T)
    a = torch.rand(2, T, 3, generator=g, dtype=torch.float64)  # decays in [0, 1]
    u = torch.randn(2, T, 3, generator=g, dtype=torch.float64)
    h, expected = torch.zeros(2, 3, dtype=torch.float64), []
    for t in range(T):
        h = a[:, t] * h + u[:, t]
        expected.append(h)
    torch.testing.assert_close(parallel_scan(a, u), torch.stack(expected, 1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dt_scale", [2.0, 0.02], ids=["fast-decay", "slow-decay"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("L,chunk", [(37, 1), (37, 5), (37, 8), (37, 37), (37, 64), (130, 16), (130, 7), (1, 4)])
def test_chunked_equals_reference_float64(L, chunk, with_state, dt_scale):
    x, dt, A, B, C, h0 = _scan_inputs(L, torch.float64, dt_scale)
    initial = h0 if with_state else None
    y_ref, last_ref = selective_scan_reference(x, dt, A, B, C, initial)
    y, last = selective_scan_chunked(x, dt, A, B, C, chunk, initial)
    assert y.shape == x.shape and last.shape == h0.shape
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("L,chunk", [(37, 8), (37, 64), (130, 16), (300, 48)])
def test_chunked_equals_reference_float32(L, chunk, with_state):
    x, dt, A, B, C, h0 = _scan_inputs(L, torch.float32, dt_scale=0.3)
    initial = h0 if with_state else None
    y_ref, last_ref = selective_scan_reference(x, dt, A, B, C, initial)
    y, last = selective_scan_chunked(x, dt, A, B, C, chunk, initial)
    assert y.dtype == torch.float32 and last.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, last_ref, rtol=1e-4, atol=1e-4)


def test_scan_is_stable_with_extreme_decays_in_float32():
    # dt * A from -1e-6 (no decay) to -1e5 (total decay) within one chunk: nothing overflows,
    # as it would with exp(-cumulative decay) factored out of a chunk.
    x, _, A, B, C, h0 = _scan_inputs(200, torch.float32, 1.0)
    g = torch.Generator().manual_seed(3)
    dt = torch.exp(torch.empty(2, 200, 5).uniform_(-14, 10, generator=g))  # (b, L, D)
    y_ref, last_ref = selective_scan_reference(x, dt, A, B, C, h0)
    y, last = selective_scan_chunked(x, dt, A, B, C, 64, h0)
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, last_ref, rtol=1e-4, atol=1e-4)


def test_initial_state_continues_a_split_sequence():
    x, dt, A, B, C, _ = _scan_inputs(40, torch.float64, dt_scale=0.2)
    y_all, s_all = selective_scan_chunked(x, dt, A, B, C, 8)
    y1, s1 = selective_scan_chunked(x[:, :13], dt[:, :13], A, B[:, :13], C[:, :13], 8)
    y2, s2 = selective_scan_chunked(x[:, 13:], dt[:, 13:], A, B[:, 13:], C[:, 13:], 8, s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_all, rtol=0, atol=1e-12)
    torch.testing.assert_close(s2, s_all, rtol=0, atol=1e-12)
    y2_fresh, _ = selective_scan_chunked(x[:, 13:], dt[:, 13:], A, B[:, 13:], C[:, 13:], 8)
    assert (y2_fresh - y2).abs().max() > 1e-3


@pytest.mark.parametrize("dt_scale", [2.0, 0.02], ids=["fast-decay", "slow-decay"])
@pytest.mark.parametrize("L,chunk", [(1, 4), (7, 8), (16, 8), (37, 8), (37, 64)])
def test_backward_equals_autograd_through_the_reference(L, chunk, dt_scale):
    # SelectiveScan's chunk-by-chunk backward against autograd through the step loop: dx, d dt,
    # dA, dB, dC and dh0.
    inputs = _scan_inputs(L, torch.float64, dt_scale)
    assert_backward_equals_reference(selective_scan_chunked, selective_scan_reference, inputs, chunk,
                                     "SelectiveScanBackward", gradcheck=L <= 16)


@pytest.mark.parametrize("L,chunk,chunks", [(64, 16, 4), (65, 16, 5), (1000, 64, 16), (5, 64, 1)])
def test_chunked_path_loops_over_chunks_not_time_steps(monkeypatch, L, chunk, chunks):
    calls, depth = [], [0]  # the lengths of the outermost scans; the scan recurses on itself
    real_scan = mamba.parallel_scan

    def counting_scan(a, u):
        if depth[0] == 0:
            calls.append(u.shape[1])
        depth[0] += 1
        try:
            return real_scan(a, u)
        finally:
            depth[0] -= 1

    monkeypatch.setattr(mamba, "parallel_scan", counting_scan)
    x, dt, A, B, C, h0 = _scan_inputs(L, torch.float32, 0.3)
    selective_scan_chunked(x, dt, A, B, C, chunk, h0)
    assert len(calls) == chunks and sum(calls) == L and max(calls) <= chunk


# ---------------------------------------------------------------- the module
# Pieces == whole, causality, reference == fast path and gradients reaching every parameter
# are checked for every mixer letter in tests/test_mixers.py; here only what is Mamba's own.


def test_gradients_of_both_paths_agree():
    grads = []
    for reference in (False, True):
        mixer = _mixer()
        u = torch.randn(2, 21, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        y, state = mixer(u, reference=reference)
        ((y ** 2).mean() + state.ssm.square().mean()).backward()
        grads.append({name: p.grad for name, p in mixer.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("d_model", [4, 5, 16, 33, 128])
def test_any_width_is_valid_and_state_size_is_counted(d_model):
    mixer = _mixer(d_model=d_model, expand=1.5, dtype=torch.float32)
    y, state = mixer(torch.randn(1, 9, d_model))
    assert y.shape == (1, 9, d_model)
    assert mixer.config.d_inner == round(1.5 * d_model) and mixer.config.dt_rank == math.ceil(d_model / 16)
    assert state.ssm.shape == (1, mixer.config.d_inner, 8)
    floats = state.ssm[0].numel() + state.conv_tail[0].numel()
    assert MambaMixer.state_floats(mixer.config, 9) == floats == MambaMixer.state_floats(mixer.config, 10 ** 6)


def test_init_follows_the_paper():
    mixer = MambaMixer(MambaConfig(d_model=96))
    assert mixer.config.d_inner == 192 and mixer.config.dt_rank == 6 and mixer.config.d_state == 16
    A = -torch.exp(mixer.A_log)  # (d_inner, d_state)
    torch.testing.assert_close(A, -torch.arange(1.0, 17.0).repeat(192, 1))  # S4D-real
    dt = F.softplus(mixer.dt_bias)  # dt at zero input
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    log_dt = dt.log()  # log-uniform: spread evenly over [log 1e-3, log 1e-1]
    assert abs(log_dt.mean().item() - math.log(1e-2)) < 0.5 and log_dt.std() > 0.9
    torch.testing.assert_close(mixer.D.detach(), torch.ones(192))


def test_long_input_in_pieces_stays_finite_and_bounded_in_float32():
    # 8K tokens in pieces of 1024 with dt pushed to both extremes: the state stays bounded.
    mixer = _mixer(d_model=8, dtype=torch.float32, chunk_size=64)
    with torch.no_grad():
        half = mixer.config.d_inner // 2
        mixer.dt_bias[:half] = -14.0  # dt ~ 1e-6: almost no decay
        mixer.dt_bias[half:] = 14.0   # dt ~ 14: total decay every step
        state = None
        for _ in range(8):
            y, state = mixer(torch.randn(1, 1024, 8), state)
            assert torch.isfinite(y).all() and torch.isfinite(state.ssm).all()
        assert state.ssm.abs().max() < 50
