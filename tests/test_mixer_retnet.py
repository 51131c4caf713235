"""RetNet retention: the chunked op against its step-by-step reference, the papers' decay
schedule, and the rotation by absolute position that the state's `position` carries. The
module's contract (pieces, reference path, causality, gradients, widths) is in test_mixers.py."""

from __future__ import annotations

import pytest
import torch
from mixer_checks import assert_chunked_equals_reference, assert_split_sequence_continues, chunked_cases

from longarch.mixers.retnet import (RetNetConfig, RetNetMixer, RetNetState, log_decays, retention_chunked,
                                    retention_reference)

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(L: int, dtype: torch.dtype, decay_scale: float, seed: int = 0, b: int = 2, H: int = 3, K: int = 4,
            V: int = 5):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, L, H, K, generator=g, dtype=torch.float64)  # (b, L, H, K)
    k = torch.randn(b, L, H, K, generator=g, dtype=torch.float64)  # (b, L, H, K)
    v = torch.randn(b, L, H, V, generator=g, dtype=torch.float64)  # (b, L, H, V)
    S0 = torch.randn(b, H, K, V, generator=g, dtype=torch.float64)  # (b, H, K, V)
    log_gamma = log_decays(H) * decay_scale  # (H,)
    return [t.to(dtype) for t in (q, k, v)] + [log_gamma, S0.to(dtype)]


# ---------------------------------------------------------------- the op: chunked vs reference

CASES = chunked_cases(float64=[(37, 1), (37, 8), (37, 16), (37, 37), (37, 64), (130, 16), (5, 8)],
                      float32=[(37, 8), (37, 16), (37, 64), (300, 64)])


@pytest.mark.parametrize("decay_scale", [1.0, 100.0], ids=["paper-decay", "fast-decay"])
@pytest.mark.parametrize("dtype,L,chunk,with_state", CASES)
def test_retention_chunked_equals_reference(dtype, L, chunk, with_state, decay_scale):
    # Slow decays sum hundreds of terms: float32 tolerances scale with the size of the values.
    assert_chunked_equals_reference(retention_chunked, retention_reference, _inputs(L, dtype, decay_scale), chunk,
                                    with_state, scale_atol=True)


def test_retention_split_sequence_continues_from_the_state():
    assert_split_sequence_continues(retention_chunked, _inputs(40, torch.float64, 10.0), per_head=(3,))


def test_decay_schedule_spreads_the_papers_range_over_the_heads():
    gamma = log_decays(8).exp()
    expected = 1 - 2.0 ** -torch.arange(5, 13, dtype=torch.float64)  # 8 heads: exactly the paper's values
    torch.testing.assert_close(gamma, expected, rtol=0, atol=1e-15)
    assert log_decays(1).exp().item() == pytest.approx(1 - 2 ** -5)
    four = log_decays(4).exp()
    assert four[0].item() == pytest.approx(1 - 2 ** -5) and four[-1].item() == pytest.approx(1 - 2 ** -12)
    assert torch.all(four.diff() > 0)


# ---------------------------------------------------------------- the position in the state


def _mixer(dtype=torch.float64) -> RetNetMixer:
    torch.manual_seed(1)
    return RetNetMixer(RetNetConfig(16, n_heads=2, chunk_size=8)).to(dtype)


def test_state_position_counts_tokens_and_drives_the_rotation():
    mixer = _mixer()
    u = torch.randn(2, 80, 16, dtype=torch.float64)
    with torch.no_grad():
        whole, whole_state = mixer(u)
        _, state = mixer(u[:, :38])
        y_rest, end = mixer(u[:, 38:], state)
        misplaced, _ = mixer(u[:, 38:], RetNetState(state.S, 0))
    assert state.position == 38 and end.position == whole_state.position == 80
    torch.testing.assert_close(y_rest, whole[:, 38:], rtol=0, atol=1e-10)
    assert (misplaced - whole[:, 38:]).abs().max() > 1e-3  # the right state at the wrong position


def test_rotation_is_relative_and_precise_at_large_positions():
    # From an empty state only relative positions matter, so starting at 65536 must give the
    # outputs of starting at 0; in float32 this holds only if the angles are computed precisely.
    mixer = _mixer(torch.float32)
    u = torch.randn(2, 40, 16)
    with torch.no_grad():
        y0, _ = mixer(u)
        far = RetNetState(torch.zeros(2, 2, mixer.config.head_dim, mixer.config.value_head_dim), 65536)
        y_far, state = mixer(u, far)
    # float32 angles (position * frequency rounded to float32) miss by ~1e-4 here; float64 ones by ~1e-7.
    torch.testing.assert_close(y_far, y0, rtol=1e-5, atol=1e-5)
    assert state.position == 65536 + 40
