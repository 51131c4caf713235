"""The mamba_ssm: loader end to end on tiny checkpoints written in tmp folders: a hybrid (Mamba-2,
attention with a convolution and partial rotary, Mamba-2: mamba2attn-2.7b's shape) prefilled
whole and in pieces, decoded greedily, batched, stopped at EOS, in bfloat16; and every kind of
bad input (spec, folder, config, weights, tokenizer, hub) as a one-line ValueError. Its logits
are checked against other implementations in test_mamba_ssm.py."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from mamba_ssm_checks import (TOL, VOCAB, mamba_ssm_config, random_state_dict, save_checkpoint, save_tokenizer,
                              token_ids)

from longarch.models import mamba_ssm, pretrained

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return save_tokenizer(tmp_path_factory.mktemp("tokenizer"))


# ---------------------------------------------------------------- a hybrid checkpoint end to end


HYBRID_ATTENTION = {"num_heads": 4, "head_dim": 16, "rotary_emb_dim": 8, "d_conv": 4, "causal": True,
                    "qkv_proj_bias": False, "out_proj_bias": False}  # mamba2attn-2.7b's options, smaller


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory, tokenizer_dir):
    """Mamba-2, attention, Mamba-2, with its own tokenizer files: the shape of mamba2attn-2.7b."""
    config = mamba_ssm_config(n_layer=3, attn_layer_idx=[1], attn_cfg=HYBRID_ATTENTION)
    spec = save_checkpoint(tmp_path_factory.mktemp("hybrid"), config, random_state_dict(config, seed=5),
                           tokenizer_dir)
    return mamba_ssm.load(spec)


def test_hybrid_chunked_prefill_matches_whole(hybrid):
    assert hybrid.kind == "mamba_ssm-hybrid" and pretrained.family(hybrid.kind) == "hybrid"
    ids = token_ids(6, batch=1)[0].tolist()
    whole = hybrid.next_token_logits(ids)
    assert whole.shape == (VOCAB,) and whole.dtype == torch.float32
    for chunk in (1, 3, 7, 100):
        torch.testing.assert_close(hybrid.next_token_logits(ids, chunk=chunk), whole, **TOL)


def test_hybrid_generate(hybrid, monkeypatch):
    vocab = len(hybrid.tokenizer)
    prompts = [token_ids(7, 19, 1)[0].tolist(), token_ids(8, 12, 1)[0].tolist(), token_ids(9, 19, 1)[0].tolist()]
    whole = hybrid.generate(prompts, max_new_tokens=6)
    assert whole == hybrid.generate(prompts, max_new_tokens=6, chunk=5)
    assert whole == [hybrid.generate([p], max_new_tokens=6)[0] for p in prompts]
    assert whole == hybrid.generate(prompts, max_new_tokens=6, batch_tokens=1)
    assert all(0 <= t < vocab for out in whole for t in out)
    monkeypatch.setattr(type(hybrid), "eos_ids", property(lambda self: set()))
    out = hybrid.generate(prompts[:1], max_new_tokens=5, chunk=6)[0]
    assert len(out) == 5
    for i, token in enumerate(out):  # cached decoding = greedy argmax recomputed from scratch
        assert int(hybrid.next_token_logits(prompts[0] + out[:i]).argmax()) == token
    monkeypatch.setattr(type(hybrid), "eos_ids", property(lambda self: {out[2]}))
    assert hybrid.generate(prompts[:1], max_new_tokens=5)[0] == out[:out.index(out[2])]


@pytest.mark.parametrize("shape", ["mamba2", "hybrid", "attention"])
def test_prompts_of_different_lengths_decode_as_one_batch(shape, tmp_path, tokenizer_dir, monkeypatch):
    """Each prompt prefilled alone, the states merged (attention caches padded on the left, the
    padding masked, positions per row), then one batch decodes: each row as it decodes alone."""
    layers = {"mamba2": dict(n_layer=2), "hybrid": dict(n_layer=3, attn_layer_idx=[1], attn_cfg=HYBRID_ATTENTION),
              "attention": dict(n_layer=2, attn_layer_idx=[0, 1], attn_cfg=HYBRID_ATTENTION, d_intermediate=64)}
    config = mamba_ssm_config(**layers[shape])
    if shape == "attention":
        config["ssm_cfg"] = {}
    model = mamba_ssm.load(save_checkpoint(tmp_path / shape, config, random_state_dict(config, seed=3), tokenizer_dir))
    monkeypatch.setattr(type(model), "eos_ids", property(lambda self: set()))  # full-length rows
    prompts = [token_ids(s, n, 1)[0].tolist() for s, n in ((11, 23), (12, 9), (13, 17), (14, 9))]
    alone = [model.generate([p], max_new_tokens=6, chunk=5)[0] for p in prompts]
    batches = []
    original = model._generate_batch
    monkeypatch.setattr(model, "_generate_batch", lambda ps, *a: batches.append(len(ps)) or original(ps, *a))
    assert model.generate(prompts, max_new_tokens=6, chunk=5) == alone
    assert batches == [4]


def test_prompt_and_eos_come_from_the_tokenizer(hybrid):
    ids = hybrid.prompt("the cat sat on a mat")
    assert hybrid.tokenizer.convert_ids_to_tokens(ids) == "the cat sat on a mat".split()
    assert hybrid.eos_ids == {hybrid.tokenizer.convert_tokens_to_ids("[EOS]")}
    with pytest.raises(ValueError, match="no chat template"):
        hybrid.prompt("the cat", "chat")
    assert not hybrid.beyond_training(10 ** 6)


def test_low_precision_keeps_mamba2_in_float32(tmp_path, tokenizer_dir, hybrid):
    config = mamba_ssm_config(n_layer=3, attn_layer_idx=[1], attn_cfg=HYBRID_ATTENTION)
    spec = save_checkpoint(tmp_path, config, random_state_dict(config, seed=5), tokenizer_dir)
    half = pretrained.load(spec, dtype="bfloat16")
    assert isinstance(half, mamba_ssm.CheckpointModel)
    layers = half.model.layers
    assert {p.dtype for i in (0, 2) for p in layers[i].mixer.parameters()} == {torch.float32}
    assert {p.dtype for p in layers[1].parameters()} == {torch.bfloat16}
    assert half.model.embedding.weight.dtype == layers[0].norm.weight.dtype == torch.bfloat16
    ids = token_ids(6, batch=1)[0].tolist()
    full = hybrid.next_token_logits(ids)
    assert (half.next_token_logits(ids, chunk=5) - full).abs().max() < 0.05 * full.abs().max()
    assert len(half.generate([ids], max_new_tokens=3)[0]) == 3


# ---------------------------------------------------------------- bad input


def _one_line_error(call, match):
    with pytest.raises(ValueError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


def test_bad_specs_and_folders(tmp_path, tokenizer_dir):
    _one_line_error(lambda: mamba_ssm.load("mamba_ssm:/no/such/path"), "/no/such/path does not exist")
    _one_line_error(lambda: mamba_ssm.load("hf:some/model"), "mamba_ssm:<path or hub id>")
    _one_line_error(lambda: mamba_ssm.load("mamba_ssm:"), "names no path")
    _one_line_error(lambda: pretrained.load("mamba_ssm:/no/such/path"), "does not exist")
    _one_line_error(lambda: mamba_ssm.load(f"mamba_ssm:{tmp_path}"), "has no config.json")
    (tmp_path / "config.json").write_text(json.dumps(mamba_ssm_config()))
    _one_line_error(lambda: mamba_ssm.load(f"mamba_ssm:{tmp_path}", tokenizer=str(tokenizer_dir)), "has no weights")
    (tmp_path / "pytorch_model.bin").write_text("not a checkpoint")
    _one_line_error(lambda: mamba_ssm.load(f"mamba_ssm:{tmp_path}", tokenizer=str(tokenizer_dir)), "could not be read")
    (tmp_path / "config.json").write_text("{not json")
    _one_line_error(lambda: mamba_ssm.load(f"mamba_ssm:{tmp_path}"), "not readable JSON")
    spec = save_checkpoint(tmp_path / "ok", mamba_ssm_config(), random_state_dict(mamba_ssm_config()), tokenizer_dir)
    _one_line_error(lambda: mamba_ssm.load(spec, dtype="float9"), "unknown dtype")


@pytest.mark.parametrize("change, match", [
    (lambda c: c["ssm_cfg"].pop("layer"), "'Mamba1' is not supported"),
    (lambda c: c["ssm_cfg"].update(layer="Mamba1"), "'Mamba1' is not supported"),
    (lambda c: c["ssm_cfg"].update(ngroups=2), "ngroups=2 is not supported"),
    (lambda c: c["ssm_cfg"].update(d_ssm=32), "d_ssm=32 is not supported"),
    (lambda c: c["ssm_cfg"].update(headdim=7), "does not divide"),
    (lambda c: c["ssm_cfg"].update(dt_limit=[0.001, 0.1]), "dt_limit"),
    (lambda c: c["ssm_cfg"].update(nonsense=1), "does not take"),
    (lambda c: c.update(n_groups=1), "unknown fields"),
    (lambda c: c.update(attn_layer_idx=[2]), "attn_layer_idx"),
    (lambda c: c.update(attn_layer_idx=[0], attn_cfg={"num_heads": 4}), "causal"),
    (lambda c: c.update(attn_layer_idx=[0], attn_cfg={"num_heads": 4, "num_heads_kv": 3, "causal": True}),
     "divisible by num_heads_kv"),
    (lambda c: c.update(attn_layer_idx=[0], attn_cfg={"num_heads": 4, "mlp_dim": 64, "causal": True}), "mlp_dim"),
])
def test_unsupported_configs(change, match):
    config = mamba_ssm_config()
    change(config)
    _one_line_error(lambda: mamba_ssm.parse_config(config), match)


def test_weights_that_do_not_fit_the_config():
    config = mamba_ssm_config(tie=False)
    state = random_state_dict(config)
    missing = {k: v for k, v in state.items() if k != "backbone.layers.1.mixer.D"}
    _one_line_error(lambda: mamba_ssm.convert(missing, config), "lacks backbone.layers.1.mixer.D")
    _one_line_error(lambda: mamba_ssm.convert({**state, "backbone.extra": torch.zeros(1)}, config), "does not explain")
    wrong = {**state, "backbone.layers.0.mixer.A_log": torch.zeros(5)}
    _one_line_error(lambda: mamba_ssm.convert(wrong, config), r"layers.0.mixer.A_log has shape \(5,\)")
    tied = {**state, "lm_head.weight": state["lm_head.weight"]}
    _one_line_error(lambda: mamba_ssm.convert(tied, {**config, "tie_embeddings": True}), "differs from the embedding")


def test_tokenizer_and_hub_sources(tmp_path, tokenizer_dir, monkeypatch):
    """Without tokenizer files or a tokenizer argument, gpt-neox-20b's is asked for; a hub id is
    fetched with snapshot_download (both replaced here: no network)."""
    import huggingface_hub

    folder = tmp_path / "ckpt"
    save_checkpoint(folder, mamba_ssm_config(), random_state_dict(mamba_ssm_config()))
    asked, real = [], transformers.AutoTokenizer.from_pretrained

    def record(source, *args, **kwargs):
        asked.append(str(source))
        return real(tokenizer_dir)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", record)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(folder))
    mamba_ssm.load(f"mamba_ssm:{folder}")
    mamba_ssm.load("mamba_ssm:state-spaces/tiny", tokenizer="my/tokenizer")
    assert asked == [mamba_ssm.DEFAULT_TOKENIZER, "my/tokenizer"]

    def offline(*args, **kwargs):
        raise OSError("no connection")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    _one_line_error(lambda: mamba_ssm.load("mamba_ssm:state-spaces/mamba2-2.7b"), "could not be found locally or on")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    _one_line_error(lambda: mamba_ssm.load(f"mamba_ssm:{folder}"),
                    "tokenizer EleutherAI/gpt-neox-20b could not be loaded")
