"""Decoding throughput of the pretrained-model path: prompts of different lengths decoded one at a
time against in one batch (left-padded for transformers models of the kinds where that is exact;
prefilled alone then decoded together for mamba_ssm checkpoints), on tiny random models built
here (no network). The ratio is the figure to read: both sides run in the same process, one
after the other, on this machine's CPU.

    .venv/bin/python benchmarks/pretrained_decoding.py [--prompts 16] [--length 1024] [--new 32]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from rich.console import Console
from rich.table import Table
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from longarch.models import hf, mamba_ssm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mamba_ssm_checks import mamba_ssm_config, random_state_dict, save_checkpoint  # noqa: E402


def tokenizer(folder: Path):
    words = [f"w{i}" for i in range(500)]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(words)], trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"]))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                eos_token="[EOS]")
    fast.save_pretrained(folder)
    return fast


def build(kind: str, folder: Path, tok) -> object:
    torch.manual_seed(0)
    common = dict(vocab_size=len(tok), hidden_size=256, num_hidden_layers=4, eos_token_id=2, pad_token_id=1)
    if kind == "llama":
        config = transformers.LlamaConfig(intermediate_size=512, num_attention_heads=8, num_key_value_heads=8,
                                          max_position_embeddings=4096, **common)
    else:
        config = transformers.Mamba2Config(state_size=16, expand=2, num_heads=16, head_dim=32, n_groups=1,
                                           chunk_size=64, **common)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return hf.load(f"hf:{folder}")


def build_mamba_ssm(folder: Path, tok_folder: Path) -> object:
    config = mamba_ssm_config(n_layer=4, d_model=256, attn_layer_idx=[2], attn_cfg={
        "num_heads": 8, "head_dim": 32, "rotary_emb_dim": 16, "causal": True, "qkv_proj_bias": False,
        "out_proj_bias": False}, headdim=32, d_state=16)
    config["vocab_size"] = 503
    return mamba_ssm.load(save_checkpoint(folder, config, random_state_dict(config, seed=0), tok_folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--length", type=int, default=1024, help="prompts are 90-100%% of this")
    parser.add_argument("--new", type=int, default=32, help="tokens decoded per prompt")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    transformers.utils.logging.set_verbosity_error()
    rng = random.Random(0)
    table = Table(title=f"{args.prompts} prompts of {int(0.9 * args.length)}-{args.length} tokens, "
                        f"{args.new} new tokens each, {torch.get_num_threads()} threads")
    for column in ("model", "one at a time (s)", "one batch (s)", "speed-up", "same tokens"):
        table.add_column(column, justify="left" if column == "model" else "right")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = tokenizer(tmp / "tok")
        loaded = {"llama (hf)": build("llama", tmp / "llama", tok), "mamba2 (hf)": build("mamba2", tmp / "m2", tok),
                  "mamba2+attention (mamba_ssm)": build_mamba_ssm(tmp / "ssm", tmp / "tok")}
        for name, model in loaded.items():
            prompts = [[rng.randrange(3, 500) for _ in range(rng.randint(int(0.9 * args.length), args.length))]
                       for _ in range(args.prompts)]
            no_eos = type(model).eos_ids
            type(model).eos_ids = property(lambda self: set())  # every row decodes all its tokens
            try:
                start = time.perf_counter()
                alone = [model.generate([p], args.new)[0] for p in prompts]
                one = time.perf_counter() - start
                start = time.perf_counter()
                together = model.generate(prompts, args.new, batch_tokens=args.prompts * args.length)
                batch = time.perf_counter() - start
            finally:
                type(model).eos_ids = no_eos
            table.add_row(name, f"{one:.2f}", f"{batch:.2f}", f"{one / batch:.1f}x", str(alone == together))
    Console().print(table)


if __name__ == "__main__":
    main()
