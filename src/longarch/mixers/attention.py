"""Causal multi-head self-attention with rotary position embeddings (RoPE).

Computes, for every position t, softmax(q_t . k_s / sqrt(d_head)) over s <= t, with q and k
rotated by their absolute positions (RoPE), through `torch.nn.functional.scaled_dot_product_attention`.

State is the key/value cache: the rotated keys and the values of every position seen so far.
Its length is the absolute position of the next token, so a sequence fed in pieces is rotated
exactly as the same sequence fed whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class AttentionConfig:
    d_model: int
    n_heads: int = 4
    rope_base: float = 10000.0

    @property
    def head_dim(self) -> int:
        # Heads split d_model, rounded up to an even width (RoPE rotates pairs), so that any
        # d_model is valid and parameter counts vary smoothly with it.
        return 2 * -(-self.d_model // (2 * self.n_heads))


@dataclass
class KVCache:
    keys: Tensor    # (B, H, P, Dh), already rotated
    values: Tensor  # (B, H, P, Dh)

    @property
    def length(self) -> int:
        return self.keys.shape[2]


def rope_tables(positions: Tensor, head_dim: int, base: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos and sin of position * frequency, each (L, head_dim // 2)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (L, Dh/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive halves of the last dimension: x (B, H, L, Dh)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, L, Dh/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: AttentionConfig):
        super().__init__()
        self.config = config
        inner = config.n_heads * config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * inner, bias=False)
        self.out = nn.Linear(inner, config.d_model, bias=False)

    def forward(self, x: Tensor, state: KVCache | None = None) -> tuple[Tensor, KVCache]:
        B, L, _ = x.shape
        H, Dh = self.config.n_heads, self.config.head_dim
        past = 0 if state is None else state.length
        q, k, v = self.qkv(x).view(B, L, 3, H, Dh).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, Dh)
        positions = torch.arange(past, past + L, device=x.device)
        cos, sin = rope_tables(positions, Dh, self.config.rope_base, x.dtype)  # (L, Dh/2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if state is not None:
            k = torch.cat([state.keys, k], dim=2)  # (B, H, P+L, Dh)
            v = torch.cat([state.values, v], dim=2)
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, Dh)
        else:
            # Queries sit at positions past..past+L-1 and see every key up to their own position;
            # is_causal would align the mask to the top-left corner, so the mask is explicit.
            key_pos = torch.arange(past + L, device=x.device)
            mask = key_pos[None, :] <= positions[:, None]  # (L, P+L)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, L, H * Dh)  # (B, L, H*Dh)
        return self.out(y), KVCache(k, v)

    @staticmethod
    def state_floats(config: AttentionConfig, length: int) -> int:
        """Floats of state per sequence after `length` tokens: keys and values of every position."""
        return 2 * config.n_heads * config.head_dim * length
