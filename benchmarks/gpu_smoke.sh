#!/usr/bin/env bash
# The pretrained pipeline on one CUDA GPU: a tiny random Llama and a word-level tokenizer are built
# here (the GPU machine has no network), then `longarch eval` runs it in bfloat16 on two RULER
# tasks at 1K and 4K with --batch-tokens batching, with a rope_scaling model argument and
# --log-prompts, and `longarch export --lm-eval` writes its results JSON. It prints prompt
# tokens/s (prompt tokens of every stored cell / the cells' seconds, model loading included).
#
#   bash benchmarks/gpu_smoke.sh [OUT]          (PYTHON=... to choose the interpreter)
#
# Without a CUDA device it says so and exits with status 3, before building anything.
# DEVICE=cpu LENGTHS=1K SAMPLES=2 checks the script itself on a machine without one.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's longarch
OUT="${1:-$(mktemp -d /tmp/longarch-gpu-smoke.XXXXXX)}"
export LONGARCH_TEXT_CACHE="$OUT/text-cache"
DEVICE="${DEVICE:-cuda}"
LENGTHS="${LENGTHS:-1K,4K}"
SAMPLES="${SAMPLES:-32}"

if [ "$DEVICE" != cpu ] && ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_smoke: no CUDA device here (torch.cuda.is_available() is False, torch $("$PYTHON" -c 'import torch; print(torch.__version__)')); this check needs one NVIDIA GPU and a CUDA build of torch" >&2
    exit 3
fi

"$PYTHON" - "$OUT/model" <<'EOF'
import sys

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

folder = sys.argv[1]
words = ("the cat dog bird sat ran on under a mat tree house key value is was red blue green one two three "
         "four five what where who answer question number special magic").split()
sentences = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(5 + i % 7)) for i in range(400)]
tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]", "[BOS]"]))
tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                 eos_token="[EOS]", bos_token="[BOS]")
torch.manual_seed(0)
config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688,
                                  num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                                  max_position_embeddings=2048, eos_token_id=2, bos_token_id=3, pad_token_id=1)
transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
tokenizer.save_pretrained(folder)
print(f"tiny Llama ({sum(p.numel() for p in transformers.AutoModelForCausalLM.from_config(config).parameters()):,} "
      f"parameters, trained length 2048) and tokenizer in {folder}")
EOF

start=$(date +%s)
"$PYTHON" -m longarch.cli eval --model "hf:$OUT/model" --tasks niah_single_1,vt --lengths "$LENGTHS" \
    --samples "$SAMPLES" --dtype bfloat16 --device "$DEVICE" --batch-tokens 32768 --chunk 2048 \
    --model-args 'rope_scaling={"rope_type":"dynamic","factor":2.0}' --log-prompts --out "$OUT/run"
"$PYTHON" -m longarch.cli export "$OUT/run" --lm-eval
echo "wall time of the evaluation: $(( $(date +%s) - start )) s"

"$PYTHON" - "$OUT/run" "$DEVICE" <<'EOF'
import json
import sys
from pathlib import Path

from longarch.study.store import read_only

out = Path(sys.argv[1])
with read_only(out / "results.sqlite") as store:
    rows, failures = store.results(), store.failures()
if failures or not rows:
    sys.exit(f"gpu_smoke: {len(failures)} cells failed, {len(rows)} stored: see longarch status {out}")
prompt_tokens = sum(json.loads(line)["prompt_tokens"] for path in (out / "predictions").rglob("*.jsonl")
                    for line in path.read_text().splitlines())
seconds = sum(r.seconds for r in rows)
print(f"{len(rows)} cells, {prompt_tokens:,} prompt tokens in {seconds:.1f} s: {prompt_tokens / seconds:,.0f} "
      f"prompt tokens/s (bfloat16, {sys.argv[2]}, --batch-tokens 32768; decoding included)")
EOF
