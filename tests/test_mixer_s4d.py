"""S4D (diagonal time-invariant SSM): the chunked Toeplitz-and-state form against the step-by-step
recurrence for complex and real A, the zero-order-hold discretisation, time invariance, the
module's two paths, feeding in pieces through the state, causality, gradients and the inits."""

from __future__ import annotations

import math

import pytest
import torch

from longarch.mixers.s4d import A_INITS, S4DConfig, S4DMixer, s4d_chunked, s4d_reference

pytestmark = pytest.mark.usefixtures("one_thread")


def _mixer(d_model: int = 16, dtype=torch.float64, **options) -> S4DMixer:
    torch.manual_seed(1)
    options = {"d_state": 8, "chunk_size": 8, **options}
    return S4DMixer(S4DConfig(d_model=d_model, **options)).to(dtype)


def _scan_inputs(a_init: str, L: int, dtype: torch.dtype, dt_scale: float, seed: int = 0, b: int = 2):
    """A mixer's discretised SSM with dt scaled by dt_scale, an input and a start state."""
    mixer = _mixer(a_init=a_init, dtype=dtype)
    with torch.no_grad():
        mixer.log_dt += math.log(dt_scale)
        log_dA, dB, C = mixer.discretised()
    g = torch.Generator().manual_seed(seed)
    H, S = mixer.config.d_inner, mixer.config.d_state
    x = torch.randn(b, L, H, generator=g, dtype=torch.float64).to(dtype)  # (b, L, H)
    s0 = torch.randn(b, H, S, generator=g, dtype=torch.float64).to(dtype)  # (b, H, S)
    return x, log_dA, dB, C, s0


# ---------------------------------------------------------------- the SSM


@pytest.mark.parametrize("a_init", A_INITS)
@pytest.mark.parametrize("dt_scale", [30.0, 0.3], ids=["fast-decay", "slow-decay"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("L,chunk", [(37, 1), (37, 5), (37, 8), (37, 37), (37, 64), (130, 16), (1, 4)])
def test_chunked_equals_reference_float64(a_init, L, chunk, with_state, dt_scale):
    x, log_dA, dB, C, s0 = _scan_inputs(a_init, L, torch.float64, dt_scale)
    initial = s0 if with_state else None
    y_ref, last_ref = s4d_reference(x, log_dA, dB, C, initial)
    y, last = s4d_chunked(x, log_dA, dB, C, chunk, initial)
    assert y.shape == x.shape and last.shape == s0.shape and last.dtype == torch.float64
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(last, last_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("a_init", A_INITS)
@pytest.mark.parametrize("L,chunk", [(37, 8), (130, 16), (300, 64)])
def test_chunked_equals_reference_float32(a_init, L, chunk):
    x, log_dA, dB, C, s0 = _scan_inputs(a_init, L, torch.float32, dt_scale=1.0)
    y_ref, last_ref = s4d_reference(x, log_dA, dB, C, s0)
    y, last = s4d_chunked(x, log_dA, dB, C, chunk, s0)
    assert y.dtype == torch.float32 and last.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(last, last_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("a_init", A_INITS)
def test_discretisation_is_the_zero_order_hold(a_init):
    # For x' = a x + b u with u held over a step dt, exp([[a dt, dt], [0, 0]]) = [[dA, dB], [0, 1]].
    mixer = _mixer(a_init=a_init)
    log_dA, dB, _ = mixer.discretised()
    A = -torch.exp(mixer.A_real_log).detach()
    if a_init != "real":
        A = torch.complex(A, mixer.A_imag.detach())
    dt = torch.exp(mixer.log_dt).detach()[:, None].expand_as(A).to(A.dtype)
    system = torch.zeros(*A.shape, 2, 2, dtype=A.dtype)
    system[..., 0, 0], system[..., 0, 1] = A * dt, dt
    exact = torch.linalg.matrix_exp(system)  # (H, M, 2, 2)
    torch.testing.assert_close(torch.exp(log_dA).detach(), exact[..., 0, 0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dB.detach(), exact[..., 0, 1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("a_init", A_INITS)
def test_the_ssm_is_time_invariant(a_init):
    # From a zero state, delaying the input by k steps delays the output by k steps.
    x, log_dA, dB, C, _ = _scan_inputs(a_init, 40, torch.float64, 1.0)
    y, _ = s4d_chunked(x, log_dA, dB, C, 16)
    delayed, _ = s4d_chunked(torch.cat([torch.zeros_like(x[:, :11]), x], 1), log_dA, dB, C, 16)
    torch.testing.assert_close(delayed[:, 11:], y, rtol=0, atol=1e-12)
    assert delayed[:, :11].abs().max() == 0


@pytest.mark.parametrize("a_init", A_INITS)
def test_initial_state_continues_a_split_sequence(a_init):
    x, log_dA, dB, C, _ = _scan_inputs(a_init, 40, torch.float64, 1.0)
    y_all, s_all = s4d_chunked(x, log_dA, dB, C, 8)
    y1, s1 = s4d_chunked(x[:, :13], log_dA, dB, C, 8)
    y2, s2 = s4d_chunked(x[:, 13:], log_dA, dB, C, 8, s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_all, rtol=0, atol=1e-12)
    torch.testing.assert_close(s2, s_all, rtol=0, atol=1e-12)
    y2_fresh, _ = s4d_chunked(x[:, 13:], log_dA, dB, C, 8)
    assert (y2_fresh - y2).abs().max() > 1e-3


# ---------------------------------------------------------------- the module


@pytest.mark.parametrize("a_init", A_INITS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("chunk_size", [3, 8, 64])
def test_module_reference_path_equals_chunked_path(a_init, dtype, tol, chunk_size):
    mixer = _mixer(dtype=dtype, chunk_size=chunk_size, a_init=a_init)
    u = torch.randn(2, 29, 16, dtype=dtype)
    v = torch.randn(2, 11, 16, dtype=dtype)
    with torch.no_grad():
        y, state = mixer(u)
        y_ref, state_ref = mixer(u, reference=True)
        torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(state, state_ref, rtol=tol, atol=tol)
        z, _ = mixer(v, state)
        z_ref, _ = mixer(v, state_ref, reference=True)
        torch.testing.assert_close(z, z_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("a_init", A_INITS)
def test_gradients_of_both_paths_agree(a_init):
    grads = []
    for reference in (False, True):
        mixer = _mixer(a_init=a_init)
        u = torch.randn(2, 21, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        y, state = mixer(u, reference=reference)
        ((y ** 2).mean() + state.square().mean()).backward()
        grads.append({name: p.grad for name, p in mixer.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("a_init", A_INITS)
@pytest.mark.parametrize("pieces", [[1, 7, 30], [8, 8, 8], [1, 1, 1, 2, 5]], ids=["1-7-30-rest", "8s", "small"])
def test_pieces_equal_whole(a_init, pieces):
    mixer = _mixer(a_init=a_init)
    L = 60
    u = torch.randn(2, L, 16, dtype=torch.float64)
    sizes = pieces + [L - sum(pieces)]
    with torch.no_grad():
        whole, whole_state = mixer(u)
        outputs, state, start = [], None, 0
        for size in sizes:
            y, state = mixer(u[:, start:start + size], state)
            outputs.append(y)
            start += size
        torch.testing.assert_close(torch.cat(outputs, 1), whole, rtol=0, atol=1e-10)
        torch.testing.assert_close(state, whole_state, rtol=0, atol=1e-10)
        fresh, _ = mixer(u[:, L - sizes[-1]:])  # without its state the last piece differs
        assert (fresh - whole[:, L - sizes[-1]:]).abs().max() > 1e-4


@pytest.mark.parametrize("a_init", A_INITS)
def test_is_causal(a_init):
    mixer = _mixer(a_init=a_init)
    u = torch.randn(2, 30, 16, dtype=torch.float64)
    changed = u.clone()
    changed[:, 17:] = torch.randn(2, 13, 16, dtype=torch.float64)
    with torch.no_grad():
        y, _ = mixer(u)
        y_changed, _ = mixer(changed)
    torch.testing.assert_close(y_changed[:, :17], y[:, :17], rtol=0, atol=0)
    assert (y_changed[:, 17:] - y[:, 17:]).abs().max() > 1e-4


@pytest.mark.parametrize("a_init", A_INITS)
def test_every_parameter_gets_a_gradient(a_init):
    mixer = _mixer(a_init=a_init, dtype=torch.float32)
    y, _ = mixer(torch.randn(2, 21, 16))
    (y ** 2).mean().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


@pytest.mark.parametrize("a_init", A_INITS)
@pytest.mark.parametrize("d_model", [4, 5, 33])
def test_any_width_is_valid_and_state_is_real_and_counted(a_init, d_model):
    mixer = _mixer(d_model=d_model, expand=1.5, a_init=a_init, dtype=torch.float32)
    y, state = mixer(torch.randn(1, 9, d_model))
    assert y.shape == (1, 9, d_model)
    assert state.shape == (1, round(1.5 * d_model), 8) and state.dtype == torch.float32
    assert S4DMixer.state_floats(mixer.config, 9) == state[0].numel() == S4DMixer.state_floats(mixer.config, 10 ** 6)


def test_inits_follow_the_paper():
    N, m = 16, torch.arange(8.0)
    lin = S4DMixer(S4DConfig(d_model=8, d_state=N, a_init="lin"))
    inv = S4DMixer(S4DConfig(d_model=8, d_state=N, a_init="inv"))
    real = S4DMixer(S4DConfig(d_model=8, d_state=N, a_init="real"))
    for mixer in (lin, inv):  # d_state/2 complex modes with Re A = -1/2
        assert mixer.A_real_log.shape == (16, 8)
        torch.testing.assert_close(-torch.exp(mixer.A_real_log), torch.full((16, 8), -0.5))
    torch.testing.assert_close(lin.A_imag, (math.pi * m).repeat(16, 1))  # S4D-Lin
    torch.testing.assert_close(inv.A_imag, (N / math.pi * (N / (2 * m + 1) - 1)).repeat(16, 1))  # S4D-Inv
    assert not hasattr(real, "A_imag")  # S4D-Real: d_state real modes, A = -(n + 1)
    torch.testing.assert_close(-torch.exp(real.A_real_log), -torch.arange(1.0, 17.0).repeat(16, 1))
    for mixer in (lin, inv, real):
        dt = torch.exp(mixer.log_dt)
        assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)


def test_config_rejects_unknown_init_and_odd_complex_state():
    with pytest.raises(ValueError, match="a_init"):
        S4DConfig(d_model=8, a_init="legs")
    with pytest.raises(ValueError, match="even d_state"):
        S4DConfig(d_model=8, d_state=7)
    assert S4DConfig(d_model=8, d_state=7, a_init="real").n_modes == 7


@pytest.mark.parametrize("a_init", A_INITS)
def test_long_input_in_pieces_stays_finite_and_bounded_in_float32(a_init):
    # 8K tokens in pieces of 1024 with dt pushed to both extremes: the state stays bounded.
    mixer = _mixer(d_model=8, a_init=a_init, dtype=torch.float32, chunk_size=64)
    with torch.no_grad():
        half = mixer.config.d_inner // 2
        mixer.log_dt[:half] = math.log(1e-5)  # almost no decay
        mixer.log_dt[half:] = math.log(30.0)  # total decay every step
        state = None
        for _ in range(8):
            y, state = mixer(torch.randn(1, 1024, 8), state)
            assert torch.isfinite(y).all() and torch.isfinite(state).all()
        assert state.abs().max() < 50
