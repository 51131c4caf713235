"""DeltaNet and Gated DeltaNet: the chunkwise WY form against the step-by-step recurrence (values,
final states and gradients), the delta rule's meaning, and the mixer contract for both variants
(reference path, pieces through `state`, causality, gradients, state size, any d_model)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longarch.mixers.deltanet import (DeltaNetConfig, DeltaNetMixer, DeltaNetState, GatedDeltaNetConfig,
                                      delta_rule_chunked, delta_rule_reference, l2_normalise)

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = [DeltaNetConfig, GatedDeltaNetConfig]
VARIANT_IDS = ["deltanet", "gated"]


def _op_inputs(L: int, dtype: torch.dtype, gated: bool, decay: float = 0.5, seed: int = 0,
               b: int = 2, H: int = 3, Dk: int = 5, Dv: int = 4):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, L, H, Dk, generator=g, dtype=torch.float64)  # (b, L, H, Dk)
    k = l2_normalise(torch.randn(b, L, H, Dk, generator=g, dtype=torch.float64))  # (b, L, H, Dk)
    v = torch.randn(b, L, H, Dv, generator=g, dtype=torch.float64)  # (b, L, H, Dv)
    beta = torch.rand(b, L, H, generator=g, dtype=torch.float64)  # (b, L, H) in (0, 1)
    log_alpha = -decay * torch.rand(b, L, H, generator=g, dtype=torch.float64)  # (b, L, H) <= 0
    S0 = torch.randn(b, H, Dv, Dk, generator=g, dtype=torch.float64)  # (b, H, Dv, Dk)
    q, k, v, beta, log_alpha, S0 = (t.to(dtype) for t in (q, k, v, beta, log_alpha, S0))
    return q, k, v, beta, (log_alpha if gated else None), S0


# ---------------------------------------------------------------- the op: chunked vs reference


@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("L,chunk", [(37, 1), (37, 8), (37, 16), (37, 37), (37, 64), (130, 16), (5, 8), (64, 16)])
def test_chunked_equals_reference_float64(L, chunk, with_state, gated):
    q, k, v, beta, log_alpha, S0 = _op_inputs(L, torch.float64, gated)
    initial = S0 if with_state else None
    o_ref, S_ref = delta_rule_reference(q, k, v, beta, log_alpha, initial)
    o, S = delta_rule_chunked(q, k, v, beta, log_alpha, chunk, initial)
    assert o.shape == v.shape and S.shape == S0.shape
    torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(S, S_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("L,chunk", [(37, 8), (37, 64), (130, 16), (200, 64)])
def test_chunked_equals_reference_float32(L, chunk, with_state, gated):
    q, k, v, beta, log_alpha, S0 = _op_inputs(L, torch.float32, gated)
    initial = S0 if with_state else None
    o_ref, S_ref = delta_rule_reference(q, k, v, beta, log_alpha, initial)
    o, S = delta_rule_chunked(q, k, v, beta, log_alpha, chunk, initial)
    assert o.dtype == torch.float32 and S.dtype == torch.float32
    torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(S, S_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
def test_chunked_gradients_equal_reference_gradients(gated):
    # The solve's gradient must see only the strictly lower triangle it reads.
    inputs = [t.requires_grad_() for t in _op_inputs(29, torch.float64, gated) if t is not None]
    grads = []
    for chunked in (True, False):
        q, k, v, beta, *rest = inputs
        log_alpha, S0 = (rest[0], rest[1]) if gated else (None, rest[0])
        if chunked:
            o, S = delta_rule_chunked(q, k, v, beta, log_alpha, 8, S0)
        else:
            o, S = delta_rule_reference(q, k, v, beta, log_alpha, S0)
        loss = (o * torch.cos(o)).sum() + S.pow(2).sum()
        grads.append(torch.autograd.grad(loss, inputs))
    for g_chunked, g_ref in zip(*grads):
        assert g_ref.abs().max() > 1e-3
        torch.testing.assert_close(g_chunked, g_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("gated", [False, True], ids=["deltanet", "gated"])
def test_initial_state_continues_a_split_sequence(gated):
    q, k, v, beta, log_alpha, _ = _op_inputs(40, torch.float64, gated, decay=0.2)
    la = (lambda s: log_alpha[:, s]) if gated else (lambda s: None)
    first, rest = slice(0, 13), slice(13, None)
    o_all, S_all = delta_rule_chunked(q, k, v, beta, log_alpha, 8)
    o1, S1 = delta_rule_chunked(q[:, first], k[:, first], v[:, first], beta[:, first], la(first), 8)
    o2, S2 = delta_rule_chunked(q[:, rest], k[:, rest], v[:, rest], beta[:, rest], la(rest), 8, S1)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_all, rtol=0, atol=1e-10)
    torch.testing.assert_close(S2, S_all, rtol=0, atol=1e-10)
    o2_fresh, _ = delta_rule_chunked(q[:, rest], k[:, rest], v[:, rest], beta[:, rest], la(rest), 8)
    assert (o2_fresh - o2).abs().max() > 1e-3


# ---------------------------------------------------------------- what the delta rule means


@pytest.mark.parametrize("chunk", [1, 3, 16])
def test_delta_rule_overwrites_the_value_under_a_key(chunk):
    # With beta = 1 and orthonormal keys, writing v2 under a key that already holds v1 replaces
    # it (linear attention would return v1 + v2), and other keys keep their values.
    H, D = 1, 4
    keys = torch.eye(D, dtype=torch.float64)  # orthonormal
    v = torch.randn(1, 5, H, D, dtype=torch.float64)  # writes: key 0, 1, 2, then key 0 again, key 3
    k = keys[[0, 1, 2, 0, 3]][None, :, None, :]  # (1, 5, 1, D)
    beta = torch.ones(1, 5, H, dtype=torch.float64)
    _, S = delta_rule_chunked(k, k, v, beta, None, chunk)
    torch.testing.assert_close(S[0, 0] @ keys[0], v[0, 3, 0], rtol=0, atol=1e-12)  # overwritten
    for key, write in [(1, 1), (2, 2), (3, 4)]:
        torch.testing.assert_close(S[0, 0] @ keys[key], v[0, write, 0], rtol=0, atol=1e-12)


def test_gated_decay_scales_the_state_when_nothing_is_written():
    q, k, v, beta, log_alpha, S0 = _op_inputs(23, torch.float64, gated=True)
    _, S = delta_rule_chunked(q, k, v, torch.zeros_like(beta), log_alpha, 8, S0)
    expected = S0 * torch.exp(log_alpha.sum(1))[:, :, None, None]  # (b, H, Dv, Dk)
    torch.testing.assert_close(S, expected, rtol=0, atol=1e-12)


def test_float32_stays_finite_and_close_over_long_inputs_in_pieces():
    # Strong and weak decays over 4K tokens in pieces of 1024: no overflow, and fp32 tracks fp64.
    q, k, v, beta, log_alpha, _ = _op_inputs(4096, torch.float64, gated=True, decay=8.0, b=1, H=2)
    log_alpha[:, :, 1] *= 1e-4  # one head nearly without decay
    S64 = S32 = None
    for start in range(0, 4096, 1024):
        s = slice(start, start + 1024)
        o64, S64 = delta_rule_chunked(q[:, s], k[:, s], v[:, s], beta[:, s], log_alpha[:, s], 64, S64)
        o32, S32 = delta_rule_chunked(*(t[:, s].float() for t in (q, k, v, beta, log_alpha)), 64, S32)
        assert torch.isfinite(o32).all()
    torch.testing.assert_close(o32.double(), o64, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(S32.double(), S64, rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- the mixer


def _mixer(config_cls, dtype=torch.float64, d_model: int = 16, **options) -> DeltaNetMixer:
    torch.manual_seed(1)
    options = {"head_dim": 8, "chunk_size": 8, **options}
    return DeltaNetMixer(config_cls(d_model=d_model, **options)).to(dtype)


@pytest.mark.parametrize("config_cls", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("chunk_size", [4, 7, 64])
def test_reference_path_equals_chunked_path(config_cls, dtype, tol, chunk_size):
    mixer = _mixer(config_cls, dtype, d_model=24, chunk_size=chunk_size)
    u = torch.randn(2, 29, 24, dtype=dtype)
    with torch.no_grad():
        y, state = mixer(u)
        y_ref, state_ref = mixer(u, reference=True)
        torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(state.recurrent, state_ref.recurrent, rtol=tol, atol=tol)
        torch.testing.assert_close(state.conv_tail, state_ref.conv_tail, rtol=0, atol=0)
        v = torch.randn(2, 11, 24, dtype=dtype)
        z, _ = mixer(v, state)
        z_ref, _ = mixer(v, state_ref, reference=True)
        torch.testing.assert_close(z, z_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("config_cls", VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("pieces", [[1, 7, 30], [8, 8, 8, 14], [1] * 6 + [32]], ids=["1-7-30-rest", "8s", "ones"])
def test_pieces_equal_whole(config_cls, dtype, tol, pieces):
    mixer = _mixer(config_cls, dtype)
    u = torch.randn(2, 75, 16, dtype=dtype)
    sizes = pieces[:-1] + [75 - sum(pieces[:-1])]
    with torch.no_grad():
        whole, whole_state = mixer(u)
        outputs, state, start = [], None, 0
        for size in sizes:
            y, state = mixer(u[:, start:start + size], state)
            assert isinstance(state, DeltaNetState)
            outputs.append(y)
            start += size
        torch.testing.assert_close(torch.cat(outputs, 1), whole, rtol=tol, atol=tol)
        torch.testing.assert_close(state.recurrent, whole_state.recurrent, rtol=tol, atol=tol)
        fresh, _ = mixer(u[:, 75 - sizes[-1]:])
        assert (fresh - whole[:, 75 - sizes[-1]:]).abs().max() > 1e-4


@pytest.mark.parametrize("config_cls", VARIANTS, ids=VARIANT_IDS)
def test_conv_tail_is_part_of_the_state(config_cls):
    # Same recurrent state, different conv tail: the next outputs must differ.
    mixer = _mixer(config_cls)
    with torch.no_grad():
        _, state = mixer(torch.randn(1, 9, 16, dtype=torch.float64))
        u = torch.randn(1, 3, 16, dtype=torch.float64)
        y, _ = mixer(u, state)
        y_other, _ = mixer(u, DeltaNetState(torch.zeros_like(state.conv_tail), state.recurrent))
    assert (y - y_other).abs().max() > 1e-6


@pytest.mark.parametrize("config_cls", VARIANTS, ids=VARIANT_IDS)
def test_mixer_is_causal(config_cls):
    mixer = _mixer(config_cls)
    prefix = torch.randn(2, 9, 16, dtype=torch.float64)
    u = torch.randn(2, 30, 16, dtype=torch.float64)
    changed = u.clone()
    changed[:, 17:] = torch.randn(2, 13, 16, dtype=torch.float64)
    with torch.no_grad():
        for state in (None, mixer(prefix)[1]):
            y, _ = mixer(u, state)
            y_changed, _ = mixer(changed, state)
            torch.testing.assert_close(y_changed[:, :17], y[:, :17], rtol=0, atol=1e-12)
            assert (y_changed[:, 17:] - y[:, 17:]).abs().max() > 1e-4


@pytest.mark.parametrize("config_cls", VARIANTS, ids=VARIANT_IDS)
def test_every_parameter_gets_a_gradient(config_cls):
    mixer = _mixer(config_cls, torch.float32)
    y, _ = mixer(torch.randn(2, 21, 16))
    (y * torch.randn_like(y)).sum().backward()
    names = {name for name, _ in mixer.named_parameters()}
    assert ({"A_log", "dt_bias"} <= names) == config_cls.gated
    assert ({"A_log", "dt_bias"} & names == set()) == (not config_cls.gated)
    for name, p in mixer.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


@pytest.mark.parametrize("config_cls", VARIANTS, ids=VARIANT_IDS)
def test_gated_initialisation_follows_mamba2(config_cls):
    mixer = DeltaNetMixer(config_cls(d_model=128))
    if not config_cls.gated:
        assert not hasattr(mixer, "A_log")
        return
    dt = F.softplus(mixer.dt_bias.detach())
    A = torch.exp(mixer.A_log.detach())
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 1e-1 + 1e-7
    assert A.min() >= 1 and A.max() <= 16


@pytest.mark.parametrize("config_cls", VARIANTS, ids=VARIANT_IDS)
def test_state_floats_match_the_state(config_cls):
    mixer = _mixer(config_cls, torch.float32, d_model=20)
    _, state = mixer(torch.randn(1, 6, 20))
    floats = state.conv_tail[0].numel() + state.recurrent[0].numel()
    assert DeltaNetMixer.state_floats(mixer.config, 6) == floats == DeltaNetMixer.state_floats(mixer.config, 10 ** 6)


@pytest.mark.parametrize("config_cls", VARIANTS, ids=VARIANT_IDS)
def test_any_d_model_is_valid_and_size_grows_with_it(config_cls):
    counts = []
    for d_model in range(4, 70, 3):
        mixer = DeltaNetMixer(config_cls(d_model=d_model))
        y, _ = mixer(torch.randn(1, 5, d_model))
        assert y.shape == (1, 5, d_model)
        counts.append(sum(p.numel() for p in mixer.parameters()))
    assert counts == sorted(counts)


def test_variants_differ_only_by_their_config_class():
    # `gated` is fixed by the class (and so by the mixer letter), not an option a shared option
    # dict could set.
    import dataclasses
    assert not DeltaNetConfig.gated and GatedDeltaNetConfig.gated
    assert {f.name for f in dataclasses.fields(DeltaNetConfig)} == {f.name for f in dataclasses.fields(GatedDeltaNetConfig)}
    assert "gated" not in {f.name for f in dataclasses.fields(DeltaNetConfig)}
