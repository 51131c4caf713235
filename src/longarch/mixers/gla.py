"""Gated Linear Attention (GLA) mixer of Yang et al. (2023), "Gated Linear Attention
Transformers with Hardware-Efficient Training".

Per head, with a data-dependent decay alpha_t in (0, 1)^key_dim for every key dimension,

    alpha_t = sigmoid(W_a2 W_a1 x_t + b_a) ^ (1 / gate_logit_normalizer)
    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t       S: (key_dim, value_dim)
    o_t = q_t S_t

The low-rank gate and the 1/16 power (log alpha = logsigmoid(.) / 16) follow the paper: decays
start near sigmoid(0)^(1/16) = 0.958 and can be pushed towards 1 for long memory. Each head's
output is RMS-normalised, gated by silu(W_r x), and projected back to d_model.

`gla_chunked` evaluates the recurrence chunk by chunk; `gla_reference` is the same recurrence
one step at a time, written for clarity. The tests hold the two equal.

The paper's GLA has no convolution or token shift (d_conv = 0, the default). With d_conv > 0, q, k
and v pass through a short causal depthwise convolution with silu first, flash-linear-attention's
`use_short_conv` option; the short convolution is what lets a linear-attention layer bind a value
to the key just before it (Zoology's finding for associative recall).

State is S, the (key_dim, value_dim) state of every head, plus the convolution's last d_conv - 1
inputs when d_conv > 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import CausalConv1d
from .base import ArchSpec, DecayScaled, MixerSpec, TokenFiltered, around


@dataclass
class GLAConfig:
    d_model: int
    n_heads: int = 4
    key_expand: float = 0.5  # query/key width as a multiple of d_model (the paper: d/2)
    expand: float = 1.0      # value (and output gate) width as a multiple of d_model (the paper: d)
    gate_rank: int = 16      # rank of the decay gate's low-rank projection
    gate_logit_normalizer: float = 16.0
    chunk_size: int = 16     # small: the intra-chunk decays are a (Q, Q, key_dim) tensor
    d_conv: int = 0          # short convolution on q, k, v (0: none, as in the paper)

    @property
    def head_dim(self) -> int:
        return max(1, round(self.key_expand * self.d_model / self.n_heads))

    @property
    def value_head_dim(self) -> int:
        return max(1, round(self.expand * self.d_model / self.n_heads))


@dataclass
class GLAState:
    S: Tensor  # (B, H, K, V)
    conv_tail: Tensor | None = None  # (B, d_conv - 1, H*(2K + V)): the convolution's last inputs


def gla_chunked(q: Tensor, k: Tensor, v: Tensor, log_a: Tensor, chunk_size: int,
                initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Chunked GLA scan.

    q, k: (b, L, H, K); v: (b, L, H, V); log_a: (b, L, H, K) <= 0 (log alpha);
    initial_state: (b, H, K, V) or None. Returns o (b, L, H, V) and the final state (b, H, K, V).

    Stability: the decay between positions j <= i of a chunk is exp(B_i - B_j) with B the
    cumulative log-decay from the chunk start. Splitting it as (q_i e^{B_i}) . (k_j e^{-B_j})
    would let the matrix multiply do the work, but e^{-B_j} overflows fp32 once a chunk has
    decayed by e^-88, which a data-dependent gate can reach within a few steps. Instead the
    exponent B_i - B_j is formed pairwise per key dimension and masked to -inf above the
    diagonal before the exp, so every exp here has an exponent <= 0. The price is a
    (Q, Q, K) tensor per chunk, which is why the default chunk is small (16); the paper's
    secondary-level chunking avoids it on a GPU, where tiling matters more than on a CPU.
    """
    b, L, H, K = q.shape
    V = v.shape[-1]
    pad = (-L) % chunk_size
    if pad:
        # Zero keys/values and zero log-decay leave the state untouched, so padding is exact.
        q, k, v, log_a = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v, log_a))
    c, Q = (L + pad) // chunk_size, chunk_size
    q = q.reshape(b, c, Q, H, K)
    k = k.reshape(b, c, Q, H, K)
    v = v.reshape(b, c, Q, H, V)
    a_cum = torch.cumsum(log_a.reshape(b, c, Q, H, K), dim=2)  # (b, c, Q, H, K), <= 0, decreasing

    # 1. Within each chunk: o_i = sum_{j<=i} (q_i . (exp(B_i - B_j) * k_j)) v_j.
    causal = torch.ones(Q, Q, dtype=torch.bool, device=q.device).tril()[:, :, None, None]  # (Q, Q, 1, 1)
    exponent = (a_cum[:, :, :, None] - a_cum[:, :, None, :]).masked_fill(~causal, float("-inf"))
    decay = torch.exp(exponent)  # (b, c, Q, Q, H, K)
    scores = (q[:, :, :, None] * k[:, :, None, :] * decay).sum(-1)  # (b, c, Q, Q, H)
    o_intra = torch.einsum("bcijh,bcjhv->bcihv", scores, v)  # (b, c, Q, H, V)

    # 2. The state each chunk would leave behind if it started from zero.
    k_to_end = k * torch.exp(a_cum[:, :, -1:] - a_cum)  # (b, c, Q, H, K)
    # Chunk-major and contiguous, so that the loop below reads one contiguous block per chunk.
    chunk_states = torch.einsum("bcjhk,bcjhv->cbhkv", k_to_end, v).contiguous()  # (c, b, H, K, V)

    # 3. Carry the state across chunk boundaries: a short loop over chunks, not time steps.
    chunk_decay = torch.exp(a_cum[:, :, -1]).transpose(0, 1)[..., None].contiguous()  # (c, b, H, K, 1)
    S = q.new_zeros(b, H, K, V) if initial_state is None else initial_state
    entering = []
    for i in range(c):
        entering.append(S)
        S = chunk_decay[i] * S + chunk_states[i]  # (b, H, K, V)
    entering = torch.stack(entering, dim=1)  # (b, c, H, K, V)

    # 4. What the state entering each chunk contributes: decayed by exp(B_i) up to row i.
    o_inter = torch.einsum("bcihk,bchkv->bcihv", q * torch.exp(a_cum), entering)  # (b, c, Q, H, V)

    o = (o_intra + o_inter).reshape(b, c * Q, H, V)[:, :L]
    return o, S


def gla_reference(q: Tensor, k: Tensor, v: Tensor, log_a: Tensor,
                  initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The same recurrence as `gla_chunked`, one time step at a time."""
    b, L, H, K = q.shape
    V = v.shape[-1]
    S = q.new_zeros(b, H, K, V) if initial_state is None else initial_state
    outputs = []
    for t in range(L):
        alpha = torch.exp(log_a[:, t])[..., None]  # (b, H, K, 1)
        S = alpha * S + k[:, t, :, :, None] * v[:, t, :, None, :]  # (b, H, K, V)
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))  # (b, H, V)
    return torch.stack(outputs, dim=1), S


class GLAMixer(DecayScaled, TokenFiltered, nn.Module):
    def __init__(self, config: GLAConfig):
        super().__init__()
        self.config = config
        H, K, V = config.n_heads, config.head_dim, config.value_head_dim
        self.q_proj = nn.Linear(config.d_model, H * K, bias=False)
        self.k_proj = nn.Linear(config.d_model, H * K, bias=False)
        self.v_proj = nn.Linear(config.d_model, H * V, bias=False)
        self.r_proj = nn.Linear(config.d_model, H * V, bias=False)  # output gate
        self.gate_down = nn.Linear(config.d_model, config.gate_rank, bias=False)
        self.gate_up = nn.Linear(config.gate_rank, H * K, bias=False)
        # The gate's bias is a plain parameter (the model re-initialises Linear biases); zero as
        # in the reference implementation, so every decay starts at 0.5^(1/16) = 0.958.
        self.gate_bias = nn.Parameter(torch.zeros(H * K))
        # Per head, shared across heads. A fixed eps (float32's epsilon, what PyTorch uses for a
        # float32 input, so training is as before), not the input dtype's: with the dtype's, float64
        # computed another function than float32 where the head outputs are small (up to 0.17 apart).
        self.norm = nn.RMSNorm(V, eps=torch.finfo(torch.float32).eps)
        if config.d_conv > 0:
            self.conv = CausalConv1d(H * (2 * K + V), config.d_conv, bias=False)
        self.out_proj = nn.Linear(H * V, config.d_model, bias=False)

    def forward(self, x: Tensor, state: GLAState | None = None, reference: bool = False
                ) -> tuple[Tensor, GLAState]:
        b, L, _ = x.shape
        H, K, V = self.config.n_heads, self.config.head_dim, self.config.value_head_dim
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (b, L, H*K), (b, L, H*K), (b, L, H*V)
        conv_tail = None
        if self.config.d_conv > 0:
            (q, k, v), conv_tail = self.conv.silu_parts([q, k, v], None if state is None else state.conv_tail)
        q = q.view(b, L, H, K) * K ** -0.5  # (b, L, H, K)
        k = k.view(b, L, H, K)  # (b, L, H, K)
        v = v.view(b, L, H, V)  # (b, L, H, V)
        gate_logits = self.gate_up(self.gate_down(x)) + self.gate_bias  # (b, L, H*K)
        log_a = (F.logsigmoid(gate_logits) / self.config.gate_logit_normalizer).view(b, L, H, K)  # (b, L, H, K)
        if self.decay_factor != 1.0:  # decay-scale at evaluation: alpha^(T / L) (DecayScaled)
            log_a = log_a * self.decay_factor
        keep = self.token_keep(-log_a.mean(-1))  # (b, L, H) or None: token-filter's mask, importance -log alpha_t
        if keep is not None:  # a filtered token: alpha = 1 and k = 0, so no write (TokenFiltered)
            log_a, k = log_a * keep[..., None], k * keep[..., None]
        S0 = None if state is None else state.S
        if reference:
            o, S = gla_reference(q, k, v, log_a, S0)
        else:
            o, S = gla_chunked(q, k, v, log_a, self.config.chunk_size, S0)
        o = self.norm(o).reshape(b, L, H * V)  # (b, L, H*V)
        y = self.out_proj(o * F.silu(self.r_proj(x)))  # (b, L, d_model)
        return y, GLAState(S, conv_tail)

    @staticmethod
    def state_floats(config: GLAConfig, length: int) -> int:
        """Floats of state per sequence: constant in the length."""
        H, K, V = config.n_heads, config.head_dim, config.value_head_dim
        return H * K * V + max(0, config.d_conv - 1) * H * (2 * K + V)


MIXERS = [MixerSpec("gla", GLAConfig, GLAMixer, "linear-recurrent", letter="G")]
ARCHITECTURES = [
    ArchSpec("gla", "Gated Linear Attention: data-dependent per-key decays from a low-rank gate, SwiGLU MLP",
             pattern="G", n_layers=2, mlp_ratio=4.0, mixer={"n_heads": 4}, size_knobs={"mlp_ratio": around(4.0)}),
]
