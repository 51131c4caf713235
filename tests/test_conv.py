"""The short causal depthwise convolution: `ShiftedConv` (shifted multiply-adds, hand-written
backward) against `F.conv1d`, forward and backward in float64, with and without a tail."""

from __future__ import annotations

import pytest
import torch

from longarch.mixers.conv import CausalConv1d, ShiftedConv, conv_reference

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(b: int, L: int, C: int, K: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    padded = torch.randn(b, K - 1 + L, C, generator=g, dtype=torch.float64)  # (b, K-1+L, C)
    weight = torch.randn(C, K, generator=g, dtype=torch.float64)  # (C, K)
    bias = torch.randn(C, generator=g, dtype=torch.float64)  # (C,)
    return padded, weight, bias


@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("L", [1, 2, 7])
@pytest.mark.parametrize("with_bias", [True, False])
def test_shifted_conv_gradcheck(K, L, with_bias):
    padded, weight, bias = (t.requires_grad_() for t in _inputs(2, L, 3, K))
    assert torch.autograd.gradcheck(ShiftedConv.apply, (padded, weight, bias if with_bias else None))


@pytest.mark.parametrize("K", [2, 4])
@pytest.mark.parametrize("L", [1, 3, 50])
def test_shifted_conv_equals_conv1d_forward_and_backward(K, L):
    inputs = _inputs(3, L, 5, K, seed=L)
    grad_out = torch.randn(3, L, 5, dtype=torch.float64)
    results = []
    for conv in (ShiftedConv.apply, conv_reference):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y = conv(*leaves)
        y.backward(grad_out)
        results.append([y] + [leaf.grad for leaf in leaves])
    for fast, slow in zip(*results):
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)


@pytest.mark.parametrize("with_tail", [False, True])
def test_causal_conv_module_equals_its_reference_with_a_tail(with_tail):
    torch.manual_seed(0)
    conv = CausalConv1d(6, 4).double()
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    tail = torch.randn(2, 3, 6, dtype=torch.float64) if with_tail else None
    grads = []
    for reference in (False, True):
        conv.zero_grad()
        leaves = [x.clone().requires_grad_()] + ([tail.clone().requires_grad_()] if with_tail else [])
        y, new_tail = conv(leaves[0], leaves[1] if with_tail else None, reference=reference)
        (y.sin().sum() + new_tail.square().sum()).backward()
        grads.append([y, new_tail, conv.weight.grad.clone(), conv.bias.grad.clone()] + [leaf.grad for leaf in leaves])
    for fast, slow in zip(*grads):
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)


def test_causal_conv_in_pieces_equals_whole():
    torch.manual_seed(0)
    conv = CausalConv1d(4, 4).double()
    x = torch.randn(2, 11, 4, dtype=torch.float64)
    whole, whole_tail = conv(x)
    pieces, tail = [], None
    for part in (x[:, :2], x[:, 2:3], x[:, 3:]):  # pieces shorter than the tail included
        y, tail = conv(part, tail)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, 1), whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(tail, whole_tail, rtol=0, atol=0)
