"""An example mixer written against longarch's mixer contract (src/longarch/mixers/base.py):
a gated exponential moving average with one decay per channel,

    h_t = a * h_{t-1} + (1 - a) * x_t      x = W_x u,  a = sigmoid(decay) in (0, 1)
    y_t = W_o (h_t * silu(W_g u)_t)

(B, L, D) in and out; the state is h after the last token, so a sequence fed in pieces gives
what it gives whole; a chunked fast path beside a step-by-step reference; `state_floats`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class EMAConfig:
    d_model: int
    chunk_size: int = 64  # steps of the scan done as one matrix product


class EMAMixer(nn.Module):
    """EMA: a gated exponential moving average per channel (examples/ema.py)."""

    family = "linear-recurrent"  # how reports group it (a study's model entry may say `family:` instead)

    def __init__(self, config: EMAConfig):
        super().__init__()
        self.config, D = config, config.d_model
        self.in_proj = nn.Linear(D, 2 * D, bias=False)
        self.decay = nn.Parameter(torch.linspace(-2.0, 4.0, D))  # a from 0.12 to 0.98: short to long memory
        self.out_proj = nn.Linear(D, D, bias=False)

    def forward(self, u: Tensor, state: Tensor | None = None, reference: bool = False) -> tuple[Tensor, Tensor]:
        x, gate = self.in_proj(u).chunk(2, dim=-1)  # (B, L, D) each
        a = torch.sigmoid(self.decay)  # (D,)
        h0 = u.new_zeros(u.shape[0], u.shape[2]) if state is None else state  # (B, D)
        scan = ema_reference if reference else ema_chunked
        h, last = scan((1 - a) * x, a, h0, self.config.chunk_size)  # (B, L, D), (B, D)
        return self.out_proj(h * F.silu(gate)), last

    @staticmethod
    def state_floats(config: EMAConfig, length: int) -> int:
        """One float per channel, whatever the length."""
        return config.d_model


def ema_reference(b: Tensor, a: Tensor, h: Tensor, chunk_size: int = 0) -> tuple[Tensor, Tensor]:
    """h_t = a h_{t-1} + b_t one step at a time; b (B, L, D), a (D,), h (B, D)."""
    out = []
    for t in range(b.shape[1]):
        h = a * h + b[:, t]  # (B, D)
        out.append(h)
    return torch.stack(out, 1), h


def ema_chunked(b: Tensor, a: Tensor, h: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """The same scan a chunk at a time: inside a chunk, h_t = a^(t+1) h_0 + sum_{s<=t} a^(t-s) b_s."""
    out = []
    for start in range(0, b.shape[1], chunk_size):
        piece = b[:, start:start + chunk_size]  # (B, C, D)
        t = torch.arange(piece.shape[1], device=b.device)
        lags = t[:, None] - t[None, :]  # (C, C): t - s
        powers = a ** lags.clamp_min(0)[..., None]  # (C, C, D)
        powers = powers.masked_fill((lags < 0)[..., None], 0.0)  # no output sees a later input
        hs = torch.einsum("tsd,bsd->btd", powers, piece) + a ** (t[:, None] + 1) * h[:, None]  # (B, C, D)
        out.append(hs)
        h = hs[:, -1]
    return torch.cat(out, 1), h
