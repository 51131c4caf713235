"""Mamba-2 mixer: the state-space duality (SSD) layer of Dao & Gu (2024).

Per head h with scalar decay a_t = exp(dt_t * A_h) (A_h < 0), the layer computes the recurrence

    S_t = a_t * S_{t-1} + (dt_t * x_t) B_t^T      S: (head_dim, d_state)
    y_t = S_t C_t + D_h * x_t

after a short causal depthwise convolution over (x, B, C), and gates the result with silu(z)
before a normalisation and the output projection.

`ssd_chunked` evaluates the recurrence chunk by chunk: quadratic attention-like work inside a
chunk, a linear recurrence across chunk boundaries. `ssd_reference` is the same recurrence one
step at a time, written for clarity; the tests hold the two equal.

State is (conv_tail, ssm_state): the last d_conv - 1 inputs of the convolution and S_t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import CausalConv1d
from .base import ArchSpec, DecayScaled, MixerSpec, TokenFiltered, around


@dataclass
class Mamba2Config:
    d_model: int
    d_state: int = 16
    expand: float = 2.0
    head_dim: int = 16
    d_conv: int = 4
    chunk_size: int = 64
    norm_eps: float = 1e-5  # of the gated RMSNorm, as in Mamba-2 (not the dtype's epsilon)

    @property
    def n_heads(self) -> int:
        return max(1, round(self.expand * self.d_model / self.head_dim))

    @property
    def d_inner(self) -> int:
        return self.n_heads * self.head_dim


@dataclass
class Mamba2State:
    conv_tail: Tensor  # (B, d_conv - 1, conv_dim): the last inputs of the causal convolution
    ssm: Tensor        # (B, H, P, N)


def segment_sum(a: Tensor) -> Tensor:
    """out[..., i, j] = a[..., j+1] + ... + a[..., i] for i >= j, and -inf above the diagonal.

    Summing the masked increments (rather than differencing a cumulative sum) keeps precision
    when the cumulative sum is large. a: (..., T) -> (..., T, T)."""
    T = a.shape[-1]
    x = a[..., None, :].expand(*a.shape, T).transpose(-1, -2)  # x[..., i, j] = a[..., i]
    strictly_lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device), diagonal=-1)
    x = x.masked_fill(~strictly_lower, 0.0)
    out = torch.cumsum(x, dim=-2)  # sum over k <= i of a_k for k > j
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=a.device))
    return out.masked_fill(~lower, float("-inf"))


class WithinChunks(torch.autograd.Function):
    """The quadratic part of the chunked scan, with a hand-written backward.

    Forward: W[i, j] = exp(a_cum_i - a_cum_j) * scores[i, j] for j <= i (0 above the diagonal),
    y = W x. Differences of the cumulative sum are cheaper than `segment_sum` and precise enough
    within one chunk. Autograd would spend about twice as many passes over the (b, H, c, Q, Q)
    weights in backward; here the gradient of the exponent is dW * W (W is zero above the
    diagonal, so no mask is needed), and its two reductions replace a negation and a mask.
    a_cum: (b, H, c, Q); scores: (b, 1, c, Q, Q) shared by the heads; x: (b, H, c, Q, P)."""

    @staticmethod
    def forward(ctx, a_cum: Tensor, scores: Tensor, x: Tensor) -> Tensor:
        Q = a_cum.shape[-1]
        above = torch.ones(Q, Q, dtype=torch.bool, device=a_cum.device).triu(1)
        decay = (a_cum[..., :, None] - a_cum[..., None, :]).masked_fill_(above, float("-inf")).exp_()
        weights = decay * scores  # (b, H, c, Q, Q)
        ctx.save_for_backward(decay, scores, weights, x)
        return weights @ x  # (b, H, c, Q, P)

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        decay, scores, weights, x = ctx.saved_tensors
        grad_x = weights.transpose(-1, -2) @ grad_y  # (b, H, c, Q, P)
        grad_w = grad_y @ x.transpose(-1, -2)  # (b, H, c, Q, Q)
        grad_scores = (grad_w * decay).sum(dim=1, keepdim=True)  # (b, 1, c, Q, Q)
        grad_exponent = grad_w.mul_(weights)  # d/d(a_i - a_j) of exp(.) * scores, in place
        grad_a = grad_exponent.sum(dim=-1) - grad_exponent.sum(dim=-2)  # (b, H, c, Q)
        return grad_a, grad_scores, grad_x


def ssd_chunked(x: Tensor, log_a: Tensor, B: Tensor, C: Tensor, chunk_size: int,
                initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Chunked SSD scan.

    x: (b, L, H, P) inputs already scaled by dt; log_a: (b, L, H) = dt * A (<= 0);
    B, C: (b, L, N) shared by all heads; initial_state: (b, H, P, N) or None.
    Returns y (b, L, H, P) and the final state (b, H, P, N).
    """
    b, L, H, P = x.shape
    N = B.shape[-1]
    pad = (-L) % chunk_size
    if pad:
        # Zero input and zero log-decay leave the state untouched, so padding is exact.
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        log_a = F.pad(log_a, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, pad))
    c, Q = (L + pad) // chunk_size, chunk_size
    # Head-major layout, so every contraction below is one batched matmul.
    x = x.reshape(b, c, Q, H, P).permute(0, 3, 1, 2, 4)  # (b, H, c, Q, P)
    B = B.reshape(b, 1, c, Q, N)  # (b, 1, c, Q, N): shared by the heads
    C = C.reshape(b, 1, c, Q, N)
    a_cum = torch.cumsum(log_a.reshape(b, c, Q, H).permute(0, 3, 1, 2), dim=-1)  # (b, H, c, Q)

    # 1. Within each chunk: y_i = sum_{j<=i} (C_i . B_j) exp(a_{j+1..i}) x_j.
    y = WithinChunks.apply(a_cum, C @ B.transpose(-1, -2), x)  # (b, H, c, Q, P)

    # 2. The state each chunk would leave behind if it started from zero.
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, H, c, Q)
    chunk_states = (x * decay_to_end[..., None]).transpose(-1, -2) @ B  # (b, H, c, P, N)

    # 3. Carry states across chunk boundaries (a recurrence over c chunks, done as one product).
    if initial_state is None:
        initial_state = x.new_zeros(b, H, P, N)
    states = torch.cat([initial_state[:, :, None], chunk_states], dim=2)  # (b, H, c+1, P, N)
    chunk_decay = torch.exp(segment_sum(F.pad(a_cum[..., -1], (1, 0))))  # (b, H, c+1, c+1)
    states = (chunk_decay @ states.flatten(3)).unflatten(3, (P, N))  # (b, H, c+1, P, N)
    entering, final_state = states[:, :, :-1], states[:, :, -1]  # (b, H, c, P, N), (b, H, P, N)

    # 4. What the state entering each chunk contributes to its outputs.
    y = y + (C @ entering.transpose(-1, -2)) * torch.exp(a_cum)[..., None]  # (b, H, c, Q, P)

    y = y.permute(0, 2, 3, 1, 4).reshape(b, c * Q, H, P)[:, :L]
    return y, final_state


def ssd_reference(x: Tensor, log_a: Tensor, B: Tensor, C: Tensor,
                  initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The same recurrence as `ssd_chunked`, one time step at a time."""
    b, L, H, P = x.shape
    N = B.shape[-1]
    S = x.new_zeros(b, H, P, N) if initial_state is None else initial_state
    ys = []
    for t in range(L):
        a = torch.exp(log_a[:, t])[:, :, None, None]  # (b, H, 1, 1)
        S = a * S + x[:, t, :, :, None] * B[:, t, None, None, :]  # (b, H, P, N)
        ys.append(torch.einsum("bhpn,bn->bhp", S, C[:, t]))  # (b, H, P)
    return torch.stack(ys, dim=1), S


class Mamba2Mixer(DecayScaled, TokenFiltered, nn.Module):
    def __init__(self, config: Mamba2Config):
        super().__init__()
        self.config = config
        H, N, d_inner = config.n_heads, config.d_state, config.d_inner
        self.conv_dim = d_inner + 2 * N
        self.in_proj = nn.Linear(config.d_model, 2 * d_inner + 2 * N + H, bias=False)  # z, x, B, C, dt
        self.conv = CausalConv1d(self.conv_dim, config.d_conv)
        # dt starts in [1e-3, 1e-1] (log-uniform), as in Mamba: a spread of memory horizons.
        dt = torch.empty(H).uniform_(math.log(1e-3), math.log(1e-1)).exp()
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(H).uniform_(1, 16)))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = nn.RMSNorm(d_inner, eps=config.norm_eps)
        self.out_proj = nn.Linear(d_inner, config.d_model, bias=False)

    def forward(self, u: Tensor, state: Mamba2State | None = None, reference: bool = False
                ) -> tuple[Tensor, Mamba2State]:
        b, L, _ = u.shape
        H, P, N, d_inner = self.config.n_heads, self.config.head_dim, self.config.d_state, self.config.d_inner
        z, xBC, dt = self.in_proj(u).split([d_inner, self.conv_dim, H], dim=-1)  # (b, L, .)

        xBC, new_tail = self.conv(xBC, None if state is None else state.conv_tail)  # (b, L, conv_dim)
        xBC = F.silu(xBC)

        x, B, C = xBC.split([d_inner, N, N], dim=-1)
        x = x.reshape(b, L, H, P)  # (b, L, H, P)
        dt = F.softplus(dt + self.dt_bias)  # (b, L, H)
        if self.decay_factor != 1.0:  # decay-scale at evaluation: dt * T / L (DecayScaled)
            dt = dt * self.decay_factor
        log_a = -torch.exp(self.A_log) * dt  # (b, L, H)
        keep = self.token_keep(-log_a)  # (b, L, H) or None: token-filter's mask, importance -log a_t
        if keep is not None:  # a filtered token has dt = 0: decay 1, no write (TokenFiltered)
            dt, log_a = dt * keep, log_a * keep
        x_dt = x * dt[..., None]  # (b, L, H, P)
        ssm0 = None if state is None else state.ssm
        if reference:
            y, ssm = ssd_reference(x_dt, log_a, B, C, ssm0)
        else:
            y, ssm = ssd_chunked(x_dt, log_a, B, C, self.config.chunk_size, ssm0)
        y = y + x * self.D[:, None]  # (b, L, H, P)
        y = self.norm(y.reshape(b, L, d_inner) * F.silu(z))  # (b, L, d_inner)
        return self.out_proj(y), Mamba2State(new_tail, ssm)

    @staticmethod
    def state_floats(config: Mamba2Config, length: int) -> int:
        """Floats of state per sequence: constant in the length."""
        return config.n_heads * config.head_dim * config.d_state + (config.d_conv - 1) * (config.d_inner + 2 * config.d_state)


MIXERS = [MixerSpec("mamba2", Mamba2Config, Mamba2Mixer, "state-space", letter="M")]
ARCHITECTURES = [
    ArchSpec("mamba2", "Mamba-2: selective state-space (SSD) blocks, chunked scan, no MLP",
             pattern="M", n_layers=4, mixer={"d_state": 16, "head_dim": 16}, size_knobs={"expand": around(2.0)}),
]
