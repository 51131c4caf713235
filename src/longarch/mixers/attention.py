"""Causal multi-head self-attention: global or sliding-window, with RoPE, ALiBi or no positions.

For every position t, softmax(q_t . k_s / sqrt(d_head) + bias(t, s)) over the visible s:
all s <= t (global) or t - window < s <= t (sliding window). Positions enter as
- `rope`: q and k rotated by their absolute positions (Su et al.);
- `alibi`: bias(t, s) = -slope_h * (t - s), one geometric slope per head (Press et al.);
- `nope`: nothing; order is only visible through causality.
Computed with `torch.nn.functional.scaled_dot_product_attention`, locally where the mask is
not plain causal: a sliding window of w keys block by block (w queries against the 2w keys of
their block and the one before, one (w, 2w) band or ALiBi bias for all blocks), and global
attention with ALiBi or a cache a block of QUERY_BLOCK queries at a time, each block's mask or
bias a view of one (H, QUERY_BLOCK, K) table; so no (L, L) mask, or (H, L, L) bias, is ever
formed. `reference=True` is the plain dense computation, for the tests.

State is the key/value cache plus the number of tokens seen, so a sequence fed in pieces is
rotated and masked exactly as the same sequence fed whole. A sliding window keeps only the
last `window` keys, so its state is bounded; global attention's grows with the length.

RoPE scaling (`rope_scaling`) stretches a model trained at length T to a longer length L
without further training, by a factor s = L / T set per evaluated length (`set_context`):
- `pi`, position interpolation (Chen et al. 2023): every frequency divided by s, so positions
  up to L turn through the same angles as positions up to T did in training;
- `ntk`, NTK-aware scaling (bloc97 2023): the base b raised to b * s^(d / (d - 2)), which
  leaves the fastest pair (local order) as is and divides the slowest by s, and those in
  between by less the faster they turn;
- `yarn` (Peng et al. 2023): NTK-by-parts, i.e. pairs that turn more than beta = 32 times
  within T keep their frequency, pairs that turn less than alpha = 1 time are divided by s,
  and those in between are blended by a ramp; plus a temperature: q and k are both
  multiplied by 0.1 ln(s) + 1, so the logits by its square (sqrt(1/t) in the paper).
With s = 1 all three are plain RoPE, bit for bit, so training is unchanged.

`attention_weights(x, state, queries)` gives the softmax weights of chosen query positions, the
reference way (explicit scores, the same mask, RoPE and scaling), for diagnostics
(analysis/diagnostics.py); the fast path never forms them and does not change.

The same scalings are also inference interventions (`rope-pi`, `rope-ntk`, `rope-yarn`) on a
RoPE model trained without one, and `window` makes global attention a sliding window of T keys
past T; `set_context` sets them per evaluated length (mixers/base.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from .base import ArchSpec, MixerSpec, around

POSITIONS = ("rope", "alibi", "nope")
ROPE_SCALINGS = ("none", "pi", "ntk", "yarn")
YARN_ALPHA, YARN_BETA = 1.0, 32.0  # YaRN's ramp ends, in turns over the original length
ROPE_INTERVENTIONS = {"rope-pi": "pi", "rope-ntk": "ntk", "rope-yarn": "yarn"}  # intervention -> rope_scaling
# Queries per block where global attention needs an explicit mask (ALiBi, or queries after a
# cache): one table of (H, QUERY_BLOCK, K) masks or biases, which every block views, is all
# that is built.
QUERY_BLOCK = 256


@dataclass
class AttentionConfig:
    d_model: int
    n_heads: int = 4
    position: str = "rope"
    rope_base: float = 10000.0
    rope_scaling: str = "none"  # how RoPE stretches past the training length: none|pi|ntk|yarn

    def __post_init__(self):
        if self.position not in POSITIONS:
            raise ValueError(f"attention position must be one of {POSITIONS}, not {self.position!r}")
        if self.rope_scaling not in ROPE_SCALINGS:
            raise ValueError(f"attention rope_scaling must be one of {ROPE_SCALINGS}, not {self.rope_scaling!r}")
        if self.rope_scaling != "none" and self.position != "rope":
            raise ValueError(f"rope_scaling={self.rope_scaling!r} needs position='rope', not {self.position!r}")

    @property
    def head_dim(self) -> int:
        # Heads split d_model, rounded up to an even width (RoPE rotates pairs), so that any
        # d_model is valid and parameter counts vary smoothly with it.
        return 2 * -(-self.d_model // (2 * self.n_heads))

    @property
    def span(self) -> int | None:
        """How many past keys a query sees, itself included; None for all of them."""
        return None


@dataclass
class LocalAttentionConfig(AttentionConfig):
    window: int = 64

    def __post_init__(self):
        super().__post_init__()
        if self.window < 1:
            raise ValueError(f"attention window must be >= 1, not {self.window}")

    @property
    def span(self) -> int | None:
        return self.window


@dataclass
class KVCache:
    keys: Tensor    # (B, H, P, Dh): the last P keys, already rotated
    values: Tensor  # (B, H, P, Dh)
    seen: int       # tokens seen so far: the absolute position of the next one


def rope_frequencies(head_dim: int, base: float, scaling: str = "none", factor: float = 1.0,
                     original_length: int | None = None, device: torch.device | None = None
                     ) -> tuple[Tensor, float]:
    """The rotation frequencies (head_dim // 2,) in float64, and the factor by which q and k are
    multiplied (YaRN's temperature; 1 otherwise), for a scaling method and a factor s >= 1."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim  # (Dh/2,): 2i / Dh
    if scaling == "none" or factor == 1.0:
        return base ** -exponents, 1.0
    if scaling == "pi":
        return base ** -exponents / factor, 1.0
    if scaling == "ntk":
        # A head of width 2 has one pair, of frequency base^0 = 1 whatever the base.
        stretch = factor ** (head_dim / (head_dim - 2)) if head_dim > 2 else 1.0
        return (base * stretch) ** -exponents, 1.0
    if scaling != "yarn":
        raise ValueError(f"rope scaling must be one of {ROPE_SCALINGS}, not {scaling!r}")
    if original_length is None:
        raise ValueError("YaRN needs the original (training) length")
    inv_freq = base ** -exponents  # (Dh/2,)

    def pair_turning(turns: float) -> float:
        """The pair index i whose wavelength 2 pi base^(2i / Dh) fits `turns` times into the original length."""
        return head_dim * math.log(original_length / (turns * 2 * math.pi)) / (2 * math.log(base))

    # As in the authors' code (and transformers): the ramp is linear in the pair index between
    # the pairs that turn beta and alpha times, rounded outwards; 0 keeps, 1 interpolates.
    low = max(math.floor(pair_turning(YARN_BETA)), 0)
    high = min(math.ceil(pair_turning(YARN_ALPHA)), head_dim - 1)
    if high == low:
        high += 0.001
    pairs = torch.arange(head_dim // 2, dtype=torch.float64, device=device)  # (Dh/2,): i
    ramp = ((pairs - low) / (high - low)).clamp(0, 1)  # (Dh/2,)
    return inv_freq * (1 - ramp) + inv_freq / factor * ramp, 0.1 * math.log(factor) + 1.0


def rope_tables(positions: Tensor, head_dim: int, base: float, dtype: torch.dtype, scaling: str = "none",
                factor: float = 1.0, original_length: int | None = None) -> tuple[Tensor, Tensor]:
    """cos and sin of position * frequency, each (L, head_dim // 2), times YaRN's q/k factor."""
    inv_freq, attention_factor = rope_frequencies(head_dim, base, scaling, factor, original_length,
                                                  positions.device)  # (Dh/2,)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (L, Dh/2)
    return (angles.cos() * attention_factor).to(dtype), (angles.sin() * attention_factor).to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive halves of the last dimension: x (B, H, L, Dh)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, L, Dh/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def alibi_slopes(n_heads: int) -> Tensor:
    """Geometric slopes 2^(-8 h / n_heads), h = 1..n_heads (the ALiBi paper's schedule)."""
    return 2.0 ** (-8.0 * torch.arange(1, n_heads + 1, dtype=torch.float64) / n_heads)


def four_d(mask: Tensor) -> Tensor:
    """A mask of 2 or 3 dimensions as a view of 4, (1, H or 1, L, K): on a CPU, torch's fused
    attention takes only a 4-dimensional mask and otherwise falls back to forming the scores
    (a (H, 256, 8192) ALiBi bias ran 3x slower so)."""
    return mask.view((1,) * (4 - mask.dim()) + tuple(mask.shape))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: AttentionConfig):
        super().__init__()
        self.config = config
        inner = config.n_heads * config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * inner, bias=False)
        self.out = nn.Linear(inner, config.d_model, bias=False)
        # RoPE scaling: the factor s and the original (training) length, set per evaluated
        # length by `set_context`; s = 1 is plain RoPE. Not parameters: no checkpoint holds them.
        self.rope_factor = 1.0
        self.original_length: int | None = None
        # Inference interventions (set_context): a RoPE scaling the config does not have, and a
        # window of keys for global attention; None: as configured.
        self.rope_override: str | None = None
        self.window_override: int | None = None

    @staticmethod
    def inference_interventions(config: AttentionConfig) -> tuple[str, ...]:
        """The RoPE scalings for RoPE attention without one of its own; `window` for global attention."""
        rope = tuple(ROPE_INTERVENTIONS) if config.position == "rope" and config.rope_scaling == "none" else ()
        return rope + (("window",) if config.span is None else ())

    def set_context(self, train_length: int, length: int, intervention: str | None = None) -> None:
        """Scale RoPE for sequences of `length` tokens from a model trained at `train_length`:
        s = max(1, length / train_length). Keep it fixed for a whole sequence, cache included.
        Nothing changes without `rope_scaling`, unless `intervention` names a RoPE scaling
        (rope-pi, rope-ntk, rope-yarn: that scaling instead) or `window` (past T, each query sees
        its last `train_length` keys only)."""
        if train_length < 1 or length < 1:
            raise ValueError(f"lengths must be >= 1, not train_length={train_length}, length={length}")
        self.rope_override = ROPE_INTERVENTIONS.get(intervention or "")
        self.window_override = train_length if intervention == "window" and length > train_length else None
        if self.config.rope_scaling != "none" or self.rope_override is not None:
            self.rope_factor = max(1.0, length / train_length)
            self.original_length = train_length
        else:
            self.rope_factor = 1.0

    @property
    def span(self) -> int | None:
        """Keys a query sees, itself included: the config's, or the `window` intervention's."""
        return self.window_override if self.window_override is not None else self.config.span

    def forward(self, x: Tensor, state: KVCache | None = None, reference: bool = False) -> tuple[Tensor, KVCache]:
        B, L, _ = x.shape
        cfg = self.config
        q, k, v, positions, key_positions = self._project(x, state)
        if reference:
            y = self._reference(q, k, v, positions, key_positions)
        elif self.span is not None:
            y = self._local(q, k, v, positions, key_positions, self.span)  # (B, H, L, Dh)
        elif cfg.position != "alibi" and k.shape[2] == L:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, Dh)
        else:
            # Queries in a later piece and ALiBi need an explicit mask: is_causal aligns its
            # triangle to the top-left corner and knows no bias.
            y = self._by_query_blocks(q, k, v, positions, key_positions)  # (B, H, L, Dh)
        y = y.transpose(1, 2).reshape(B, L, cfg.n_heads * cfg.head_dim)  # (B, L, H*Dh)
        if self.span is not None:  # a window only ever needs its last `span - 1` keys again
            start = max(0, k.shape[2] - (self.span - 1))
            k, v = k[:, :, start:], v[:, :, start:]
        return self.out(y), KVCache(k, v, (0 if state is None else state.seen) + L)

    def _project(self, x: Tensor, state: KVCache | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """q (B, H, L, Dh), and k, v (B, H, P+L, Dh) with the cached ones in front, q and k rotated
        (RoPE, scaled as set); the absolute positions of the queries (L,) and of the keys (P+L,)."""
        B, L, _ = x.shape
        cfg = self.config
        H, Dh = cfg.n_heads, cfg.head_dim
        seen = 0 if state is None else state.seen
        q, k, v = self.qkv(x).view(B, L, 3, H, Dh).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, Dh)
        positions = torch.arange(seen, seen + L, device=x.device)  # (L,)
        if cfg.position == "rope":
            cos, sin = rope_tables(positions, Dh, cfg.rope_base, x.dtype, self.rope_override or cfg.rope_scaling,
                                   self.rope_factor, self.original_length)  # (L, Dh/2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if state is not None:
            k = torch.cat([state.keys, k], dim=2)  # (B, H, P+L, Dh)
            v = torch.cat([state.values, v], dim=2)
        key_positions = torch.arange(seen + L - k.shape[2], seen + L, device=x.device)  # (P+L,)
        return q, k, v, positions, key_positions

    def _mask(self, positions: Tensor, key_positions: Tensor, dtype: torch.dtype) -> Tensor:
        """Boolean (L, K) visibility, or an additive (H, L, K) float mask for ALiBi."""
        distance = positions[:, None] - key_positions[None, :]  # (L, K): how far back each key is
        visible = distance >= 0
        if self.span is not None:
            visible &= distance < self.span
        if self.config.position != "alibi":
            return visible
        slopes = alibi_slopes(self.config.n_heads).to(dtype=dtype, device=positions.device)  # (H,)
        bias = distance.to(dtype) * -slopes[:, None, None]  # (H, L, K)
        return bias.masked_fill_(~visible, float("-inf"))

    def _local(self, q: Tensor, k: Tensor, v: Tensor, positions: Tensor, key_positions: Tensor, w: int) -> Tensor:
        """Sliding-window attention block by block: q (B, H, L, Dh), k and v (B, H, P+L, Dh)
        -> (B, H, L, Dh), in O(L w) memory. Queries go in blocks of w; a block sees the 2w keys
        of its own block and the one before, which hold every key its queries see (t - w < s <= t).
        The first block, whose earlier keys are the cache's (or none), is masked from its actual
        positions; in every later block query r sees key c iff r < c <= r + w, the same band
        (and, for ALiBi, the same bias) in all of them, so one (w, 2w) mask serves them all."""
        B, H, L, Dh = q.shape
        P = k.shape[2] - L
        first = min(w, L)
        keys0 = slice(max(0, P - w + 1), P + first)  # the keys the first block's queries may see
        y0 = F.scaled_dot_product_attention(q[:, :, :first], k[:, :, keys0], v[:, :, keys0], attn_mask=four_d(
            self._mask(positions[:first], key_positions[keys0], q.dtype)))  # (B, H, first, Dh)
        if L <= w:
            return y0
        n = -(-(L - w) // w)  # later blocks
        band = self._mask(torch.arange(w, 2 * w, device=q.device), torch.arange(2 * w, device=q.device), q.dtype)
        # (w, 2w) bool, or (H, w, 2w) float for ALiBi: distance w + r - c
        q_blocks = F.pad(q[:, :, w:], (0, 0, 0, n * w - (L - w)))  # (B, H, n w, Dh): padded queries see zeros
        q_blocks = q_blocks.view(B, H, n, w, Dh).transpose(1, 2).reshape(B * n, H, w, Dh)  # (B n, H, w, Dh)
        k_blocks, v_blocks = (self._key_blocks(t[:, :, P:], n, w) for t in (k, v))  # (B n, H, 2w, Dh) each
        y = F.scaled_dot_product_attention(q_blocks, k_blocks, v_blocks, attn_mask=four_d(band))  # (B n, H, w, Dh)
        y = y.view(B, n, H, w, Dh).transpose(1, 2).reshape(B, H, n * w, Dh)[:, :, :L - w]  # (B, H, L-w, Dh)
        return torch.cat([y0, y], dim=2)  # (B, H, L, Dh)

    @staticmethod
    def _key_blocks(x: Tensor, n: int, w: int) -> Tensor:
        """The 2w keys (or values) of blocks 1..n: x (B, H, L, Dh), from the first query on
        -> (B n, H, 2w, Dh), block j holding x[(j-1) w : (j+1) w], zeros past the end."""
        B, H, L, Dh = x.shape
        x = F.pad(x, (0, 0, 0, (n + 1) * w - L))  # (B, H, (n+1) w, Dh)
        blocks = x.unfold(2, 2 * w, w)  # (B, H, n, Dh, 2w): a view
        return blocks.permute(0, 2, 1, 4, 3).reshape(B * n, H, 2 * w, Dh)  # (B n, H, 2w, Dh)

    def _by_query_blocks(self, q: Tensor, k: Tensor, v: Tensor, positions: Tensor, key_positions: Tensor) -> Tensor:
        """Global attention with an explicit mask (ALiBi, or queries after a cache), a block of
        at most QUERY_BLOCK queries at a time against the keys up to its last, so that no (L, K)
        mask or (H, L, K) bias is formed: q (B, H, L, Dh), k and v (B, H, K, Dh), K = P + L.
        Visibility and bias depend on the distance alone, so one table for the last Q queries
        against all K keys, (H, Q, K), holds every block's mask as a view: a block of q' queries
        ending at query `end` is its last q' rows and last P + end columns."""
        L, K = q.shape[2], k.shape[2]
        P, Q = K - L, min(L, QUERY_BLOCK)
        table = four_d(self._mask(key_positions[K - Q:], key_positions, q.dtype))  # (1, H or 1, Q, K)
        outputs = []
        for start in range(0, L, Q):
            end = min(L, start + Q)
            keys = slice(0, P + end)
            mask = table[:, :, Q - (end - start):, K - (P + end):]  # (1, H or 1, end - start, P + end)
            outputs.append(F.scaled_dot_product_attention(q[:, :, start:end], k[:, :, keys], v[:, :, keys],
                                                          attn_mask=mask))  # (B, H, end - start, Dh)
        return torch.cat(outputs, dim=2)  # (B, H, L, Dh)

    def _weights(self, q: Tensor, k: Tensor, positions: Tensor, key_positions: Tensor) -> Tensor:
        """Plain softmax(q k^T / sqrt(Dh) + mask): (B, H, L, K)."""
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, H, L, K)
        mask = self._mask(positions, key_positions, q.dtype)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        return scores.softmax(dim=-1)

    def _reference(self, q: Tensor, k: Tensor, v: Tensor, positions: Tensor, key_positions: Tensor) -> Tensor:
        """Plain softmax attention with the same mask, for the tests."""
        return self._weights(q, k, positions, key_positions) @ v  # (B, H, L, Dh)

    def attention_weights(self, x: Tensor, state: KVCache | None = None, queries=None) -> Tensor:
        """The attention weights of some queries, for diagnostics: (B, H, Q, K).

        x (B, L, D) continues `state` as in `forward`; `queries` picks positions of x (indices,
        a list or a slice; None: all L). Row q is softmax over the K = P + L visible-or-masked
        keys, the P cached ones first, in order of position (the last key is x's last token, at
        absolute position state.seen + L - 1); masked keys get 0. Computed the reference way
        (explicit scores, the forward pass's mask and RoPE with its scaling as set by
        `set_context`), beside the fast path, which never forms the weights and is unchanged:
        `weights @ v` is the forward pass's output for those queries before `out`."""
        q, k, _, positions, key_positions = self._project(x, state)
        if queries is not None:
            q, positions = q[:, :, queries], positions[queries]  # (B, H, Q, Dh), (Q,)
        return self._weights(q, k, positions, key_positions)

    @staticmethod
    def state_floats(config: AttentionConfig, length: int) -> int:
        """Floats of state per sequence after `length` tokens: the cached keys and values."""
        cached = length if config.span is None else min(length, config.span - 1)
        return 2 * config.n_heads * config.head_dim * cached


MIXERS = [MixerSpec("attention", AttentionConfig, CausalSelfAttention, "attention", letter="A"),
          MixerSpec("local-attention", LocalAttentionConfig, CausalSelfAttention, "attention", letter="W")]


def _transformer(name: str, description: str, pattern: str = "A", **mixer) -> ArchSpec:
    """A Transformer++ entry: two attention blocks of 4 heads with a SwiGLU MLP; `mixer` holds
    what the entry changes (position encoding, RoPE scaling, window)."""
    return ArchSpec(name, description, pattern=pattern, n_layers=2, mlp_ratio=4.0,
                    mixer={"n_heads": 4, **mixer}, size_knobs={"mlp_ratio": around(4.0)})


ARCHITECTURES = [
    _transformer("transformer",
                 "Transformer++: causal multi-head attention with RoPE, SwiGLU MLP"),
    _transformer("transformer-nope",
                 "Transformer++ without positional encoding (NoPE): order only through the causal mask",
                 position="nope"),
    _transformer("transformer-alibi",
                 "Transformer++ with ALiBi: a per-head linear distance penalty instead of rotations",
                 position="alibi"),
    _transformer("transformer-pi",
                 "Transformer++ with RoPE position interpolation: positions past T squeezed by L / T at evaluation",
                 rope_scaling="pi"),
    _transformer("transformer-ntk",
                 "Transformer++ with NTK-aware RoPE: base raised at evaluation, slow pairs stretched by L / T, fast kept",
                 rope_scaling="ntk"),
    _transformer("transformer-yarn",
                 "Transformer++ with YaRN: RoPE interpolated by parts to L / T at evaluation, plus a logit temperature",
                 rope_scaling="yarn"),
    _transformer("sliding-window",
                 "Transformer++ with sliding-window (local) attention, window 64, RoPE: bounded state",
                 pattern="W", window=64),
]
