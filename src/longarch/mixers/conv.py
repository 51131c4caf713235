"""The short causal depthwise convolution in front of most recurrent mixers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CausalConv1d(nn.Conv1d):
    """Depthwise causal convolution over (B, L, C) whose state is its last kernel - 1 inputs,
    so a sequence convolved in pieces equals the sequence convolved whole."""

    def __init__(self, channels: int, kernel: int, bias: bool = True):
        super().__init__(channels, channels, kernel, groups=channels, bias=bias)

    def forward(self, x: Tensor, tail: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B, L, C), tail (B, kernel-1, C) or None for zeros -> y (B, L, C), new tail."""
        keep = self.kernel_size[0] - 1
        if tail is None:
            tail = x.new_zeros(x.shape[0], keep, x.shape[2])
        padded = torch.cat([tail, x], dim=1)  # (B, keep + L, C)
        y = super().forward(padded.transpose(1, 2)).transpose(1, 2)  # (B, L, C)
        return y, padded[:, padded.shape[1] - keep:]

    def silu_parts(self, parts: list[Tensor], tail: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        """The parts (B, L, C_i), whose widths sum to the channels, convolved as one, through
        silu and split back (q, k, v in GLA's and RetNet's optional short convolution)."""
        y, tail = self(torch.cat(parts, dim=-1), tail)
        return list(F.silu(y).split([part.shape[-1] for part in parts], dim=-1)), tail
