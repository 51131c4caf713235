"""Model and generation arguments of a pretrained study, written as lm-evaluation-harness writes them.

`--model-args revision=main,dtype=bfloat16,rope_scaling={"rope_type":"linear","factor":4.0}`: pairs
KEY=VALUE separated by commas; a comma inside brackets, braces or quotes belongs to its value, so a
mapping or a list needs no escaping beyond the shell's quotes. A value is read as JSON when it
parses (numbers, true/false/null, strings in double quotes, objects, lists), else as lm-eval reads
it (True/False/None), else as a Python literal when it looks like one ({'type': 'linear'}), else
as the text itself. A study file may give the same string, or a YAML mapping.

Model arguments: `revision` and `attn_implementation` go to `from_pretrained`; `dtype` (or lm-eval's
`torch_dtype`; float32, bfloat16, float16 or auto) is the dtype this model is loaded in; any other
key overrides the checkpoint's config before the model is built (`rope_scaling` replaces its RoPE
scaling, keeping its rope_theta; `rope_theta`; or any key its config has). Generation arguments:
`max_new_tokens` (lm-eval's `max_gen_toks`) replaces every task's generation budget, which the
length rule then counts; `until` (a string or a list of them) cuts each answer at the first;
`do_sample=false` and `temperature=0` say what longarch always does (greedy decoding) and change
nothing. Every error is one line (ValueError).
"""

from __future__ import annotations

import ast
import json
from typing import Any

LOADING = ("revision", "attn_implementation")  # from_pretrained's own arguments
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16", "half": "float16", "auto": "auto"}
REFUSED = {  # what lm-eval users pass that means something else here
    "pretrained": "the checkpoint is the model entry's `model:` (or `longarch eval --model hf:...`)",
    "max_length": "longarch never truncates a prompt: each one is fitted to its length",
    "tokenizer": "an hf: model uses its own tokenizer; a mamba_ssm: checkpoint takes `tokenizer:` (--tokenizer)",
    "device": "the device is eval.device (--device)",
    "batch_size": "batches are eval.batch_tokens (--batch-tokens)",
}
GENERATION = ("max_new_tokens", "until", "do_sample", "temperature")
_OPEN, _CLOSE = "[{(", "]})"


def split_pairs(text: str, flag: str) -> list[tuple[str, str]]:
    """(KEY, VALUE text) pairs of `text`; commas inside brackets or quotes stay in the value."""
    pairs, depth, quote, start = [], [], None, 0
    pieces = []
    for index, char in enumerate(text):
        if quote:
            quote = None if char == quote and text[index - 1] != "\\" else quote
        elif char in "\"'":
            quote = char
        elif char in _OPEN:
            depth.append(_CLOSE[_OPEN.index(char)])
        elif char in _CLOSE:
            if not depth or depth.pop() != char:
                raise ValueError(f"{flag}: unbalanced {char!r} in {text!r}")
        elif char == "," and not depth:
            pieces.append(text[start:index])
            start = index + 1
    if quote or depth:
        raise ValueError(f"{flag}: unclosed {quote or _OPEN[_CLOSE.index(depth[-1])]!r} in {text!r}")
    pieces.append(text[start:])
    for piece in pieces:
        if not piece.strip():
            continue
        key, sep, value = piece.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects KEY=VALUE pairs separated by commas, got {piece.strip()!r}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def parse_value(text: str, where: str) -> Any:
    """JSON, else True/False/None (as lm-eval reads them), else a Python literal for what looks
    like a mapping or list, else the text."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    words = {"true": True, "false": False, "none": None}
    if text.lower() in words:
        return words[text.lower()]
    if text[:1] in "[{(":
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"{where}: {text!r} is neither JSON nor a Python literal") from None
    return text


def parse(text: str, flag: str) -> dict:
    """`KEY=VALUE,...` as a mapping; a KEY given twice is refused."""
    out: dict = {}
    for key, value in split_pairs(text, flag):
        if key in out:
            raise ValueError(f"{flag}: {key} is given twice")
        out[key] = parse_value(value, f"{flag} {key}")
    return out


def as_mapping(value, what: str) -> dict:
    """A study's `model_args:`/`gen_args:`: a mapping, or a string in the command line's syntax."""
    if isinstance(value, str):
        return parse(value, what)
    if value is None:
        return {}
    return value


def model_args(args: dict, scheme: str, what: str = "model_args") -> dict:
    """Model arguments checked and normalised: lm-eval's aliases to one name, dtype to its full
    name; what can be judged without the checkpoint is judged here."""
    out = {}
    for key, value in args.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"{what}: {key!r} is not an argument name")
        if key in REFUSED:
            raise ValueError(f"{what}: {key} is not taken here: {REFUSED[key]}")
        name = "dtype" if key == "torch_dtype" else key
        if name in out:
            raise ValueError(f"{what}: dtype is given twice (dtype and torch_dtype)")
        out[name] = _model_value(name, value, what)
    if scheme == "mamba_ssm" and set(out) - {"dtype"}:
        raise ValueError(f"{what}: a mamba_ssm: checkpoint takes only dtype, not {sorted(set(out) - {'dtype'})[0]}")
    return out


def _model_value(name: str, value, what: str):
    if name == "dtype":
        if not isinstance(value, str) or value.lower() not in DTYPES:
            raise ValueError(f"{what}: dtype {value!r} is not one of float32, bfloat16, float16, auto")
        return DTYPES[value.lower()]
    if name in LOADING and (not isinstance(value, str) or not value):
        raise ValueError(f"{what}: {name} must be a non-empty string, not {value!r}")
    if name == "rope_scaling" and value is not None and not isinstance(value, dict):
        raise ValueError(f"{what}: rope_scaling must be a mapping such as "
                         f"{{\"rope_type\": \"linear\", \"factor\": 4.0}} (or null), not {value!r}")
    if name == "trust_remote_code" and not isinstance(value, bool):
        raise ValueError(f"{what}: trust_remote_code must be true or false, not {value!r}")
    return value


def gen_args(args: dict, what: str = "gen_args") -> dict:
    """Generation arguments checked and normalised (max_gen_toks -> max_new_tokens, until -> a
    list); do_sample=false and temperature=0, which change nothing, are dropped."""
    out = {}
    for key, value in args.items():
        name = "max_new_tokens" if key == "max_gen_toks" else key
        if name not in GENERATION:
            raise ValueError(f"{what}: unknown generation argument {key!r}; longarch takes max_new_tokens "
                             "(max_gen_toks), until, and do_sample=false / temperature=0 (it decodes greedily)")
        if name in out:
            raise ValueError(f"{what}: max_new_tokens is given twice (max_new_tokens and max_gen_toks)")
        if name == "max_new_tokens":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what}: max_new_tokens must be a positive whole number, not {value!r}")
            out[name] = value
        elif name == "until":
            stops = [value] if isinstance(value, str) else value
            if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
                raise ValueError(f"{what}: until must be a string or a list of non-empty strings, not {value!r}")
            if stops:
                out[name] = stops
        elif name == "do_sample" and value is not False:
            raise ValueError(f"{what}: do_sample={value!r}: longarch decodes greedily only (do_sample=false)")
        elif name == "temperature" and (isinstance(value, bool) or value not in (0, 0.0)):
            raise ValueError(f"{what}: temperature={value!r}: longarch decodes greedily only (temperature=0)")
    return out


def shown(args: dict) -> str:
    """Arguments as the command line writes them: KEY=VALUE,... (a value that is not a plain
    string in JSON)."""
    return ",".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in args.items())


def cut(prediction: str, stops: list[str]) -> str:
    """The prediction up to the first of the stop strings (lm-eval's `until`)."""
    ends = [prediction.find(s) for s in stops if s in prediction]
    return prediction[:min(ends)] if ends else prediction


def config_overrides(args: dict) -> dict:
    """The model arguments that override the checkpoint's config."""
    return {k: v for k, v in args.items() if k not in (*LOADING, "dtype", "trust_remote_code")}


def loading(args: dict) -> dict:
    """The model arguments `from_pretrained` takes itself."""
    return {k: v for k, v in args.items() if k in LOADING}


def onto_models(data: dict, model_text: str | None, gen_text: str | None) -> dict:
    """A study's YAML (before validation) with the command line's --model-args and --gen-args
    added to every model entry's own (the command line's keys win). trust_remote_code=True among
    them allows remote code, as --trust-remote-code does, and marks every model as needing it."""
    given = {"model_args": parse(model_text, "--model-args") if model_text is not None else {},
             "gen_args": parse(gen_text, "--gen-args") if gen_text is not None else {}}
    if not any(given.values()) or not isinstance(data.get("models"), list):
        return data
    if given["model_args"].get("trust_remote_code") is True:
        data = {**data, "trust_remote_code": True}
    models = []
    for entry in data["models"]:
        entry = {"model": entry} if isinstance(entry, str) else dict(entry) if isinstance(entry, dict) else entry
        if isinstance(entry, dict):
            for key, extra in given.items():
                if extra:
                    entry[key] = {**as_mapping(entry.get(key), key), **extra}
        models.append(entry)
    return {**data, "models": models}


def named_models(models: list[str], model_text: str | None) -> tuple[list[str], str | None]:
    """`longarch eval`'s models: lm-eval's `--model_args pretrained=NAME,...` is `--model hf:NAME`
    (added to the --model given), and the rest of the arguments; without any model, the one
    line that asks for one."""
    pairs = split_pairs(model_text, "--model-args") if model_text is not None else []
    named = [value for key, value in pairs if key == "pretrained"]
    if named:
        models = models + [f"hf:{parse_value(named[-1], '--model-args pretrained')}"]
        model_text = ",".join(f"{key}={value}" for key, value in pairs if key != "pretrained")
    if not models:
        raise ValueError("give a model: --model hf:<path or hub id> (repeatable), or --model-args pretrained=<path or "
                         "hub id>,...")
    return models, model_text
