"""Weight-copy equivalence with Hugging Face `transformers`: four of our mixers against the
pure-PyTorch implementation of the same layer there.

For each pair a Hugging Face module is built from a small config with random weights (never
from a checkpoint), its weights are copied into our mixer with `load_state_dict(strict=True)`
(so every one of our parameters is set, with the right shape), and the two must give the same
outputs on the same random inputs:

- Mamba (S6): `MambaMixer` vs `transformers...modeling_mamba.MambaMixer` (its sequential
  PyTorch scan, the fallback when `mamba_ssm` is not installed), through our chunked scan (chunk
  sizes that do and do not divide the length), our step-by-step reference, and our state
  carried across pieces.
- Mamba-2 (SSD): `Mamba2Mixer` vs `transformers...modeling_mamba2.Mamba2Mixer` (its PyTorch
  chunked scan `mamba2_chunk_scan`, the fallback its forward calls without `mamba_ssm`; this
  transformers release has no separate `torch_forward`), with one group of B, C (`n_groups=1`:
  ours shares B, C across heads).
- RG-LRU: `RGLRUMixer` vs `RecurrentGemmaRecurrentBlock`, and the bare scan `rglru_chunked`
  against `RecurrentGemmaRglru._rnn_scan`.
- Attention: `CausalSelfAttention(position="rope")` vs `LlamaAttention` fed by
  `LlamaRotaryEmbedding`, eager and sdpa, whole and through our KV cache.

Where the layers differ in structure, the test removes the difference on the Hugging Face side
and says so at the helper: RecurrentGemma's projections carry biases (set to zero here) and its
recurrence restarts at position id 0 (positions start at 1 here).

Precision: float32 and a 1e-4 tolerance. Every Hugging Face layer here computes some of its work
in float32 whatever the input dtype (Mamba: A and B; Mamba-2: the whole scan and the norm;
RecurrentGemma: the scan's accumulator; Llama: the rotary tables and the eager softmax), so
float64 would only measure their float32 rounding. The one exception, the isolated RG-LRU scan,
accepts a float64 accumulator and is checked in float64 to 1e-10. (Observed float32 differences
are at most 3e-7, so the tolerance has a wide margin; a misplaced or zeroed parameter moves the
outputs by 3e-2 or more.)

Each HF init leaves something that would let a wrong copy pass (A_log equal in every row, D and
norm weights all one, gate biases and the RG-LRU parameters uninitialised), so the builders
below draw those at random; every bias and skip that our layer has is nonzero.
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from torch import Tensor, nn
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding
from transformers.models.mamba.modeling_mamba import MambaMixer as HFMambaMixer
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMamba2Mixer
from transformers.models.recurrent_gemma.modeling_recurrent_gemma import (RecurrentGemmaRecurrentBlock,
                                                                          RecurrentGemmaRglru)

from longarch.mixers.attention import AttentionConfig, CausalSelfAttention
from longarch.mixers.mamba import MambaConfig, MambaMixer
from longarch.mixers.mamba2 import Mamba2Config, Mamba2Mixer
from longarch.mixers.rglru import RGLRUConfig, RGLRUMixer, rglru_chunked, rglru_reference

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = dict(rtol=1e-4, atol=1e-4)
BATCH, LENGTH = 2, 29  # 29 is prime: no chunk size below it divides it


def _load(ours: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Set every parameter of `ours` from `tensors` (strict: none missing, none extra, same shapes)."""
    ours.load_state_dict({name: t.detach().clone() for name, t in tensors.items()}, strict=True)


def _assert_agree(ours: Tensor, theirs: Tensor, **tol) -> None:
    """Same outputs, and outputs big enough that the tolerance means something."""
    assert ours.shape == theirs.shape
    assert theirs.abs().mean() > 1e-2, "degenerate reference output"
    torch.testing.assert_close(ours, theirs, **(tol or TOL))


def _inverse_softplus(y: Tensor) -> Tensor:
    return y + torch.log(-torch.expm1(-y))


def _log_uniform(n: int, low: float, high: float) -> Tensor:
    return torch.empty(n).uniform_(math.log(low), math.log(high)).exp()


def _inputs(d_model: int, seed: int) -> Tensor:
    return torch.randn(BATCH, LENGTH, d_model, generator=torch.Generator().manual_seed(1000 + seed))


# ---------------------------------------------------------------- Mamba


def _hf_mamba(d_model: int, d_state: int, d_conv: int, seed: int) -> HFMambaMixer:
    torch.manual_seed(seed)
    config = transformers.MambaConfig(hidden_size=d_model, state_size=d_state, expand=2, conv_kernel=d_conv,
                                      num_hidden_layers=1)
    hf = HFMambaMixer(config, layer_idx=0).eval()
    with torch.no_grad():
        hf.A_log.add_(0.5 * torch.randn_like(hf.A_log))  # HF's rows are all log(1..N)
        hf.D.copy_(torch.randn_like(hf.D))  # HF's are all one
        # Steps dt up to 1 rather than HF's 0.1, and larger x_proj and dt_proj weights (B, C and
        # dt vary more with the input): with HF's init the selective part is so small next to the
        # D skip that a misplaced A_log or dt_weight moves the output by only ~1e-4.
        hf.dt_proj.bias.copy_(_inverse_softplus(_log_uniform(hf.dt_proj.bias.numel(), 1e-2, 1.0)))
        hf.dt_proj.weight.normal_(0.0, 1.0)
        hf.x_proj.weight.mul_(4.0)
    return hf


def _copy_mamba(hf: HFMambaMixer, ours: MambaMixer) -> None:
    """Same layout on both sides: in_proj rows (x, z), x_proj rows (dt_low, B, C), a depthwise
    conv weight (D, 1, d_conv) with bias (HF pads d_conv - 1 on both sides and crops the end, ours
    pads the left by hand: the same causal convolution), dt_proj = our (dt_weight, dt_bias)."""
    _load(ours, {
        "in_proj.weight": hf.in_proj.weight,
        "conv.weight": hf.conv1d.weight, "conv.bias": hf.conv1d.bias,
        "x_proj.weight": hf.x_proj.weight,
        "dt_weight": hf.dt_proj.weight, "dt_bias": hf.dt_proj.bias,
        "A_log": hf.A_log, "D": hf.D,
        "out_proj.weight": hf.out_proj.weight,
    })


MAMBA_SIZES = [pytest.param(20, 8, 4, 0, id="d20-N8-conv4"),  # dt_rank 2
               pytest.param(36, 4, 3, 1, id="d36-N4-conv3")]  # dt_rank 3


@pytest.mark.parametrize("d_model, d_state, d_conv, seed", MAMBA_SIZES)
@pytest.mark.parametrize("chunk_size, reference", [(4, False), (7, False), (16, False), (64, False), (16, True)],
                         ids=["chunk4", "chunk7", "chunk16", "chunk64", "reference"])
def test_mamba_matches_hf(d_model, d_state, d_conv, seed, chunk_size, reference):
    hf = _hf_mamba(d_model, d_state, d_conv, seed)
    ours = MambaMixer(MambaConfig(d_model=d_model, d_state=d_state, expand=2, d_conv=d_conv, chunk_size=chunk_size))
    _copy_mamba(hf, ours)
    u = _inputs(d_model, seed)
    with torch.no_grad():
        theirs = hf(u)
        mine, _ = ours(u, reference=reference)
    _assert_agree(mine, theirs)


@pytest.mark.parametrize("d_model, d_state, d_conv, seed", MAMBA_SIZES)
def test_mamba_in_pieces_matches_hf_whole(d_model, d_state, d_conv, seed):
    """Our (conv tail, ssm) state carries the sequence across pieces exactly as HF's whole pass."""
    hf = _hf_mamba(d_model, d_state, d_conv, seed)
    ours = MambaMixer(MambaConfig(d_model=d_model, d_state=d_state, expand=2, d_conv=d_conv, chunk_size=8))
    _copy_mamba(hf, ours)
    u = _inputs(d_model, seed)
    with torch.no_grad():
        theirs = hf(u)
        first, state = ours(u[:, :2])  # shorter than the conv tail
        second, state = ours(u[:, 2:13], state)
        third, _ = ours(u[:, 13:], state)
    _assert_agree(torch.cat([first, second, third], dim=1), theirs)


# ---------------------------------------------------------------- Mamba-2


def _hf_mamba2(d_model: int, head_dim: int, d_state: int, seed: int, hf_chunk: int) -> HFMamba2Mixer:
    """n_groups=1: ours has one (B, C) shared by all heads, so HF's gated norm also normalises
    over the whole inner width (its group size is d_inner / n_groups). Both norms use epsilon 1e-5,
    HF's default, which is left as it is."""
    torch.manual_seed(seed)
    n_heads = 2 * d_model // head_dim
    config = transformers.Mamba2Config(hidden_size=d_model, expand=2, num_heads=n_heads, head_dim=head_dim,
                                       state_size=d_state, n_groups=1, conv_kernel=4, chunk_size=hf_chunk,
                                       num_hidden_layers=1)
    hf = HFMamba2Mixer(config, layer_idx=0).eval()
    with torch.no_grad():
        hf.A_log.copy_(torch.log(torch.empty(n_heads).uniform_(0.5, 8.0)))  # HF's are log(1..H)
        hf.D.copy_(torch.randn_like(hf.D))  # HF's are all one
        hf.norm.weight.uniform_(0.5, 1.5)  # HF's are all one
        hf.dt_bias.copy_(_inverse_softplus(_log_uniform(n_heads, 1e-2, 1.0)))
    return hf


def _copy_mamba2(hf: HFMamba2Mixer, ours: Mamba2Mixer) -> None:
    """Same layout: in_proj rows (z, x, B, C, dt), a depthwise conv over (x, B, C) with bias,
    per-head dt_bias, A_log and D, the gated norm's weight, out_proj."""
    _load(ours, {
        "in_proj.weight": hf.in_proj.weight,
        "conv.weight": hf.conv1d.weight, "conv.bias": hf.conv1d.bias,
        "dt_bias": hf.dt_bias, "A_log": hf.A_log, "D": hf.D,
        "norm.weight": hf.norm.weight,
        "out_proj.weight": hf.out_proj.weight,
    })


MAMBA2_SIZES = [pytest.param(16, 8, 8, 0, 8, id="d16-P8-N8-hfchunk8"),  # 4 heads
                pytest.param(24, 16, 4, 1, 16, id="d24-P16-N4-hfchunk16")]  # 3 heads


@pytest.mark.parametrize("d_model, head_dim, d_state, seed, hf_chunk", MAMBA2_SIZES)
@pytest.mark.parametrize("chunk_size, reference", [(5, False), (8, False), (64, False), (8, True)],
                         ids=["chunk5", "chunk8", "chunk64", "reference"])
def test_mamba2_matches_hf(d_model, head_dim, d_state, seed, hf_chunk, chunk_size, reference):
    hf = _hf_mamba2(d_model, head_dim, d_state, seed, hf_chunk)
    ours = Mamba2Mixer(Mamba2Config(d_model=d_model, d_state=d_state, expand=2, head_dim=head_dim, d_conv=4,
                                    chunk_size=chunk_size))
    assert ours.config.n_heads == hf.num_heads
    _copy_mamba2(hf, ours)
    u = _inputs(d_model, seed)
    with torch.no_grad():
        theirs = hf(u)
        mine, _ = ours(u, reference=reference)
    _assert_agree(mine, theirs)


@pytest.mark.parametrize("d_model, head_dim, d_state, seed, hf_chunk", MAMBA2_SIZES)
def test_mamba2_in_pieces_matches_hf_whole(d_model, head_dim, d_state, seed, hf_chunk):
    hf = _hf_mamba2(d_model, head_dim, d_state, seed, hf_chunk)
    ours = Mamba2Mixer(Mamba2Config(d_model=d_model, d_state=d_state, expand=2, head_dim=head_dim, d_conv=4,
                                    chunk_size=8))
    _copy_mamba2(hf, ours)
    u = _inputs(d_model, seed)
    with torch.no_grad():
        theirs = hf(u)
        first, state = ours(u[:, :11])
        second, _ = ours(u[:, 11:], state)
    _assert_agree(torch.cat([first, second], dim=1), theirs)


# ---------------------------------------------------------------- RG-LRU (RecurrentGemma)


def _hf_rglru_block(d_model: int, n_heads: int, d_rnn: int, seed: int) -> RecurrentGemmaRecurrentBlock:
    """HF's block has biases on linear_x, linear_y and linear_out that ours lacks (ours: one
    bias-free in_proj and out_proj); they are set to zero here. Both convolutions have a bias,
    kept nonzero. The RG-LRU parameters are `torch.empty` in HF outside a pretrained model's
    init, so all are drawn here: LeCun-normal gate weights, nonzero gate biases, and
    a = exp(-softplus(Lambda)) with a^2 uniform in [0.9^2, 0.999^2] as in RecurrentGemma.
    One more difference, in the forward: ours floors 1 - a_t^2 at 1e-6 before the square root,
    where HF only bounds the square root's gradient; the floor would bind only for a recurrence
    gate r_t below ~6e-5, which these weights and inputs do not reach."""
    torch.manual_seed(seed)
    config = transformers.RecurrentGemmaConfig(hidden_size=d_model, lru_width=d_rnn, num_attention_heads=n_heads,
                                               conv1d_width=4, num_hidden_layers=1)
    block = RecurrentGemmaRecurrentBlock(config, layer_idx=0).eval()
    lru, width = block.rg_lru, d_rnn // n_heads
    with torch.no_grad():
        for linear in (block.linear_x, block.linear_y, block.linear_out):
            linear.bias.zero_()
        for weight in (lru.input_gate_weight, lru.recurrent_gate_weight):
            weight.normal_(0.0, width ** -0.5)
        for bias in (lru.input_gate_bias, lru.recurrent_gate_bias):
            bias.normal_(0.0, 0.5)
        a = torch.empty(d_rnn).uniform_(0.9 ** 2, 0.999 ** 2).sqrt()
        lru.recurrent_param.copy_(_inverse_softplus(-torch.log(a)))
    return block


def _copy_rglru(block: RecurrentGemmaRecurrentBlock, ours: RGLRUMixer) -> None:
    """Our in_proj is (gate branch, recurrent branch) = (linear_y, linear_x); our block-diagonal
    gates are stacked (recurrence, input) and applied as x_head @ W like HF's baddbmm; our
    a_param is HF's recurrent_param (both: log a = -c * softplus(param) * r with c = 8)."""
    lru = block.rg_lru
    _load(ours, {
        "in_proj.weight": torch.cat([block.linear_y.weight, block.linear_x.weight]),
        "conv.weight": block.conv_1d.weight, "conv.bias": block.conv_1d.bias,
        "gate_weight": torch.stack([lru.recurrent_gate_weight, lru.input_gate_weight]),
        "gate_bias": torch.stack([lru.recurrent_gate_bias, lru.input_gate_bias]),
        "a_param": lru.recurrent_param,
        "out_proj.weight": block.linear_out.weight,
    })


RGLRU_SIZES = [pytest.param(12, 4, 0, id="d12-heads4"),  # d_rnn 16, head width 4
               pytest.param(24, 2, 1, id="d24-heads2")]  # d_rnn 32, head width 16


@pytest.mark.parametrize("d_model, n_heads, seed", RGLRU_SIZES)
@pytest.mark.parametrize("chunk_size, reference", [(4, False), (7, False), (64, False), (8, True)],
                         ids=["chunk4", "chunk7", "chunk64", "reference"])
def test_rglru_matches_hf(d_model, n_heads, seed, chunk_size, reference):
    ours = RGLRUMixer(RGLRUConfig(d_model=d_model, n_heads=n_heads, d_conv=4, chunk_size=chunk_size))
    block = _hf_rglru_block(d_model, n_heads, ours.config.d_rnn, seed)
    _copy_rglru(block, ours)
    u = _inputs(d_model, seed)
    # HF treats position id 0 as the start of a document: there it resets the state (a_t = 0)
    # and skips the input normalisation (multiplier 1 instead of sqrt(1 - a_t^2)). Ours has no
    # resets and normalises every token, its first included. Starting the ids at 1 makes HF
    # read the sequence as continuing a document from a zero state, which is what ours computes.
    position_ids = torch.arange(1, LENGTH + 1).expand(BATCH, LENGTH)
    with torch.no_grad():
        theirs = block(u, position_ids, None, use_cache=False)[0]
        mine, _ = ours(u, reference=reference)
    _assert_agree(mine, theirs)


@pytest.mark.parametrize("d_model, n_heads, seed", RGLRU_SIZES)
def test_rglru_in_pieces_matches_hf_whole(d_model, n_heads, seed):
    ours = RGLRUMixer(RGLRUConfig(d_model=d_model, n_heads=n_heads, d_conv=4, chunk_size=8))
    block = _hf_rglru_block(d_model, n_heads, ours.config.d_rnn, seed)
    _copy_rglru(block, ours)
    u = _inputs(d_model, seed)
    position_ids = torch.arange(1, LENGTH + 1).expand(BATCH, LENGTH)  # see test_rglru_matches_hf
    with torch.no_grad():
        theirs = block(u, position_ids, None, use_cache=False)[0]
        first, state = ours(u[:, :2])
        second, _ = ours(u[:, 2:], state)
    _assert_agree(torch.cat([first, second], dim=1), theirs)


@pytest.mark.parametrize("chunk_size", [3, 8, 64, None], ids=["chunk3", "chunk8", "chunk64", "reference"])
def test_rglru_scan_matches_hf_rnn_scan(chunk_size):
    """The bare recurrence h_t = a_t h_{t-1} + x_t, in float64 (HF's scan takes the accumulator
    dtype as an argument): our chunked scan and step loop against `RecurrentGemmaRglru._rnn_scan`
    with no resets."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(BATCH, LENGTH, 6, generator=g, dtype=torch.float64)
    log_a = -2.0 * torch.rand(BATCH, LENGTH, 6, generator=g, dtype=torch.float64)  # decays in [e^-2, 1]
    no_reset = torch.zeros(BATCH, LENGTH, 1, dtype=torch.bool)
    lru = RecurrentGemmaRglru(transformers.RecurrentGemmaConfig(hidden_size=6, lru_width=6, num_attention_heads=1,
                                                                num_hidden_layers=1))
    theirs, their_last = lru._rnn_scan(x, torch.exp(log_a), no_reset, None, acc_dtype=torch.float64)
    if chunk_size is None:
        mine, my_last = rglru_reference(x, log_a)
    else:
        mine, my_last = rglru_chunked(x, log_a, chunk_size)
    _assert_agree(mine, theirs, rtol=0, atol=1e-10)
    torch.testing.assert_close(my_last, their_last, rtol=0, atol=1e-10)


# ---------------------------------------------------------------- attention (Llama)


def _hf_llama_attention(d_model: int, n_heads: int, head_dim: int, rope_base: float, impl: str, seed: int
                        ) -> tuple[LlamaAttention, LlamaRotaryEmbedding]:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(hidden_size=d_model, num_attention_heads=n_heads, num_key_value_heads=n_heads,
                                      head_dim=head_dim, attention_bias=False, num_hidden_layers=1,
                                      max_position_embeddings=64,
                                      rope_parameters={"rope_type": "default", "rope_theta": rope_base},
                                      attn_implementation=impl)
    return LlamaAttention(config, layer_idx=0).eval(), LlamaRotaryEmbedding(config)


def _copy_attention(hf: LlamaAttention, ours: CausalSelfAttention) -> None:
    """Our qkv rows are (q, k, v), each head-major (head, head_dim) like HF's q/k/v_proj. No
    permutation of the q/k rows is needed: our `apply_rope` rotates the two halves of each head
    (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos) with frequency i on dims i and i + head_dim/2,
    exactly HF's rotate_half convention, with the same frequencies base^(-2i/head_dim)."""
    _load(ours, {
        "qkv.weight": torch.cat([hf.q_proj.weight, hf.k_proj.weight, hf.v_proj.weight]),
        "out.weight": hf.o_proj.weight,
    })


def _hf_attention_forward(hf: LlamaAttention, rotary: LlamaRotaryEmbedding, u: Tensor, impl: str) -> Tensor:
    """HF's forward takes the rotary (cos, sin), each (B, L, head_dim), and, for eager, an
    additive causal mask (B, 1, L, L); sdpa is given no mask, so it applies its own `is_causal`."""
    b, L, _ = u.shape
    position_ids = torch.arange(L).expand(b, L)
    cos_sin = rotary(u, position_ids)
    mask = None
    if impl == "eager":
        future = torch.ones(L, L, dtype=torch.bool).triu(1)
        mask = torch.zeros(b, 1, L, L, dtype=u.dtype).masked_fill(future, torch.finfo(u.dtype).min)
    return hf(u, position_embeddings=cos_sin, attention_mask=mask)[0]


ATTENTION_SIZES = [pytest.param(16, 2, 10000.0, 0, id="d16-heads2-base1e4"),  # head_dim 8
                   pytest.param(20, 4, 100.0, 1, id="d20-heads4-base100")]  # head_dim 6: inner 24 != d_model


@pytest.mark.parametrize("d_model, n_heads, rope_base, seed", ATTENTION_SIZES)
@pytest.mark.parametrize("impl", ["eager", "sdpa"], ids=["hf-eager", "hf-sdpa"])
@pytest.mark.parametrize("reference", [False, True], ids=["ours-sdpa", "ours-reference"])
def test_attention_matches_hf_llama(d_model, n_heads, rope_base, seed, impl, reference):
    ours = CausalSelfAttention(AttentionConfig(d_model=d_model, n_heads=n_heads, position="rope", rope_base=rope_base))
    hf, rotary = _hf_llama_attention(d_model, n_heads, ours.config.head_dim, rope_base, impl, seed)
    _copy_attention(hf, ours)
    u = _inputs(d_model, seed)
    with torch.no_grad():
        theirs = _hf_attention_forward(hf, rotary, u, impl)
        mine, _ = ours(u, reference=reference)
    _assert_agree(mine, theirs)


@pytest.mark.parametrize("d_model, n_heads, rope_base, seed", ATTENTION_SIZES)
def test_attention_kv_cache_matches_hf_llama_whole(d_model, n_heads, rope_base, seed):
    """Ours fed in pieces (a prefix, one token, the rest) through its KV cache equals HF's
    single pass: later pieces are rotated at their absolute positions and see every earlier key."""
    ours = CausalSelfAttention(AttentionConfig(d_model=d_model, n_heads=n_heads, position="rope", rope_base=rope_base))
    hf, rotary = _hf_llama_attention(d_model, n_heads, ours.config.head_dim, rope_base, "eager", seed)
    _copy_attention(hf, ours)
    u = _inputs(d_model, seed)
    with torch.no_grad():
        theirs = _hf_attention_forward(hf, rotary, u, "eager")
        outputs, state = [], None
        for start, end in [(0, 10), (10, 11), (11, LENGTH)]:
            y, state = ours(u[:, start:end], state)
            outputs.append(y)
    assert state.seen == LENGTH
    _assert_agree(torch.cat(outputs, dim=1), theirs)
