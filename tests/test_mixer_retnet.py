"""RetNet retention: the chunked op against its step-by-step reference, and the mixer's contract
(reference path, pieces through the state, rotation by absolute position, causality, gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from longarch.mixers import MIXERS
from longarch.mixers.retnet import (RetNetConfig, RetNetMixer, RetNetState, log_decays, retention_chunked,
                                    retention_reference)
from longarch.models.lm import LanguageModel, ModelConfig, forward_in_chunks

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(L: int, dtype: torch.dtype, decay_scale: float, seed: int = 0, b: int = 2, H: int = 3, K: int = 4,
            V: int = 5):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, L, H, K, generator=g, dtype=torch.float64)  # (b, L, H, K)
    k = torch.randn(b, L, H, K, generator=g, dtype=torch.float64)  # (b, L, H, K)
    v = torch.randn(b, L, H, V, generator=g, dtype=torch.float64)  # (b, L, H, V)
    S0 = torch.randn(b, H, K, V, generator=g, dtype=torch.float64)  # (b, H, K, V)
    log_gamma = log_decays(H) * decay_scale  # (H,)
    return [t.to(dtype) for t in (q, k, v, S0)] + [log_gamma]


# ---------------------------------------------------------------- the op: chunked vs reference


@pytest.mark.parametrize("decay_scale", [1.0, 100.0], ids=["paper-decay", "fast-decay"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("L,chunk", [(37, 1), (37, 8), (37, 16), (37, 37), (37, 64), (130, 16), (5, 8)])
def test_retention_chunked_equals_reference_float64(L, chunk, with_state, decay_scale):
    q, k, v, S0, log_gamma = _inputs(L, torch.float64, decay_scale)
    initial = S0 if with_state else None
    o_ref, S_ref = retention_reference(q, k, v, log_gamma, initial)
    o, S = retention_chunked(q, k, v, log_gamma, chunk, initial)
    assert o.shape == v.shape and S.shape == S0.shape
    torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(S, S_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("L,chunk", [(37, 8), (37, 16), (37, 64), (300, 64)])
def test_retention_chunked_equals_reference_float32(L, chunk, with_state):
    q, k, v, S0, log_gamma = _inputs(L, torch.float32, 1.0)
    initial = S0 if with_state else None
    o_ref, S_ref = retention_reference(q, k, v, log_gamma, initial)
    o, S = retention_chunked(q, k, v, log_gamma, chunk, initial)
    assert o.dtype == torch.float32 and S.dtype == torch.float32
    # Slow decays sum hundreds of terms: tolerances scale with the size of the values.
    torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4 * o_ref.abs().max().item())
    torch.testing.assert_close(S, S_ref, rtol=1e-4, atol=1e-4 * S_ref.abs().max().item())


def test_retention_split_sequence_continues_from_the_state():
    q, k, v, _, log_gamma = _inputs(40, torch.float64, 10.0)
    o_all, S_all = retention_chunked(q, k, v, log_gamma, 8)
    o1, S1 = retention_chunked(q[:, :13], k[:, :13], v[:, :13], log_gamma, 8)
    o2, S2 = retention_chunked(q[:, 13:], k[:, 13:], v[:, 13:], log_gamma, 8, S1)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_all, rtol=0, atol=1e-10)
    torch.testing.assert_close(S2, S_all, rtol=0, atol=1e-10)
    o2_fresh, _ = retention_chunked(q[:, 13:], k[:, 13:], v[:, 13:], log_gamma, 8)
    assert (o2_fresh - o2).abs().max() > 1e-3


def test_decay_schedule_spreads_the_papers_range_over_the_heads():
    gamma = log_decays(8).exp()
    expected = 1 - 2.0 ** -torch.arange(5, 13, dtype=torch.float64)  # 8 heads: exactly the paper's values
    torch.testing.assert_close(gamma, expected, rtol=0, atol=1e-15)
    assert log_decays(1).exp().item() == pytest.approx(1 - 2 ** -5)
    four = log_decays(4).exp()
    assert four[0].item() == pytest.approx(1 - 2 ** -5) and four[-1].item() == pytest.approx(1 - 2 ** -12)
    assert torch.all(four.diff() > 0)


# ---------------------------------------------------------------- RetNetMixer


def _mixer(d_model: int = 16, dtype=torch.float64, **options) -> RetNetMixer:
    torch.manual_seed(1)
    return RetNetMixer(RetNetConfig(d_model, **{"n_heads": 2, "chunk_size": 8, **options})).to(dtype)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("chunk_size", [4, 16, 64])
def test_mixer_reference_path_equals_chunked_path(dtype, tol, chunk_size):
    mixer = _mixer(24, dtype, chunk_size=chunk_size)
    u = torch.randn(2, 29, 24, dtype=dtype)
    v = torch.randn(2, 11, 24, dtype=dtype)
    with torch.no_grad():
        y, state = mixer(u)
        y_ref, state_ref = mixer(u, reference=True)
        torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(state.S, state_ref.S, rtol=tol, atol=tol)
        assert state.position == state_ref.position == 29
        z, _ = mixer(v, state)
        z_ref, _ = mixer(v, state_ref, reference=True)
        torch.testing.assert_close(z, z_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("pieces", [[1, 7, 30], [8, 8, 8, 14], [1] * 6 + [32]], ids=["1-7-30-rest", "8s", "ones"])
def test_mixer_pieces_equal_whole(pieces, dtype, tol):
    mixer = _mixer(16, dtype)
    u = torch.randn(2, 80, 16, dtype=dtype)
    sizes = pieces + [80 - sum(pieces)]
    with torch.no_grad():
        whole, whole_state = mixer(u)
        outputs, state, start = [], None, 0
        for size in sizes:
            y, state = mixer(u[:, start:start + size], state)
            outputs.append(y)
            start += size
        torch.testing.assert_close(torch.cat(outputs, 1), whole, rtol=tol, atol=tol)
        torch.testing.assert_close(state.S, whole_state.S, rtol=tol, atol=tol)
        assert state.position == 80
        # The test can fail: the last piece without its state, or with the wrong position, differs.
        last = u[:, 80 - sizes[-1]:]
        fresh, _ = mixer(last)
        assert (fresh - whole[:, 80 - sizes[-1]:]).abs().max() > 1e-3
        _, before_last = mixer(u[:, :80 - sizes[-1]])
        misplaced, _ = mixer(last, RetNetState(before_last.S, 0))
        assert (misplaced - whole[:, 80 - sizes[-1]:]).abs().max() > 1e-3


def test_rotation_is_relative_and_precise_at_large_positions():
    # From an empty state only relative positions matter, so starting at 65536 must give the
    # outputs of starting at 0; in float32 this holds only if the angles are computed precisely.
    mixer = _mixer(16, torch.float32)
    u = torch.randn(2, 40, 16)
    with torch.no_grad():
        y0, _ = mixer(u)
        far = RetNetState(torch.zeros(2, 2, mixer.config.head_dim, mixer.config.value_head_dim), 65536)
        y_far, state = mixer(u, far)
    # float32 angles (position * frequency rounded to float32) miss by ~1e-4 here; float64 ones by ~1e-7.
    torch.testing.assert_close(y_far, y0, rtol=1e-5, atol=1e-5)
    assert state.position == 65536 + 40


def test_mixer_is_causal():
    mixer = _mixer()
    u = torch.randn(2, 30, 16, dtype=torch.float64)
    changed = u.clone()
    changed[:, 17:] = torch.randn(2, 13, 16, dtype=torch.float64)
    with torch.no_grad():
        y, _ = mixer(u)
        y_changed, _ = mixer(changed)
    torch.testing.assert_close(y_changed[:, :17], y[:, :17], rtol=0, atol=1e-12)
    assert (y_changed[:, 17:] - y[:, 17:]).abs().max() > 1e-4


def test_every_parameter_gets_a_gradient():
    mixer = _mixer(16, torch.float64)
    u = torch.randn(2, 21, 16, dtype=torch.float64)
    y, _ = mixer(u)
    (y * torch.randn_like(y)).sum().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


@pytest.mark.parametrize("d_model", [4, 5, 6, 7, 9, 33, 64])
def test_any_width_is_valid_and_state_floats_match_the_state(d_model):
    mixer = _mixer(d_model, torch.float32, n_heads=4)
    y, state = mixer(torch.randn(1, 5, d_model))
    assert y.shape == (1, 5, d_model)
    assert RetNetMixer.state_floats(mixer.config, 5) == state.S[0].numel()
    assert RetNetMixer.state_floats(mixer.config, 5000) == RetNetMixer.state_floats(mixer.config, 5)


def test_parameter_count_grows_smoothly_with_d_model():
    counts = [sum(p.numel() for p in RetNetMixer(RetNetConfig(d)).parameters()) for d in range(32, 80)]
    assert all(b > a for a, b in zip(counts, counts[1:]))
    assert max(b / a for a, b in zip(counts, counts[1:])) < 1.15


def test_inside_a_language_model_pieces_equal_whole(monkeypatch):
    # Registered under a spare letter for this test only: the model's re-initialisation and
    # option sharing must leave the mixer working and continuable.
    monkeypatch.setitem(MIXERS, "r", (RetNetConfig, RetNetMixer, "linear-recurrent"))
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=11, d_model=16, pattern="r", n_layers=2,
                                      mixer={"n_heads": 2, "chunk_size": 8})).double()
    tokens = torch.randint(0, 11, (2, 45))
    with torch.no_grad():
        logits, _ = model(tokens)
        last, _ = forward_in_chunks(model, tokens, chunk=10)
    torch.testing.assert_close(last, logits[:, -1], rtol=0, atol=1e-10)
    assert math.isfinite(logits.abs().max().item())
