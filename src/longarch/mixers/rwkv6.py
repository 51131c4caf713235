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
    intra-chunk scores use a (chunk, chunk, K) tensor of such differences, built for a group of
    chunks at a time so that it stays small, and the state enters and leaves each chunk through
    decays measured from the chunk's start or to its end.

    With gradients, `WKV6Scan` runs the same computation, keeps its inputs and the state entering
    each chunk, and computes the gradients by hand (the state's by a reverse loop over chunks):
    autograd would keep the (chunk, chunk, K) tensors of every chunk.
    """
    b, L, H, K = k.shape
    S0 = k.new_zeros(b, H, K, v.shape[-1]) if initial_state is None else initial_state
    if torch.is_grad_enabled() and any(t.requires_grad for t in (r, k, v, log_w, u, S0)):
        return WKV6Scan.apply(r, k, v, log_w, u, S0, chunk_size)
    o, S, _ = _wkv6_forward(r, k, v, log_w, u, S0, chunk_size)
    return o, S


def _to_chunks(t: Tensor, Q: int) -> Tensor:
    """(b, L, H, K) -> (b, H, c, Q, K), zero-padded to whole chunks. Zero key, value, receptance
    and log-decay leave the state untouched, so padding is exact."""
    b, L, H, K = t.shape
    pad = (-L) % Q
    if pad:
        t = F.pad(t, (0, 0, 0, 0, 0, pad))
    return t.reshape(b, (L + pad) // Q, Q, H, K).permute(0, 3, 1, 2, 4)


def _from_chunks(t: Tensor, L: int) -> Tensor:
    """(b, H, c, Q, V) -> (b, L, H, V)."""
    b, H, c, Q, V = t.shape
    return t.permute(0, 2, 3, 1, 4).reshape(b, c * Q, H, V)[:, :L]


GROUP_ELEMENTS = 2 ** 22  # of a group's (chunk, chunk, K) tensors: 16 MiB in float32


def _chunk_groups(t: Tensor) -> list[slice]:
    """Slices over the chunks of t (b, H, c, Q, K) whose (chunk, chunk, K) tensors hold about
    GROUP_ELEMENTS elements in all."""
    b, H, c, Q, K = t.shape
    size = max(1, GROUP_ELEMENTS // (b * H * Q * Q * K))
    return [slice(start, min(start + size, c)) for start in range(0, c, size)]


def _intra_decay(w_before: Tensor, w_cum: Tensor) -> Tensor:
    """exp(w_before_i - w_cum_j) for j < i, 0 elsewhere: (..., Q, K) -> (..., Q, Q, K)."""
    Q = w_cum.shape[-2]
    strictly_lower = torch.ones(Q, Q, dtype=torch.bool, device=w_cum.device).tril(-1)[..., None]  # (Q, Q, 1)
    exponent = w_before[..., :, None, :] - w_cum[..., None, :, :]  # (..., Q, Q, K)
    return exponent.masked_fill_(~strictly_lower, float("-inf")).exp_()


def _wkv6_forward(r: Tensor, k: Tensor, v: Tensor, log_w: Tensor, u: Tensor, S0: Tensor, Q: int
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """`wkv6_chunked`'s computation; also returns the state entering each chunk (b, H, c, K, V)."""
    L = r.shape[1]
    r, k, v, log_w = (_to_chunks(t, Q) for t in (r, k, v, log_w))  # (b, H, c, Q, K or V)
    w_cum = torch.cumsum(log_w, dim=-2)  # (b, H, c, Q, K): decay from chunk start through t
    w_before = w_cum - log_w  # (b, H, c, Q, K): decay from chunk start up to t, excluding t

    # 1. The state each chunk would leave behind from zero, and its decay over the whole chunk.
    k_to_end = k * torch.exp(w_cum[..., -1:, :] - w_cum)  # (b, H, c, Q, K)
    chunk_states = torch.einsum("bhcjk,bhcjv->bhckv", k_to_end, v)  # (b, H, c, K, V)
    chunk_decay = torch.exp(w_cum[..., -1, :])  # (b, H, c, K)

    # 2. Carry the state across chunk boundaries (a loop over chunks, not time steps).
    S, entering = S0, []
    for i in range(chunk_states.shape[2]):
        entering.append(S)
        S = chunk_decay[:, :, i, :, None] * S + chunk_states[:, :, i]  # (b, H, K, V)
    entering = torch.stack(entering, dim=2)  # (b, H, c, K, V)

    # 3. What the entering state contributes (r_i decayed from the chunk start up to i), and the
    # bonus: o_i = r_i . (S_entering decayed + u k_i v_i).
    bonus = torch.einsum("bhcik,hk,bhcik->bhci", r, u, k)  # (b, H, c, Q)
    o = torch.einsum("bhcik,bhckv->bhciv", r * torch.exp(w_before), entering) + bonus[..., None] * v

    # 4. Within a chunk: o_i += sum_{j<i} (r_i . k_j exp(w_before_i - w_cum_j)) v_j.
    for part in _chunk_groups(r):
        decay = _intra_decay(w_before[:, :, part], w_cum[:, :, part])  # (b, H, g, Q, Q, K)
        scores = (decay.mul_(r[:, :, part, :, None]) * k[:, :, part, None]).sum(-1)  # (b, H, g, Q, Q)
        o[:, :, part] += scores @ v[:, :, part]  # (b, H, g, Q, V)
    return _from_chunks(o, L), S, entering


class WKV6Scan(torch.autograd.Function):
    """`_wkv6_forward` with a hand-written backward. Per chunk, with S0 the state entering it,
    S1 the one leaving it, dO the outputs' gradient and dS1 the leaving state's (from later chunks):

        dS0 = exp(w_last) dS1 + sum_i (r_i exp(w_before_i))^T dO_i      (a reverse loop over chunks)

    and the gradients of r, k, v, u and the decays follow chunk by chunk, all chunks at once.
    Every decay appears as exp(difference of cumulative log decays), so the gradient of a
    cumulative log decay is the product of the decayed factor's value and its own gradient:
    d w_before_i = r_i * (dr_i from the decayed terms), d w_cum_j = -k_j * (dk_j likewise)."""

    @staticmethod
    def forward(ctx, r, k, v, log_w, u, S0, chunk_size):
        o, S, entering = _wkv6_forward(r, k, v, log_w, u, S0, chunk_size)  # (b, L, H, V), (b, H, K, V)
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(r, k, v, log_w, u, entering)
        return o, S

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_o: Tensor, grad_last: Tensor):
        r, k, v, log_w, u, entering = ctx.saved_tensors
        L, Q = r.shape[1], ctx.chunk_size
        r, k, v, log_w, grad_o = (_to_chunks(t, Q) for t in (r, k, v, log_w, grad_o))  # (b, H, c, Q, .)
        w_cum = torch.cumsum(log_w, dim=-2)  # (b, H, c, Q, K)
        w_before = w_cum - log_w
        decay_from_start, decay_to_end = torch.exp(w_before), torch.exp(w_cum[..., -1:, :] - w_cum)
        grad_leaving, grad_S0 = _leaving_state_grads(r * decay_from_start, grad_o, torch.exp(w_cum[..., -1, :]),
                                                     grad_last)  # (b, H, c, K, V), (b, H, K, V)
        # Through the entering state (r) and into the leaving one (k, v).
        grad_r = decay_from_start * torch.einsum("bhckv,bhciv->bhcik", entering, grad_o)  # (b, H, c, Q, K)
        grad_k = decay_to_end * torch.einsum("bhckv,bhcjv->bhcjk", grad_leaving, v)  # (b, H, c, Q, K)
        grad_v = torch.einsum("bhcjk,bhckv->bhcjv", k * decay_to_end, grad_leaving)  # (b, H, c, Q, V)
        grad_w_last = (k * grad_k).sum(-2) + torch.exp(w_cum[..., -1, :]) * (grad_leaving * entering).sum(-1)
        _intra_backward(r, k, v, w_before, w_cum, grad_o, grad_r, grad_k, grad_v)
        grad_w_before = r * grad_r  # (b, H, c, Q, K)
        grad_w_cum = -k * grad_k
        grad_w_cum[..., -1, :] += grad_w_last
        # The bonus r_i . (u k_i) v_i.
        grad_bonus = (grad_o * v).sum(-1, keepdim=True)  # (b, H, c, Q, 1)
        grad_v += torch.einsum("bhcik,hk,bhcik->bhci", r, u, k)[..., None] * grad_o
        grad_u = torch.einsum("bhciz,bhcik,bhcik->hk", grad_bonus, r, k)  # (H, K)
        grad_r += grad_bonus * u[:, None, None] * k
        grad_k += grad_bonus * u[:, None, None] * r
        # w_before = w_cum - log_w and w_cum = cumsum(log_w): d log_w = reverse cumsum of d w_cum.
        grad_w_cum += grad_w_before
        grad_log_w = grad_w_cum.flip(-2).cumsum(-2).flip(-2) - grad_w_before
        grads = (_from_chunks(t, L) for t in (grad_r, grad_k, grad_v, grad_log_w))
        return *grads, grad_u, grad_S0, None


def _leaving_state_grads(r_decayed: Tensor, grad_o: Tensor, chunk_decay: Tensor, grad_last: Tensor
                         ) -> tuple[Tensor, Tensor]:
    """The gradient of the state leaving each chunk (b, H, c, K, V), and of the initial state,
    by the loop dS_entering = chunk_decay dS_leaving + sum_i (r_i exp(w_before_i))^T dO_i from the
    last chunk. r_decayed, grad_o: (b, H, c, Q, K or V); chunk_decay: (b, H, c, K)."""
    from_outputs = torch.einsum("bhcik,bhciv->bhckv", r_decayed, grad_o)  # (b, H, c, K, V)
    grad_S, leaving = grad_last, []
    for i in reversed(range(from_outputs.shape[2])):
        leaving.append(grad_S)
        grad_S = chunk_decay[:, :, i, :, None] * grad_S + from_outputs[:, :, i]  # (b, H, K, V)
    return torch.stack(leaving[::-1], dim=2), grad_S


def _intra_backward(r: Tensor, k: Tensor, v: Tensor, w_before: Tensor, w_cum: Tensor, grad_o: Tensor,
                    grad_r: Tensor, grad_k: Tensor, grad_v: Tensor) -> None:
    """Adds the gradients of o_i = sum_{j<i} (r_i . k_j exp(w_before_i - w_cum_j)) v_j to grad_r,
    grad_k, grad_v, a group of chunks at a time. All (b, H, c, Q, K or V)."""
    for part in _chunk_groups(r):
        decay = _intra_decay(w_before[:, :, part], w_cum[:, :, part])  # (b, H, g, Q, Q, K)
        r_i, k_j = r[:, :, part, :, None], k[:, :, part, None]  # (b, H, g, Q, 1, K), (b, H, g, 1, Q, K)
        scores = (decay * r_i * k_j).sum(-1)  # (b, H, g, Q, Q)
        grad_v[:, :, part] += scores.transpose(-1, -2) @ grad_o[:, :, part]
        grad_scores = grad_o[:, :, part] @ v[:, :, part].transpose(-1, -2)  # (b, H, g, Q, Q)
        decay.mul_(grad_scores[..., None])  # the gradient of r_i * k_j, in decay's place
        grad_r[:, :, part] += (decay * k_j).sum(-2)
        grad_k[:, :, part] += (decay.mul_(r_i)).sum(-3)


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
