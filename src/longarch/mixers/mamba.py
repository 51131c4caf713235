"""Mamba mixer: the selective state-space block ("S6") of Gu & Dao (2023).

Every channel c of the inner width keeps d_state states; with input-dependent step dt_t, input
matrices B_t and C_t, and a fixed negative A, the layer computes

    h_t[c, n] = exp(dt_t[c] * A[c, n]) * h_{t-1}[c, n] + dt_t[c] * B_t[n] * x_t[c]
    y_t[c]    = sum_n C_t[n] * h_t[c, n] + D[c] * x_t[c]

after a causal depthwise convolution and silu on x, and gates the result with silu(z) before the
output projection. Unlike Mamba-2, the decay differs per (channel, state), so there is no matmul
form: the work is elementwise over (batch, time, channel, state).

`selective_scan_chunked` is the fast path: within a chunk of Q steps a work-efficient parallel
scan (recursive pairing, 2 log2 Q levels, about twice the work of a sequential scan), and a loop
over chunks, not time steps, that carries the (b, d_inner, d_state) state. `selective_scan_reference` is the same
recurrence one step at a time; the tests hold the two equal.

State is (conv_tail, ssm): the last d_conv - 1 inputs of the convolution and h_t.
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
class MambaConfig:
    d_model: int
    d_state: int = 16
    expand: float = 2.0
    d_conv: int = 4
    # Steps per chunk. Without gradients the scan holds a few (b, Q, d_inner, d_state) tensors at a
    # time; with them, autograd keeps every chunk's, so training memory grows with the length.
    # Measured on a 2-core CPU (one run, 100K-parameter model / one d_model-128 layer):
    #   chunk           16       32       64
    #   train B=32 L=64   212 ms   230 ms   243 ms
    #   eval B=16 L=2048  917 ms  1041 ms   928 ms   (no gradients)
    #   fwd+bwd B=8 L=4096 8.6 s    5.3 s    3.1 s   (many short chunks cost Python and autograd overhead)
    chunk_size: int = 64

    @property
    def d_inner(self) -> int:
        return max(1, round(self.expand * self.d_model))

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.d_model / 16)


@dataclass
class MambaState:
    conv_tail: Tensor  # (B, d_conv - 1, d_inner): the last inputs of the causal convolution
    ssm: Tensor        # (B, d_inner, d_state)


def parallel_scan(a: Tensor, u: Tensor) -> Tensor:
    """Every h_t of h_t = a_t * h_{t-1} + u_t along dim 1, from h_{-1} = 0, for decays a in [0, 1].

    Work-efficient (Blelloch-style): merge steps (2k, 2k+1) into one step, scan the half-length
    sequence for the odd positions, then fill in the even ones from their odd predecessors:
    2 log2 T levels and about twice the work of a sequential scan. Merged decays are products of
    numbers in [0, 1], so nothing overflows. a, u: (b, T, ...) -> (b, T, ...)."""
    T = u.shape[1]
    if T == 1:
        return u
    if T % 2:  # a trailing (decay 1, input 0) step changes nothing before it
        a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
        u = torch.cat([u, torch.zeros_like(u[:, :1])], dim=1)
    a_even, a_odd = a[:, 0::2], a[:, 1::2]  # (b, T/2, ...)
    u_even, u_odd = u[:, 0::2], u[:, 1::2]
    h_odd = parallel_scan(a_even * a_odd, torch.addcmul(u_odd, a_odd, u_even))  # h_1, h_3, ...
    h_even = torch.cat([u_even[:, :1], torch.addcmul(u_even[:, 1:], a_even[:, 1:], h_odd[:, :-1])], dim=1)
    return torch.stack([h_even, h_odd], dim=2).flatten(1, 2)[:, :T]  # h_0, h_1, h_2, ...


def selective_scan_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
                           initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The selective scan, chunk by chunk, without a loop over time steps.

    x, dt: (b, L, D); A: (D, N) (< 0); B, C: (b, L, N); initial_state: (b, D, N) or None.
    Returns y (b, L, D), without the D skip, and the final state (b, D, N).
    With gradients, `SelectiveScan` runs the same scan, keeping only its inputs and the state
    entering each chunk, and recomputes each chunk's states in backward: autograd would keep
    every level of every chunk's scan, several (b, L, D, N) tensors in all."""
    inputs = (x, dt, A, B, C) if initial_state is None else (x, dt, A, B, C, initial_state)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        h0 = x.new_zeros(x.shape[0], x.shape[2], A.shape[-1]) if initial_state is None else initial_state
        return SelectiveScan.apply(x, dt, A, B, C, h0, chunk_size)
    return _scan_chunked(x, dt, A, B, C, chunk_size, initial_state)


def _scan_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
                  initial_state: Tensor | None = None, entering: list | None = None) -> tuple[Tensor, Tensor]:
    """`selective_scan_chunked`'s scan, differentiated (if at all) by autograd through every
    level. Appends the state entering each chunk to `entering` if given."""
    b, L, D = x.shape
    h = x.new_zeros(b, D, A.shape[-1]) if initial_state is None else initial_state
    x_dt = x * dt  # (b, L, D)
    ys = []
    for start in range(0, L, chunk_size):
        end = min(start + chunk_size, L)
        if entering is not None:
            entering.append(h)
        decay = torch.exp(dt[:, start:end, :, None] * A)  # (b, Q, D, N)
        u = x_dt[:, start:end, :, None] * B[:, start:end, None, :]  # (b, Q, D, N)
        u[:, 0] += decay[:, 0] * h  # the state entering the chunk, decayed by its first step
        hs = parallel_scan(decay, u)  # (b, Q, D, N)
        ys.append(torch.einsum("bqdn,bqn->bqd", hs, C[:, start:end]))  # (b, Q, D)
        h = hs[:, -1]  # (b, D, N)
    return torch.cat(ys, dim=1), h


class SelectiveScan(torch.autograd.Function):
    """`_scan_chunked` with a hand-written backward, chunk by chunk from the last.

    With a_t = exp(dt_t A) and G_t the gradient reaching h_t (G_t = C_t dy_t + a_{t+1} G_{t+1},
    the final state's gradient entering the last step), and E_t = G_t a_t h_{t-1}:
    dC_t = sum_d dy_t h_t, d(dt x)_t = sum_n G_t B_t, dB_t = sum_d G_t dt_t x_t,
    d(dt_t A) = E_t, and dh0 = a_0 G_0. Each chunk's h is recomputed from the saved state entering
    it, and G is the same scan run backwards in time, so backward holds a few (b, Q, D, N) tensors."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, h0, chunk_size):
        entering = []
        y, h_last = _scan_chunked(x, dt, A, B, C, chunk_size, h0, entering)  # (b, L, D), (b, D, N)
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(x, dt, A, B, C, torch.stack(entering, dim=1))  # entering: (b, c, D, N)
        return y, h_last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor, grad_last: Tensor):
        x, dt, A, B, C, entering = ctx.saved_tensors
        L, Q = x.shape[1], ctx.chunk_size
        grads = [torch.empty_like(t) for t in (x, dt, B, C)]  # dx, ddt, dB, dC: (b, L, .)
        grad_A = torch.zeros_like(A)  # (D, N)
        carry = grad_last  # (b, D, N): the gradient reaching the last step's h from later steps
        for k, start in reversed(list(enumerate(range(0, L, Q)))):
            part = slice(start, min(start + Q, L))
            chunk_grads, carry = _chunk_backward(x[:, part], dt[:, part], A, B[:, part], C[:, part],
                                                 entering[:, k], grad_y[:, part], carry)
            for grad, chunk_grad in zip(grads, chunk_grads):
                grad[:, part] = chunk_grad
            grad_A += chunk_grads[-1]
        grad_x, grad_dt, grad_B, grad_C = grads
        return grad_x, grad_dt, grad_A, grad_B, grad_C, carry, None


def _chunk_backward(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor, grad_y: Tensor,
                    carry: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
    """One chunk of `SelectiveScan.backward`. x, dt, grad_y: (b, Q, D); B, C: (b, Q, N); h0 (the
    state entering the chunk) and carry (the gradient of its last state from later steps): (b, D, N).
    Returns (dx, ddt, dB, dC, dA) and the gradient of the state entering the chunk."""
    decay = torch.exp(dt[..., None] * A)  # (b, Q, D, N)
    x_dt = x * dt  # (b, Q, D)
    u = x_dt[..., None] * B[:, :, None, :]  # (b, Q, D, N)
    u[:, 0] += decay[:, 0] * h0
    hs = parallel_scan(decay, u)  # (b, Q, D, N)
    del u
    # G backwards in time: step s = Q-1-t decays by a_{t+1}; the carry enters the last step whole.
    dh = (grad_y[..., None] * C[:, :, None, :]).flip(1)  # (b, Q, D, N): C_t dy_t, reversed
    dh[:, 0] += carry
    G = parallel_scan(F.pad(decay.flip(1)[:, :-1], (0, 0, 0, 0, 1, 0)), dh).flip(1)  # (b, Q, D, N)
    del dh
    grad_C = torch.einsum("bqdn,bqd->bqn", hs, grad_y)  # (b, Q, N)
    grad_x_dt = torch.einsum("bqdn,bqn->bqd", G, B)  # (b, Q, D)
    grad_B = torch.einsum("bqdn,bqd->bqn", G, x_dt)  # (b, Q, N)
    grad_h0 = decay[:, 0] * G[:, 0]  # (b, D, N)
    h_prev = torch.cat([h0[:, None], hs[:, :-1]], dim=1)  # (b, Q, D, N): h_{t-1}
    del hs
    E = G.mul_(decay).mul_(h_prev)  # (b, Q, D, N): the gradient of dt_t A, in G's place
    grad_A = torch.einsum("bqdn,bqd->dn", E, dt)  # (D, N)
    grad_dt = torch.einsum("bqdn,dn->bqd", E, A) + grad_x_dt * x  # (b, Q, D)
    return (grad_x_dt * dt, grad_dt, grad_B, grad_C, grad_A), grad_h0


def selective_scan_reference(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                             initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The same recurrence as `selective_scan_chunked`, one time step at a time."""
    b, L, D = x.shape
    h = x.new_zeros(b, D, A.shape[-1]) if initial_state is None else initial_state
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t, :, None] * A)  # (b, D, N)
        h = decay * h + (dt[:, t] * x[:, t])[:, :, None] * B[:, t, None, :]  # (b, D, N)
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, t]))  # (b, D)
    return torch.stack(ys, dim=1), h


class MambaMixer(DecayScaled, TokenFiltered, nn.Module):
    def __init__(self, config: MambaConfig):
        super().__init__()
        self.config = config
        D, N, R = config.d_inner, config.d_state, config.dt_rank
        self.in_proj = nn.Linear(config.d_model, 2 * D, bias=False)  # x, z
        self.conv = CausalConv1d(D, config.d_conv)
        self.x_proj = nn.Linear(D, R + 2 * N, bias=False)  # dt (low rank), B, C
        # The dt up-projection is a bare parameter with Mamba's own init (uniform, std ~ R^-0.5),
        # which the language model's init of every nn.Linear (std 0.02) would otherwise replace.
        self.dt_weight = nn.Parameter(torch.empty(D, R).uniform_(-R ** -0.5, R ** -0.5))
        # softplus(dt_bias) is log-uniform in [1e-3, 1e-1] at init: a spread of memory horizons.
        dt = torch.empty(D).uniform_(math.log(1e-3), math.log(1e-1)).exp()
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        # S4D-real init: A[c, n] = -(n + 1) for every channel.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(D, 1))
        self.D = nn.Parameter(torch.ones(D))
        self.out_proj = nn.Linear(D, config.d_model, bias=False)

    def forward(self, u: Tensor, state: MambaState | None = None, reference: bool = False
                ) -> tuple[Tensor, MambaState]:
        b, L, _ = u.shape
        N, R = self.config.d_state, self.config.dt_rank
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (b, L, D) each

        x, new_tail = self.conv(x, None if state is None else state.conv_tail)  # (b, L, D)
        x = F.silu(x)

        dt_low, B, C = self.x_proj(x).split([R, N, N], dim=-1)  # (b, L, R), (b, L, N), (b, L, N)
        dt = F.softplus(F.linear(dt_low, self.dt_weight) + self.dt_bias)  # (b, L, D)
        if self.decay_factor != 1.0:  # decay-scale at evaluation: dt * T / L (DecayScaled)
            dt = dt * self.decay_factor
        A = -torch.exp(self.A_log)  # (D, N)
        # token-filter: the layer is one head; importance = -log a_t averaged over (channel, state)
        keep = self.token_keep((dt * -A.mean(-1)).mean(-1, keepdim=True))  # (b, L, 1) or None
        if keep is not None:  # a filtered token has dt = 0 in every channel: decay 1, no write
            dt = dt * keep
        h0 = None if state is None else state.ssm
        if reference:
            y, h = selective_scan_reference(x, dt, A, B, C, h0)
        else:
            y, h = selective_scan_chunked(x, dt, A, B, C, self.config.chunk_size, h0)
        y = (y + x * self.D) * F.silu(z)  # (b, L, D)
        return self.out_proj(y), MambaState(new_tail, h)

    @staticmethod
    def state_floats(config: MambaConfig, length: int) -> int:
        """Floats of state per sequence: constant in the length."""
        return config.d_inner * config.d_state + (config.d_conv - 1) * config.d_inner


MIXERS = [MixerSpec("mamba", MambaConfig, MambaMixer, "state-space", letter="S")]
ARCHITECTURES = [
    ArchSpec("mamba", "Mamba: selective state-space (S6) blocks with a chunked parallel scan, no MLP",
             pattern="S", n_layers=4, mixer={"d_state": 16}, size_knobs={"expand": around(2.0)}),
]
