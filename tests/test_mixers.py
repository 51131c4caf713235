"""Mixers: the fast (chunked) Mamba-2 scan against its step-by-step reference, and, for every
mixer letter, that feeding a sequence in pieces equals feeding it whole and that no output
depends on a later input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from longarch.mixers import MIXERS, make_mixer, option_names
from longarch.mixers.attention import CausalSelfAttention, KVCache
from longarch.mixers.mamba2 import Mamba2Mixer, segment_sum, ssd_chunked, ssd_reference

pytestmark = pytest.mark.usefixtures("one_thread")

LETTERS = sorted(MIXERS)
# Options handed to every mixer (each takes only the fields it has): a small Mamba-2 chunk so
# that a few dozen tokens already cross several chunk boundaries.
OPTIONS = {"n_heads": 2, "d_state": 8, "head_dim": 8, "chunk_size": 8}


def _ssd_inputs(L: int, dtype: torch.dtype, decay: float, seed: int = 0, b: int = 2, H: int = 3, P: int = 4,
                N: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, H, P, generator=g, dtype=torch.float64)  # (b, L, H, P)
    log_a = -decay * torch.rand(b, L, H, generator=g, dtype=torch.float64)  # (b, L, H), <= 0
    B = torch.randn(b, L, N, generator=g, dtype=torch.float64)  # (b, L, N)
    C = torch.randn(b, L, N, generator=g, dtype=torch.float64)  # (b, L, N)
    S0 = torch.randn(b, H, P, N, generator=g, dtype=torch.float64)  # (b, H, P, N)
    return [t.to(dtype) for t in (x, log_a, B, C, S0)]


# ---------------------------------------------------------------- segment_sum


@pytest.mark.parametrize("T", [1, 2, 5, 9])
def test_segment_sum_matches_double_loop(T):
    g = torch.Generator().manual_seed(T)
    a = torch.randn(2, 3, T, generator=g, dtype=torch.float64)
    out = segment_sum(a)
    assert out.shape == (2, 3, T, T)
    for i in range(T):
        for j in range(T):
            if j > i:
                assert torch.all(out[..., i, j] == float("-inf"))
            else:
                expected = a[..., j + 1:i + 1].sum(-1)  # a[j+1] + ... + a[i]; zero on the diagonal
                torch.testing.assert_close(out[..., i, j], expected, rtol=0, atol=1e-12)


def test_segment_sum_keeps_precision_after_a_large_increment():
    # Differencing a cumulative sum would lose the small increments after 1e8 in float32.
    a = torch.tensor([1e8, 0.25, 0.5, 0.125, 1.0], dtype=torch.float32)
    out = segment_sum(a)
    for i in range(1, 5):
        for j in range(1, i + 1):
            assert out[i, j].item() == pytest.approx(float(a[j + 1:i + 1].double().sum()), abs=1e-7)


# ---------------------------------------------------------------- SSD scan: chunked vs reference


@pytest.mark.parametrize("decay", [1.0, 0.05], ids=["fast-decay", "slow-decay"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("L,chunk", [(37, 1), (37, 8), (37, 16), (37, 37), (37, 64), (130, 16), (5, 8)])
def test_ssd_chunked_equals_reference_float64(L, chunk, with_state, decay):
    x, log_a, B, C, S0 = _ssd_inputs(L, torch.float64, decay)
    initial = S0 if with_state else None
    y_ref, state_ref = ssd_reference(x, log_a, B, C, initial)
    y, state = ssd_chunked(x, log_a, B, C, chunk, initial)
    assert y.shape == x.shape and state.shape == S0.shape
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(state, state_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("L,chunk", [(37, 8), (37, 16), (37, 64), (130, 16)])
def test_ssd_chunked_equals_reference_float32(L, chunk, with_state):
    x, log_a, B, C, S0 = _ssd_inputs(L, torch.float32, decay=0.5)
    initial = S0 if with_state else None
    y_ref, state_ref = ssd_reference(x, log_a, B, C, initial)
    y, state = ssd_chunked(x, log_a, B, C, chunk, initial)
    assert y.dtype == torch.float32 and state.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state, state_ref, rtol=1e-4, atol=1e-4)


def test_ssd_initial_state_matters_and_continues_a_split_sequence():
    # Scanning the first part, then the rest from its final state, equals scanning it all:
    # the contract the models' `state` is built on. The state must also change the outputs.
    x, log_a, B, C, _ = _ssd_inputs(40, torch.float64, decay=0.2)
    y_all, s_all = ssd_chunked(x, log_a, B, C, 8)
    y1, s1 = ssd_chunked(x[:, :13], log_a[:, :13], B[:, :13], C[:, :13], 8)
    y2, s2 = ssd_chunked(x[:, 13:], log_a[:, 13:], B[:, 13:], C[:, 13:], 8, s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_all, rtol=0, atol=1e-10)
    torch.testing.assert_close(s2, s_all, rtol=0, atol=1e-10)
    y2_fresh, _ = ssd_chunked(x[:, 13:], log_a[:, 13:], B[:, 13:], C[:, 13:], 8)
    assert (y2_fresh - y2).abs().max() > 1e-3


# ---------------------------------------------------------------- Mamba2Mixer


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("chunk_size", [4, 16, 64])
def test_mamba2_reference_path_equals_chunked_path(dtype, tol, chunk_size):
    torch.manual_seed(0)
    mixer = make_mixer("M", 24, {**OPTIONS, "chunk_size": chunk_size}).to(dtype)
    assert isinstance(mixer, Mamba2Mixer)
    u = torch.randn(2, 29, 24, dtype=dtype)
    with torch.no_grad():
        y, state = mixer(u)
        y_ref, state_ref = mixer(u, reference=True)
        torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(state.ssm, state_ref.ssm, rtol=tol, atol=tol)
        torch.testing.assert_close(state.conv_tail, state_ref.conv_tail, rtol=0, atol=0)
        # and continuing from a state, in both paths
        v = torch.randn(2, 11, 24, dtype=dtype)
        z, _ = mixer(v, state)
        z_ref, _ = mixer(v, state_ref, reference=True)
        torch.testing.assert_close(z, z_ref, rtol=tol, atol=tol)


# ---------------------------------------------------------------- every mixer letter


def _mixer(letter: str, d_model: int = 16) -> torch.nn.Module:
    torch.manual_seed(1)
    return make_mixer(letter, d_model, OPTIONS).double()


@pytest.mark.parametrize("letter", LETTERS)
def test_mixer_shape_and_options(letter):
    config_cls, module_cls, family = MIXERS[letter]
    assert dataclasses.is_dataclass(config_cls) and isinstance(family, str) and family
    assert "d_model" not in option_names(letter)
    mixer = make_mixer(letter, 16, OPTIONS)
    assert isinstance(mixer, module_cls)
    y, state = mixer(torch.randn(3, 10, 16))
    assert y.shape == (3, 10, 16) and state is not None


@pytest.mark.parametrize("pieces", [[1, 7, 30], [8, 8, 8, 14], [1] * 6 + [32]], ids=["1-7-30-rest", "8s", "ones"])
@pytest.mark.parametrize("letter", LETTERS)
def test_mixer_pieces_equal_whole(letter, pieces):
    mixer = _mixer(letter)
    u = torch.randn(2, 38, 16, dtype=torch.float64)
    sizes = pieces[:-1] + [38 - sum(pieces[:-1])]
    with torch.no_grad():
        whole, _ = mixer(u)
        outputs, state, start = [], None, 0
        for size in sizes:
            y, state = mixer(u[:, start:start + size], state)
            outputs.append(y)
            start += size
        torch.testing.assert_close(torch.cat(outputs, 1), whole, rtol=0, atol=1e-10)
        # The test can fail: the last piece without its state is different.
        fresh, _ = mixer(u[:, 38 - sizes[-1]:])
        assert (fresh - whole[:, 38 - sizes[-1]:]).abs().max() > 1e-4


@pytest.mark.parametrize("letter", LETTERS)
def test_mixer_is_causal(letter):
    mixer = _mixer(letter)
    u = torch.randn(2, 30, 16, dtype=torch.float64)
    changed = u.clone()
    changed[:, 17:] = torch.randn(2, 13, 16, dtype=torch.float64)
    with torch.no_grad():
        y, _ = mixer(u)
        y_changed, _ = mixer(changed)
    torch.testing.assert_close(y_changed[:, :17], y[:, :17], rtol=0, atol=1e-12)
    assert (y_changed[:, 17:] - y[:, 17:]).abs().max() > 1e-4


@pytest.mark.parametrize("letter", LETTERS)
def test_mixer_is_causal_when_continuing_from_state(letter):
    mixer = _mixer(letter)
    prefix = torch.randn(1, 9, 16, dtype=torch.float64)
    u = torch.randn(1, 12, 16, dtype=torch.float64)
    changed = u.clone()
    changed[:, 5] += 1.0
    with torch.no_grad():
        _, state = mixer(prefix)
        y, _ = mixer(u, state)
        y_changed, _ = mixer(changed, state)
    torch.testing.assert_close(y_changed[:, :5], y[:, :5], rtol=0, atol=1e-12)
    assert (y_changed[:, 5] - y[:, 5]).abs().max() > 1e-6


# ---------------------------------------------------------------- attention specifics


def test_attention_kv_cache_grows_with_every_token():
    mixer = make_mixer("A", 16, {"n_heads": 2}).double()
    assert isinstance(mixer, CausalSelfAttention)
    u = torch.randn(2, 20, 16, dtype=torch.float64)
    with torch.no_grad():
        whole, cache_whole = mixer(u)
        state, outputs = None, []
        for start, size in [(0, 1), (1, 4), (5, 15)]:
            y, state = mixer(u[:, start:start + size], state)
            assert isinstance(state, KVCache) and state.seen == start + size
            outputs.append(y)
    torch.testing.assert_close(torch.cat(outputs, 1), whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(state.keys, cache_whole.keys, rtol=0, atol=1e-12)
    torch.testing.assert_close(state.values, cache_whole.values, rtol=0, atol=1e-12)
    assert state.keys.shape == (2, 2, 20, mixer.config.head_dim)
    assert CausalSelfAttention.state_floats(mixer.config, 20) == state.keys[0].numel() + state.values[0].numel()


@pytest.mark.parametrize("letter", LETTERS)
def test_mixer_reference_equals_fast_path(letter):
    """Every mixer's sequential reference agrees with its fast path, also from a state."""
    mixer = _mixer(letter)
    u = torch.randn(2, 29, 16, dtype=torch.float64)
    with torch.no_grad():
        y, state = mixer(u[:, :17])
        y_ref, state_ref = mixer(u[:, :17], reference=True)
        z, _ = mixer(u[:, 17:], state)
        z_ref, _ = mixer(u[:, 17:], state_ref, reference=True)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(z, z_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("position", ["rope", "alibi", "nope"])
@pytest.mark.parametrize("letter", ["A", "W"])
def test_attention_variants_pieces_and_reference(letter, position):
    torch.manual_seed(0)
    mixer = make_mixer(letter, 16, {"n_heads": 2, "position": position, "window": 5}).double()
    u = torch.randn(2, 23, 16, dtype=torch.float64)
    with torch.no_grad():
        whole, _ = mixer(u)
        reference, _ = mixer(u, reference=True)
        state, outputs = None, []
        for start, size in [(0, 3), (3, 1), (4, 9), (13, 10)]:
            y, state = mixer(u[:, start:start + size], state)
            outputs.append(y)
    torch.testing.assert_close(whole, reference, rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.cat(outputs, 1), whole, rtol=0, atol=1e-10)
    if letter == "W":  # the window's cache is bounded by the window
        assert state.keys.shape[2] == 4 and state.seen == 23


def test_sliding_window_ignores_tokens_beyond_the_window():
    torch.manual_seed(0)
    mixer = make_mixer("W", 16, {"n_heads": 2, "window": 4}).double()
    u = torch.randn(1, 12, 16, dtype=torch.float64)
    changed = u.clone()
    changed[:, 2] += 1.0  # visible to positions 2..5 only
    with torch.no_grad():
        y, _ = mixer(u)
        y_changed, _ = mixer(changed)
    assert (y_changed[:, 2:6] - y[:, 2:6]).abs().amax() > 1e-6
    torch.testing.assert_close(y_changed[:, 6:], y[:, 6:], rtol=0, atol=1e-12)


def test_alibi_prefers_recent_keys_and_nope_has_no_position():
    """With q = k = 0, ALiBi weighs recent values by its slope; NoPE averages them."""
    torch.manual_seed(0)
    for position in ("alibi", "nope"):
        mixer = make_mixer("A", 8, {"n_heads": 1, "position": position}).double()
        with torch.no_grad():
            mixer.qkv.weight.zero_()
            mixer.qkv.weight[16:24] = torch.eye(8, dtype=torch.float64)  # v = x, q = k = 0
            mixer.out.weight.copy_(torch.eye(8, dtype=torch.float64))
            x = torch.zeros(1, 6, 8, dtype=torch.float64)
            x[0, :, 0] = torch.arange(6, dtype=torch.float64)  # value = position
            y, _ = mixer(x)
        last = y[0, -1, 0].item()
        if position == "nope":
            assert abs(last - 2.5) < 1e-12  # the plain mean of 0..5
        else:  # weights exp(-m (5 - s)) with the single head's slope m = 2^-8
            weights = torch.exp(-(2.0 ** -8) * (5 - torch.arange(6, dtype=torch.float64)))
            expected = (weights * torch.arange(6)).sum() / weights.sum()
            assert last > 2.5 and abs(last - expected.item()) < 1e-12
