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


# ---------------------------------------------------------------------------------------------
# The blocked fast path (sliding window: w queries against 2w keys; global ALiBi: a block of
# queries at a time) against the dense reference, forward and backward, in float64.


def _local_mixer(kind: str, window: int) -> CausalSelfAttention:
    """The attention layer of each kind the blocked path serves, in float64."""
    torch.manual_seed(0)
    if kind == "griffin":  # Griffin's local layer, as the registry builds it, with a small window
        from longarch import models

        model = models.build("griffin", d_model=16, window=window)
        mixer = next(m for m in model.modules() if isinstance(m, CausalSelfAttention))
        assert mixer.span == window
        return mixer.double()
    letter, position = {"sliding-window": ("W", "rope"), "alibi-window": ("W", "alibi"),
                        "alibi": ("A", "alibi"), "nope-window": ("W", "nope")}[kind]
    return make_mixer(letter, 16, {"n_heads": 2, "position": position, "window": window}).double()


def _run_pieces(mixer, u, sizes, reference):
    """Outputs of u fed in pieces of `sizes`, and the final state."""
    state, outputs, start = None, [], 0
    for size in sizes:
        y, state = mixer(u[:, start:start + size], state, reference=reference)
        outputs.append(y)
        start += size
    return torch.cat(outputs, 1), state


def _pieces(length: int, split: bool) -> list[int]:
    if not split or length < 5:
        return [length]
    return [3, 1, length - 9, 5] if length > 9 else [3, 1, length - 4]


@pytest.mark.parametrize("kind", ["sliding-window", "griffin", "alibi-window", "alibi", "nope-window"])
@pytest.mark.parametrize("length", [5, 8, 19, 40])
@pytest.mark.parametrize("split", [False, True])
def test_blocked_attention_equals_the_dense_reference_forward_and_backward(kind, length, split, monkeypatch):
    import longarch.mixers.attention as attention

    monkeypatch.setattr(attention, "QUERY_BLOCK", 7)  # several query blocks for global ALiBi too
    mixer = _local_mixer(kind, window=8)
    u = torch.randn(2, length, 16, dtype=torch.float64)
    weight = torch.randn(2, length, 16, dtype=torch.float64)
    results = []
    for reference in (False, True):
        x = u.clone().requires_grad_(True)
        mixer.zero_grad(set_to_none=True)
        y, state = _run_pieces(mixer, x, _pieces(length, split), reference)
        (y * weight).sum().backward()
        results.append((y.detach(), state, x.grad, mixer.qkv.weight.grad.clone()))
    (y, state, dx, dw), (y_ref, state_ref, dx_ref, dw_ref) = results
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(dx, dx_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(dw, dw_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(state.keys, state_ref.keys, rtol=0, atol=1e-12)
    assert state.seen == length
    if mixer.span is not None:  # the window's cache keeps at most its last span - 1 keys
        assert state.keys.shape[2] == min(length, mixer.span - 1)


def test_window_intervention_uses_the_blocked_path_and_equals_the_reference():
    torch.manual_seed(0)
    mixer = make_mixer("A", 16, {"n_heads": 2}).double()
    mixer.set_context(train_length=6, length=30, intervention="window")
    u = torch.randn(1, 30, 16, dtype=torch.float64)
    with torch.no_grad():
        y, _ = _run_pieces(mixer, u, [4, 13, 13], reference=False)
        y_ref, _ = _run_pieces(mixer, u, [30], reference=True)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)


def _recorded_attention(monkeypatch) -> list[tuple]:
    """Record the shapes of every scaled_dot_product_attention call: (queries, keys, mask numel)."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kwargs):
        calls.append((q.shape[-2], k.shape[-2], 0 if attn_mask is None else attn_mask.numel()))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    return calls


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_sliding_window_scores_are_never_wider_than_two_windows(position, monkeypatch):
    """Memory O(L w), checked structurally: no call sees more than 2w keys, masks are (H, w, 2w)."""
    calls = _recorded_attention(monkeypatch)
    mixer = make_mixer("W", 16, {"n_heads": 2, "position": position, "window": 16})
    with torch.no_grad():
        mixer(torch.randn(1, 1000, 16))
    assert calls and max(keys for _, keys, _ in calls) <= 2 * 16
    assert max(queries for queries, _, _ in calls) <= 16
    assert max(mask for _, _, mask in calls) <= 2 * 16 * 2 * 16


def test_global_alibi_builds_its_bias_per_query_block(monkeypatch):
    import longarch.mixers.attention as attention

    """No (H, L, L) bias: every mask built has at most QUERY_BLOCK rows, every call as many queries."""
    calls = _recorded_attention(monkeypatch)
    length = 3 * attention.QUERY_BLOCK + 5
    mixer = make_mixer("A", 16, {"n_heads": 2, "position": "alibi"})
    built = []
    mask = mixer._mask
    monkeypatch.setattr(mixer, "_mask", lambda *args: built.append(mask(*args)) or built[-1])
    with torch.no_grad():
        mixer(torch.randn(1, length, 16))
    assert len(calls) == 4 and max(queries for queries, _, _ in calls) == attention.QUERY_BLOCK
    assert max(mask for _, _, mask in calls) <= 2 * attention.QUERY_BLOCK * length
    assert built and all(m.shape[-2] <= attention.QUERY_BLOCK for m in built)
