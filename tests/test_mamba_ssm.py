"""The mamba_ssm: loader (models/mamba_ssm.py) computes what other implementations of the same
checkpoints compute. (Decoding, batching and bad input: test_mamba_ssm_loading.py.)

No checkpoint or tokenizer is downloaded: every checkpoint is written here, in a tmp folder, from
- a random `transformers` model of the same architecture, with its state dict renamed to
  mamba_ssm's keys (Mamba2ForCausalLM for pure Mamba-2; LlamaForCausalLM for Transformer++, with
  grouped key/value heads; BambaForCausalLM for the hybrid: Mamba-2 layers, attention layers
  with rotary on half of each head, as in mamba2attn-2.7b), whose logits ours must reproduce;
- or random tensors in the mamba_ssm layout, checked against `transformers` Mamba-2 through the
  reverse mapping, and against `_reference_attention_lm`: mamba_ssm's forward for attention
  checkpoints written out here from its source (mha.py, mlp.py, block.py, flash-attn's rotary),
  for what no transformers model has (a convolution over q, k, v; interleaved rotary; biases;
  LayerNorm; a softmax scale).
Float32, tolerance 1e-4 (observed differences are near 1e-6). The transformers inits leave
A_log, D, dt_bias and the norm weights at values that would hide a misplaced copy, so they are
drawn at random.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import transformers
from mamba_ssm_checks import (LENGTH, PADDED, VOCAB, assert_agree, mamba_ssm_config, random_state_dict,
                              save_checkpoint, save_tokenizer, token_ids)

from longarch.models import mamba_ssm

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return save_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def _randomise(model):
    """Norm weights around 1, and matrices at unit gain (HF's std 0.02 leaves logits near zero)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 2:
                p.normal_(0.0, 1.0 if "embed" in name else p.shape[1] ** -0.5)


def _randomise_mamba2(mixer):
    with torch.no_grad():
        H = mixer.A_log.numel()
        mixer.A_log.copy_(torch.log(torch.empty(H).uniform_(0.5, 8.0)))
        mixer.D.normal_()
        dt = torch.empty(H).uniform_(math.log(1e-2), 0.0).exp()
        mixer.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def _check_logits(model, theirs, ids):
    """Whole forward (padded vocabulary), and next-token logits whole and in pieces."""
    mine, _ = model.model(ids)
    assert_agree(mine, theirs)
    for chunk in (None, 2, 7):
        assert_agree(model.next_token_logits(ids[0].tolist(), chunk=chunk), theirs[0, -1, :VOCAB])

# ---------------------------------------------------------------- Mamba-2 (transformers Mamba2ForCausalLM)


def _hf_mamba2(tie, seed=0, **options):
    torch.manual_seed(seed)
    config = transformers.Mamba2Config(vocab_size=PADDED, hidden_size=32, num_hidden_layers=2, state_size=8, expand=2,
                                       head_dim=8, num_heads=8, n_groups=1, conv_kernel=4, chunk_size=8,
                                       layer_norm_epsilon=1e-5, tie_word_embeddings=tie, **options)
    hf = transformers.Mamba2ForCausalLM(config).eval()
    for layer in hf.backbone.layers:
        _randomise_mamba2(layer.mixer)
    _randomise(hf)
    return hf


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(ids, use_cache=False).logits


@pytest.mark.parametrize("tie, safetensors", [(True, True), (False, False)], ids=["tied-safetensors", "untied-bin"])
def test_mamba2_from_transformers(tmp_path, tokenizer_dir, tie, safetensors):
    """HF's Mamba-2 keys are mamba_ssm's but for `embeddings`; safetensors drops the tied head."""
    hf = _hf_mamba2(tie)
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf.state_dict().items()}
    if safetensors:
        state.pop("lm_head.weight")
    # tied: the tokenizer given by path; untied: the checkpoint's own tokenizer files
    spec = save_checkpoint(tmp_path / "ckpt", mamba_ssm_config(tie=tie), state, None if tie else tokenizer_dir,
                           safetensors)
    model = mamba_ssm.load(spec, tokenizer=str(tokenizer_dir) if tie else None)
    assert (model.kind, model.declared_length, model.chunkable) == ("mamba_ssm-mamba2", None, True)
    assert model.num_params() == sum(p.numel() for p in hf.parameters())
    ids = token_ids()
    _check_logits(model, _hf_logits(hf, ids), ids)

@pytest.mark.parametrize("conv_bias", [True, False], ids=["conv-bias", "no-conv-bias"])
def test_mamba2_to_transformers(conv_bias):
    """The other direction: random mamba_ssm weights -> ours (convert) and -> HF (renamed back)."""
    config = mamba_ssm_config(tie=False, conv_bias=conv_bias)
    state = random_state_dict(config, seed=1)
    if not conv_bias:
        state = {k: v for k, v in state.items() if not k.endswith("conv1d.bias")}
    model, ours = mamba_ssm.convert(state, config)
    hf = _hf_mamba2(tie=False, use_conv_bias=conv_bias)
    hf.load_state_dict({k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in state.items()},
                       strict=True)
    ids = token_ids(1)
    with torch.no_grad():
        mine, _ = model(ids)
    assert_agree(mine, _hf_logits(hf, ids))
    assert set(ours) == set(model.state_dict())


# ---------------------------------------------------------------- Transformer++ (Llama) and the hybrid (Bamba)


def _hf_attention(sd: dict, hf: str, ours: str) -> dict:
    """An HF q/k/v/o attention (keys under `hf`) in mamba_ssm's keys: in_proj rows are (q, k, v)."""
    return {ours + "mixer.in_proj.weight": torch.cat([sd[f"{hf}{n}_proj.weight"] for n in "qkv"]),
            ours + "mixer.out_proj.weight": sd[hf + "o_proj.weight"]}


def _hf_mlp(sd: dict, hf: str, ours: str) -> dict:
    """An HF gate/up/down SwiGLU in mamba_ssm's keys: GatedMLP's fc1 rows are (value, gate) = (up, gate)."""
    return {ours + "mlp.fc1.weight": torch.cat([sd[hf + "up_proj.weight"], sd[hf + "gate_proj.weight"]]),
            ours + "mlp.fc2.weight": sd[hf + "down_proj.weight"]}


def test_transformerpp_from_llama(tmp_path, tokenizer_dir):
    """All layers attention with 4 query heads sharing 2 key/value heads, GatedMLP, rotary base 500."""
    torch.manual_seed(2)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=PADDED, hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5, max_position_embeddings=64, attention_bias=False,
        mlp_bias=False, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0})).eval()
    _randomise(hf)
    sd = hf.state_dict()
    state = {"backbone.embedding.weight": sd["model.embed_tokens.weight"],
             "backbone.norm_f.weight": sd["model.norm.weight"],
             "lm_head.weight": sd["lm_head.weight"]}
    for i in range(2):
        p, q = f"model.layers.{i}.", f"backbone.layers.{i}."
        state[q + "norm.weight"] = sd[p + "input_layernorm.weight"]
        state[q + "norm2.weight"] = sd[p + "post_attention_layernorm.weight"]
        state.update(_hf_attention(sd, p + "self_attn.", q) | _hf_mlp(sd, p + "mlp.", q))
    attn_cfg = {"num_heads": 4, "num_heads_kv": 2, "head_dim": 8, "rotary_emb_dim": 8, "rotary_emb_base": 500.0,
                "causal": True, "qkv_proj_bias": False, "out_proj_bias": False}
    config = mamba_ssm_config(d_intermediate=128, attn_layer_idx=[0, 1], attn_cfg=attn_cfg, tie=False)
    config["ssm_cfg"] = {}  # as in transformerpp-2.7b: no SSM layer, so no layer class
    model = mamba_ssm.load(save_checkpoint(tmp_path, config, state), tokenizer=str(tokenizer_dir))
    assert model.kind == "mamba_ssm-attention"
    ids = token_ids(2)
    _check_logits(model, _hf_logits(hf, ids), ids)


@pytest.mark.parametrize("with_mlp", [True, False], ids=["with-mlp", "no-mlp"])
def test_hybrid_from_bamba(tmp_path, tokenizer_dir, with_mlp):
    """Mamba-2, attention (GQA, rotary on 4 of 8 dims per head), Mamba-2. Bamba always has an
    MLP; for the no-MLP case (mamba2attn-2.7b's d_intermediate = 0) its down projections are
    zeroed and the MLPs left out of the checkpoint."""
    torch.manual_seed(3)
    hf = transformers.BambaForCausalLM(transformers.BambaConfig(
        vocab_size=PADDED, hidden_size=32, intermediate_size=128, num_hidden_layers=3, attn_layer_indices=[1],
        num_attention_heads=4, num_key_value_heads=2, mamba_n_heads=8, mamba_d_head=8, mamba_d_state=8,
        mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=8, rms_norm_eps=1e-5, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000.0})).eval()
    assert hf.config.rope_parameters["partial_rotary_factor"] == 0.5
    _randomise(hf)
    for i in (0, 2):
        _randomise_mamba2(hf.model.layers[i].mamba)
    if not with_mlp:
        with torch.no_grad():
            for layer in hf.model.layers:
                layer.feed_forward.down_proj.weight.zero_()
    sd = hf.state_dict()
    state = {"backbone.embedding.weight": sd["model.embed_tokens.weight"],
             "backbone.norm_f.weight": sd["model.final_layernorm.weight"], "lm_head.weight": sd["lm_head.weight"]}
    for i in range(3):
        p, q = f"model.layers.{i}.", f"backbone.layers.{i}."
        state[q + "norm.weight"] = sd[p + "input_layernorm.weight"]
        if i == 1:
            state.update(_hf_attention(sd, p + "self_attn.", q))
        else:  # Bamba's Mamba-2 keys are mamba_ssm's
            state.update({q + "mixer." + k[len(p + "mamba."):]: v for k, v in sd.items() if k.startswith(p + "mamba.")})
        if with_mlp:
            state[q + "norm2.weight"] = sd[p + "pre_ff_layernorm.weight"]
            state.update(_hf_mlp(sd, p + "feed_forward.", q))
    attn_cfg = {"num_heads": 4, "num_heads_kv": 2, "head_dim": 8, "rotary_emb_dim": 4, "rotary_emb_base": 1000.0,
                "causal": True, "qkv_proj_bias": False, "out_proj_bias": False}
    config = mamba_ssm_config(n_layer=3, d_intermediate=128 if with_mlp else 0, attn_layer_idx=[1], attn_cfg=attn_cfg,
                              tie=False)
    model = mamba_ssm.load(save_checkpoint(tmp_path, config, state), tokenizer=str(tokenizer_dir))
    assert model.kind == "mamba_ssm-hybrid"
    ids = token_ids(3)
    _check_logits(model, _hf_logits(hf, ids), ids)


# ---------------------------------------------------------------- attention options no transformers model has


def _flash_rotary(x, cos, sin, interleaved):
    """flash-attn's apply_rotary_emb_torch: x (B, L, h, Dh); cos, sin (L, rd/2); rotates the first rd dims."""
    rd = 2 * cos.shape[-1]
    rot = x[..., :rd]
    if interleaved:
        cos, sin = cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1)
        x1, x2 = rot[..., ::2], rot[..., 1::2]
        turned = torch.stack([-x2, x1], dim=-1).flatten(-2)
    else:
        cos, sin = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
        x1, x2 = rot.chunk(2, dim=-1)
        turned = torch.cat([-x2, x1], dim=-1)
    return torch.cat([rot * cos[:, None] + turned * sin[:, None], x[..., rd:]], dim=-1)


def _reference_attention_lm(sd, config, ids):
    """mamba_ssm's MambaLMHeadModel forward for a checkpoint whose layers are all MHA, from its source."""
    a, D = config["attn_cfg"], config["d_model"]
    H, Hkv, Dh, rd, k = a["num_heads"], a["num_heads_kv"], a["head_dim"], a["rotary_emb_dim"], a["d_conv"]

    def norm(x, p):
        if config["rms_norm"]:
            return F.rms_norm(x, (D,), sd[p + "weight"], 1e-5)
        return F.layer_norm(x, (D,), sd[p + "weight"], sd[p + "bias"], 1e-5)

    x = sd["backbone.embedding.weight"][ids]  # (B, L, D)
    L = ids.shape[1]
    inv_freq = 1.0 / (a["rotary_emb_base"] ** (torch.arange(0, rd, 2, dtype=torch.float32) / rd))
    freqs = torch.outer(torch.arange(L, dtype=torch.float32), inv_freq)  # (L, rd/2)
    for i in range(config["n_layer"]):
        p = f"backbone.layers.{i}."
        qkv = F.linear(norm(x, p + "norm."), sd[p + "mixer.in_proj.weight"], sd.get(p + "mixer.in_proj.bias"))
        if k:
            qkv = F.conv1d(qkv.transpose(1, 2), sd[p + "mixer.conv1d.weight"], sd[p + "mixer.conv1d.bias"],
                           padding=k - 1, groups=qkv.shape[-1])[..., :-(k - 1)].transpose(1, 2)
        q, kv = qkv.split([H * Dh, 2 * Hkv * Dh], dim=-1)
        q, kv = q.unflatten(-1, (H, Dh)), kv.unflatten(-1, (2, Hkv, Dh))
        q = _flash_rotary(q, freqs.cos(), freqs.sin(), a["rotary_emb_interleaved"])
        keys = _flash_rotary(kv[:, :, 0], freqs.cos(), freqs.sin(), a["rotary_emb_interleaved"])
        keys, values = (t.repeat_interleave(H // Hkv, dim=2) for t in (keys, kv[:, :, 1]))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                           is_causal=True, scale=a["softmax_scale"]).transpose(1, 2).flatten(2)
        x = x + F.linear(y, sd[p + "mixer.out_proj.weight"], sd.get(p + "mixer.out_proj.bias"))
        if config["d_intermediate"]:
            value, gate = F.linear(norm(x, p + "norm2."), sd[p + "mlp.fc1.weight"]).chunk(2, dim=-1)
            x = x + F.linear(value * F.silu(gate), sd[p + "mlp.fc2.weight"])
    head = sd["backbone.embedding.weight"] if config["tie_embeddings"] else sd["lm_head.weight"]
    return F.linear(norm(x, "backbone.norm_f."), head)


@pytest.mark.parametrize("interleaved, rms_norm, d_intermediate, tie",
                         [(False, False, 100, True), (True, True, 0, False)],
                         ids=["layernorm-mlp100-tied", "interleaved-rmsnorm-untied"])
def test_attention_options_match_mamba_ssm_reference(interleaved, rms_norm, d_intermediate, tie):
    """A convolution over q, k, v; rotary on 6 of 8 dims, interleaved or not; 6 query heads on
    2 key/value heads of width 8 (48 != d_model 24); biases; a softmax scale; d_intermediate
    100 rounded up to a 128-wide MLP; RMSNorm or LayerNorm; tied or untied head."""
    attn_cfg = {"num_heads": 6, "num_heads_kv": 2, "head_dim": 8, "rotary_emb_dim": 6, "rotary_emb_base": 300.0,
                "rotary_emb_interleaved": interleaved, "d_conv": 4, "softmax_scale": 0.3, "causal": True}
    config = mamba_ssm_config(d_model=24, d_intermediate=d_intermediate, attn_layer_idx=[0, 1], attn_cfg=attn_cfg,
                              tie=tie)
    config["rms_norm"] = rms_norm
    state = random_state_dict(config, seed=4)
    model, _ = mamba_ssm.convert(state, config)
    ids = token_ids(4)
    with torch.no_grad():
        theirs = _reference_attention_lm(state, config, ids)
        mine, _ = model(ids)
        assert_agree(mine, theirs)
        pieces, cache = [], None
        for start, end in [(0, 2), (2, 3), (3, 14), (14, LENGTH)]:  # pieces shorter than the conv
            logits, cache = model(ids[:, start:end], cache)
            pieces.append(logits)
    assert_agree(torch.cat(pieces, dim=1), theirs)
