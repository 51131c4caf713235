"""Mamba-2 (SSD): the segment sums and the chunked scan against its step-by-step reference. The
module's contract (pieces, reference path, causality, state) is in test_mixers.py."""

from __future__ import annotations

import pytest
import torch
from mixer_checks import assert_chunked_equals_reference, assert_split_sequence_continues, chunked_cases

from longarch.mixers.mamba2 import segment_sum, ssd_chunked, ssd_reference

pytestmark = pytest.mark.usefixtures("one_thread")


def _ssd_inputs(L: int, dtype: torch.dtype, decay: float, seed: int = 0, b: int = 2, H: int = 3, P: int = 4,
                N: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, H, P, generator=g, dtype=torch.float64)  # (b, L, H, P)
    log_a = -decay * torch.rand(b, L, H, generator=g, dtype=torch.float64)  # (b, L, H), <= 0
    B = torch.randn(b, L, N, generator=g, dtype=torch.float64)  # (b, L, N)
    C = torch.randn(b, L, N, generator=g, dtype=torch.float64)  # (b, L, N)
    S0 = torch.randn(b, H, P, N, generator=g, dtype=torch.float64)  # (b, H, P, N)
    return [t.to(dtype) for t in (x, log_a, B, C, S0)]


# ---------------------------------------------------------------- segment_sum


@pytest.mark.parametrize("T", [1, 2, 5, 9])
def test_segment_sum_matches_double_loop(T):
    g = torch.Generator().manual_seed(T)
    a = torch.randn(2, 3, T, generator=g, dtype=torch.float64)
    out = segment_sum(a)
    assert out.shape == (2, 3, T, T)
    for i in range(T):
        for j in range(T):
            if j > i:
                assert torch.all(out[..., i, j] == float("-inf"))
            else:
                expected = a[..., j + 1:i + 1].sum(-1)  # a[j+1] + ... + a[i]; zero on the diagonal
                torch.testing.assert_close(out[..., i, j], expected, rtol=0, atol=1e-12)


def test_segment_sum_keeps_precision_after_a_large_increment():
    # Differencing a cumulative sum would lose the small increments after 1e8 in float32.
    a = torch.tensor([1e8, 0.25, 0.5, 0.125, 1.0], dtype=torch.float32)
    out = segment_sum(a)
    for i in range(1, 5):
        for j in range(1, i + 1):
            assert out[i, j].item() == pytest.approx(float(a[j + 1:i + 1].double().sum()), abs=1e-7)


# ---------------------------------------------------------------- SSD scan: chunked vs reference

CASES = chunked_cases(float64=[(37, 1), (37, 8), (37, 16), (37, 37), (37, 64), (130, 16), (5, 8)],
                      float32=[(37, 8), (37, 16), (37, 64), (130, 16)])


@pytest.mark.parametrize("decay", [1.0, 0.05], ids=["fast-decay", "slow-decay"])
@pytest.mark.parametrize("dtype,L,chunk,with_state", CASES)
def test_ssd_chunked_equals_reference(dtype, L, chunk, with_state, decay):
    assert_chunked_equals_reference(ssd_chunked, ssd_reference, _ssd_inputs(L, dtype, decay), chunk, with_state)


def test_ssd_initial_state_continues_a_split_sequence():
    assert_split_sequence_continues(ssd_chunked, _ssd_inputs(40, torch.float64, decay=0.2))


@pytest.mark.parametrize("Q", [1, 5, 8])
def test_within_chunks_backward_matches_finite_differences(Q):
    """The hand-written backward of the quadratic part, against numerical gradients in fp64,
    with decays that span the range the scan sees (a chunk's total log-decay from 0 to -8)."""
    from longarch.mixers.mamba2 import WithinChunks

    torch.manual_seed(Q)
    b, H, c, P = 2, 3, 2, 4
    a_cum = (-2 * torch.rand(b, H, c, Q, dtype=torch.float64)).cumsum(-1).requires_grad_()
    scores = torch.randn(b, 1, c, Q, Q, dtype=torch.float64, requires_grad=True)
    x = torch.randn(b, H, c, Q, P, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(WithinChunks.apply, (a_cum, scores, x))


def test_chunked_scan_gradients_equal_the_references():
    """Gradients through ssd_chunked (custom backward inside) equal those through ssd_reference."""
    torch.manual_seed(0)
    b, L, H, P, N = 2, 23, 3, 4, 5
    inputs = [torch.randn(b, L, H, P, dtype=torch.float64), -torch.rand(b, L, H, dtype=torch.float64),
              torch.randn(b, L, N, dtype=torch.float64), torch.randn(b, L, N, dtype=torch.float64),
              torch.randn(b, H, P, N, dtype=torch.float64)]
    grads = []
    for scan in (lambda *t: ssd_chunked(*t[:4], 8, t[4]), ssd_reference):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y, final = scan(*leaves)
        (y.sin().sum() + final.cos().sum()).backward()
        grads.append([leaf.grad for leaf in leaves])
    for fast, slow in zip(*grads):
        torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-10)


def test_across_chunks_backward_matches_finite_differences():
    """The reverse loop that carries the state across chunks, against numerical gradients."""
    from longarch.mixers.mamba2 import AcrossChunks

    torch.manual_seed(0)
    b, c, H, P, N = 2, 5, 3, 2, 4
    states = torch.randn(b, c, H, P, N, dtype=torch.float64, requires_grad=True)
    decay = torch.rand(b, c, H, dtype=torch.float64).requires_grad_()
    initial = torch.randn(b, H, P, N, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(AcrossChunks.apply, (states, decay, initial))


@pytest.mark.parametrize("L,chunk", [(23, 8), (37, 16), (5, 64), (64, 16)])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_gradients_equal_the_references_across_chunk_sizes(L, chunk, with_state):
    """Every input's gradient (the initial state's too) through the chunked scan equals the
    reference's, in float64, for lengths that are and are not multiples of the chunk."""
    x, log_a, B, C, S0 = _ssd_inputs(L, torch.float64, decay=0.5, seed=L)
    inputs = [x, log_a, B, C] + ([S0] if with_state else [])
    grads = []
    for scan in (lambda *t: ssd_chunked(*t[:4], chunk, t[4] if with_state else None),
                 lambda *t: ssd_reference(*t[:4], t[4] if with_state else None)):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y, final = scan(*leaves)
        (y.sin().sum() + final.cos().sum()).backward()
        grads.append([y, final] + [leaf.grad for leaf in leaves])
    for fast, slow in zip(*grads):
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)


def test_chunked_gradients_in_pieces_equal_whole():
    """Two calls chained by the state give the gradients of one call over the whole sequence."""
    x, log_a, B, C, _ = _ssd_inputs(41, torch.float64, decay=0.3)
    grads = []
    for split in (None, 17):
        leaves = [t.clone().requires_grad_() for t in (x, log_a, B, C)]
        if split is None:
            y, final = ssd_chunked(*leaves, 8)
        else:
            y1, state = ssd_chunked(*(t[:, :split] for t in leaves), 8)
            y2, final = ssd_chunked(*(t[:, split:] for t in leaves), 8, state)
            y = torch.cat([y1, y2], 1)
        (y.sin().sum() + final.cos().sum()).backward()
        grads.append([y, final] + [leaf.grad for leaf in leaves])
    for whole, pieces in zip(*grads):
        torch.testing.assert_close(pieces, whole, rtol=0, atol=1e-10)
