"""DeltaNet and Gated DeltaNet: the chunkwise WY form against the step-by-step recurrence (values,
final states and gradients), the delta rule's meaning, long float32 runs, the gated variant's
Mamba-2 initialisation, and the two variants' config classes. The module's contract for both
letters (pieces, reference path, causality, gradients, state size, any d_model) is in
test_mixers.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from mixer_checks import assert_chunked_equals_reference, assert_split_sequence_continues, chunked_cases

from longarch.mixers.deltanet import (DeltaNetConfig, DeltaNetMixer, GatedDeltaNetConfig, delta_rule_chunked,
                                      delta_rule_reference, l2_normalise)

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = [DeltaNetConfig, GatedDeltaNetConfig]
VARIANT_IDS = ["deltanet", "gated"]
GATED = pytest.mark.parametrize("gated", [False, True], ids=VARIANT_IDS)


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

CASES = chunked_cases(float64=[(37, 1), (37, 8), (37, 16), (37, 37), (37, 64), (130, 16), (5, 8), (64, 16)],
                      float32=[(37, 8), (37, 64), (130, 16), (200, 64)])


@GATED
@pytest.mark.parametrize("dtype,L,chunk,with_state", CASES)
def test_chunked_equals_reference(dtype, L, chunk, with_state, gated):
    assert_chunked_equals_reference(delta_rule_chunked, delta_rule_reference, _op_inputs(L, dtype, gated), chunk,
                                    with_state)


@GATED
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


@GATED
def test_initial_state_continues_a_split_sequence(gated):
    assert_split_sequence_continues(delta_rule_chunked, _op_inputs(40, torch.float64, gated, decay=0.2))


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


# ---------------------------------------------------------------- the two variants


@pytest.mark.parametrize("config_cls", VARIANTS, ids=VARIANT_IDS)
def test_gated_initialisation_follows_mamba2(config_cls):
    mixer = DeltaNetMixer(config_cls(d_model=128))
    names = {name for name, _ in mixer.named_parameters()}
    if not config_cls.gated:
        assert not hasattr(mixer, "A_log") and not {"A_log", "dt_bias"} & names
        return
    assert {"A_log", "dt_bias"} <= names
    dt = F.softplus(mixer.dt_bias.detach())
    A = torch.exp(mixer.A_log.detach())
    assert dt.min() >= 1e-3 - 1e-7 and dt.max() <= 1e-1 + 1e-7
    assert A.min() >= 1 and A.max() <= 16


def test_variants_differ_only_by_their_config_class():
    # `gated` is fixed by the class (and so by the mixer letter), not an option a shared option
    # dict could set.
    assert not DeltaNetConfig.gated and GatedDeltaNetConfig.gated
    assert {f.name for f in dataclasses.fields(DeltaNetConfig)} == {f.name for f in dataclasses.fields(GatedDeltaNetConfig)}
    assert "gated" not in {f.name for f in dataclasses.fields(DeltaNetConfig)}
