"""RWKV-6 "Finch" time mixing (Peng et al. 2024).

Token shift with data-dependent interpolation (ddlerp): with dx_t = x_{t-1} - x_t,

    m_* = lora_*(x_t + dx_t * mu_x)          five small LoRAs sharing one down-projection
    x*_t = x_t + dx_t * (mu_* + m_*)         for * in w, k, v, r, g

then r, k, v, g = W_r xr, W_k xk, W_v xv, W_g xg, and a per-channel data-dependent decay
w_t = exp(-exp(w0 + lora_w(xw))). Per head, with state S (head_dim x head_dim):

    o_t = r_t (diag(u) k_t^T v_t + S_{t-1})
    S_t = diag(w_t) S_{t-1} + k_t^T v_t

followed by a group norm per head, the silu(g) gate and the output projection. The channel-mix
block of RWKV is the language model's MLP, not part of this mixer.

`wkv6_chunked` evaluates the recurrence chunk by chunk; `wkv6_reference` one step at a time.
State is (last_x, wkv): the previous input token (for the token shift) and S per head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from .base import ArchSpec, DecayScaled, MixerSpec, TokenFiltered, around

# Position of the layer in the stack for RWKV's depth-dependent init; a mixer does not know
# its depth, so every layer gets the middle layer's values.
_RATIO_0_TO_1 = 0.5
_RATIO_1_TO_ALMOST_0 = 0.5


@dataclass
class RWKV6Config:
    d_model: int
    n_heads: int = 4
    chunk_size: int = 16     # small: the intra-chunk decay tensor is (chunk, chunk, head_dim)
    mix_lora_rank: int = 8   # rank of the token-shift LoRAs (32 in the paper's large models)
    decay_lora_rank: int = 16  # rank of the decay LoRA (64 in the paper's large models)

    @property
    def head_dim(self) -> int:
        # Heads split d_model, rounded up, so that any d_model is valid.
        return -(-self.d_model // self.n_heads)

    @property
    def d_att(self) -> int:
        return self.n_heads * self.head_dim


@dataclass
class RWKV6State:
    last_x: Tensor  # (B, d_model): the previous token, for the token shift
    wkv: Tensor     # (B, H, K, V)


def wkv6_chunked(r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor, chunk_size: int,
                 initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Chunked WKV-6.

    r, k, log_w: (b, L, H, K); v: (b, L, H, V); log_w <= 0; u: (H, K); initial_state: (b, H, K, V).
    Returns o (b, L, H, V) and the final state (b, H, K, V).

    Stability: the decay is per key channel, so the usual factorisation (r exp(cum)) . (k exp(-cum))
    would need exp of a large positive number. Instead every decay that is applied is a
    difference of cumulative log decays over a stretch inside one chunk (always <= 0): the
    intra-chunk scores use a (chunk, chunk, K) tensor of such differences, and the state enters
    and leaves each chunk through decays measured from the chunk's start or to its end.
    """
    b, L, H, K = k.shape
    V = v.shape[-1]
    pad = (-L) % chunk_size
    if pad:
        # Zero key, value, receptance and log-decay leave the state untouched: padding is exact.
        r, k, v, log_w = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (r, k, v, log_w))
    c, Q = (L + pad) // chunk_size, chunk_size
    r, k, log_w = (t.reshape(b, c, Q, H, K).permute(0, 3, 1, 2, 4) for t in (r, k, log_w))  # (b, H, c, Q, K)
    v = v.reshape(b, c, Q, H, V).permute(0, 3, 1, 2, 4)  # (b, H, c, Q, V)
    w_cum = torch.cumsum(log_w, dim=-2)  # (b, H, c, Q, K): decay from chunk start through t
    w_before = w_cum - log_w  # (b, H, c, Q, K): decay from chunk start up to t, excluding t

    # 1. Within a chunk: o_i = sum_{j<i} (r_i . k_j exp(w_before_i - w_cum_j)) v_j + (r_i . u k_i) v_i.
    strictly_lower = torch.ones(Q, Q, dtype=torch.bool, device=k.device).tril(-1)[..., None]  # (Q, Q, 1)
    exponent = (w_before[..., :, None, :] - w_cum[..., None, :, :]).masked_fill(~strictly_lower, float("-inf"))
    scores = torch.einsum("bhcik,bhcjk,bhcijk->bhcij", r, k, torch.exp(exponent))  # (b, H, c, Q, Q)
    bonus = torch.einsum("bhcik,hk,bhcik->bhci", r, u, k)  # (b, H, c, Q)
    o = torch.einsum("bhcij,bhcjv->bhciv", scores, v) + bonus[..., None] * v  # (b, H, c, Q, V)

    # 2. The state each chunk would leave behind from zero, and its decay over the whole chunk.
    k_to_end = k * torch.exp(w_cum[..., -1:, :] - w_cum)  # (b, H, c, Q, K)
    chunk_states = torch.einsum("bhcjk,bhcjv->bhckv", k_to_end, v)  # (b, H, c, K, V)
    chunk_decay = torch.exp(w_cum[..., -1, :])  # (b, H, c, K)

    # 3. Carry the state across chunk boundaries (a loop over chunks, not time steps).
    S = k.new_zeros(b, H, K, V) if initial_state is None else initial_state
    entering = []
    for i in range(c):
        entering.append(S)
        S = chunk_decay[:, :, i, :, None] * S + chunk_states[:, :, i]  # (b, H, K, V)
    entering = torch.stack(entering, dim=2)  # (b, H, c, K, V)

    # 4. What the entering state contributes: r_i decayed from the chunk start up to i.
    o = o + torch.einsum("bhcik,bhckv->bhciv", r * torch.exp(w_before), entering)  # (b, H, c, Q, V)
    o = o.permute(0, 2, 3, 1, 4).reshape(b, c * Q, H, V)[:, :L]
    return o, S


def wkv6_reference(r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor,
                   initial_state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The same recurrence as `wkv6_chunked`, one time step at a time."""
    b, L, H, K = k.shape
    S = k.new_zeros(b, H, K, v.shape[-1]) if initial_state is None else initial_state
    outputs = []
    for t in range(L):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # (b, H, K, V)
        outputs.append(torch.einsum("bhk,bhkv->bhv", r[:, t], u[..., None] * kv + S))  # (b, H, V)
        S = torch.exp(log_w[:, t])[..., None] * S + kv  # (b, H, K, V)
    return torch.stack(outputs, dim=1), S


class RWKV6Mixer(DecayScaled, TokenFiltered, nn.Module):
    def __init__(self, config: RWKV6Config):
        super().__init__()
        self.config = config
        C, A, H = config.d_model, config.d_att, config.n_heads
        R, Rw = config.mix_lora_rank, config.decay_lora_rank
        # Token-shift mixing coefficients, RWKV-6's schedule over channels (order: x, w, k, v, r, g).
        ddd = torch.arange(C) / C
        shift = 1.0 - ddd ** _RATIO_1_TO_ALMOST_0  # (C,)
        half = 1.0 - ddd ** (0.5 * _RATIO_1_TO_ALMOST_0)
        self.mu_x = nn.Parameter(shift.clone())
        self.mu = nn.Parameter(torch.stack([shift, shift, shift - 0.3 * _RATIO_0_TO_1, half, half]))  # (5, C)
        # LoRAs as plain parameters (the language model re-initialises Linear layers): zero down-
        # projection and small up-projection, so they start as no-ops yet train, as in RWKV-6.
        self.mix_down = nn.Parameter(torch.zeros(C, 5 * R))
        self.mix_up = nn.Parameter(torch.empty(5, R, C).uniform_(-0.01, 0.01))
        self.decay_down = nn.Parameter(torch.zeros(C, Rw))
        self.decay_up = nn.Parameter(torch.empty(Rw, A).uniform_(-0.01, 0.01))
        # w0: log-log decay from -6 (w ~ 0.998) to -1 (w ~ 0.69) across channels; u: RWKV-6's bonus.
        n = torch.arange(A) / max(1, A - 1)
        self.w0 = nn.Parameter(-6.0 + 5.0 * n ** (0.7 + 1.3 * _RATIO_0_TO_1))  # (A,)
        self.u = nn.Parameter((_RATIO_0_TO_1 * (1 - n) + ((torch.arange(A) + 1) % 3 - 1) * 0.1).reshape(H, -1))
        self.receptance = nn.Linear(C, A, bias=False)
        self.key = nn.Linear(C, A, bias=False)
        self.value = nn.Linear(C, A, bias=False)
        self.gate = nn.Linear(C, A, bias=False)
        self.norm = nn.GroupNorm(H, A, eps=64e-5)  # per head, RWKV's eps for head size 64
        self.out_proj = nn.Linear(A, C, bias=False)

    def forward(self, x: Tensor, state: RWKV6State | None = None, reference: bool = False
                ) -> tuple[Tensor, RWKV6State]:
        b, L, C = x.shape
        H, K = self.config.n_heads, self.config.head_dim
        last = x.new_zeros(b, C) if state is None else state.last_x
        dx = torch.cat([last[:, None], x[:, :-1]], dim=1) - x  # (b, L, C): x_{t-1} - x_t
        lora_in = torch.tanh((x + dx * self.mu_x) @ self.mix_down).reshape(b, L, 5, -1)  # (b, L, 5, R)
        m = torch.einsum("blfr,frc->blfc", lora_in, self.mix_up)  # (b, L, 5, C)
        xw, xk, xv, xr, xg = (x[:, :, None] + dx[:, :, None] * (self.mu + m)).unbind(2)  # (b, L, C) each

        r = self.receptance(xr).reshape(b, L, H, K)  # (b, L, H, K)
        k = self.key(xk).reshape(b, L, H, K)
        v = self.value(xv).reshape(b, L, H, K)
        g = F.silu(self.gate(xg))  # (b, L, A)
        # Capping the log-log decay at 4 (w <= exp(-54)) changes nothing that matters and keeps
        # cumulative log decays within a chunk small enough for float32 differences.
        log_w = -torch.exp((self.w0 + torch.tanh(xw @ self.decay_down) @ self.decay_up).clamp(max=4.0))
        log_w = log_w.reshape(b, L, H, K)  # (b, L, H, K)
        if self.decay_factor != 1.0:  # decay-scale at evaluation: w^(T / L) (DecayScaled)
            log_w = log_w * self.decay_factor
        keep = self.token_keep(-log_w.mean(-1))  # (b, L, H) or None: token-filter's mask, importance -log w_t
        k_state = k if keep is None else k * keep[..., None]  # (b, L, H, K): a filtered token writes nothing
        if keep is not None:
            log_w = log_w * keep[..., None]  # and decays nothing: w = 1 (TokenFiltered)

        S0 = None if state is None else state.wkv
        if reference:
            o, S = wkv6_reference(r, k_state, v, log_w, self.u, S0)
        else:
            o, S = wkv6_chunked(r, k_state, v, log_w, self.u, self.config.chunk_size, S0)
        if keep is not None:  # a filtered token's own bonus term r_t diag(u) k_t^T v_t is output, not state
            o = o + torch.einsum("blhk,hk,blhk->blh", r, self.u, k - k_state)[..., None] * v  # (b, L, H, V)
        o = self.norm(o.reshape(b * L, H * K)).reshape(b, L, H * K)  # (b, L, A)
        return self.out_proj(o * g), RWKV6State(x[:, -1], S)

    @staticmethod
    def state_floats(config: RWKV6Config, length: int) -> int:
        """Floats of state per sequence: constant in the length."""
        return config.d_model + config.n_heads * config.head_dim ** 2


MIXERS = [MixerSpec("rwkv6", RWKV6Config, RWKV6Mixer, "linear-recurrent", letter="K")]
ARCHITECTURES = [
    ArchSpec("rwkv6", "RWKV-6 (Finch): data-dependent token shift and per-channel decay, gated MLP as channel mix",
             pattern="K", n_layers=4, mlp_ratio=7 / 3, mixer={"n_heads": 4}, size_knobs={"mlp_ratio": around(7 / 3)}),
]
