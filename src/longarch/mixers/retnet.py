"""RetNet mixer: multi-scale retention of Sun et al. (2023), "Retentive Network".

Per head h with a fixed scalar decay gamma_h in (0, 1), queries and keys rotated by their
absolute position n (RoPE, the rotation part of xPos), the layer computes the recurrence

    S_n = gamma_h * S_{n-1} + k_n^T v_n       S: (key_dim, value_dim)
    o_n = q_n S_n

which, unrolled, is o_n = sum_{m<=n} gamma_h^(n-m) (q_n . k_m) v_m: attention with a causal
decay mask D_nm = gamma_h^(n-m) instead of a softmax. Each head's output is normalised on its
own (GroupNorm with one group per head), gated by swish(W_g x), and projected back to d_model.

The decays follow the paper's schedule gamma = 1 - 2^(-5 - h), spread over however many heads
there are: the first head remembers ~32 tokens, the last ~4096 (2^-5 .. 2^-12, the range of the
paper's 8-head models). They are fixed, not learned.

`retention_chunked` evaluates the recurrence chunk by chunk (decay-masked attention inside a
chunk, the recurrence across chunk boundaries); `retention_reference` is the same recurrence one
step at a time, written for clarity. The tests hold the two equal.

The paper's RetNet has no convolution (d_conv = 0, the default). With d_conv > 0, q, k and v pass
through a short causal depthwise convolution with silu before the rotation, as in GLA's option
(flash-linear-attention's `use_short_conv`).

State is (S, position, conv_tail): the retention state of every head, the absolute position of
the next token, so that a sequence fed in pieces is rotated exactly as when fed whole, and the
convolution's last d_conv - 1 inputs when d_conv > 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import CausalConv1d
from .gla import gla_reference
from .base import ArchSpec, DecayScaled, MixerSpec, around


@dataclass
class RetNetConfig:
    d_model: int
    n_heads: int = 4
    expand: float = 2.0  # value (and gate) width as a multiple of d_model; the paper uses 2
    rope_base: float = 10000.0
    chunk_size: int = 64
    d_conv: int = 0  # short convolution on q, k, v (0: none, as in the paper)

    @property
    def head_dim(self) -> int:
        # Queries and keys split d_model over the heads, rounded up to an even width (the
        # rotation turns pairs), so any d_model is valid and parameter counts vary smoothly.
        return 2 * -(-self.d_model // (2 * self.n_heads))

    @property
    def value_head_dim(self) -> int:
        return max(1, round(self.expand * self.d_model / self.n_heads))


@dataclass
class RetNetState:
    S: Tensor      # (B, H, K, V): the retention state of every head
    position: int  # absolute position of the next token (for the rotation of q and k)
    conv_tail: Tensor | None = None  # (B, d_conv - 1, H*(2K + V)): the convolution's last inputs


def log_decays(n_heads: int) -> Tensor:
    """log gamma_h for gamma_h = 1 - 2^-e_h, e spread evenly over [5, 12]. (H,), float64."""
    exponents = torch.linspace(5.0, 12.0, n_heads, dtype=torch.float64, device="cpu")
    return torch.log1p(-(2.0 ** -exponents))


def rotate(x: Tensor, positions: Tensor, base: float) -> Tensor:
    """Rotate pairs (first half, second half) of the last dimension of x (B, L, H, K) by
    position * frequency, as RoPE does. Angles are computed in float64: positions reach 64K."""
    K = x.shape[-1]
    inv_freq = base ** (-torch.arange(0, K, 2, device=x.device, dtype=torch.float64) / K)  # (K/2,)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (L, K/2)
    cos = angles.cos().to(x.dtype)[None, :, None, :]  # (1, L, 1, K/2)
    sin = angles.sin().to(x.dtype)[None, :, None, :]
    x1, x2 = x.chunk(2, dim=-1)  # (B, L, H, K/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def retention_chunked(q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor, chunk_size: int,
                      initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Chunked retention.

    q, k: (b, L, H, K); v: (b, L, H, V); log_gamma: (H,) <= 0; initial_state: (b, H, K, V) or None.
    Returns o (b, L, H, V) and the final state (b, H, K, V).
    """
    b, L, H, K = q.shape
    V = v.shape[-1]
    pad = (-L) % chunk_size
    # A per-position log-decay, zero on padding: zero keys/values with no decay leave the state
    # untouched, so padding the last chunk is exact (a fixed gamma would decay it too far).
    log_a = log_gamma.to(q.dtype).expand(L, H)  # (L, H)
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        log_a = F.pad(log_a, (0, 0, 0, pad))
    c, Q = (L + pad) // chunk_size, chunk_size
    q = q.reshape(b, c, Q, H, K)
    k = k.reshape(b, c, Q, H, K)
    v = v.reshape(b, c, Q, H, V)
    a_cum = torch.cumsum(log_a.reshape(c, Q, H).permute(2, 0, 1), dim=-1)  # (H, c, Q)

    # 1. Within each chunk: o_i = sum_{j<=i} (q_i . k_j) gamma^(i-j) v_j. The exponent is a
    # difference of cumulative log-decays, <= 0 on and below the diagonal, masked above it.
    causal = torch.ones(Q, Q, dtype=torch.bool, device=q.device).tril()
    decay = torch.exp((a_cum[..., :, None] - a_cum[..., None, :]).masked_fill(~causal, float("-inf")))  # (H, c, Q, Q)
    scores = torch.einsum("bcihk,bcjhk->bhcij", q, k) * decay  # (b, H, c, Q, Q)
    o_intra = torch.einsum("bhcij,bcjhv->bcihv", scores, v)  # (b, c, Q, H, V)

    # 2. The state each chunk would leave behind if it started from zero.
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (H, c, Q)
    # Chunk-major and contiguous: the loop below reads one chunk at a time, and a strided view
    # of a permuted einsum output made each read a cache miss per element (20x slower at L=4096).
    chunk_states = torch.einsum("bcjhk,hcj,bcjhv->cbhkv", k, decay_to_end, v).contiguous()  # (c, b, H, K, V)

    # 3. Carry the state across chunk boundaries: a short loop over chunks, not time steps.
    chunk_decay = torch.exp(a_cum[..., -1]).transpose(0, 1)[..., None, None]  # (c, H, 1, 1)
    S = q.new_zeros(b, H, K, V) if initial_state is None else initial_state
    entering = []
    for i in range(c):
        entering.append(S)
        S = chunk_decay[i] * S + chunk_states[i]  # (b, H, K, V)
    entering = torch.stack(entering, dim=1)  # (b, c, H, K, V)

    # 4. What the state entering each chunk contributes: it decays by gamma^(i+1) up to row i.
    o_inter = torch.einsum("bcihk,bchkv,hci->bcihv", q, entering, torch.exp(a_cum))  # (b, c, Q, H, V)

    o = (o_intra + o_inter).reshape(b, c * Q, H, V)[:, :L]
    return o, S


def retention_reference(q: Tensor, k: Tensor, v: Tensor, log_gamma: Tensor,
                        initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The same recurrence as `retention_chunked`, one time step at a time: GLA's recurrence
    with one constant decay per head instead of a data-dependent one per key."""
    b, L, H, K = q.shape
    log_a = log_gamma.to(q.dtype)[None, None, :, None].expand(b, L, H, K)  # (b, L, H, K)
    return gla_reference(q, k, v, log_a, initial_state)


class RetNetMixer(DecayScaled, nn.Module):
    def __init__(self, config: RetNetConfig):
        super().__init__()
        self.config = config
        H, K, V = config.n_heads, config.head_dim, config.value_head_dim
        self.q_proj = nn.Linear(config.d_model, H * K, bias=False)
        self.k_proj = nn.Linear(config.d_model, H * K, bias=False)
        self.v_proj = nn.Linear(config.d_model, H * V, bias=False)
        self.g_proj = nn.Linear(config.d_model, H * V, bias=False)
        self.norm = nn.GroupNorm(H, H * V)  # one group per head: heads decay at different rates
        self.out_proj = nn.Linear(H * V, config.d_model, bias=False)
        if config.d_conv > 0:
            self.conv = CausalConv1d(H * (2 * K + V), config.d_conv, bias=False)

    def forward(self, x: Tensor, state: RetNetState | None = None, reference: bool = False
                ) -> tuple[Tensor, RetNetState]:
        b, L, _ = x.shape
        H, K, V = self.config.n_heads, self.config.head_dim, self.config.value_head_dim
        start = 0 if state is None else state.position
        positions = torch.arange(start, start + L, device=x.device)  # (L,)
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (b, L, H*K), (b, L, H*K), (b, L, H*V)
        conv_tail = None
        if self.config.d_conv > 0:
            (q, k, v), conv_tail = self.conv.silu_parts([q, k, v], None if state is None else state.conv_tail)
        q = rotate(q.view(b, L, H, K), positions, self.config.rope_base)  # (b, L, H, K)
        k = rotate(k.view(b, L, H, K), positions, self.config.rope_base) * K ** -0.5
        v = v.view(b, L, H, V)  # (b, L, H, V)
        log_gamma = log_decays(H).to(x.device)  # (H,)
        if self.decay_factor != 1.0:  # decay-scale at evaluation: gamma^(T / L) (DecayScaled)
            log_gamma = log_gamma * self.decay_factor
        S0 = None if state is None else state.S
        if reference:
            o, S = retention_reference(q, k, v, log_gamma, S0)
        else:
            o, S = retention_chunked(q, k, v, log_gamma, self.config.chunk_size, S0)
        o = self.norm(o.reshape(b * L, H * V)).view(b, L, H * V)  # (b, L, H*V)
        y = self.out_proj(F.silu(self.g_proj(x)) * o)  # (b, L, d_model)
        return y, RetNetState(S, start + L, conv_tail)

    @staticmethod
    def state_floats(config: RetNetConfig, length: int) -> int:
        """Floats of state per sequence: constant in the length (the position is one integer)."""
        H, K, V = config.n_heads, config.head_dim, config.value_head_dim
        return H * K * V + max(0, config.d_conv - 1) * H * (2 * K + V)


MIXERS = [MixerSpec("retnet", RetNetConfig, RetNetMixer, "linear-recurrent", letter="R")]
ARCHITECTURES = [
    ArchSpec("retnet", "RetNet: multi-scale retention (fixed per-head decays, RoPE), swish gate, SwiGLU MLP",
             pattern="R", n_layers=2, mlp_ratio=2.0, mixer={"n_heads": 4}, size_knobs={"mlp_ratio": around(2.0)}),
]
