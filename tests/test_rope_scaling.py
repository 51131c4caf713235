"""RoPE scaling for extrapolation (PI, NTK-aware, YaRN): frequencies and temperature as in
`transformers`, plain RoPE at s = 1, every path equal at s > 1, and the factor set per
evaluated length by `LanguageModel.set_context` and `evaluate.predict`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from longarch import models
from longarch.controlled.evaluate import predict
from longarch.mixers import make_mixer
from longarch.mixers.attention import AttentionConfig, CausalSelfAttention, rope_frequencies, rope_tables

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ["pi", "ntk", "yarn"]
T = 16  # training length of the small models below


def _hf_frequencies(method: str, head_dim: int, base: float, factor: float, original: int
                    ) -> tuple[torch.Tensor, float]:
    """transformers' inverse frequencies and attention factor for the same setting."""
    if method == "ntk":
        # transformers has no static NTK-aware rope type; its "dynamic" one computes, at the
        # current length L, base * (f L / T - (f - 1))^(d / (d - 2)) and updates it as L grows.
        # With f = 1 that is base * (L / T)^(d / (d - 2)): static NTK-aware with s = L / T, which
        # is what set_context sets, once for the whole sequence. (With f > 1 it is NTK-aware with
        # s = 1 + f (L / T - 1), so not the same s.)
        rope_type, params, seq_len = "dynamic", {"factor": 1.0}, round(factor * original)
    elif method == "pi":
        rope_type, params, seq_len = "linear", {"factor": factor}, None
    else:
        rope_type, params, seq_len = "yarn", {"factor": factor, "original_max_position_embeddings": original}, None
    config = PreTrainedConfig(hidden_size=head_dim, num_attention_heads=1, head_dim=head_dim,
                              max_position_embeddings=original,
                              rope_parameters={"rope_type": rope_type, "rope_theta": base, **params})
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)
    return inv_freq.double(), attention_factor


def _mixer(letter: str = "A", d_model: int = 32, n_heads: int = 2, **options) -> CausalSelfAttention:
    """A float64 attention mixer with weights large enough that attention is far from uniform,
    so that a change of frequencies shows in the outputs."""
    torch.manual_seed(0)
    mixer = make_mixer(letter, d_model, {"n_heads": n_heads, "window": 5, **options}).double()
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_(0, 0.5)
    return mixer


def _plain_attention(mixer: CausalSelfAttention, x: torch.Tensor, inv_freq: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """Causal softmax attention written out, with RoPE at `inv_freq` and logits multiplied by
    1 / t = temperature^2 (YaRN's sqrt(1/t) = 0.1 ln s + 1)."""
    B, L, _ = x.shape
    H, Dh = mixer.config.n_heads, mixer.config.head_dim
    q, k, v = mixer.qkv(x).view(B, L, 3, H, Dh).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, Dh)
    angles = torch.arange(L, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (L, Dh/2)
    cos, sin = angles.cos(), angles.sin()

    def rotate(t):
        t1, t2 = t.chunk(2, dim=-1)
        return torch.cat([t1 * cos - t2 * sin, t1 * sin + t2 * cos], dim=-1)

    scores = rotate(q) @ rotate(k).transpose(-1, -2) * temperature ** 2 / Dh ** 0.5  # (B, H, L, L)
    scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, H * Dh)
    return mixer.out(y)


# ---------------------------------------------------------------- the formulas


@pytest.mark.parametrize("head_dim,base,original", [(8, 10000.0, 16), (16, 10000.0, 64), (64, 500.0, 256),
                                                    (128, 10000.0, 4096)])
@pytest.mark.parametrize("factor", [2.0, 4.0, 32.0])
@pytest.mark.parametrize("method", METHODS)
def test_frequencies_and_temperature_match_transformers(method, head_dim, base, original, factor):
    inv_freq, attention_factor = rope_frequencies(head_dim, base, method, factor, original)
    hf_inv_freq, hf_attention_factor = _hf_frequencies(method, head_dim, base, factor, original)
    plain, _ = rope_frequencies(head_dim, base)
    torch.testing.assert_close(inv_freq, hf_inv_freq, rtol=1e-6, atol=0)  # transformers works in float32
    assert attention_factor == pytest.approx(hf_attention_factor, rel=1e-12)
    assert attention_factor == (0.1 * math.log(factor) + 1 if method == "yarn" else 1.0)
    # The tables the mixer rotates by: transformers' cos and sin times its attention factor, to
    # the float32 error of its frequencies (position x 6e-8).
    positions = torch.arange(2 * original)
    cos, sin = rope_tables(positions, head_dim, base, torch.float64, method, factor, original)  # (L, Dh/2)
    hf_angles = positions.double()[:, None] * hf_inv_freq[None, :]
    torch.testing.assert_close(cos, hf_angles.cos() * hf_attention_factor, rtol=0, atol=2e-7 * original)
    torch.testing.assert_close(sin, hf_angles.sin() * hf_attention_factor, rtol=0, atol=2e-7 * original)
    # The test can fail: every method moves some frequency off plain RoPE by far more than 1e-6.
    assert ((inv_freq - plain).abs() / plain).max() > 0.1
    # The published shapes: PI divides every frequency by s; NTK and YaRN keep the fastest pair,
    # divide the slowest (which turns less than once within the original length here) by s, and
    # divide those in between by no more than s.
    if method == "pi":
        torch.testing.assert_close(inv_freq, plain / factor, rtol=1e-15, atol=0)
    else:
        assert inv_freq[0] == plain[0]
        torch.testing.assert_close(inv_freq[-1], plain[-1] / factor, rtol=1e-12, atol=0)
        assert (inv_freq <= plain * (1 + 1e-12)).all() and (inv_freq >= plain / factor * (1 - 1e-12)).all()


@pytest.mark.parametrize("method", METHODS)
def test_scaled_mixer_equals_attention_written_out_with_transformers_frequencies(method):
    """End to end: the mixer at s = 4 is softmax attention rotated at transformers' frequencies,
    with the logits multiplied by YaRN's 1 / t."""
    mixer = _mixer(rope_scaling=method)
    x = torch.randn(2, 4 * T, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hf_inv_freq, attention_factor = _hf_frequencies(method, mixer.config.head_dim, 10000.0, 4.0, T)
    with torch.no_grad():
        mixer.set_context(T, 4 * T)
        y, _ = mixer(x)
        expected = _plain_attention(mixer, x, hf_inv_freq, attention_factor)
        unscaled = _plain_attention(mixer, x, rope_frequencies(mixer.config.head_dim, 10000.0)[0], 1.0)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)  # transformers: float32 frequencies
    assert (y - unscaled).abs().max() > 1e-2  # the comparison can fail


# ---------------------------------------------------------------- s = 1 is plain RoPE


@pytest.mark.parametrize("method", METHODS)
def test_factor_one_is_plain_rope_bit_for_bit(method):
    for head_dim in (2, 8, 16):
        plain = rope_frequencies(head_dim, 10000.0)
        assert torch.equal(rope_frequencies(head_dim, 10000.0, method, 1.0, 64)[0], plain[0])
        assert rope_frequencies(head_dim, 10000.0, method, 1.0, 64)[1] == 1.0
    x = torch.randn(2, 3 * T, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    rope = _mixer()
    scaled = _mixer(rope_scaling=method)
    with torch.no_grad():
        want, _ = rope(x)
        got_default, _ = scaled(x)
        scaled.set_context(T, T // 2)  # shorter than T: still s = 1
        got_short, _ = scaled(x)
        scaled.set_context(T, T)
        got_at_t, _ = scaled(x)
        scaled.set_context(T, 3 * T)
        got_longer, _ = scaled(x)
    for got in (got_default, got_short, got_at_t):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (got_longer - want).abs().max() > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_registered_scaled_transformers_train_like_the_transformer(method):
    """Same shape and, at s = 1, the same logits as `transformer`: training is unchanged."""
    tokens = torch.randint(0, 37, (2, 2 * T), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    plain = models.build("transformer", vocab_size=37, d_model=24).double().eval()
    torch.manual_seed(0)
    scaled = models.build(f"transformer-{method}", vocab_size=37, d_model=24).double().eval()
    assert models.family(f"transformer-{method}") == "attention"
    assert scaled.num_params() == plain.num_params()
    with torch.no_grad():
        torch.testing.assert_close(scaled(tokens)[0], plain(tokens)[0], rtol=0, atol=0)


def test_config_rejects_unknown_or_misplaced_scaling():
    with pytest.raises(ValueError, match="rope_scaling must be one of"):
        AttentionConfig(d_model=16, rope_scaling="linear")
    with pytest.raises(ValueError, match="needs position='rope'"):
        AttentionConfig(d_model=16, position="alibi", rope_scaling="yarn")
    with pytest.raises(ValueError, match="rope_scaling must be one of"):
        models.build("transformer", rope_scaling="dynamic")
    AttentionConfig(d_model=16, position="alibi")  # no scaling: any position


# ---------------------------------------------------------------- s > 1: every path agrees


@pytest.mark.parametrize("letter", ["A", "W"])
@pytest.mark.parametrize("method", METHODS)
def test_scaled_pieces_cache_and_reference_agree(method, letter):
    mixer = _mixer(letter, d_model=16, rope_scaling=method)
    mixer.set_context(T, 5 * T)  # s = 5 for positions up to 31: a factor fixed for the sequence
    u = torch.randn(2, 31, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole, whole_state = mixer(u)
        reference, _ = mixer(u, reference=True)
        state, outputs = None, []
        for start, size in [(0, 3), (3, 1), (4, 9), (13, 1), (14, 17)]:
            y, state = mixer(u[:, start:start + size], state)
            outputs.append(y)
        mixer.set_context(T, T)
        plain, _ = mixer(u)
    torch.testing.assert_close(whole, reference, rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.cat(outputs, 1), whole, rtol=0, atol=1e-10)
    torch.testing.assert_close(state.keys, whole_state.keys, rtol=0, atol=1e-10)
    assert (whole - plain).abs().max() > 1e-3  # the factor is in use


# ---------------------------------------------------------------- set per evaluated length


@pytest.mark.parametrize("name", [f"transformer-{m}" for m in METHODS])
def test_set_context_changes_outputs_beyond_t_only(name):
    torch.manual_seed(0)
    model = models.build(name, vocab_size=37, d_model=32).double().eval()
    tokens = torch.randint(0, 37, (2, 4 * T), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        base, _ = model(tokens)
        for length in (1, T // 2, T):
            model.set_context(T, length)
            torch.testing.assert_close(model(tokens)[0], base, rtol=0, atol=0)
        model.set_context(T, 4 * T)
        stretched, _ = model(tokens)
        model.set_context(T, T)
        back, _ = model(tokens)
    assert (stretched - base).abs().max() > 1e-4
    torch.testing.assert_close(back, base, rtol=0, atol=0)
    assert all(block.mixer.rope_factor == 1.0 for block in model.blocks)


@pytest.mark.parametrize("name", ["transformer", "transformer-alibi", "jamba"])
def test_set_context_is_a_no_op_without_rope_scaling(name):
    torch.manual_seed(0)
    model = models.build(name, vocab_size=37, d_model=24).double().eval()
    tokens = torch.randint(0, 37, (1, 4 * T), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        base, _ = model(tokens)
        model.set_context(T, 4 * T)
        torch.testing.assert_close(model(tokens)[0], base, rtol=0, atol=0)


def _sharp_model(name: str) -> models.LanguageModel:
    """A small model whose random weights are large enough that positions move its argmax."""
    torch.manual_seed(0)
    model = models.build(name, vocab_size=37, d_model=32).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("name", [f"transformer-{m}" for m in METHODS])
def test_predict_with_train_length_scales_for_the_whole_sequence(name):
    model = _sharp_model(name)
    rng = np.random.default_rng(0)
    long_prompts = rng.integers(0, 37, size=(24, 4 * T))
    short_prompts = long_prompts[:, :T]
    scaled = predict(model, long_prompts, 4, chunk=5, train_length=T)
    assert all(block.mixer.rope_factor == 1.0 for block in model.blocks)  # reset afterwards
    plain = predict(model, long_prompts, 4, chunk=5)
    model.set_context(T, 4 * T)  # by hand: s = 4 for the whole sequence, fed whole
    by_hand = predict(model, long_prompts, 4, chunk=4 * T)
    model.set_context(T, T)
    np.testing.assert_array_equal(scaled, by_hand)
    assert (scaled != plain).any()  # the factor changes predictions at 4T
    # At the training length the factor is 1: nothing changes.
    np.testing.assert_array_equal(predict(model, short_prompts, 4, chunk=5, train_length=T),
                                  predict(model, short_prompts, 4, chunk=5))
