"""Gated linear attention: the chunked op against its step-by-step reference (including decays
strong enough to overflow a naive factorisation), and the mixer's contract (reference path,
pieces through the state, causality, gradients, initial decays)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from longarch.mixers import MIXERS
from longarch.mixers.gla import GLAConfig, GLAMixer, gla_chunked, gla_reference
from longarch.models.lm import LanguageModel, ModelConfig, forward_in_chunks

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


@pytest.mark.parametrize("gate_scale", [1.0, 30.0], ids=["mild-gates", "extreme-gates"])
@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("L,chunk", [(37, 1), (37, 8), (37, 16), (37, 37), (37, 64), (130, 16), (5, 8)])
def test_gla_chunked_equals_reference_float64(L, chunk, with_state, gate_scale):
    q, k, v, log_a, S0 = _inputs(L, torch.float64, gate_scale)
    initial = S0 if with_state else None
    o_ref, S_ref = gla_reference(q, k, v, log_a, initial)
    o, S = gla_chunked(q, k, v, log_a, chunk, initial)
    assert o.shape == v.shape and S.shape == S0.shape
    torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(S, S_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("with_state", [False, True], ids=["zero-state", "initial-state"])
@pytest.mark.parametrize("L,chunk", [(37, 8), (37, 16), (37, 64), (300, 16)])
def test_gla_chunked_equals_reference_float32(L, chunk, with_state):
    q, k, v, log_a, S0 = _inputs(L, torch.float32, 1.0)
    initial = S0 if with_state else None
    o_ref, S_ref = gla_reference(q, k, v, log_a, initial)
    o, S = gla_chunked(q, k, v, log_a, chunk, initial)
    assert o.dtype == torch.float32 and S.dtype == torch.float32
    torch.testing.assert_close(o, o_ref, rtol=1e-4, atol=1e-4 * o_ref.abs().max().item())
    torch.testing.assert_close(S, S_ref, rtol=1e-4, atol=1e-4 * S_ref.abs().max().item())


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
    q, k, v, log_a, _ = _inputs(40, torch.float64, 1.0)
    o_all, S_all = gla_chunked(q, k, v, log_a, 8)
    o1, S1 = gla_chunked(q[:, :13], k[:, :13], v[:, :13], log_a[:, :13], 8)
    o2, S2 = gla_chunked(q[:, 13:], k[:, 13:], v[:, 13:], log_a[:, 13:], 8, S1)
    torch.testing.assert_close(torch.cat([o1, o2], 1), o_all, rtol=0, atol=1e-10)
    torch.testing.assert_close(S2, S_all, rtol=0, atol=1e-10)
    o2_fresh, _ = gla_chunked(q[:, 13:], k[:, 13:], v[:, 13:], log_a[:, 13:], 8)
    assert (o2_fresh - o2).abs().max() > 1e-3


# ---------------------------------------------------------------- GLAMixer


def _mixer(d_model: int = 16, dtype=torch.float64, **options) -> GLAMixer:
    torch.manual_seed(1)
    mixer = GLAMixer(GLAConfig(d_model, **{"n_heads": 2, "chunk_size": 8, **options})).to(dtype)
    with torch.no_grad():  # data-dependent decays that differ visibly between tokens
        mixer.gate_bias.uniform_(-2.0, 4.0)
    return mixer


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
        fresh, _ = mixer(u[:, 80 - sizes[-1]:])  # the last piece without its state differs
        assert (fresh - whole[:, 80 - sizes[-1]:]).abs().max() > 1e-3


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


def test_initial_decays_follow_the_paper():
    # Zero gate bias and a 1/16 power: every decay starts near sigmoid(0)^(1/16) = 0.958.
    torch.manual_seed(0)
    mixer = GLAMixer(GLAConfig(32))
    for module in mixer.modules():  # as the LanguageModel initialises Linear weights
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.02)
    x = torch.randn(1, 50, 32)
    with torch.no_grad():
        logits = mixer.gate_up(mixer.gate_down(x)) + mixer.gate_bias
        alpha = torch.exp(F.logsigmoid(logits) / 16)
    assert alpha.min() > 0.95 and alpha.max() < 0.97
    assert 0.5 ** (1 / 16) == pytest.approx(0.9576, abs=1e-4)


@pytest.mark.parametrize("d_model", [4, 5, 6, 7, 9, 33, 64])
def test_any_width_is_valid_and_state_floats_match_the_state(d_model):
    mixer = _mixer(d_model, torch.float32, n_heads=4)
    y, state = mixer(torch.randn(1, 5, d_model))
    assert y.shape == (1, 5, d_model)
    assert GLAMixer.state_floats(mixer.config, 5) == state.S[0].numel()
    assert GLAMixer.state_floats(mixer.config, 5000) == GLAMixer.state_floats(mixer.config, 5)


def test_parameter_count_grows_smoothly_with_d_model():
    counts = [sum(p.numel() for p in GLAMixer(GLAConfig(d)).parameters()) for d in range(32, 80)]
    assert all(b > a for a, b in zip(counts, counts[1:]))
    assert max(b / a for a, b in zip(counts, counts[1:])) < 1.15


def test_inside_a_language_model_pieces_equal_whole(monkeypatch):
    # Registered under a spare letter for this test only: the model's re-initialisation and
    # option sharing must leave the mixer working and continuable.
    monkeypatch.setitem(MIXERS, "g", (GLAConfig, GLAMixer, "linear-recurrent"))
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(vocab_size=11, d_model=16, pattern="g", n_layers=2,
                                      mixer={"n_heads": 2, "chunk_size": 8})).double()
    tokens = torch.randint(0, 11, (2, 45))
    with torch.no_grad():
        logits, _ = model(tokens)
        last, _ = forward_in_chunks(model, tokens, chunk=10)
    torch.testing.assert_close(last, logits[:, -1], rtol=0, atol=1e-10)
    assert math.isfinite(logits.abs().max().item())
