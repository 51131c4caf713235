"""Griffin / RecurrentGemma recurrent block with the Real-Gated Linear Recurrent Unit (De et al. 2024).

Two branches from the input u: a gate branch gelu(W_y u), and a recurrent branch
x = conv1d(W_x u) (causal, depthwise, width d_conv) fed to the RG-LRU, per channel:

    r_t = sigmoid(W_a x_t + b_a)                  recurrence gate
    i_t = sigmoid(W_i x_t + b_i)                  input gate
    log a_t = -c * softplus(Lambda) * r_t         c = 8, so a_t = a^(c r_t) with a = exp(-softplus(Lambda))
    h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * x_t)

and returns out_proj(h * gate). The gate weights W_a, W_i are block-diagonal, one dense
(head_width x head_width) block per head, as in the paper.

The recurrence is diagonal (elementwise), so `rglru_chunked` scans it with a log-depth
(Hillis-Steele) scan inside each chunk and the same scan across chunk ends: it only multiplies
decays a_t = exp(log a_t) <= 1 together, so it is stable at any length. `rglru_reference` is the step loop.

State is (conv_tail, h): the last d_conv - 1 inputs of the convolution and h_t.
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
class RGLRUConfig:
    d_model: int
    expand: float = 4 / 3  # d_rnn / d_model, as in Griffin
    n_heads: int = 4       # blocks of the block-diagonal gate weights
    d_conv: int = 4
    chunk_size: int = 64
    rglru_c: float = 8.0   # the fixed scale c of the recurrence gate's exponent

    @property
    def head_width(self) -> int:
        return max(1, -(-round(self.expand * self.d_model) // self.n_heads))

    @property
    def d_rnn(self) -> int:
        return self.n_heads * self.head_width


@dataclass
class RGLRUState:
    conv_tail: Tensor  # (B, d_conv - 1, d_rnn): the last inputs of the causal convolution
    h: Tensor          # (B, d_rnn)


def _scan(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive scan of h_t = a_t h_{t-1} + b_t from h = 0 along dim -2 (time), 0 <= a_t <= 1.

    Hillis-Steele: after the step of width `step`, element t holds the composition of the
    segment (t - 2*step, t]; the pair (a, b) composes as (a1, b1) then (a2, b2) -> (a1 a2, a2 b1 + b2).
    Only products of decays in [0, 1] appear, so nothing can overflow. Returns the cumulative
    decay and h, each (..., T, D)."""
    T = a.shape[-2]
    step = 1
    while step < T:
        b = b + a * F.pad(b[..., :-step, :], (0, 0, step, 0))  # shifted by `step`, zeros in front
        a = a * F.pad(a[..., :-step, :], (0, 0, step, 0), value=1.0)
        step *= 2
    return a, b


def rglru_chunked(x: Tensor, log_a: Tensor, chunk_size: int, initial_state: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
    """h_t = exp(log_a_t) * h_{t-1} + x_t for every channel, chunk by chunk.

    x: (b, L, D) the already gated and normalised input; log_a: (b, L, D) <= 0;
    initial_state: (b, D) or None. Returns h (b, L, D) and the final state (b, D).
    With gradients, `RGLRUScan` runs the same scan and reverse-scans in backward, so that
    autograd does not keep the scan's log2(chunk_size) levels of (b, L, D) intermediates."""
    inputs = (x, log_a) if initial_state is None else (x, log_a, initial_state)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        h0 = x.new_zeros(x.shape[0], x.shape[2]) if initial_state is None else initial_state
        return RGLRUScan.apply(x, log_a, h0, chunk_size)
    return _scan_chunked(x, log_a, chunk_size, initial_state)


class RGLRUScan(torch.autograd.Function):
    """`_scan_chunked` with a hand-written backward that keeps only log_a, h and h0.

    With G_t the gradient reaching h_t from every later step (G_t = dh_t + a_{t+1} G_{t+1},
    started from the final state's gradient), dx_t = G_t, d log_a_t = G_t a_t h_{t-1} and
    dh0 = a_0 G_0. G is the same recurrence run backwards in time, so backward is one more
    chunked scan (over the time-reversed sequence) and elementwise work. h is the output and
    the caller keeps it anyway (it multiplies the gate), so saving it costs nothing."""

    @staticmethod
    def forward(ctx, x: Tensor, log_a: Tensor, h0: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
        h, h_last = _scan_chunked(x, log_a, chunk_size, h0)  # (b, L, D), (b, D)
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(log_a, h, h0)
        return h, h_last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h: Tensor, grad_last: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        log_a, h, h0 = ctx.saved_tensors
        # Reversed in time, step s = L-1-t decays by a_{t+1}; the final state's gradient enters
        # whole (as the initial state of the reversed scan), so step s = 0 has log-decay 0.
        log_a_next = F.pad(log_a.flip(1)[:, :-1], (0, 0, 1, 0))  # (b, L, D): reversed log a_{t+1}
        G, _ = _scan_chunked(grad_h.flip(1), log_a_next, ctx.chunk_size, grad_last)
        del log_a_next
        G = G.flip(1)  # (b, L, D): the gradient of h_t
        grad_log_a = torch.exp(log_a).mul_(G)  # (b, L, D): a_t G_t, then times h_{t-1} in place
        grad_h0 = grad_log_a[:, 0].clone()  # (b, D): a_0 G_0
        grad_log_a[:, 0].mul_(h0)
        grad_log_a[:, 1:].mul_(h[:, :-1])
        return G, grad_log_a, grad_h0, None


def _scan_chunked(x: Tensor, log_a: Tensor, chunk_size: int, initial_state: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
    """`rglru_chunked`'s scan, differentiated (if at all) by autograd through every level."""
    b, L, D = x.shape
    pad = (-L) % chunk_size
    if pad:
        # Zero input and zero log-decay leave the state untouched, so padding is exact.
        x = F.pad(x, (0, 0, 0, pad))
        log_a = F.pad(log_a, (0, 0, 0, pad))
    c, Q = (L + pad) // chunk_size, chunk_size
    # 1. Within each chunk, from a zero state.
    decay, h_local = _scan(torch.exp(log_a).reshape(b, c, Q, D), x.reshape(b, c, Q, D))  # (b, c, Q, D) each
    # 2. Across chunk ends: the same recurrence over c steps, started from the initial state
    # (prepended as a step whose own decay does not matter).
    h0 = x.new_zeros(b, D) if initial_state is None else initial_state
    ends_a = torch.cat([torch.ones_like(h0)[:, None], decay[:, :, -1]], dim=1)  # (b, c+1, D)
    ends_b = torch.cat([h0[:, None], h_local[:, :, -1]], dim=1)  # (b, c+1, D)
    _, ends = _scan(ends_a, ends_b)  # (b, c+1, D): the state entering chunk k is ends[:, k]
    # 3. What the state entering each chunk contributes inside it.
    h = h_local + decay * ends[:, :-1, None, :]  # (b, c, Q, D)
    return h.reshape(b, c * Q, D)[:, :L], ends[:, -1]


def rglru_reference(x: Tensor, log_a: Tensor, initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The same recurrence as `rglru_chunked`, one time step at a time."""
    b, L, D = x.shape
    h = x.new_zeros(b, D) if initial_state is None else initial_state
    hs = []
    for t in range(L):
        h = torch.exp(log_a[:, t]) * h + x[:, t]  # (b, D)
        hs.append(h)
    return torch.stack(hs, dim=1), h


class RGLRUMixer(DecayScaled, TokenFiltered, nn.Module):
    def __init__(self, config: RGLRUConfig):
        super().__init__()
        self.config = config
        D, H, W = config.d_rnn, config.n_heads, config.head_width
        self.in_proj = nn.Linear(config.d_model, 2 * D, bias=False)  # gate branch, recurrent branch
        self.conv = CausalConv1d(D, config.d_conv)
        # Block-diagonal gates (plain parameters: the language model re-initialises Linear layers).
        # LeCun-normal weights and zero biases, as in RecurrentGemma.
        self.gate_weight = nn.Parameter(torch.randn(2, H, W, W) / math.sqrt(W))  # recurrence, input
        self.gate_bias = nn.Parameter(torch.zeros(2, H, W))
        # a = exp(-softplus(Lambda)) with a^2 uniform in [0.9^2, 0.999^2] (uniform on a ring, as in
        # the LRU and RecurrentGemma's code), so a lies in [0.9, 0.999] and a^c in [0.43, 0.992].
        a = torch.empty(D).uniform_(0.9 ** 2, 0.999 ** 2).sqrt()
        self.a_param = nn.Parameter(torch.log(torch.expm1(-torch.log(a))))  # inverse softplus of -log a
        self.out_proj = nn.Linear(D, config.d_model, bias=False)

    def forward(self, u: Tensor, state: RGLRUState | None = None, reference: bool = False
                ) -> tuple[Tensor, RGLRUState]:
        b, L, _ = u.shape
        D, H, W = self.config.d_rnn, self.config.n_heads, self.config.head_width
        gate, x = self.in_proj(u).split([D, D], dim=-1)  # (b, L, D) each

        x, new_tail = self.conv(x, None if state is None else state.conv_tail)  # (b, L, D)

        gates = torch.einsum("blhw,ghwv->gblhv", x.reshape(b, L, H, W), self.gate_weight)  # (2, b, L, H, W)
        r, i = torch.sigmoid(gates + self.gate_bias[:, None, None]).reshape(2, b, L, D)  # (b, L, D) each
        log_a = -self.config.rglru_c * F.softplus(self.a_param) * r  # (b, L, D)
        if self.decay_factor != 1.0:  # decay-scale at evaluation: a_t^(T / L), its input norm too (DecayScaled)
            log_a = log_a * self.decay_factor
        # token-filter: a head is a block of the gates; importance = -log a_t averaged over its channels
        keep = self.token_keep(-log_a.reshape(b, L, H, W).mean(-1))  # (b, L, H) or None
        if keep is not None:
            keep = keep.repeat_interleave(W, dim=-1)  # (b, L, D): each head's mask on its channels
            log_a = log_a * keep  # a filtered token: a_t = 1
        # sqrt(1 - a^2) keeps h at the scale of its input; the floor bounds the derivative of the
        # square root as a_t -> 1 (RecurrentGemma bounds it at 1000 for the same reason).
        multiplier = (-torch.expm1(2 * log_a)).clamp_min(1e-6).sqrt()  # (b, L, D)
        x_in = multiplier * i * x  # (b, L, D)
        if keep is not None:  # and no write (the floor above leaves sqrt(1 - a_t^2) at 1e-3, not 0)
            x_in = x_in * keep

        h0 = None if state is None else state.h
        if reference:
            h, h_last = rglru_reference(x_in, log_a, h0)
        else:
            h, h_last = rglru_chunked(x_in, log_a, self.config.chunk_size, h0)
        y = h * F.gelu(gate, approximate="tanh")  # (b, L, D)
        return self.out_proj(y), RGLRUState(new_tail, h_last)

    @staticmethod
    def state_floats(config: RGLRUConfig, length: int) -> int:
        """Floats of state per sequence: constant in the length."""
        return config.d_rnn * config.d_conv


MIXERS = [MixerSpec("rglru", RGLRUConfig, RGLRUMixer, "linear-recurrent", letter="L")]
ARCHITECTURES = [
    ArchSpec("hawk", "Hawk: Griffin's RG-LRU blocks (gated diagonal linear recurrence after a width-4 conv), gated MLP",
             pattern="L", n_layers=4, mlp_ratio=3.0, mixer={"expand": 4 / 3, "n_heads": 4},
             size_knobs={"mlp_ratio": around(3.0)}),
]
