"""The short causal depthwise convolution in front of most recurrent mixers.

With a kernel of K taps (K = 4 here), the convolution is K shifted multiply-adds over the
(B, L, C) input in its own layout: y_t = bias + sum_k w_k * x_{t-K+1+k}, x before the sequence
taken from the tail. `F.conv1d` on a CPU wants (B, C, L), so it costs two transposed copies, and
its depthwise backward was 168 ms at L = 4K, B = 8, C = 288 in issue 24's profile; `ShiftedConv`
keeps the layout and writes its backward as the same shifted multiply-adds, reusing one buffer
for the weight gradient's products.
`conv_reference` is `F.conv1d` itself, which the tests compare it with, forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ShiftedConv(torch.autograd.Function):
    """Depthwise causal convolution of padded = [tail, x] (B, K-1+L, C) by weight (C, K):
    y[t] = bias + sum_k weight[:, k] * padded[t + k]. Returns y (B, L, C)."""

    @staticmethod
    def forward(ctx, padded: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        K = weight.shape[1]
        L = padded.shape[1] - K + 1
        taps = weight.t().contiguous()  # (K, C)
        y = padded[:, K - 1:] * taps[K - 1] if bias is None else torch.addcmul(bias, padded[:, K - 1:], taps[K - 1])
        for k in range(K - 1):
            y.addcmul_(padded[:, k:k + L], taps[k])  # (B, L, C)
        ctx.save_for_backward(padded, taps)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        padded, taps = ctx.saved_tensors
        K, L = taps.shape[0], grad_y.shape[1]
        grad_padded = grad_y.new_empty(padded.shape)  # (B, K-1+L, C)
        # grad_padded[s] = sum_k taps[k] * grad_y[s - k]: start from the last tap, which covers
        # rows K-1.., and the first, which covers ..L-1; the other taps add their shifted rows.
        torch.mul(grad_y, taps[K - 1], out=grad_padded[:, K - 1:])
        grad_padded[:, :K - 1].zero_()
        for k in range(K - 1):
            grad_padded[:, k:k + L].addcmul_(grad_y, taps[k])
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = taps.new_empty(K, taps.shape[1])  # (K, C)
            product = torch.empty_like(grad_y)  # (B, L, C): one buffer for every tap, not K fresh ones
            for k in range(K):
                torch.sum(torch.mul(grad_y, padded[:, k:k + L], out=product), dim=(0, 1), out=grad_weight[k])
            grad_weight = grad_weight.t()  # (C, K)
        grad_bias = grad_y.sum((0, 1)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_padded, grad_weight, grad_bias


def conv_reference(padded: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """What `ShiftedConv` computes, by `F.conv1d`: padded (B, K-1+L, C), weight (C, K) -> (B, L, C)."""
    return F.conv1d(padded.transpose(1, 2), weight[:, None], bias, groups=weight.shape[0]).transpose(1, 2)


class CausalConv1d(nn.Conv1d):
    """Depthwise causal convolution over (B, L, C) whose state is its last kernel - 1 inputs,
    so a sequence convolved in pieces equals the sequence convolved whole. The parameters are
    `nn.Conv1d`'s (weight (C, 1, K), bias (C,)), so checkpoints load as before."""

    def __init__(self, channels: int, kernel: int, bias: bool = True):
        super().__init__(channels, channels, kernel, groups=channels, bias=bias)

    def forward(self, x: Tensor, tail: Tensor | None = None, reference: bool = False) -> tuple[Tensor, Tensor]:
        """x (B, L, C), tail (B, kernel-1, C) or None for zeros -> y (B, L, C), new tail."""
        keep = self.kernel_size[0] - 1
        if tail is None:
            padded = F.pad(x, (0, 0, keep, 0))  # (B, keep + L, C)
        else:
            padded = torch.cat([tail, x], dim=1)  # (B, keep + L, C)
        conv = conv_reference if reference else ShiftedConv.apply
        y = conv(padded, self.weight[:, 0], self.bias)  # (B, L, C)
        return y, padded[:, padded.shape[1] - keep:]

    def silu_parts(self, parts: list[Tensor], tail: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """The parts (B, L, C_i), whose widths sum to the channels, convolved as one, through
        silu and split back (q, k, v in GLA's and RetNet's optional short convolution)."""
        y, tail = self(torch.cat(parts, dim=-1), tail)
        return list(F.silu(y).split([part.shape[-1] for part in parts], dim=-1)), tail
