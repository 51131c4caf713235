"""Causal multi-head self-attention: global or sliding-window, with RoPE, ALiBi or no positions.

For every position t, softmax(q_t . k_s / sqrt(d_head) + bias(t, s)) over the visible s:
all s <= t (global) or t - window < s <= t (sliding window). Positions enter as
- `rope`: q and k rotated by their absolute positions (Su et al.);
- `alibi`: bias(t, s) = -slope_h * (t - s), one geometric slope per head (Press et al.);
- `nope`: nothing; order is only visible through causality.
Computed with `torch.nn.functional.scaled_dot_product_attention`.

State is the key/value cache plus the number of tokens seen, so a sequence fed in pieces is
rotated and masked exactly as the same sequence fed whole. A sliding window keeps only the
last `window` keys, so its state is bounded; global attention's grows with the length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POSITIONS = ("rope", "alibi", "nope")


@dataclass
class AttentionConfig:
    d_model: int
    n_heads: int = 4
    position: str = "rope"
    rope_base: float = 10000.0

    def __post_init__(self):
        if self.position not in POSITIONS:
            raise ValueError(f"attention position must be one of {POSITIONS}, not {self.position!r}")

    @property
    def head_dim(self) -> int:
        # Heads split d_model, rounded up to an even width (RoPE rotates pairs), so that any
        # d_model is valid and parameter counts vary smoothly with it.
        return 2 * -(-self.d_model // (2 * self.n_heads))

    @property
    def span(self) -> int | None:
        """How many past keys a query sees, itself included; None for all of them."""
        return None


@dataclass
class LocalAttentionConfig(AttentionConfig):
    window: int = 64

    def __post_init__(self):
        super().__post_init__()
        if self.window < 1:
            raise ValueError(f"attention window must be >= 1, not {self.window}")

    @property
    def span(self) -> int | None:
        return self.window


@dataclass
class KVCache:
    keys: Tensor    # (B, H, P, Dh): the last P keys, already rotated
    values: Tensor  # (B, H, P, Dh)
    seen: int       # tokens seen so far: the absolute position of the next one


def rope_tables(positions: Tensor, head_dim: int, base: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sin of position * frequency, each (L, head_dim // 2)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (L, Dh/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive halves of the last dimension: x (B, H, L, Dh)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, L, Dh/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def alibi_slopes(n_heads: int) -> Tensor:
    """Geometric slopes 2^(-8 h / n_heads), h = 1..n_heads (the ALiBi paper's schedule)."""
    return 2.0 ** (-8.0 * torch.arange(1, n_heads + 1, dtype=torch.float64) / n_heads)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: AttentionConfig):
        super().__init__()
        self.config = config
        inner = config.n_heads * config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * inner, bias=False)
        self.out = nn.Linear(inner, config.d_model, bias=False)

    def forward(self, x: Tensor, state: KVCache | None = None, reference: bool = False) -> tuple[Tensor, KVCache]:
        B, L, _ = x.shape
        cfg = self.config
        H, Dh = cfg.n_heads, cfg.head_dim
        seen = 0 if state is None else state.seen
        q, k, v = self.qkv(x).view(B, L, 3, H, Dh).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, Dh)
        positions = torch.arange(seen, seen + L, device=x.device)  # (L,)
        if cfg.position == "rope":
            cos, sin = rope_tables(positions, Dh, cfg.rope_base, x.dtype)  # (L, Dh/2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if state is not None:
            k = torch.cat([state.keys, k], dim=2)  # (B, H, P+L, Dh)
            v = torch.cat([state.values, v], dim=2)
        key_positions = torch.arange(seen + L - k.shape[2], seen + L, device=x.device)  # (P+L,)
        if reference:
            y = self._reference(q, k, v, positions, key_positions)
        elif cfg.position != "alibi" and cfg.span is None and k.shape[2] == L:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, Dh)
        else:
            # Queries in a later piece, windows and ALiBi need an explicit mask: is_causal
            # aligns its triangle to the top-left corner and knows no bias.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(positions, key_positions, x.dtype))
        y = y.transpose(1, 2).reshape(B, L, H * Dh)  # (B, L, H*Dh)
        if cfg.span is not None:  # a window only ever needs its last `span - 1` keys again
            start = max(0, k.shape[2] - (cfg.span - 1))
            k, v = k[:, :, start:], v[:, :, start:]
        return self.out(y), KVCache(k, v, seen + L)

    def _mask(self, positions: Tensor, key_positions: Tensor, dtype: torch.dtype) -> Tensor:
        """Boolean (L, K) visibility, or an additive (H, L, K) float mask for ALiBi."""
        distance = positions[:, None] - key_positions[None, :]  # (L, K): how far back each key is
        visible = distance >= 0
        if self.config.span is not None:
            visible &= distance < self.config.span
        if self.config.position != "alibi":
            return visible
        slopes = alibi_slopes(self.config.n_heads).to(dtype=dtype, device=positions.device)  # (H,)
        bias = -slopes[:, None, None] * distance.to(dtype)  # (H, L, K)
        return bias.masked_fill(~visible, float("-inf"))

    def _reference(self, q: Tensor, k: Tensor, v: Tensor, positions: Tensor, key_positions: Tensor) -> Tensor:
        """Plain softmax attention with the same mask, for the tests."""
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, H, L, K)
        mask = self._mask(positions, key_positions, q.dtype)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        return scores.softmax(dim=-1) @ v  # (B, H, L, Dh)

    @staticmethod
    def state_floats(config: AttentionConfig, length: int) -> int:
        """Floats of state per sequence after `length` tokens: the cached keys and values."""
        cached = length if config.span is None else min(length, config.span - 1)
        return 2 * config.n_heads * config.head_dim * cached
