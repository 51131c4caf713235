"""S4D mixer: the diagonal, time-invariant state-space layer of Gu et al. (2022), gated.

Every channel h of the inner width runs its own diagonal SSM x' = A x + B u, y = C x + D u,
discretised by zero-order hold with a learned step dt_h (B is fixed at 1 and folded into C, as in
the paper's minimal S4D). With dA = exp(dt A) and dB = (dA - 1) / A, per channel h and mode m:

    s_t[h, m] = dA[h, m] * s_{t-1}[h, m] + dB[h, m] * x_t[h]
    y_t[h]    = Re(sum_m C[h, m] * s_t[h, m]) + D[h] * x_t[h]

that is, y = K * x + D x with the kernel K_k[h] = Re(sum_m C dB dA^k). A is complex with S4D-Lin
(-1/2 + i pi m) or S4D-Inv (-1/2 + i N/pi (N/(2m+1) - 1)) init, d_state/2 modes standing for
conjugate pairs (hence 2 Re); or real with S4D-Real init (-(m+1)), d_state modes. The block is
in_proj -> (x, z), y = ssm(x) * silu(z), out_proj.

`s4d_chunked` is the fast path: since the SSM does not depend on the input, every chunk of Q
steps shares one (Q x Q) Toeplitz matrix of K (one batched matmul over all chunks), and each
chunk's start state reaches its outputs through the same read-out weights C dA^(i+1); only the
(b, H, d_state) state is carried across chunks, a loop over chunks, never over time steps.
`s4d_reference` is the recurrence one step at a time; the tests hold the two equal.

State is s_t as a real (B, H, d_state) tensor: for complex A, real parts then imaginary parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from .base import ArchSpec, DecayScaled, MixerSpec, around

A_INITS = ("lin", "inv", "real")


@dataclass
class S4DConfig:
    d_model: int
    d_state: int = 16  # real floats of state per channel: d_state/2 complex modes, or d_state real ones
    expand: float = 2.0
    a_init: str = "lin"  # "lin" | "inv" (complex A) or "real"
    # Steps per chunk: the within-chunk Toeplitz costs Q multiply-adds per token and channel (a
    # dense matmul) and memory (H, Q, Q); the cross-chunk carry costs one small step per chunk.
    # On a 2-core CPU 32 was the fastest or within 10% of it from (b=1, L=1024) to (b=512, L=64).
    chunk_size: int = 32

    def __post_init__(self):
        if self.a_init not in A_INITS:
            raise ValueError(f"a_init must be one of {A_INITS}, not {self.a_init!r}")
        if self.a_init != "real" and (self.d_state < 2 or self.d_state % 2):
            raise ValueError(f"complex A (a_init={self.a_init!r}) needs an even d_state >= 2, not {self.d_state}")

    @property
    def d_inner(self) -> int:
        return max(1, round(self.expand * self.d_model))

    @property
    def n_modes(self) -> int:
        return self.d_state if self.a_init == "real" else self.d_state // 2


def _as_complex(s: Tensor, complex_modes: bool) -> Tensor:
    """The stored real state (..., d_state) as the state of the modes."""
    return torch.complex(*s.chunk(2, dim=-1)) if complex_modes else s


def _as_real(s: Tensor) -> Tensor:
    """The state of the modes as the stored real state: real parts, then imaginary parts."""
    return torch.cat([s.real, s.imag], dim=-1) if s.is_complex() else s


def s4d_chunked(x: Tensor, log_dA: Tensor, dB: Tensor, C: Tensor, chunk_size: int,
                initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The diagonal SSM over a whole sequence, chunk by chunk.

    x: (b, L, H); log_dA = dt A, dB, C: (H, M), complex or real, Re(log_dA) < 0;
    initial_state: (b, H, S) real (S = 2M for complex modes, else M) or None.
    Returns y = Re(sum_m C s_t) (b, L, H), without the D skip, and the final state (b, H, S)."""
    b, L, H = x.shape
    Q = min(chunk_size, L)
    pad = (-L) % Q
    last = Q - pad  # valid steps of the last chunk
    n_chunks = (L + pad) // Q
    x_chunks = F.pad(x, (0, 0, 0, pad)).reshape(b, n_chunks, Q, H)  # (b, c, Q, H)

    steps = torch.arange(Q + 1, device=x.device)
    powers = torch.exp(log_dA[..., None] * steps)  # (H, M, Q+1): dA^k
    kernel = torch.einsum("hm,hmk->hk", C * dB, powers[..., :Q]).real  # (H, Q): K_k
    lag = steps[:Q, None] - steps[None, :Q]  # (Q, Q): i - j
    toeplitz = kernel[:, lag.clamp(min=0)] * (lag >= 0)  # (H, Q, Q): K_{i-j}, zero above the diagonal
    # Write-in: input j of a chunk reaches its end state as dA^(Q-1-j) dB. Read-out: the state
    # entering a chunk reaches output i as C dA^(i+1). As real matrices on the stored state.
    write = powers[..., :Q].flip(-1) * dB[..., None]  # (H, M, Q)
    read = C[..., None] * powers[..., 1:]  # (H, M, Q)
    if write.is_complex():
        write = torch.cat([write.real, write.imag], dim=1)  # (H, 2M, Q)
        read = torch.cat([read.real, -read.imag], dim=1)  # Re(r s) = r.re s.re - r.im s.im

    y_diag = torch.einsum("hij,bcjh->bcih", toeplitz, x_chunks)  # (b, c, Q, H)
    chunk_states = torch.einsum("hsj,bcjh->bchs", write, x_chunks)  # (b, c, H, S): each from zero

    complex_modes = log_dA.is_complex()
    state = x.new_zeros(b, H, write.shape[1]) if initial_state is None else initial_state
    dA_chunk = powers[..., Q]  # (H, M): the decay across a whole chunk
    entering = []
    for c in range(n_chunks):
        entering.append(state)
        if c + 1 < n_chunks:
            state = _as_real(dA_chunk * _as_complex(state, complex_modes)) + chunk_states[:, c]
    # The last chunk may be padded: its end state takes only its `last` valid steps.
    state = (_as_real(powers[..., last] * _as_complex(state, complex_modes))
             + torch.einsum("hsj,bjh->bhs", write[..., Q - last:], x_chunks[:, -1, :last]))
    y_off = torch.einsum("hsi,bchs->bcih", read, torch.stack(entering, dim=1))  # (b, c, Q, H)
    y = (y_diag + y_off).reshape(b, n_chunks * Q, H)[:, :L]
    return y, state


def s4d_reference(x: Tensor, log_dA: Tensor, dB: Tensor, C: Tensor,
                  initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The same recurrence as `s4d_chunked`, one time step at a time."""
    b, L, H = x.shape
    complex_modes = log_dA.is_complex()
    dA = torch.exp(log_dA)  # (H, M)
    if initial_state is None:
        s = torch.zeros(b, *dA.shape, dtype=dA.dtype, device=x.device)  # (b, H, M)
    else:
        s = _as_complex(initial_state, complex_modes)
    ys = []
    for t in range(L):
        s = dA * s + dB * x[:, t, :, None]  # (b, H, M)
        ys.append((C * s).sum(-1).real)  # (b, H)
    return torch.stack(ys, dim=1), _as_real(s)


class S4DMixer(DecayScaled, nn.Module):
    def __init__(self, config: S4DConfig):
        super().__init__()
        self.config = config
        H, M, N = config.d_inner, config.n_modes, config.d_state
        self.complex_modes = config.a_init != "real"
        self.in_proj = nn.Linear(config.d_model, 2 * H, bias=False)  # x, z
        # dt log-uniform in [1e-3, 1e-1] per channel: a spread of memory horizons.
        self.log_dt = nn.Parameter(torch.empty(H).uniform_(math.log(1e-3), math.log(1e-1)))
        m = torch.arange(M, dtype=torch.float32)
        if self.complex_modes:
            self.A_real_log = nn.Parameter(torch.full((H, M), math.log(0.5)))  # Re A = -1/2
            imag = math.pi * m if config.a_init == "lin" else N / math.pi * (N / (2 * m + 1) - 1)
            self.A_imag = nn.Parameter(imag.repeat(H, 1))
            self.C = nn.Parameter(torch.randn(H, M, 2) * math.sqrt(0.5))  # complex normal: (re, im)
        else:
            self.A_real_log = nn.Parameter(torch.log(m + 1).repeat(H, 1))  # A = -(m + 1)
            self.C = nn.Parameter(torch.randn(H, M))
        self.D = nn.Parameter(torch.ones(H))
        self.out_proj = nn.Linear(H, config.d_model, bias=False)

    def discretised(self) -> tuple[Tensor, Tensor, Tensor]:
        """log dA = dt A, dB = (dA - 1) / A (zero-order hold, B = 1) and the output weights C,
        doubled for complex modes, each standing for a conjugate pair. Each (H, M)."""
        A = -torch.exp(self.A_real_log)  # (H, M)
        C = self.C
        if self.complex_modes:
            A = torch.complex(A, self.A_imag)
            C = 2 * torch.view_as_complex(C)
        dt = torch.exp(self.log_dt)  # (H,)
        if self.decay_factor != 1.0:  # decay-scale at evaluation: dt * T / L (DecayScaled)
            dt = dt * self.decay_factor
        log_dA = dt[:, None] * A  # (H, M)
        return log_dA, torch.expm1(log_dA) / A, C

    def forward(self, u: Tensor, state: Tensor | None = None, reference: bool = False
                ) -> tuple[Tensor, Tensor]:
        x, z = self.in_proj(u).chunk(2, dim=-1)  # (b, L, H) each
        log_dA, dB, C = self.discretised()
        if reference:
            y, state = s4d_reference(x, log_dA, dB, C, state)
        else:
            y, state = s4d_chunked(x, log_dA, dB, C, self.config.chunk_size, state)
        y = (y + x * self.D) * F.silu(z)  # (b, L, H)
        return self.out_proj(y), state

    @staticmethod
    def state_floats(config: S4DConfig, length: int) -> int:
        """Floats of state per sequence: constant in the length."""
        return config.d_inner * config.d_state


MIXERS = [MixerSpec("s4d", S4DConfig, S4DMixer, "state-space", letter="D")]
ARCHITECTURES = [
    ArchSpec("s4d", "S4D: diagonal time-invariant state-space model (S4D-Lin init), gated output, no MLP",
             pattern="D", n_layers=4, mixer={"d_state": 16}, size_knobs={"expand": around(2.0)}),
]
