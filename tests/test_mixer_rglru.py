"""RG-LRU (Griffin recurrent block): the chunked scan against its step-by-step reference, the
module's two paths, feeding in pieces through the state, causality, gradients and the init."""

from __future__ import annotations

import pytest
import torch

from longarch.mixers.rglru import RGLRUConfig, RGLRUMixer, RGLRUState, rglru_chunked, rglru_reference

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


@pytest.mark.parametrize("decay", [2.0, 0.02], ids=["fast-decay", "slow-decay"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("L,chunk", [(37, 1), (37, 5), (37, 8), (37, 37), (37, 64), (130, 16), (130, 7), (1, 4)])
def test_chunked_equals_reference_float64(L, chunk, with_state, decay):
    x, log_a, h0 = _scan_inputs(L, torch.float64, decay)
    initial = h0 if with_state else None
    h_ref, last_ref = rglru_reference(x, log_a, initial)
    h, last = rglru_chunked(x, log_a, chunk, initial)
    assert h.shape == x.shape and last.shape == h0.shape
    torch.testing.assert_close(h, h_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("L,chunk", [(37, 8), (37, 64), (130, 16), (300, 48)])
def test_chunked_equals_reference_float32(L, chunk, with_state):
    x, log_a, h0 = _scan_inputs(L, torch.float32, decay=0.3)
    initial = h0 if with_state else None
    h_ref, last_ref = rglru_reference(x, log_a, initial)
    h, last = rglru_chunked(x, log_a, chunk, initial)
    assert h.dtype == torch.float32
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, last_ref, rtol=1e-4, atol=1e-4)


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


def test_initial_state_continues_a_split_sequence():
    x, log_a, _ = _scan_inputs(40, torch.float64, decay=0.2)
    h_all, s_all = rglru_chunked(x, log_a, 8)
    h1, s1 = rglru_chunked(x[:, :13], log_a[:, :13], 8)
    h2, s2 = rglru_chunked(x[:, 13:], log_a[:, 13:], 8, s1)
    torch.testing.assert_close(torch.cat([h1, h2], 1), h_all, rtol=0, atol=1e-12)
    torch.testing.assert_close(s2, s_all, rtol=0, atol=1e-12)
    h2_fresh, _ = rglru_chunked(x[:, 13:], log_a[:, 13:], 8)
    assert (h2_fresh - h2).abs().max() > 1e-3


# ---------------------------------------------------------------- the module


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("chunk_size", [3, 8, 64])
def test_module_reference_path_equals_chunked_path(dtype, tol, chunk_size):
    mixer = _mixer(dtype=dtype, chunk_size=chunk_size)
    u = torch.randn(2, 29, 16, dtype=dtype)
    v = torch.randn(2, 11, 16, dtype=dtype)
    with torch.no_grad():
        y, state = mixer(u)
        y_ref, state_ref = mixer(u, reference=True)
        torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(state.h, state_ref.h, rtol=tol, atol=tol)
        torch.testing.assert_close(state.conv_tail, state_ref.conv_tail, rtol=0, atol=0)
        z, _ = mixer(v, state)
        z_ref, _ = mixer(v, state_ref, reference=True)
        torch.testing.assert_close(z, z_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("pieces", [[1, 7, 30], [8, 8, 8], [1, 1, 1, 2, 5]], ids=["1-7-30-rest", "8s", "small"])
def test_pieces_equal_whole(pieces, dtype, tol):
    mixer = _mixer(dtype=dtype)
    L = 60
    u = torch.randn(2, L, 16, dtype=dtype)
    sizes = pieces + [L - sum(pieces)]
    with torch.no_grad():
        whole, whole_state = mixer(u)
        outputs, state, start = [], None, 0
        for size in sizes:
            y, state = mixer(u[:, start:start + size], state)
            assert isinstance(state, RGLRUState)
            outputs.append(y)
            start += size
        torch.testing.assert_close(torch.cat(outputs, 1), whole, rtol=tol, atol=tol)
        torch.testing.assert_close(state.h, whole_state.h, rtol=tol, atol=tol)
        fresh, _ = mixer(u[:, L - sizes[-1]:])  # without its state the last piece differs
        assert (fresh - whole[:, L - sizes[-1]:]).abs().max() > 1e-4


def test_is_causal():
    mixer = _mixer()
    u = torch.randn(2, 30, 16, dtype=torch.float64)
    changed = u.clone()
    changed[:, 17:] = torch.randn(2, 13, 16, dtype=torch.float64)
    with torch.no_grad():
        y, _ = mixer(u)
        y_changed, _ = mixer(changed)
    torch.testing.assert_close(y_changed[:, :17], y[:, :17], rtol=0, atol=0)
    assert (y_changed[:, 17:] - y[:, 17:]).abs().max() > 1e-4


def test_every_parameter_gets_a_gradient():
    mixer = _mixer(dtype=torch.float32)
    u = torch.randn(2, 21, 16)
    y, _ = mixer(u)
    (y ** 2).mean().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


@pytest.mark.parametrize("d_model", [4, 5, 16, 33, 128])
def test_any_width_is_valid_and_state_size_is_counted(d_model):
    mixer = _mixer(d_model=d_model, n_heads=4, expand=4 / 3, dtype=torch.float32)
    y, state = mixer(torch.randn(1, 9, d_model))
    assert y.shape == (1, 9, d_model)
    assert abs(mixer.config.d_rnn - 4 / 3 * d_model) < 4
    floats = state.h[0].numel() + state.conv_tail[0].numel()
    assert RGLRUMixer.state_floats(mixer.config, 9) == floats == RGLRUMixer.state_floats(mixer.config, 10 ** 6)


def test_init_puts_the_decay_in_the_published_range():
    mixer = RGLRUMixer(RGLRUConfig(d_model=96))
    a = torch.exp(-torch.nn.functional.softplus(mixer.a_param))  # a_t = a^(c r_t)
    assert a.min() >= 0.9 - 1e-6 and a.max() <= 0.999 + 1e-6
    assert a.max() - a.min() > 0.05  # spread over the range, not one value


def test_long_input_in_pieces_stays_finite_and_bounded_in_float32():
    # 8K tokens in pieces of 1024 with decays pushed to both extremes: h stays on the input's scale.
    mixer = _mixer(d_model=8, dtype=torch.float32, chunk_size=64)
    with torch.no_grad():
        mixer.a_param[: mixer.config.d_rnn // 2] = -12.0  # a ~ 1 - 6e-6: almost no decay
        mixer.a_param[mixer.config.d_rnn // 2:] = 12.0    # a ~ 6e-6: total decay
        state = None
        for _ in range(8):
            y, state = mixer(torch.randn(1, 1024, 8), state)
            assert torch.isfinite(y).all() and torch.isfinite(state.h).all()
        assert state.h.abs().max() < 50
