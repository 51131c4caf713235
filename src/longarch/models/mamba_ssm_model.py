"""The language model a `mamba_ssm` checkpoint describes (`MambaLMHeadModel` of state-spaces/mamba),
built from this project's modules so that it carries state like every other model here.

Per layer i (the pre-norm form; mamba_ssm's "add, then norm" blocks compute the same thing):

    x = x + mixer_i(norm_i(x))          mixer: Mamba-2, or attention when i is in attn_layer_idx
    x = x + mlp_i(norm2_i(x))           only when d_intermediate > 0: a SwiGLU (mamba_ssm's GatedMLP)

then logits = lm_head(norm_f(x)), with lm_head the embedding when the embeddings are tied.

Why this is not `LanguageModel` (lm.py), whose blocks have the same shape: the checkpoints need
things our training model does not express, and adding them there would bend a shared model:
- norms with epsilon 1e-5 (ours use the dtype's epsilon), RMSNorm or LayerNorm;
- an untied head, and a vocabulary padded beyond the tokenizer's;
- mamba_ssm's attention (`MHA`): grouped key/value heads, a head width not tied to d_model
  (mamba2attn-2.7b: 30 heads of 128 on d_model 2560), rotary on only the first `rotary_dim`
  dims of a head, an optional short causal convolution over q, k, v, optional biases.
  `CheckpointAttention` below has all of these and reuses our RoPE functions; the Mamba-2 mixer
  and the MLP are ours unchanged (`Mamba2Mixer`, `SwiGLU`);
- mamba_ssm keeps the residual stream in float32 (`residual_in_fp32`) and computes its norms,
  dt, A and the scan in float32 whatever the weights' dtype. Our Mamba-2 computes in its
  parameters' dtype, so in a bfloat16/float16 model the Mamba-2 mixers are kept in float32
  (projections included: slower, never less precise than the reference); norms are computed in
  float32 here too.

`model(tokens, state) -> (logits, state)` as for `LanguageModel`: state is one mixer state per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..mixers.attention import apply_rope, rope_tables
from ..mixers.conv import CausalConv1d
from ..mixers.mamba2 import Mamba2Config, Mamba2Mixer, Mamba2State
from .lm import SwiGLU


@dataclass
class AttentionSpec:
    """mamba_ssm's `MHA` options that change what the layer computes (rotary already non-interleaved)."""
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rotary_dim: int = 0  # rotate the first rotary_dim dims of each q/k head; 0 = no positions
    rotary_base: float = 10000.0
    d_conv: int = 0  # kernel of the causal depthwise convolution over (q, k, v); 0 = none
    qkv_bias: bool = False
    out_bias: bool = False
    softmax_scale: float | None = None  # None: 1 / sqrt(head_dim)


@dataclass
class CheckpointConfig:
    """The architecture of a mamba_ssm config.json, in this project's terms."""
    d_model: int
    n_layer: int
    vocab_size: int  # as declared (the tokenizer's); logits past it belong to padding rows
    padded_vocab_size: int  # rows of the embedding and the head
    mlp_hidden: int  # SwiGLU width after every mixer (d_intermediate rounded up to 128); 0 = none
    attn_layer_idx: tuple[int, ...]
    mamba2: Mamba2Config | None  # None when every layer is attention
    attention: AttentionSpec | None  # None when no layer is
    rms_norm: bool = True  # else LayerNorm with a bias
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True

    @property
    def kind(self) -> str:
        n_attention = len(self.attn_layer_idx)
        if n_attention == 0:
            return "mamba_ssm-mamba2"
        return "mamba_ssm-attention" if n_attention == self.n_layer else "mamba_ssm-hybrid"


@dataclass
class AttentionState:
    keys: Tensor  # (B, Hkv, P, Dh): every past key, already rotated
    values: Tensor  # (B, Hkv, P, Dh)
    seen: int | Tensor  # tokens seen so far (the position of the next one); (B,) per row after a merge
    conv_tail: Tensor | None  # (B, d_conv - 1, qkv_dim): the last convolution inputs, or None
    visible: Tensor | None = None  # (B, P) bool after a merge: False for the padding keys of shorter rows


def merge_states(states: list[list]) -> list:
    """One batch state from the states of separately prefilled sequences (each batch 1, any
    length): recurrent states stack; attention caches are padded on the left to the longest,
    with the padding keys marked invisible and each row keeping its own position. Decoding from
    the merged state gives each row what it gets alone."""
    merged = []
    for layer in zip(*states):
        first = layer[0]
        if isinstance(first, AttentionState):
            longest = max(s.keys.shape[2] for s in layer)

            def left_pad(t: Tensor) -> Tensor:  # (1, Hkv, P, Dh) -> (1, Hkv, longest, Dh)
                return F.pad(t, (0, 0, longest - t.shape[2], 0))

            visible = torch.zeros(len(layer), longest, dtype=torch.bool, device=first.keys.device)
            for row, s in enumerate(layer):
                visible[row, longest - s.keys.shape[2]:] = True
            merged.append(AttentionState(
                torch.cat([left_pad(s.keys) for s in layer]), torch.cat([left_pad(s.values) for s in layer]),
                torch.tensor([int(s.seen) for s in layer], device=first.keys.device),
                None if first.conv_tail is None else torch.cat([s.conv_tail for s in layer]), visible))
        else:  # Mamba-2: (conv_tail, ssm) of fixed size
            merged.append(Mamba2State(torch.cat([s.conv_tail for s in layer]), torch.cat([s.ssm for s in layer])))
    return merged


def _rope_rows(x: Tensor, positions: Tensor, rd: int, base: float) -> Tensor:
    """Rotary on the first rd dims of x (B, H, L, Dh) at per-row positions (B, L)."""
    B, L = positions.shape
    cos, sin = rope_tables(positions.reshape(-1), rd, base, x.dtype)  # (B*L, rd/2)
    cos, sin = cos.view(B, 1, L, -1), sin.view(B, 1, L, -1)
    return torch.cat([apply_rope(x[..., :rd], cos, sin), x[..., rd:]], dim=-1)


class CheckpointAttention(nn.Module):
    """Causal softmax attention as mamba_ssm's `MHA` computes it:

        qkv = conv(in_proj(x))                  rows (q: H heads, k: Hkv heads, v: Hkv heads)
        q, k = rope(q), rope(k)                 on the first rotary_dim dims of each head
        y_h = softmax(q_h k_g^T * scale) v_g    g = h // (H / Hkv): grouped key/value heads
        out = out_proj(y)
    """

    def __init__(self, spec: AttentionSpec):
        super().__init__()
        self.spec = spec
        H, Hkv, Dh = spec.n_heads, spec.n_kv_heads, spec.head_dim
        self.qkv_dim = (H + 2 * Hkv) * Dh
        self.in_proj = nn.Linear(spec.d_model, self.qkv_dim, bias=spec.qkv_bias)
        self.conv = CausalConv1d(self.qkv_dim, spec.d_conv) if spec.d_conv > 0 else None
        self.out_proj = nn.Linear(H * Dh, spec.d_model, bias=spec.out_bias)

    def forward(self, x: Tensor, state: AttentionState | None = None) -> tuple[Tensor, AttentionState]:
        B, L, _ = x.shape
        H, Hkv, Dh, rd = self.spec.n_heads, self.spec.n_kv_heads, self.spec.head_dim, self.spec.rotary_dim
        seen = 0 if state is None else state.seen
        qkv = self.in_proj(x)  # (B, L, qkv_dim)
        tail = None
        if self.conv is not None:  # no activation after it, as in MHA
            qkv, tail = self.conv(qkv, None if state is None else state.conv_tail)
        q, k, v = qkv.split([H * Dh, Hkv * Dh, Hkv * Dh], dim=-1)
        q = q.view(B, L, H, Dh).transpose(1, 2)  # (B, H, L, Dh)
        k = k.view(B, L, Hkv, Dh).transpose(1, 2)  # (B, Hkv, L, Dh)
        v = v.view(B, L, Hkv, Dh).transpose(1, 2)
        if isinstance(seen, Tensor):  # a merged batch: each row at its own position
            return self._forward_rows(q, k, v, state, tail, B, L)
        positions = torch.arange(seen, seen + L, device=x.device)  # (L,)
        if rd > 0:
            cos, sin = rope_tables(positions, rd, self.spec.rotary_base, q.dtype)  # (L, rd/2)
            q = torch.cat([apply_rope(q[..., :rd], cos, sin), q[..., rd:]], dim=-1)
            k = torch.cat([apply_rope(k[..., :rd], cos, sin), k[..., rd:]], dim=-1)
        if state is not None:
            k = torch.cat([state.keys, k], dim=2)  # (B, Hkv, P+L, Dh)
            v = torch.cat([state.values, v], dim=2)
        # enable_gqa repeats each key/value head for H / Hkv consecutive query heads, as MHA's
        # repeat_interleave does.
        options = dict(scale=self.spec.softmax_scale, enable_gqa=Hkv != H)
        if k.shape[2] == L:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, **options)  # (B, H, L, Dh)
        else:  # queries after cached keys: is_causal would align its triangle to the top left
            key_positions = torch.arange(k.shape[2], device=x.device)  # (P+L,)
            visible = key_positions[None, :] <= positions[:, None]  # (L, P+L)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible, **options)
        y = y.transpose(1, 2).reshape(B, L, H * Dh)  # (B, L, H*Dh)
        return self.out_proj(y), AttentionState(k, v, seen + L, tail)

    def _forward_rows(self, q: Tensor, k: Tensor, v: Tensor, state: AttentionState, tail, B: int, L: int):
        """`forward` after a merged state: per-row positions, padding keys masked out."""
        H, Dh, rd = self.spec.n_heads, self.spec.head_dim, self.spec.rotary_dim
        offsets = torch.arange(L, device=q.device)
        positions = state.seen[:, None] + offsets[None, :]  # (B, L)
        if rd > 0:
            q, k = _rope_rows(q, positions, rd, self.spec.rotary_base), _rope_rows(k, positions, rd, self.spec.rotary_base)
        P = state.keys.shape[2]
        k = torch.cat([state.keys, k], dim=2)  # (B, Hkv, P+L, Dh)
        v = torch.cat([state.values, v], dim=2)
        causal = torch.arange(P + L, device=q.device)[None, :] <= (P + offsets)[:, None]  # (L, P+L)
        keys = torch.cat([state.visible, torch.ones(B, L, dtype=torch.bool, device=q.device)], dim=1)  # (B, P+L)
        mask = causal[None, None] & keys[:, None, None, :]  # (B, 1, L, P+L)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.spec.softmax_scale,
                                           enable_gqa=self.spec.n_kv_heads != H)
        y = y.transpose(1, 2).reshape(B, L, H * Dh)
        return self.out_proj(y), AttentionState(k, v, state.seen + L, tail, keys)


def _normed(norm: nn.Module, x: Tensor, dtype: torch.dtype) -> Tensor:
    """norm(x) computed in float32 (as mamba_ssm's fused norms do), returned in `dtype`."""
    if isinstance(norm, nn.RMSNorm):
        y = F.rms_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.eps)
    else:
        y = F.layer_norm(x.float(), norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)
    return y.to(dtype)


def _make_norm(config: CheckpointConfig) -> nn.Module:
    if config.rms_norm:
        return nn.RMSNorm(config.d_model, eps=config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)


class CheckpointBlock(nn.Module):
    """x + mixer(norm(x)), then x + mlp(norm2(x)) when the checkpoint has MLPs."""

    def __init__(self, config: CheckpointConfig, attention: bool):
        super().__init__()
        self.norm = _make_norm(config)
        self.mixer = CheckpointAttention(config.attention) if attention else Mamba2Mixer(config.mamba2)
        self.norm2 = _make_norm(config) if config.mlp_hidden else None
        self.mlp = SwiGLU(config.d_model, config.mlp_hidden) if config.mlp_hidden else None

    def forward(self, x: Tensor, state=None):
        """x: the residual stream (B, L, D), in float32 when the checkpoint keeps it so."""
        mixer_dtype = self.mixer.out_proj.weight.dtype  # float32 for Mamba-2, see the module docstring
        h, state = self.mixer(_normed(self.norm, x, mixer_dtype), state)  # (B, L, D)
        x = x + h.to(x.dtype)
        if self.mlp is not None:
            x = x + self.mlp(_normed(self.norm2, x, self.mlp.down.weight.dtype)).to(x.dtype)
        return x, state


class CheckpointLM(nn.Module):
    def __init__(self, config: CheckpointConfig):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(CheckpointBlock(config, i in config.attn_layer_idx)
                                    for i in range(config.n_layer))
        self.norm_f = _make_norm(config)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.d_model, config.padded_vocab_size,
                                                                   bias=False)

    def forward(self, tokens: Tensor, state: list | None = None, last_only: bool = False
                ) -> tuple[Tensor, list]:
        """tokens (B, L) -> logits (B, L, V_padded), or (B, 1, V_padded) with last_only; and the new state."""
        x = self.embedding(tokens)  # (B, L, D)
        if self.config.residual_in_fp32:
            x = x.float()
        states = state if state is not None else [None] * len(self.layers)
        new_states = []
        for layer, layer_state in zip(self.layers, states):
            x, layer_state = layer(x, layer_state)
            new_states.append(layer_state)
        if last_only:
            x = x[:, -1:]
        head = self.embedding.weight if self.lm_head is None else self.lm_head.weight  # (V_padded, D)
        return F.linear(_normed(self.norm_f, x, head.dtype), head), new_states  # (B, L, V_padded)

    def cast(self, dtype: torch.dtype) -> "CheckpointLM":
        """Everything to `dtype` except the Mamba-2 mixers, kept in float32 (see the module
        docstring); each parameter is cast once, from the checkpoint's own dtype."""
        parts = [self.embedding, self.norm_f, self.lm_head] + [p for layer in self.layers for p in layer.children()]
        for part in parts:
            if part is not None:
                part.to(torch.float32 if isinstance(part, Mamba2Mixer) else dtype)
        return self

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
