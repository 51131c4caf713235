"""Load checkpoints in the `mamba_ssm` format (state-spaces/mamba2-2.7b, mamba2attn-2.7b,
transformerpp-2.7b, ...) into this project's modules, given as ``mamba_ssm:<folder or hub id>``.

A checkpoint is a folder with `config.json` (the fields of mamba_ssm's `MambaConfig`) and
`pytorch_model.bin` or `model.safetensors` (the state dict of its `MambaLMHeadModel`).
`convert` maps that state dict onto `CheckpointLM` (mamba_ssm_model.py); `load` returns a
`CheckpointModel`, which has the interface of `hf.HFModel` (greedy decoding, exact chunked prefill
through our state). The facts used, from the mamba_ssm source (models/mixer_seq_simple.py,
models/config_mamba.py, modules/mamba2.py, mha.py, mlp.py, block.py):

- layers not in `attn_layer_idx` are `ssm_cfg["layer"]` (default "Mamba1": only "Mamba2" is
  supported); the others are `MHA(**attn_cfg)`; a GatedMLP follows each mixer iff d_intermediate > 0;
- the vocabulary is padded up to a multiple of `pad_vocab_size_multiple`; with `tie_embeddings`
  the head is the embedding (its saved `lm_head.weight` is the same tensor);
- all norms use epsilon 1e-5 (`norm_epsilon`, never set from the config);
- Mamba-2 `in_proj` rows are (z, x, B, C, dt) when d_ssm = d_inner, as in ours; its gated
  RMSNorm normalises x * silu(z) over groups of d_ssm / ngroups (one group here);
- MHA's `in_proj` rows are (q: H heads, k: Hkv heads, v: Hkv heads), each head-major; its
  optional conv1d runs over all of them before rotary; rotary (flash-attn's RotaryEmbedding)
  turns pairs (i, i + rotary_dim/2) of the first rotary_dim dims at base^(-2i/rotary_dim), or
  pairs (2i, 2i+1) when interleaved, which `convert` turns into the former by permuting the
  q and k rows (q.k is unchanged when both are permuted alike);
- GatedMLP: fc1 rows are (value, gate), out = fc2(value * silu(gate)), hidden = d_intermediate
  rounded up to 128; our SwiGLU's rows are (gate, value), so the halves are swapped.
"""

from __future__ import annotations

import json
import math
import os

import torch
from torch import Tensor

from ..mixers.mamba2 import Mamba2Config
from .hf import _DTYPE_ALIASES, HFModel
from .hf import _parse as hf_parse
from .mamba_ssm_model import AttentionSpec, CheckpointConfig, CheckpointLM, merge_states

DEFAULT_TOKENIZER = "EleutherAI/gpt-neox-20b"  # what the state-spaces models were trained with
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

# MambaConfig's fields and defaults (models/config_mamba.py); a config.json may leave any out.
CONFIG_DEFAULTS = dict(d_model=2560, d_intermediate=0, n_layer=64, vocab_size=50277, ssm_cfg={}, attn_layer_idx=[],
                       attn_cfg={}, rms_norm=True, residual_in_fp32=True, fused_add_norm=True,
                       pad_vocab_size_multiple=8, tie_embeddings=True)
# Mamba2's options whose value must be the one our mixer computes (its default, except d_ssm,
# which may also equal d_inner), and those that only set initialisation or kernel tiling.
MAMBA2_FIXED = dict(ngroups=1, d_ssm=None, D_has_hdim=False, rmsnorm=True, norm_before_gate=False, bias=False,
                    dt_limit=(0.0, math.inf))
MAMBA2_SHAPES = dict(d_state=128, d_conv=4, expand=2, headdim=64, conv_bias=True)
MAMBA2_INERT = {"layer", "conv_init", "A_init_range", "dt_min", "dt_max", "dt_init_floor", "chunk_size",
                "use_mem_eff_path"}
MHA_DEFAULTS = dict(num_heads=None, num_heads_kv=None, head_dim=None, mlp_dim=0, qkv_proj_bias=True,
                    out_proj_bias=True, softmax_scale=None, causal=False, d_conv=0, rotary_emb_dim=0,
                    rotary_emb_base=10000.0, rotary_emb_interleaved=False)


# --------------------------------------------------------------------------- the config


def parse_config(config: dict) -> CheckpointConfig:
    """A mamba_ssm config.json as a `CheckpointConfig`; ValueError (one line) if we cannot run it."""
    if not isinstance(config, dict):
        raise ValueError("mamba_ssm config must be a JSON object")
    unknown = sorted(set(config) - set(CONFIG_DEFAULTS))
    if unknown:
        raise ValueError(f"mamba_ssm config has unknown fields {unknown}")
    c = {**CONFIG_DEFAULTS, **config}
    d_model, n_layer, vocab = c["d_model"], c["n_layer"], c["vocab_size"]
    if not all(isinstance(v, int) and v > 0 for v in (d_model, n_layer, vocab, c["pad_vocab_size_multiple"])):
        raise ValueError("mamba_ssm config: d_model, n_layer, vocab_size and pad_vocab_size_multiple "
                         "must be positive integers")
    if not isinstance(c["ssm_cfg"], dict) or not isinstance(c["attn_cfg"], dict):
        raise ValueError("mamba_ssm config: ssm_cfg and attn_cfg must be JSON objects")
    if not isinstance(c["attn_layer_idx"], list):
        raise ValueError(f"mamba_ssm config: attn_layer_idx must be a list, not {c['attn_layer_idx']!r}")
    attn_layer_idx = tuple(sorted(set(c["attn_layer_idx"])))
    if any(not isinstance(i, int) or not 0 <= i < n_layer for i in attn_layer_idx):
        raise ValueError(f"mamba_ssm config: attn_layer_idx {c['attn_layer_idx']} must be layers 0..{n_layer - 1}")
    d_intermediate = c["d_intermediate"]
    if not isinstance(d_intermediate, int) or d_intermediate < 0:
        raise ValueError(f"mamba_ssm config: d_intermediate must be >= 0, not {d_intermediate!r}")
    multiple = c["pad_vocab_size_multiple"]
    return CheckpointConfig(
        d_model=d_model, n_layer=n_layer, vocab_size=vocab, padded_vocab_size=-(-vocab // multiple) * multiple,
        mlp_hidden=-(-d_intermediate // 128) * 128,  # GatedMLP's multiple_of
        attn_layer_idx=attn_layer_idx,
        mamba2=_mamba2_config(d_model, c["ssm_cfg"]) if len(attn_layer_idx) < n_layer else None,
        attention=_attention_spec(d_model, c["attn_cfg"]) if attn_layer_idx else None,
        rms_norm=bool(c["rms_norm"]), residual_in_fp32=bool(c["residual_in_fp32"]),
        tie_embeddings=bool(c["tie_embeddings"]))


def _mamba2_config(d_model: int, ssm_cfg: dict) -> Mamba2Config:
    layer = ssm_cfg.get("layer", "Mamba1")  # create_block's default
    if layer != "Mamba2":
        raise ValueError(f"mamba_ssm config: ssm_cfg.layer {layer!r} is not supported (only 'Mamba2')")
    unknown = sorted(set(ssm_cfg) - set(MAMBA2_FIXED) - set(MAMBA2_SHAPES) - MAMBA2_INERT)
    if unknown:
        raise ValueError(f"mamba_ssm config: ssm_cfg has options {unknown} that Mamba2 does not take")
    o = {**MAMBA2_FIXED, **MAMBA2_SHAPES, **ssm_cfg}
    d_inner = o["expand"] * d_model
    if not isinstance(o["headdim"], int) or d_inner % o["headdim"]:
        raise ValueError(f"mamba_ssm config: ssm_cfg.headdim {o['headdim']} does not divide "
                         f"expand * d_model = {d_inner}")
    if o["d_ssm"] == d_inner:
        o["d_ssm"] = None
    o["dt_limit"] = tuple(float(v) for v in o["dt_limit"])
    for name, value in MAMBA2_FIXED.items():
        if o[name] != value:
            raise ValueError(f"mamba_ssm config: ssm_cfg.{name}={o[name]!r} is not supported "
                             f"(our Mamba-2 computes {name}={value!r})")
    config = Mamba2Config(d_model=d_model, d_state=o["d_state"], expand=o["expand"], head_dim=o["headdim"],
                          d_conv=o["d_conv"], norm_eps=1e-5)  # RMSNormGated(eps=1e-5) in Mamba2
    assert config.d_inner == d_inner
    return config


def _attention_spec(d_model: int, attn_cfg: dict) -> AttentionSpec:
    unknown = sorted(set(attn_cfg) - set(MHA_DEFAULTS))
    if unknown:
        raise ValueError(f"mamba_ssm config: attn_cfg has options {unknown} that MHA does not take")
    o = {**MHA_DEFAULTS, **attn_cfg}
    heads = o["num_heads"]
    kv_heads = o["num_heads_kv"] or heads
    if not isinstance(heads, int) or not isinstance(kv_heads, int) or heads < 1 or heads % kv_heads:
        raise ValueError(f"mamba_ssm config: attn_cfg needs num_heads divisible by num_heads_kv, "
                         f"not {heads!r} and {kv_heads!r}")
    if o["head_dim"] is None and d_model % heads:
        raise ValueError(f"mamba_ssm config: d_model {d_model} is not divisible by attn_cfg.num_heads {heads}")
    head_dim = o["head_dim"] or d_model // heads
    rotary_dim = o["rotary_emb_dim"]
    if rotary_dim % 2 or not 0 <= rotary_dim <= head_dim:
        raise ValueError(f"mamba_ssm config: attn_cfg.rotary_emb_dim {rotary_dim} must be even and "
                         f"<= head_dim {head_dim}")
    if not o["causal"]:
        raise ValueError("mamba_ssm config: attn_cfg.causal is not true; a language model needs causal attention")
    if o["mlp_dim"]:
        raise ValueError(f"mamba_ssm config: attn_cfg.mlp_dim={o['mlp_dim']} (an MLP inside MHA) is not supported")
    return AttentionSpec(d_model=d_model, n_heads=heads, n_kv_heads=kv_heads, head_dim=head_dim,
                         rotary_dim=rotary_dim, rotary_base=float(o["rotary_emb_base"]), d_conv=o["d_conv"],
                         qkv_bias=bool(o["qkv_proj_bias"]), out_bias=bool(o["out_proj_bias"]),
                         softmax_scale=o["softmax_scale"])


# --------------------------------------------------------------------------- the weights


def convert(state_dict: dict[str, Tensor], config: dict) -> tuple[CheckpointLM, dict[str, Tensor]]:
    """The mamba_ssm `state_dict` as a `CheckpointLM` (every parameter set: strict loading) and
    its own state dict. Tensors keep their dtype and device; cast the model afterwards."""
    spec = parse_config(config)
    options = {**CONFIG_DEFAULTS, **config}  # two options that only change the mapping:
    interleaved = bool(options["attn_cfg"].get("rotary_emb_interleaved", False))
    conv_bias = bool(options["ssm_cfg"].get("conv_bias", True))
    source = dict(state_dict)
    if spec.tie_embeddings and "lm_head.weight" in source:
        head, embedding = source.pop("lm_head.weight"), source.get("backbone.embedding.weight")
        if embedding is not None and (head.shape != embedding.shape or not torch.equal(head, embedding)):
            raise ValueError("mamba_ssm checkpoint: tie_embeddings is true but lm_head.weight differs "
                             "from the embedding")
    used: set[str] = set()

    def take(key: str) -> Tensor:
        if key not in source:
            raise ValueError(f"mamba_ssm checkpoint lacks {key}, which its config implies")
        used.add(key)
        return source[key]

    ours = {"embedding.weight": take("backbone.embedding.weight")}
    ours.update(_norm_weights(take, "backbone.norm_f.", "norm_f.", spec.rms_norm))
    if not spec.tie_embeddings:
        ours["lm_head.weight"] = take("lm_head.weight")
    for i in range(spec.n_layer):
        theirs, mine = f"backbone.layers.{i}.", f"layers.{i}."
        ours.update(_norm_weights(take, theirs + "norm.", mine + "norm.", spec.rms_norm))
        if i in spec.attn_layer_idx:
            ours.update(_attention_weights(take, theirs + "mixer.", mine + "mixer.", spec.attention, interleaved))
        else:
            ours.update(_mamba2_weights(take, theirs + "mixer.", mine + "mixer.", conv_bias))
        if spec.mlp_hidden:
            ours.update(_norm_weights(take, theirs + "norm2.", mine + "norm2.", spec.rms_norm))
            value, gate = take(theirs + "mlp.fc1.weight").chunk(2, dim=0)  # (hidden, D) each
            ours[mine + "mlp.up.weight"] = torch.cat([gate, value])  # ours: (gate, value)
            ours[mine + "mlp.down.weight"] = take(theirs + "mlp.fc2.weight")
    extra = sorted(set(source) - used)
    if extra:
        raise ValueError(f"mamba_ssm checkpoint has {len(extra)} weights its config does not explain, e.g. {extra[0]}")

    with torch.device("meta"):
        model = CheckpointLM(spec)
    for name, expected in model.state_dict().items():
        if ours[name].shape != expected.shape:
            raise ValueError(f"mamba_ssm checkpoint: the weight for {name} has shape {tuple(ours[name].shape)}, "
                             f"its config implies {tuple(expected.shape)}")
    model.load_state_dict(ours, strict=True, assign=True)
    return model, ours


def _norm_weights(take, theirs: str, mine: str, rms_norm: bool) -> dict[str, Tensor]:
    names = ["weight"] if rms_norm else ["weight", "bias"]
    return {mine + n: take(theirs + n) for n in names}


def _mamba2_weights(take, theirs: str, mine: str, conv_bias: bool) -> dict[str, Tensor]:
    """Same layout on both sides (in_proj rows z, x, B, C, dt; a depthwise conv over x, B, C)."""
    out = {mine + n: take(theirs + n) for n in ("in_proj.weight", "dt_bias", "A_log", "D", "norm.weight",
                                                 "out_proj.weight")}
    out[mine + "conv.weight"] = weight = take(theirs + "conv1d.weight")  # (conv_dim, 1, d_conv)
    if conv_bias:
        out[mine + "conv.bias"] = take(theirs + "conv1d.bias")
    else:  # ours always has a bias; zero is the same convolution
        out[mine + "conv.bias"] = weight.new_zeros(weight.shape[0])
    return out


def _attention_weights(take, theirs: str, mine: str, spec: AttentionSpec, interleaved: bool) -> dict[str, Tensor]:
    """MHA's in_proj, conv1d and out_proj are ours as they are, unless rotary is interleaved
    (then the q and k rows, and their conv channels, are permuted: see the module docstring)."""
    names = [("in_proj.weight", "in_proj.weight"), ("out_proj.weight", "out_proj.weight")]
    names += [("in_proj.bias", "in_proj.bias")] if spec.qkv_bias else []
    names += [("out_proj.bias", "out_proj.bias")] if spec.out_bias else []
    names += [("conv1d.weight", "conv.weight"), ("conv1d.bias", "conv.bias")] if spec.d_conv else []
    out = {mine + m: take(theirs + t) for t, m in names}
    if interleaved and spec.rotary_dim:
        order = _deinterleave_order(spec)
        for name in ("in_proj.weight", "in_proj.bias", "conv.weight", "conv.bias"):
            if mine + name in out:
                out[mine + name] = out[mine + name].index_select(0, order.to(out[mine + name].device))
    return out


def _deinterleave_order(spec: AttentionSpec) -> Tensor:
    """Row order of (q, k, v) that moves each rotated pair (2i, 2i+1) of a q or k head to (i, i + rd/2)."""
    rd, Dh = spec.rotary_dim, spec.head_dim
    within = torch.cat([torch.arange(0, rd, 2), torch.arange(1, rd, 2), torch.arange(rd, Dh)])  # (Dh,)
    rotated_heads = spec.n_heads + spec.n_kv_heads  # q heads, then k heads; v heads keep their order
    heads = torch.arange(rotated_heads)[:, None] * Dh + within[None, :]  # (heads, Dh)
    rest = torch.arange(rotated_heads * Dh, (rotated_heads + spec.n_kv_heads) * Dh)
    return torch.cat([heads.flatten(), rest])


# --------------------------------------------------------------------------- loading


def _parse(spec: str) -> str:
    """The local folder or hub id ("owner/name") in ``mamba_ssm:<folder or hub id>``."""
    return hf_parse(spec, "mamba_ssm", owner_required=True)


def _download(repo_id: str) -> str:
    """The hub checkpoint's config, weights and any tokenizer files, in the local hub cache."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, allow_patterns=["config.json", *WEIGHT_FILES, "tokenizer*",
                                                          "special_tokens_map.json", "vocab.json", "merges.txt"])
    except Exception as exc:  # offline, unknown repo, gated: all one answer
        raise ValueError(f"model {repo_id} could not be found locally or on the Hugging Face hub "
                         f"({type(exc).__name__})") from None


def _read_config(folder: str) -> dict:
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{folder} has no config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not readable JSON ({type(exc).__name__})") from None


def _read_weights(folder: str) -> dict[str, Tensor]:
    paths = [os.path.join(folder, name) for name in WEIGHT_FILES]
    path = next((p for p in paths if os.path.isfile(p)), None)
    if path is None:
        raise ValueError(f"{folder} has no weights ({' or '.join(WEIGHT_FILES)})")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            weights = load_file(path)
        else:  # memory-mapped: the tensors are read as the model is cast and moved
            weights = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception as exc:
        raise ValueError(f"{path} could not be read as a state dict ({type(exc).__name__})") from None
    if not isinstance(weights, dict) or not all(isinstance(v, Tensor) for v in weights.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors")
    return weights


def _load_tokenizer(name: str | None, folder: str):
    from transformers import AutoTokenizer

    own = any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES)
    source = name or (folder if own else DEFAULT_TOKENIZER)
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ValueError(f"tokenizer {source} could not be loaded ({type(exc).__name__})") from None


def load(spec: str, dtype: str = "float32", device: str = "cpu", tokenizer: str | None = None) -> "CheckpointModel":
    """Load ``mamba_ssm:<folder or hub id>`` as a `CheckpointModel` in eval mode. The tokenizer is
    `tokenizer` (a path or hub id), else the checkpoint's own files, else gpt-neox-20b's."""
    target = _parse(spec)
    torch_dtype = getattr(torch, _DTYPE_ALIASES.get(dtype, dtype), None)
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r} (try float32, bfloat16 or float16)")
    folder = target if os.path.isdir(target) else _download(target)
    config = _read_config(folder)
    parse_config(config)  # a bad config fails before the weights are read
    loaded_tokenizer = _load_tokenizer(tokenizer, folder)
    model, _ = convert(_read_weights(folder), config)
    model.cast(torch_dtype).to(device)
    model.eval().requires_grad_(False)
    return CheckpointModel(model=model, tokenizer=loaded_tokenizer, device=torch.device(device))


class CheckpointModel(HFModel):
    """A mamba_ssm checkpoint on our modules, behind `HFModel`'s interface: prompts, batching by
    length, greedy decoding and EOS handling are HFModel's; `_step` runs our model through its
    state (exact in pieces for every layer, so prefill may always be chunked)."""

    @property
    def kind(self) -> str:
        return self.model.config.kind

    @property
    def declared_length(self) -> int | None:
        return None  # the format records no training length

    @property
    def chunkable(self) -> bool:
        return True

    @property
    def eos_ids(self) -> set[int]:
        value = getattr(self.tokenizer, "eos_token_id", None)  # the config names none
        return {value} if isinstance(value, int) else set()

    def _step(self, ids: Tensor, cache, past: int):
        """Forward ``ids`` (batch, n) after the state ``cache``: logits of the last position over
        the tokenizer's vocabulary (padding rows dropped), in float32, and the new state."""
        logits, cache = self.model(ids, cache, last_only=True)
        return logits[:, -1, :self.model.config.vocab_size].float(), cache

    @property
    def mixes_lengths(self) -> bool:
        return True

    @torch.no_grad()
    def _generate_padded(self, prompts: list[list[int]], max_new_tokens: int, chunk: int | None = None):
        """Prompts of different lengths: each prefilled alone (in chunks), then decoded together
        from the merged state (recurrent states stacked, attention caches padded on the left with
        the padding masked), so decoding, the slow part, runs as one batch."""
        logits, states = [], []
        for prompt in prompts:
            ids = torch.tensor([prompt], dtype=torch.long, device=self.device)  # (1, L)
            row_logits, state = self._prefill(ids, chunk)
            logits.append(row_logits)
            states.append(state)
        return self._decode(torch.cat(logits), merge_states(states), max_new_tokens,
                            lambda token, cache, _: self._step(token[:, None], cache, 0))

    def num_params(self) -> int:
        return self.model.num_params()
