"""Attention specifics: the key/value cache, position schemes (RoPE, ALiBi, NoPE) and the sliding
window. The contract every mixer keeps (pieces, reference path, causality, state size) is in
test_mixers.py."""

from __future__ import annotations

import pytest
import torch

from longarch.mixers import make_mixer
from longarch.mixers.attention import CausalSelfAttention, KVCache

pytestmark = pytest.mark.usefixtures("one_thread")


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
