"""RWKV-6 time mixing: the chunked WKV against its step-by-step reference, the module's two
paths, feeding in pieces through the state (token shift included), causality, gradients, init."""

from __future__ import annotations

import pytest
import torch

from longarch.mixers.rwkv6 import RWKV6Config, RWKV6Mixer, RWKV6State, wkv6_chunked, wkv6_reference

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


def _mixer(d_model: int = 16, dtype=torch.float64, **options) -> RWKV6Mixer:
    torch.manual_seed(1)
    mixer = RWKV6Mixer(RWKV6Config(d_model=d_model, **{"n_heads": 2, "chunk_size": 8, **options})).to(dtype)
    with torch.no_grad():
        # Move the zero-initialised LoRAs off their no-op start so their paths are exercised.
        for p in (mixer.mix_down, mixer.decay_down):
            p.normal_(0, 0.3)
    return mixer


# ---------------------------------------------------------------- the WKV op


@pytest.mark.parametrize("decay", [2.0, 0.02], ids=["fast-decay", "slow-decay"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("L,chunk", [(37, 1), (37, 5), (37, 8), (37, 37), (37, 64), (70, 16), (1, 4)])
def test_chunked_equals_reference_float64(L, chunk, with_state, decay):
    r, k, v, log_w, u, S0 = _wkv_inputs(L, torch.float64, decay)
    initial = S0 if with_state else None
    o_ref, S_ref = wkv6_reference(r, k, v, log_w, u, initial)
    o, S = wkv6_chunked(r, k, v, log_w, u, chunk, initial)
    assert o.shape == v.shape and S.shape == S0.shape
    torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(S, S_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("L,chunk", [(37, 8), (37, 64), (130, 16), (130, 12)])
def test_chunked_equals_reference_float32(L, chunk, with_state):
    r, k, v, log_w, u, S0 = _wkv_inputs(L, torch.float32, decay=0.3)
    initial = S0 if with_state else None
    o_ref, S_ref = wkv6_reference(r, k, v, log_w, u, initial)
    o, S = wkv6_chunked(r, k, v, log_w, u, chunk, initial)
    assert o.dtype == torch.float32
    torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(S, S_ref, rtol=1e-4, atol=1e-4)


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
    r, k, v, log_w, u, _ = _wkv_inputs(40, torch.float64, decay=0.2)
    o_all, S_all = wkv6_chunked(r, k, v, log_w, u, 8)
    o1, S1 = wkv6_chunked(r[:, :13], k[:, :13], v[:, :13], log_w[:, :13], u, 8)
    o2, S2 = wkv6_chunked(r[:, 13:], k[:, 13:], v[:, 13:], log_w[:, 13:], u, 8, S1)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_all, rtol=0, atol=1e-12)
    torch.testing.assert_close(S2, S_all, rtol=0, atol=1e-12)
    o2_fresh, _ = wkv6_chunked(r[:, 13:], k[:, 13:], v[:, 13:], log_w[:, 13:], u, 8)
    assert (o2_fresh - o2).abs().max() > 1e-3


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
        torch.testing.assert_close(state.wkv, state_ref.wkv, rtol=tol, atol=tol)
        torch.testing.assert_close(state.last_x, state_ref.last_x, rtol=0, atol=0)
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
            assert isinstance(state, RWKV6State)
            outputs.append(y)
            start += size
        torch.testing.assert_close(torch.cat(outputs, 1), whole, rtol=tol, atol=tol)
        torch.testing.assert_close(state.wkv, whole_state.wkv, rtol=tol, atol=tol)
        fresh, _ = mixer(u[:, L - sizes[-1]:])  # without its state the last piece differs
        assert (fresh - whole[:, L - sizes[-1]:]).abs().max() > 1e-4


def test_token_shift_is_carried_in_the_state():
    # Two states that differ only in the previous token give different first outputs.
    mixer = _mixer()
    with torch.no_grad():
        _, state = mixer(torch.randn(1, 5, 16, dtype=torch.float64))
        moved = RWKV6State(state.last_x + 1.0, state.wkv)
        x = torch.randn(1, 1, 16, dtype=torch.float64)
        y_same, _ = mixer(x, state)
        y_moved, _ = mixer(x, moved)
    assert (y_moved - y_same).abs().max() > 1e-6


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
    # From the published init the LoRA up-projections get no gradient on the very first step
    # (their down-projections start at zero), so take one step first, as training would.
    torch.manual_seed(0)
    mixer = RWKV6Mixer(RWKV6Config(d_model=16, n_heads=2, chunk_size=8))
    u = torch.randn(2, 21, 16)
    optimizer = torch.optim.SGD(mixer.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        y, _ = mixer(u)
        (y ** 2).mean().backward()
        optimizer.step()
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


@pytest.mark.parametrize("d_model", [4, 5, 16, 33, 128])
def test_any_width_is_valid_and_state_size_is_counted(d_model):
    mixer = RWKV6Mixer(RWKV6Config(d_model=d_model, n_heads=4))
    y, state = mixer(torch.randn(1, 9, d_model))
    assert y.shape == (1, 9, d_model)
    assert d_model <= mixer.config.d_att < d_model + 4
    floats = state.last_x[0].numel() + state.wkv[0].numel()
    assert RWKV6Mixer.state_floats(mixer.config, 9) == floats == RWKV6Mixer.state_floats(mixer.config, 10 ** 6)


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
