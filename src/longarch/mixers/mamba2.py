"""Mamba-2 mixer: the state-space duality (SSD) layer of Dao & Gu (2024).

Per head h with scalar decay a_t = exp(dt_t * A_h) (A_h < 0), the layer computes the recurrence

    S_t = a_t * S_{t-1} + (dt_t * x_t) B_t^T      S: (head_dim, d_state)
    y_t = S_t C_t + D_h * x_t

after a short causal depthwise convolution over (x, B, C), and gates the result with silu(z)
before a normalisation and the output projection.

`ssd_chunked` evaluates the recurrence chunk by chunk: quadratic attention-like work inside a
chunk (`WithinChunks`), and a loop over chunks that carries the state across their boundaries
(`AcrossChunks`), linear in the number of chunks where a product over all pairs of chunks was
quadratic (72% of the FLOPs at 64K). Both have hand-written backward passes. `ssd_reference` is the same recurrence one
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
    within one chunk. Autograd would spend about twice as many passes over the (..., H, Q, Q)
    weights in backward; here the gradient of the exponent is dW * W (W is zero above the
    diagonal, so no mask is needed), and its two reductions replace a negation and a mask. The
    (..., H, Q, Q) tensors are the largest of the scan, so each is allocated once and then
    updated in place (a fresh large tensor costs its page faults, about a pass of its own).
    a_cum: (..., H, Q); scores: (..., 1, Q, Q) shared by the heads; x: (..., H, Q, P)."""

    @staticmethod
    def forward(ctx, a_cum: Tensor, scores: Tensor, x: Tensor) -> Tensor:
        Q = a_cum.shape[-1]
        above = torch.ones(Q, Q, dtype=torch.bool, device=a_cum.device).triu(1)
        decay = (a_cum[..., :, None] - a_cum[..., None, :]).masked_fill_(above, float("-inf")).exp_()
        if not any(ctx.needs_input_grad):  # no backward: the weights may overwrite the decays
            return decay.mul_(scores) @ x  # (..., H, Q, P)
        weights = decay * scores  # (..., H, Q, Q)
        ctx.save_for_backward(decay, scores, weights, x)
        return weights @ x  # (..., H, Q, P)

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        decay, scores, weights, x = ctx.saved_tensors
        grad_x = weights.transpose(-1, -2) @ grad_y  # (..., H, Q, P)
        grad_w = grad_y @ x.transpose(-1, -2)  # (..., H, Q, Q)
        grad_w.mul_(decay)  # d/d(scores) before the sum over heads, in place
        grad_scores = grad_w.sum_to_size(scores.shape)  # (..., 1, Q, Q)
        grad_exponent = grad_w.mul_(scores)  # d/d(a_i - a_j) of exp(.) * scores = dW * W, in place
        grad_a = grad_exponent.sum(dim=-1) - grad_exponent.sum(dim=-2)  # (..., H, Q)
        return grad_a, grad_scores, grad_x


class AcrossChunks(torch.autograd.Function):
    """The state entering each chunk: a loop over the c chunks (not time steps), with the
    reverse loop as its backward. S_0 = initial, S_{i+1} = decay_i * S_i + chunk_states_i.

    chunk_states: (b, c, H, P, N), the state chunk i leaves behind from a zero start;
    decay: (b, c, H), the chunk's whole decay; initial: (b, H, P, N).
    Returns entering (b, c, H, P, N) = S_0 .. S_{c-1}, and the final state S_c (b, H, P, N)."""

    @staticmethod
    def forward(ctx, chunk_states: Tensor, decay: Tensor, initial: Tensor) -> tuple[Tensor, Tensor]:
        entering = torch.empty_like(chunk_states)  # (b, c, H, P, N)
        gate = decay[..., None, None]  # (b, c, H, 1, 1)
        S = initial
        for i in range(chunk_states.shape[1]):
            entering[:, i] = S
            S = torch.addcmul(chunk_states[:, i], gate[:, i], S)  # (b, H, P, N)
        ctx.save_for_backward(gate, entering)
        return entering, S

    @staticmethod
    def backward(ctx, grad_entering: Tensor, grad_final: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        gate, entering = ctx.saved_tensors
        grad_states = torch.empty_like(entering)  # (b, c, H, P, N)
        grad_decay = gate.new_empty(gate.shape[:3])  # (b, c, H)
        grad_S = grad_final  # d/dS_{i+1}, from the last chunk back
        for i in reversed(range(entering.shape[1])):
            grad_states[:, i] = grad_S
            torch.sum(grad_S * entering[:, i], dim=(-1, -2), out=grad_decay[:, i])
            grad_S = torch.addcmul(grad_entering[:, i], gate[:, i], grad_S)  # (b, H, P, N)
        return grad_states, grad_decay, grad_S


def ssd_chunked(x: Tensor, log_a: Tensor, B: Tensor, C: Tensor, chunk_size: int,
                initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Chunked SSD scan.

    x: (b, L, H, P) inputs already scaled by dt; log_a: (b, L, H) = dt * A (<= 0);
    B, C: (b, L, N) shared by all heads; initial_state: (b, H, P, N) or None.
    Returns y (b, L, H, P) and the final state (b, H, P, N).

    Layout: the inputs' own (b, c, Q, H, P), chunk by chunk. The work across chunks is then
    matmuls over all heads at once ((Q, N) by (N, H*P)), with no copies; only the quadratic part
    inside a chunk, a (Q, Q) matrix per head, takes a head-major copy of x.
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
    x = x.reshape(b, c, Q, H, P)  # (b, c, Q, H, P)
    B = B.reshape(b, c, Q, N)  # (b, c, Q, N): shared by the heads
    C = C.reshape(b, c, Q, N)
    a_cum = torch.cumsum(log_a.reshape(b, c, Q, H), dim=2)  # (b, c, Q, H)

    # 1. Within each chunk: y_i = sum_{j<=i} (C_i . B_j) exp(a_{j+1..i}) x_j.
    scores = (C @ B.transpose(-1, -2))[:, :, None]  # (b, c, 1, Q, Q)
    # Head-major copies of the small a_cum and of x: the (Q, Q) products are batched matmuls then.
    y = WithinChunks.apply(a_cum.transpose(-1, -2).contiguous(), scores,
                           x.transpose(2, 3).contiguous())  # (b, c, H, Q, P)

    # 2. The state each chunk would leave behind if it started from zero.
    x_to_end = x * torch.exp(a_cum[:, :, -1:] - a_cum)[..., None]  # (b, c, Q, H, P)
    chunk_states = x_to_end.flatten(3).transpose(-1, -2) @ B  # (b, c, H*P, N)

    # 3. Carry states across chunk boundaries: a loop over chunks, not time steps.
    if initial_state is None:
        initial_state = x.new_zeros(b, H, P, N)
    entering, final_state = AcrossChunks.apply(chunk_states.view(b, c, H, P, N), torch.exp(a_cum[:, :, -1]),
                                               initial_state)  # (b, c, H, P, N), (b, H, P, N)

    # 4. What the state entering each chunk contributes to its outputs, in the inputs' layout.
    y_inter = (C @ entering.flatten(2, 3).transpose(-1, -2)).view(b, c, Q, H, P)  # (b, c, Q, H, P)
    y = torch.addcmul(y.transpose(2, 3), y_inter, torch.exp(a_cum)[..., None])  # (b, c, Q, H, P)
    return y.reshape(b, c * Q, H, P)[:, :L], final_state


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
