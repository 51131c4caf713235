"""The `token-filter` inference intervention (mixers/base.py's TokenFiltered; DeciMamba's idea):
past the training length T, each head of a layer with a data-dependent decay lets only the
ceil(c T / L) tokens of a c-token call with the highest -log a_t write to its state, and every
other token passes through that state with decay 1 and write 0.

Checked here for every mixer that declares it: the identity at L <= T; exactly that many tokens
write per (row, head), and they are the most important ones; a filtered token leaves the state as
it was; the chunked path equals the reference path under the filter. For Mamba-2, the whole
layer under the filter against the recurrence over the kept tokens built by hand; for a language
model, the budget over a prompt fed in chunks and the setting of each layer. Where it applies and
the ids it adds: tests/test_interventions.py (the registry's parametrised tests)."""

from __future__ import annotations

import importlib
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from longarch import models
from longarch.mixers.base import TokenFiltered, keep_mask
from longarch.models import forward_in_chunks

pytestmark = pytest.mark.usefixtures("one_thread")

T = 16
NAME = "token-filter"


def _mamba_importance(dt, mixer):  # dt (b, c, D) -> (b, c, 1): -log a = dt * exp(A_log), over (D, N)
    return (dt[..., None] * torch.exp(mixer.A_log)).mean((-2, -1))[..., None]


def _rglru_heads(log_a, mixer):  # (b, c, D) -> (b, c, H, W): a head is a block of the gates
    return log_a.reshape(*log_a.shape[:2], mixer.config.n_heads, -1)


# (arch, module, reference function, index of its decay argument, the per-head importance
#  (b, c, H) from that argument, whether each (row, token, head) writes from it, the recurrent state's field)
FILTERED = [
    ("mamba", "mamba", "selective_scan_reference", 1, _mamba_importance,
     lambda dt, m: (dt != 0).all(-1, keepdim=True), "ssm"),
    ("mamba2", "mamba2", "ssd_reference", 1, lambda d, m: -d, lambda d, m: d != 0, "ssm"),
    ("gla", "gla", "gla_reference", 3, lambda d, m: -d.mean(-1), lambda d, m: (d != 0).all(-1), "S"),
    ("hawk", "rglru", "rglru_reference", 1, lambda d, m: -_rglru_heads(d, m).mean(-1),
     lambda d, m: (_rglru_heads(d, m) != 0).all(-1), "h"),
    ("rwkv6", "rwkv6", "wkv6_reference", 3, lambda d, m: -d.mean(-1), lambda d, m: (d != 0).all(-1), "wkv"),
    ("gated-deltanet", "deltanet", "delta_rule_reference", 4, lambda d, m: -d, lambda d, m: d != 0, "recurrent"),
]
ARCHS = [case[0] for case in FILTERED]
FIELD = {case[0]: case[-1] for case in FILTERED}


def _layer(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    model = models.LanguageModel(models.config(arch, vocab_size=40, d_model=16, n_layers=1, init="torch"))
    return model.blocks[0].mixer.double()


def _x(length: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, length, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _recurrent(mixer_state, arch: str) -> torch.Tensor:
    return getattr(mixer_state, FIELD[arch])


def _later_first_top(importance: torch.Tensor, n: int) -> torch.Tensor:
    """The expected keep mask (b, c, H), by Python's sort: the n largest per (row, head), ties to
    the later position."""
    b, c, H = importance.shape
    keep = torch.zeros(b, c, H, dtype=torch.bool)
    for r in range(b):
        for h in range(H):
            ranked = sorted(range(c), key=lambda t: (importance[r, t, h].item(), t), reverse=True)
            keep[r, ranked[:n], h] = True
    return keep


# --------------------------------------------------------------------------------------------
# the mask
# --------------------------------------------------------------------------------------------
def test_keep_mask_keeps_the_ceiling_of_the_fraction_and_breaks_ties_to_the_later_token():
    importance = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0, 5.0, 1.0]])[..., None]  # (1, 7, 1)
    assert keep_mask(importance, Fraction(1)) is None
    assert keep_mask(importance, Fraction(13, 14)) is None  # ceil(6.5) = 7: all
    assert keep_mask(importance, Fraction(6, 7))[0, :, 0].tolist() == [1, 0, 1, 1, 1, 1, 1]  # a tie of 1s: the later
    assert keep_mask(importance, Fraction(5, 7))[0, :, 0].tolist() == [1, 0, 1, 1, 0, 1, 1]  # a tie of 1s: the last
    assert keep_mask(importance, Fraction(1, 2))[0, :, 0].tolist() == [1, 0, 1, 1, 0, 1, 0]  # ceil(3.5) = 4
    assert keep_mask(importance, Fraction(1, 3))[0, :, 0].tolist() == [1, 0, 1, 0, 0, 1, 0]  # ceil(7/3) = 3
    assert keep_mask(importance, Fraction(2, 7))[0, :, 0].tolist() == [0, 0, 1, 0, 0, 1, 0]  # a tie of 3s: the later
    assert keep_mask(importance, Fraction(1, 7))[0, :, 0].tolist() == [0, 0, 0, 0, 0, 1, 0]
    ties = keep_mask(torch.ones(2, 10, 3), Fraction(1, 4))  # ceil(2.5) = 3: the last three
    assert ties.dtype == torch.float32 and ties.sum(1).eq(3).all() and ties[:, 7:].eq(1).all()
    assert keep_mask(torch.zeros(1, 1, 2), Fraction(1, 1000)) is None  # one token: always kept


def test_set_context_sets_the_fraction_only_under_token_filter_past_T():
    mixer = _layer("mamba2")
    assert isinstance(mixer, TokenFiltered) and mixer.keep_fraction == 1
    for length in (T // 2, T):
        mixer.set_context(T, length, NAME)
        assert mixer.keep_fraction == 1
    mixer.set_context(T, 3 * T, NAME)
    assert mixer.keep_fraction == Fraction(1, 3) and mixer.decay_factor == 1.0
    mixer.set_context(T, 3 * T, "decay-scale")  # one intervention at a time: the other is off
    assert mixer.keep_fraction == 1 and mixer.decay_factor == pytest.approx(1 / 3)
    mixer.set_context(T, 3 * T, NAME)
    mixer.set_context(T, T)
    assert mixer.keep_fraction == 1 and mixer.decay_factor == 1.0
    with pytest.raises(ValueError, match="lengths must be >= 1"):
        mixer.set_context(T, 0, NAME)


# --------------------------------------------------------------------------------------------
# every mixer that declares it
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_each_declares_every_decay_intervention(arch):
    config = models.config(arch, vocab_size=40)
    assert models.layer_interventions(config) == [("decay-scale", "decay-scale-fit", NAME)] * config.n_layers


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("reference", [False, True])
def test_the_identity_at_or_below_T(arch, reference):
    mixer, prefix, x = _layer(arch), _x(T, seed=2), _x(3 * T)
    _, start = mixer(prefix)  # a state that is not zeros
    plain_y, plain_state = mixer(x, start, reference=reference)
    for length in (T // 2, T):
        mixer.set_context(T, length, NAME)
        y, state = mixer(x, start, reference=reference)
        assert torch.equal(y, plain_y) and torch.equal(_recurrent(state, arch), _recurrent(plain_state, arch))
    mixer.set_context(T, T)


@pytest.mark.parametrize("arch, module, function, index, importance, writes, field", FILTERED)
def test_exactly_the_budget_of_most_important_tokens_write(monkeypatch, arch, module, function, index, importance,
                                                            writes, field):
    """One call of c = 3T tokens at L = 4T: per (row, head), exactly ceil(c T / L) = 12 tokens have
    a decay (the others none: log a = 0, or dt = 0), and they are the 12 of highest importance in
    the unfiltered call, ties to the later token."""
    mixer, x = _layer(arch), _x(3 * T)
    seen = []
    target = importlib.import_module(f"longarch.mixers.{module}")
    original = getattr(target, function)
    monkeypatch.setattr(target, function, lambda *a: seen.append(a[index]) or original(*a))
    mixer(x, reference=True)
    mixer.set_context(T, 4 * T, NAME)
    mixer(x, reference=True)
    mixer.set_context(T, T)
    plain, filtered = seen
    n = math.ceil(3 * T * T / (4 * T))
    kept = writes(filtered, mixer)  # (b, c, H)
    assert kept.shape[1] == 3 * T and kept.sum(1).eq(n).all()
    assert torch.equal(kept, _later_first_top(importance(plain, mixer), n))
    # a kept token's decay is the unfiltered one
    kept_wide = kept.reshape(*kept.shape, *[1] * (plain.dim() - 3))
    if arch == "hawk":
        kept_wide = kept.repeat_interleave(plain.shape[-1] // kept.shape[-1], dim=-1)
    assert torch.equal(torch.where(kept_wide.bool(), plain, 0.0), filtered)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("reference", [False, True])
def test_a_filtered_token_leaves_the_state_as_it_was(arch, reference):
    """From a non-zero state, a call whose mask filters every token leaves the recurrent state
    exactly as it was (decay 1, write 0); one that keeps only its first token leaves the state
    that token alone leaves (a short convolution or token shift is causal, so what follows the
    first token does not change its write)."""
    mixer, prefix, x = _layer(arch), _x(T, seed=2), _x(2 * T)
    _, start = mixer(prefix)
    _, after_first = mixer(x[:, :1], start, reference=reference)

    def forced(positions):
        def mask(importance):  # (b, c, H)
            keep = torch.zeros_like(importance)
            keep[:, positions] = 1.0
            return keep
        return mask

    mixer.token_keep = forced([])
    _, none_kept = mixer(x, start, reference=reference)
    torch.testing.assert_close(_recurrent(none_kept, arch), _recurrent(start, arch), rtol=1e-13, atol=1e-14)
    mixer.token_keep = forced([0])
    _, first_kept = mixer(x, start, reference=reference)
    torch.testing.assert_close(_recurrent(first_kept, arch), _recurrent(after_first, arch), rtol=1e-12, atol=1e-13)
    assert not torch.allclose(_recurrent(first_kept, arch), _recurrent(start, arch))


@pytest.mark.parametrize("reference", [False, True])
def test_rwkv6_outputs_a_filtered_tokens_bonus_and_the_unchanged_state(reference):
    """RWKV-6 reads S_{t-1} plus the token's own bonus r_t diag(u) k_t^T v_t, which is output, not
    state: with every token filtered, each position's output is that of the token fed alone to
    the state the call started from (its token shift seeing the token before it)."""
    from longarch.mixers.rwkv6 import RWKV6State

    mixer, prefix, x = _layer("rwkv6"), _x(T, seed=2), _x(T)
    _, start = mixer(prefix)
    mixer.token_keep = lambda importance: torch.zeros_like(importance)
    y, _ = mixer(x, start, reference=reference)
    del mixer.token_keep  # the class's again
    for t in range(T):
        before = start.last_x if t == 0 else x[:, t - 1]
        alone, _ = mixer(x[:, t:t + 1], RWKV6State(before, start.wkv), reference=reference)
        torch.testing.assert_close(y[:, t:t + 1], alone, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_chunked_path_equals_the_reference_under_the_filter(arch):
    """5T tokens at L = 8T (10 of them write per head), over several chunks, from a non-zero state."""
    mixer, prefix, x = _layer(arch), _x(T, seed=2), _x(5 * T)
    _, start = mixer(prefix)
    plain = mixer(x, start, reference=True)[0]
    mixer.set_context(T, 8 * T, NAME)
    y_ref, s_ref = mixer(x, start, reference=True)
    y, s = mixer(x, start)
    mixer.set_context(T, T)
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(_recurrent(s, arch), _recurrent(s_ref, arch), rtol=1e-9, atol=1e-11)
    assert (y_ref - plain).abs().max() > 1e-3 * plain.abs().max()  # it does filter


# --------------------------------------------------------------------------------------------
# Mamba-2, by hand
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reference", [False, True])
def test_mamba2_under_the_filter_is_the_recurrence_over_the_kept_tokens(reference):
    """The layer's outputs and final state under the filter, against Mamba-2 written out from its
    own projections: per (row, head) the ceil(c T / L) tokens with the largest dt (for one head,
    -log a_t = exp(A_log) dt orders tokens as dt does) update the state, the others leave it as
    it is, and every position still reads the state out (with its D skip)."""
    mixer, u = _layer("mamba2"), _x(3 * T)
    cfg = mixer.config
    b, c, H, P, N, d_inner = 2, 3 * T, cfg.n_heads, cfg.head_dim, cfg.d_state, cfg.d_inner
    n = math.ceil(c * T / (4 * T))
    with torch.no_grad():
        z, xBC, dt = mixer.in_proj(u).split([d_inner, mixer.conv_dim, H], dim=-1)
        x, B, C = F.silu(mixer.conv(xBC)[0]).split([d_inner, N, N], dim=-1)
        x = x.reshape(b, c, H, P)
        dt = F.softplus(dt + mixer.dt_bias)  # (b, c, H)
        A = torch.exp(mixer.A_log)  # (H,): a_t = exp(-A dt_t)
        S = torch.zeros(b, H, P, N, dtype=torch.float64)
        y = torch.zeros(b, c, H, P, dtype=torch.float64)
        for r in range(b):
            for h in range(H):
                kept = set(sorted(range(c), key=lambda t: (dt[r, t, h].item(), t), reverse=True)[:n])
                for t in range(c):
                    if t in kept:
                        write = dt[r, t, h] * torch.outer(x[r, t, h], B[r, t])  # (P, N)
                        S[r, h] = torch.exp(-A[h] * dt[r, t, h]) * S[r, h] + write
                    y[r, t, h] = S[r, h] @ C[r, t] + mixer.D[h] * x[r, t, h]
        expected = mixer.out_proj(mixer.norm(y.reshape(b, c, d_inner) * F.silu(z)))
        unfiltered = mixer(u, reference=reference)[1].ssm
        mixer.set_context(T, 4 * T, NAME)
        out, state = mixer(u, reference=reference)
        mixer.set_context(T, T)
    torch.testing.assert_close(state.ssm, S, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(state.ssm, unfiltered)


# --------------------------------------------------------------------------------------------
# a language model
# --------------------------------------------------------------------------------------------
def test_over_a_prompt_fed_in_chunks_about_T_tokens_write(monkeypatch):
    """A prompt of L = 4T fed T/2 tokens at a time (as the evaluation does): each call keeps
    ceil((T/2) T / L) = 2 tokens per (row, head), so T = 16 over the prompt; an answer symbol fed
    alone always writes."""
    from longarch.mixers import mamba2

    torch.manual_seed(0)
    model = models.LanguageModel(models.config("mamba2", vocab_size=40, d_model=16, n_layers=1)).eval()
    seen = []
    original = mamba2.ssd_chunked
    monkeypatch.setattr(mamba2, "ssd_chunked", lambda *a: seen.append(a[1]) or original(*a))
    tokens = torch.randint(0, 40, (3, 4 * T))
    model.set_context(T, 4 * T, NAME)
    _, state = forward_in_chunks(model, tokens, T // 2)
    with torch.no_grad():
        model(tokens[:, -1:], state)
    model.set_context(T, T)
    writes = [(log_a != 0).sum(1) for log_a in seen]  # (b, H) per call
    assert len(writes) == 9 and all(w.eq(2).all() for w in writes[:8]) and writes[8].eq(1).all()
    assert torch.stack(writes[:8]).sum(0).eq(T).all()


def test_the_model_sets_it_on_its_recurrent_layers_only():
    torch.manual_seed(0)
    model = models.LanguageModel(models.config("mamba2-attn", vocab_size=40, d_model=16)).eval()
    tokens = torch.randint(0, 40, (2, T))
    recurrent = [b.mixer for b in model.blocks if b.kind == "mamba2"]
    attention = model.blocks[2].mixer
    with torch.no_grad():
        plain = model(tokens)[0]
        model.set_context(T, T, NAME)
        assert torch.equal(model(tokens)[0], plain)
        model.set_context(T, 4 * T, NAME)
        assert [m.keep_fraction for m in recurrent] == [Fraction(1, 4)] * 3
        assert {m.decay_factor for m in recurrent} == {1.0}
        assert attention.rope_override is None and attention.window_override is None
        assert not torch.allclose(model(tokens)[0], plain)
        model.set_context(T, 4 * T, "window")
        assert {m.keep_fraction for m in recurrent} == {1}
        model.set_context(T, T)
        assert torch.equal(model(tokens)[0], plain)
