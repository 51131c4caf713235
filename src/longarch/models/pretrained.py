"""Load a pretrained checkpoint by its spec: `hf:<path or hub id>` (any `transformers` causal LM)
or `mamba_ssm:<path or hub id>` (the state-spaces format, mapped onto this project's modules).

Both loaders return an object with one interface (see `hf.HFModel`): `tokenizer`, `kind`,
`declared_length`, `beyond_training(n)`, `prompt(text, template)`, `generate(prompts, ...)` and
`num_params()`. Imported lazily, so the rest of the package works without `transformers`.
"""

from __future__ import annotations


def load(spec: str, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False,
         tokenizer: str | None = None, model_args: dict | None = None):
    """`model_args` (revision, attn_implementation, config overrides) are for hf: models."""
    scheme, _, _ = spec.partition(":")
    if scheme == "hf":
        from . import hf

        if tokenizer is not None:
            raise ValueError(f"{spec}: an hf: model uses its own tokenizer; 'tokenizer' is for mamba_ssm: checkpoints")
        return hf.load(spec, dtype=dtype, device=device, trust_remote_code=trust_remote_code, model_args=model_args)
    if scheme == "mamba_ssm":
        from . import mamba_ssm

        if model_args:
            raise ValueError(f"{spec}: a mamba_ssm: checkpoint takes no model arguments but dtype")
        return mamba_ssm.load(spec, dtype=dtype, device=device, tokenizer=tokenizer)
    raise ValueError(f"model {spec!r} must look like hf:<path or hub id> or mamba_ssm:<path or hub id>")


FAMILIES = {  # transformers model_type -> family, as in the zoo
    "llama": "attention", "mistral": "attention", "gpt2": "attention", "gpt_neox": "attention", "qwen2": "attention",
    "gemma": "attention", "phi": "attention", "opt": "attention", "mamba": "state-space", "mamba2": "state-space",
    "rwkv": "linear-recurrent", "recurrent_gemma": "hybrid", "jamba": "hybrid", "falcon_mamba": "state-space",
    "zamba": "hybrid", "zamba2": "hybrid", "bamba": "hybrid", "falcon_h1": "hybrid",
    "mamba_ssm-mamba2": "state-space", "mamba_ssm-hybrid": "hybrid", "mamba_ssm-attention": "attention",
}


def quiet_transformers():
    """Silence transformers' loading bars and its notes that a CUDA kernel package is missing (the
    PyTorch path it falls back to is the one tested here): our progress display is the one to
    read. Returns the transformers module."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def family(kind: str) -> str:
    return FAMILIES.get(kind, "?")
