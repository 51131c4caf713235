"""DeltaNet and Gated DeltaNet: linear attention that writes with the delta rule.

Per head, with unit-norm key k_t, value v_t, query q_t, write strength beta_t in (0, 1) and
(Gated DeltaNet only) a scalar decay alpha_t = exp(-exp(A_log) * softplus(a_t + dt_bias)),

    S_t = alpha_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T      S: (head_dim_v, head_dim_k)
    o_t = S_t q_t

i.e. the state first forgets (alpha_t), then replaces the value stored under k_t by a
beta-weighted mix of the old value S k_t and the new one v_t, instead of only adding v_t k_t^T
as linear attention does (Schlag et al. 2021; Yang et al. 2024, 2025). alpha_t = 1 for DeltaNet.

q, k, v come from a short causal depthwise convolution with silu; q and k are L2-normalised.
Each head's output is RMS-normalised, gated by silu(W_g x) and projected back to d_model.

`delta_rule_chunked` is the chunkwise WY (UT-transform) form of Yang et al.: inside a chunk a
unit lower-triangular solve turns the sequential updates into matrix products, and a loop over
chunks carries the state. `delta_rule_reference` is the same recurrence one step at a time.

State is (conv_tail, recurrent): the last d_conv - 1 inputs of the convolution and S_t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import CausalConv1d
from .base import ArchSpec, DecayScaled, MixerSpec, TokenFiltered, around


@dataclass
class DeltaNetConfig:
    d_model: int
    head_dim: int = 16
    expand: float = 1.0
    d_conv: int = 4
    chunk_size: int = 64
    # Not an option: each variant has its own config class (and mixer letter), so a shared
    # option dict of a hybrid model cannot turn one variant into the other.
    gated: ClassVar[bool] = False

    @property
    def n_heads(self) -> int:
        return max(1, round(self.expand * self.d_model / self.head_dim))

    @property
    def d_inner(self) -> int:
        return self.n_heads * self.head_dim


@dataclass
class GatedDeltaNetConfig(DeltaNetConfig):
    gated: ClassVar[bool] = True


@dataclass
class DeltaNetState:
    conv_tail: Tensor  # (B, d_conv - 1, 3 * d_inner): the last inputs of the causal convolution
    recurrent: Tensor  # (B, H, Dv, Dk)


def delta_rule_chunked(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_alpha: Tensor | None = None,
                       chunk_size: int = 64, initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Chunkwise (gated) delta rule.

    q, k: (b, L, H, Dk), k unit-norm; v: (b, L, H, Dv); beta: (b, L, H) in (0, 1);
    log_alpha: (b, L, H) <= 0 or None (no decay); initial_state: (b, H, Dv, Dk) or None.
    Returns o (b, L, H, Dv) and the final state (b, H, Dv, Dk).

    With g_i the cumulative log decay inside a chunk and S_0 the state entering it, the update
    is S_i = e^{g_i} S_0 + sum_{j<=i} e^{g_i - g_j} delta_j k_j^T, where the corrections
    delta_j = beta_j (v_j - alpha_j S_{j-1} k_j) satisfy the unit lower-triangular system
    (I + A) Delta = diag(beta) V - diag(beta e^g) K S_0^T,  A_ij = beta_i e^{g_i - g_j} k_i.k_j (j < i).
    So Delta = U - W S_0^T with U, W from one solve for all chunks at once; only the cheap
    S_0-dependent products run in the loop over chunks.
    """
    b, L, H, Dk = k.shape
    Dv = v.shape[-1]
    if log_alpha is None:
        log_alpha = beta.new_zeros(b, L, H)
    pad = (-L) % chunk_size
    if pad:
        # k = v = beta = 0 and no decay leave the state untouched, so padding is exact.
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        beta, log_alpha = (F.pad(t, (0, 0, 0, pad)) for t in (beta, log_alpha))
    n, C = (L + pad) // chunk_size, chunk_size

    def chunked(t: Tensor) -> Tensor:  # (b, n*C, H, D) -> (b, H, n, C, D)
        return t.reshape(b, n, C, H, -1).permute(0, 3, 1, 2, 4)

    q, k, v = chunked(q), chunked(k), chunked(v)  # (b, H, n, C, D)
    beta = chunked(beta[..., None])  # (b, H, n, C, 1)
    g = torch.cumsum(chunked(log_alpha[..., None])[..., 0], dim=-1)  # (b, H, n, C)

    # Decays between positions of one chunk: differences of g are <= 0 on and below the
    # diagonal, and the mask keeps exp away from the positive ones above it.
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = torch.exp((g[..., :, None] - g[..., None, :]).masked_fill(~causal, float("-inf")))  # (b, H, n, C, C)
    # I + A: a unitriangular solve reads only the strictly lower triangle (in its gradient too),
    # so the diagonal of beta K K^T needs neither masking nor replacing by ones.
    A = beta * (k @ k.transpose(-1, -2)) * decay  # (b, H, n, C, C)
    rhs = torch.cat([beta * v, beta * torch.exp(g)[..., None] * k], dim=-1)  # (b, H, n, C, Dv+Dk)
    U, W = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True).split([Dv, Dk], dim=-1)

    scores = (q @ k.transpose(-1, -2)) * decay  # (b, H, n, C, C), zero above the diagonal
    q_decayed = q * torch.exp(g)[..., None]  # (b, H, n, C, Dk): how S_0 reaches each output
    k_to_end = k * torch.exp(g[..., -1:] - g)[..., None]  # (b, H, n, C, Dk)
    chunk_decay = torch.exp(g[..., -1])[..., None, None]  # (b, H, n, 1, 1)

    S = q.new_zeros(b, H, Dv, Dk) if initial_state is None else initial_state
    outputs = []
    for c in range(n):
        delta = U[:, :, c] - W[:, :, c] @ S.transpose(-1, -2)  # (b, H, C, Dv)
        outputs.append(q_decayed[:, :, c] @ S.transpose(-1, -2) + scores[:, :, c] @ delta)  # (b, H, C, Dv)
        S = chunk_decay[:, :, c] * S + delta.transpose(-1, -2) @ k_to_end[:, :, c]  # (b, H, Dv, Dk)
    o = torch.stack(outputs, dim=2)  # (b, H, n, C, Dv)
    return o.permute(0, 2, 3, 1, 4).reshape(b, n * C, H, Dv)[:, :L], S


def delta_rule_reference(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_alpha: Tensor | None = None,
                         initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The same recurrence as `delta_rule_chunked`, one time step at a time."""
    b, L, H, Dk = k.shape
    S = q.new_zeros(b, H, v.shape[-1], Dk) if initial_state is None else initial_state
    outputs = []
    for t in range(L):
        if log_alpha is not None:
            S = torch.exp(log_alpha[:, t])[:, :, None, None] * S  # (b, H, Dv, Dk)
        old = torch.einsum("bhvk,bhk->bhv", S, k[:, t])  # (b, H, Dv): the value now stored under k_t
        new = beta[:, t, :, None] * (v[:, t] - old)  # (b, H, Dv)
        S = S + new[..., :, None] * k[:, t, :, None, :]  # (b, H, Dv, Dk)
        outputs.append(torch.einsum("bhvk,bhk->bhv", S, q[:, t]))  # (b, H, Dv)
    return torch.stack(outputs, dim=1), S


def l2_normalise(x: Tensor, eps: float = 1e-6) -> Tensor:
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)


class DeltaNetMixer(DecayScaled, TokenFiltered, nn.Module):
    def __init__(self, config: DeltaNetConfig):
        super().__init__()
        self.config = config
        H, P, d_inner = config.n_heads, config.head_dim, config.d_inner
        self.conv_dim = 3 * d_inner
        # q, k, v, output gate, beta logits, and for the gated variant the decay's dt logits
        self.in_proj = nn.Linear(config.d_model, 4 * d_inner + H * (2 if config.gated else 1), bias=False)
        self.conv = CausalConv1d(self.conv_dim, config.d_conv, bias=False)
        if config.gated:
            # Mamba-2's decay recipe: dt in [1e-3, 1e-1] (log-uniform), A in [1, 16], so that
            # heads start with memory horizons from a few tokens to a thousand.
            dt = torch.empty(H).uniform_(math.log(1e-3), math.log(1e-1)).exp()
            self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        self.norm = nn.RMSNorm(P, eps=1e-5)  # per head, weights shared by the heads
        self.out_proj = nn.Linear(d_inner, config.d_model, bias=False)

    @classmethod
    def inference_interventions(cls, config: DeltaNetConfig) -> tuple[str, ...]:
        """decay-scale, decay-scale-fit and token-filter for Gated DeltaNet only: DeltaNet's state
        has no decay to scale, nor one that selects tokens."""
        return super().inference_interventions(config) if config.gated else ()

    def forward(self, u: Tensor, state: DeltaNetState | None = None, reference: bool = False
                ) -> tuple[Tensor, DeltaNetState]:
        b, L, _ = u.shape
        H, P, d_inner = self.config.n_heads, self.config.head_dim, self.config.d_inner
        splits = [self.conv_dim, d_inner, H] + ([H] if self.config.gated else [])
        qkv, gate, beta, *dt = self.in_proj(u).split(splits, dim=-1)  # (b, L, .)

        qkv, new_tail = self.conv(qkv, None if state is None else state.conv_tail)  # (b, L, conv_dim)
        qkv = F.silu(qkv)

        q, k, v = qkv.reshape(b, L, 3, H, P).unbind(2)  # (b, L, H, P) each
        q, k = l2_normalise(q), l2_normalise(k)
        beta = torch.sigmoid(beta)  # (b, L, H)
        log_alpha = -torch.exp(self.A_log) * F.softplus(dt[0] + self.dt_bias) if self.config.gated else None  # (b, L, H)
        if log_alpha is not None and self.decay_factor != 1.0:  # decay-scale: alpha^(T / L) (DecayScaled)
            log_alpha = log_alpha * self.decay_factor
        keep = None if log_alpha is None else self.token_keep(-log_alpha)  # (b, L, H) or None: token-filter
        if keep is not None:  # a filtered token: alpha = 1 and beta = 0, so no write (TokenFiltered)
            log_alpha, beta = log_alpha * keep, beta * keep
        S0 = None if state is None else state.recurrent
        if reference:
            o, S = delta_rule_reference(q, k, v, beta, log_alpha, S0)
        else:
            o, S = delta_rule_chunked(q, k, v, beta, log_alpha, self.config.chunk_size, S0)
        y = self.norm(o).reshape(b, L, d_inner) * F.silu(gate)  # (b, L, d_inner)
        return self.out_proj(y), DeltaNetState(new_tail, S)

    @staticmethod
    def state_floats(config: DeltaNetConfig, length: int) -> int:
        """Floats of state per sequence: constant in the length."""
        return config.n_heads * config.head_dim ** 2 + (config.d_conv - 1) * 3 * config.d_inner


MIXERS = [MixerSpec("deltanet", DeltaNetConfig, DeltaNetMixer, "linear-recurrent", letter="T"),
          MixerSpec("gated-deltanet", GatedDeltaNetConfig, DeltaNetMixer, "linear-recurrent", letter="E")]
ARCHITECTURES = [
    ArchSpec("deltanet", "DeltaNet: linear attention with delta-rule writes (chunkwise WY form), short conv, no MLP",
             pattern="T", n_layers=4, mixer={"head_dim": 16}, size_knobs={"expand": around(1.0)}),
    ArchSpec("gated-deltanet", "Gated DeltaNet: the delta rule plus a Mamba-2-style per-head decay gate, no MLP",
             pattern="E", n_layers=4, mixer={"head_dim": 16}, size_knobs={"expand": around(1.0)}),
]
