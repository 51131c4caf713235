"""Shared by the mamba_ssm: loader tests: a tiny offline tokenizer, mamba_ssm-format configs and
random state dicts written from the format's facts (models/mamba_ssm.py), and checkpoint folders."""

from __future__ import annotations

import json
import math

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

TOL = dict(rtol=1e-4, atol=1e-4)
WORDS = "the cat dog bird sat ran on under a mat tree house key value is was red blue one two three".split()
VOCAB = len(WORDS) + 4  # the tokenizer's: 4 special tokens
PADDED = 32  # VOCAB rounded up to pad_vocab_size_multiple = 8
BATCH, LENGTH = 2, 23


def save_tokenizer(path):
    """A word-level tokenizer over WORDS with [UNK] [PAD] [EOS] [BOS], saved in `path`."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["[UNK]", "[PAD]", "[EOS]", "[BOS]"]
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=special))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                eos_token="[EOS]", bos_token="[BOS]")
    assert len(fast) == VOCAB
    fast.save_pretrained(path)
    return path


def mamba_ssm_config(n_layer=2, d_model=32, d_intermediate=0, attn_layer_idx=(), attn_cfg=None, tie=True, **ssm):
    """A config.json of mamba_ssm's MambaConfig: Mamba-2 layers of 8 heads of width 8, N = 8."""
    return {"d_model": d_model, "d_intermediate": d_intermediate, "n_layer": n_layer, "vocab_size": VOCAB,
            "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 8, "expand": 2, "d_conv": 4, **ssm},
            "attn_layer_idx": list(attn_layer_idx), "attn_cfg": attn_cfg or {}, "rms_norm": True,
            "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8, "tie_embeddings": tie}


def save_checkpoint(folder, config, state_dict, tokenizer_dir=None, safetensors=False) -> str:
    """config.json, the weights (pytorch_model.bin or model.safetensors) and optionally the
    tokenizer's files in `folder`; returns the spec that loads them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    tensors = {k: v.detach().clone().contiguous() for k, v in state_dict.items()}
    if safetensors:
        save_file(tensors, str(folder / "model.safetensors"))
    else:
        torch.save(tensors, folder / "pytorch_model.bin")
    if tokenizer_dir is not None:
        for f in tokenizer_dir.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
    return f"mamba_ssm:{folder}"


def token_ids(seed=0, length=LENGTH, batch=BATCH):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_agree(mine, theirs):
    assert mine.shape == theirs.shape
    assert theirs.abs().mean() > 1e-2, "degenerate reference output"
    torch.testing.assert_close(mine, theirs, **TOL)


def random_state_dict(config, seed=0):
    """A random state dict in the mamba_ssm layout of `config`, at scales where every weight matters."""
    g = torch.Generator().manual_seed(seed)

    def normal(*shape, std=1.0):
        return torch.randn(*shape, generator=g) * std

    def uniform(n, low, high):
        return torch.rand(n, generator=g) * (high - low) + low

    multiple = config["pad_vocab_size_multiple"]
    D, V = config["d_model"], -(-config["vocab_size"] // multiple) * multiple
    s, a = config["ssm_cfg"], config["attn_cfg"]
    out = {"backbone.embedding.weight": normal(V, D), "backbone.norm_f.weight": uniform(D, 0.5, 1.5)}
    if not config["rms_norm"]:
        out["backbone.norm_f.bias"] = normal(D, std=0.1)
    if not config["tie_embeddings"]:
        out["lm_head.weight"] = normal(V, D, std=0.3)
    for i in range(config["n_layer"]):
        p = f"backbone.layers.{i}."
        norms = ["norm."] + (["norm2."] if config["d_intermediate"] else [])
        out.update({p + n + "weight": uniform(D, 0.5, 1.5) for n in norms})
        if not config["rms_norm"]:
            out.update({p + n + "bias": normal(D, std=0.1) for n in norms})
        if i in config["attn_layer_idx"]:
            H, Dh = a["num_heads"], a["head_dim"]
            qkv = (H + 2 * a.get("num_heads_kv", H)) * Dh
            out[p + "mixer.in_proj.weight"] = normal(qkv, D, std=D ** -0.5)
            out[p + "mixer.out_proj.weight"] = normal(D, H * Dh, std=(H * Dh) ** -0.5)
            if a.get("qkv_proj_bias", True):
                out[p + "mixer.in_proj.bias"] = normal(qkv, std=0.3)
            if a.get("out_proj_bias", True):
                out[p + "mixer.out_proj.bias"] = normal(D, std=0.3)
            if a.get("d_conv", 0):
                out[p + "mixer.conv1d.weight"] = normal(qkv, 1, a["d_conv"], std=0.5)
                out[p + "mixer.conv1d.bias"] = normal(qkv, std=0.1)
        else:
            d_inner, N = s["expand"] * D, s["d_state"]
            H, conv = d_inner // s["headdim"], d_inner + 2 * N
            dt = uniform(H, math.log(1e-2), 0.0).exp()
            out.update({p + "mixer." + k: v for k, v in {
                "in_proj.weight": normal(2 * d_inner + 2 * N + H, D, std=D ** -0.5),
                "conv1d.weight": normal(conv, 1, s["d_conv"], std=0.5), "conv1d.bias": normal(conv, std=0.1),
                "dt_bias": dt + torch.log(-torch.expm1(-dt)), "A_log": uniform(H, 0.5, 8.0).log(), "D": normal(H),
                "norm.weight": uniform(d_inner, 0.5, 1.5), "out_proj.weight": normal(D, d_inner, std=d_inner ** -0.5),
            }.items()})
        if config["d_intermediate"]:
            hidden = -(-config["d_intermediate"] // 128) * 128
            out[p + "mlp.fc1.weight"] = normal(2 * hidden, D, std=D ** -0.5)
            out[p + "mlp.fc2.weight"] = normal(D, hidden, std=hidden ** -0.5)
    return out
