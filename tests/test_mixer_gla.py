"""Gated linear attention: the chunked op against its step-by-step reference (including decays
strong enough to overflow a naive factorisation) and the paper's initial decays. The module's
contract (pieces, reference path, causality, gradients, widths) is in test_mixers.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mixer_checks import assert_chunked_equals_reference, assert_split_sequence_continues, chunked_cases

from longarch.mixers.gla import GLAConfig, GLAMixer, gla_chunked, gla_reference

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(L: int, dtype: torch.dtype, gate_scale: float, seed: int = 0, b: int = 2, H: int = 3, K: int = 4,
            V: int = 5, normalizer: float = 16.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, L, H, K, generator=g, dtype=torch.float64)  # (b, L, H, K)
    k = torch.randn(b, L, H, K, generator=g, dtype=torch.float64)  # (b, L, H, K)
    v = torch.randn(b, L, H, V, generator=g, dtype=torch.float64)  # (b, L, H, V)
    S0 = torch.randn(b, H, K, V, generator=g, dtype=torch.float64)  # (b, H, K, V)
    logits = gate_scale * torch.randn(b, L, H, K, generator=g, dtype=torch.float64)
    log_a = F.logsigmoid(logits) / normalizer  # (b, L, H, K), <= 0
    return [t.to(dtype) for t in (q, k, v, log_a, S0)]


# ---------------------------------------------------------------- the op: chunked vs reference

CASES = chunked_cases(float64=[(37, 1), (37, 8), (37, 16), (37, 37), (37, 64), (130, 16), (5, 8)],
                      float32=[(37, 8), (37, 16), (37, 64), (300, 16)])


@pytest.mark.parametrize("gate_scale", [1.0, 30.0], ids=["mild-gates", "extreme-gates"])
@pytest.mark.parametrize("dtype,L,chunk,with_state", CASES)
def test_gla_chunked_equals_reference(dtype, L, chunk, with_state, gate_scale):
    assert_chunked_equals_reference(gla_chunked, gla_reference, _inputs(L, dtype, gate_scale), chunk, with_state,
                                    scale_atol=True)


def test_gla_chunked_is_finite_when_a_chunk_decays_past_float32_range():
    # log-decay -10 per step: a 64-token chunk decays by e^-640, so exp(-cumulative) would be
    # inf in float32 (and in float64). Every exponent the chunked form takes must stay <= 0.
    q, k, v, _, S0 = _inputs(100, torch.float32, 1.0)
    log_a = torch.full_like(q, -10.0)
    log_a[:, ::7] = -1e-3  # some slow steps in between, so that not everything is forgotten
    o, S = gla_chunked(q, k, v, log_a, 64, S0)
    o_ref, S_ref = gla_reference(q, k, v, log_a, S0)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(S, S_ref, rtol=1e-4, atol=1e-4)
    # and the gradients are finite too
    log_a.requires_grad_(True)
    out, _ = gla_chunked(q, k, v, log_a, 64, S0)
    out.sum().backward()
    assert torch.isfinite(log_a.grad).all()


def test_gla_split_sequence_continues_from_the_state():
    assert_split_sequence_continues(gla_chunked, _inputs(40, torch.float64, 1.0))


# ---------------------------------------------------------------- init


@pytest.mark.parametrize("normalizer, expected", [(16.0, 0.5 ** (1 / 16)), (8.0, 0.5 ** (1 / 8))])
def test_initial_decays_follow_the_paper(monkeypatch, normalizer, expected):
    # Zero gate bias and small gate weights: the decays the forward pass hands to the op start
    # near sigmoid(0)^(1/normalizer), 0.958 for the paper's 16.
    import longarch.mixers.gla as gla

    seen = {}

    def capture(q, k, v, log_a, chunk_size, S0):
        seen["log_a"] = log_a
        return gla_chunked(q, k, v, log_a, chunk_size, S0)

    monkeypatch.setattr(gla, "gla_chunked", capture)
    torch.manual_seed(0)
    mixer = GLAMixer(GLAConfig(32, gate_logit_normalizer=normalizer))
    for module in mixer.modules():  # as the LanguageModel initialises Linear weights
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
    with torch.no_grad():
        mixer(torch.randn(1, 50, 32))
    alpha = seen["log_a"].exp()  # (1, 50, H, K)
    assert alpha.shape[:2] == (1, 50)
    assert (alpha - expected).abs().max() < 0.01


def test_the_output_norm_is_float32s_in_float32_and_the_same_function_in_float64():
    """The output norm's eps is float32's epsilon whatever the dtype: a float32 GLA computes
    exactly what it did with PyTorch's default (the dtype's epsilon), and float64 the same function."""
    import torch.nn.functional as F

    from longarch.mixers.gla import GLAConfig, GLAMixer

    norm = GLAMixer(GLAConfig(d_model=16, n_heads=2)).norm
    x = torch.randn(3, 8) * 1e-4  # small outputs, where the eps matters
    assert torch.equal(norm(x), F.rms_norm(x, (8,), norm.weight))  # eps=None: float32's own
    y64 = norm.double()(x.double())
    assert (y64.float() - F.rms_norm(x, (8,), norm.weight.float())).abs().max() < 1e-5
