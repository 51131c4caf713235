"""Evaluate any ``transformers`` causal LM given as ``hf:<path or hub id>``.

Not imported by :mod:`longarch.models`; callers import it lazily so that the
rest of the package works without ``transformers``.

Prompts are never truncated: evaluating past a model's declared training
length is the point of the study, so :attr:`HFModel.declared_length` is
reported and the caller marks such cells as beyond-training.

Chunked prefill
---------------
``generate(..., chunk=n)`` feeds the prompt ``n`` tokens at a time through the
model's cache (``cache=`` in transformers 5.x, ``state=`` for RWKV) so memory
for recurrent models stays bounded.  In transformers 5.24 this is exact for
Llama-style attention models (DynamicCache), Mamba-2 (its chunked scan takes
the cached state as ``initial_states``) and RWKV (``state``).  It is *not*
exact for three kinds, whose multi-token forward does not continue the cache:

* Mamba-1 and Jamba's Mamba layers run the scan from a zero state; the cached
  recurrent state is read only by single-token steps;
* RecurrentGemma's recurrent blocks replace their convolution state with the
  new chunk (zero-padded) instead of continuing it.

For those kinds (:data:`WHOLE_PREFILL_KINDS`) ``chunk`` is ignored and the
prompt is prefilled whole; a test checks that forcing pieces really differs.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field

import torch

# Kinds whose multi-token forward ignores the cached recurrent state in
# transformers 5.24, so prefilling in pieces would silently give wrong logits.
WHOLE_PREFILL_KINDS = frozenset({"mamba", "jamba", "recurrent_gemma"})

# Kinds whose single-token cached step is wrong for batch > 1 in transformers
# 5.24 (RWKV broadcasts the token-shift state (B, H) against (B, 1, H) into
# (B, B, H)), so their prompts are decoded one at a time.
UNBATCHED_KINDS = frozenset({"rwkv"})

# Kinds whose left-padded batch (an attention mask, positions counted from the first real
# token) gives every row the tokens it gets alone, in transformers 5.24 (tested for each), so
# prompts of different lengths share a batch. Mamba's cached step takes no mask; the others
# take the mask grown by one column per decoded token.
PADDED_KINDS = frozenset({"llama", "mamba", "mamba2", "recurrent_gemma", "jamba"})
_STEP_WITHOUT_MASK = frozenset({"mamba"})

# Config attributes that hold a model's declared training context, in order.
# (RecurrentGemma's attention_window_size is a local-attention window, not a
# training length, so it declares none; neither do Mamba and Mamba-2.)
_LENGTH_ATTRS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length",
                 "context_length")

_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}

TEMPLATES = ("base", "chat")


def _parse(spec: str, scheme: str = "hf", owner_required: bool = False) -> str:
    """The local path or hub id in ``<scheme>:<path or hub id>``; a missing local path is an error.
    A hub id is "name" or "owner/name" ("owner/name" only, with `owner_required`)."""
    if not isinstance(spec, str) or not spec.startswith(f"{scheme}:"):
        raise ValueError(f"model spec {spec!r} must look like '{scheme}:<path or hub id>'")
    target = spec[len(scheme) + 1:].strip()
    if not target:
        raise ValueError(f"model spec {spec!r} names no path or hub id after '{scheme}:'")
    local = os.path.expanduser(target)
    if os.path.exists(local):
        if not os.path.isdir(local):
            raise ValueError(f"model path {target} is not a folder")
        return local
    slashes_ok = target.count("/") == 1 if owner_required else target.count("/") <= 1
    if target.startswith(("/", ".", "~")) or not slashes_ok or os.sep != "/" and os.sep in target:
        raise ValueError(f"model path {target} does not exist")
    return target


def load(spec: str, dtype: str = "float32", device: str = "cpu", trust_remote_code: bool = False,
         model_args: dict | None = None) -> "HFModel":
    """Load ``hf:<path or hub id>`` as an :class:`HFModel` in eval mode. `model_args`: `revision`
    and `attn_implementation` go to ``from_pretrained``; any other key overrides the checkpoint's
    config before the model is built (:func:`configured`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _parse(spec)
    args = dict(model_args or {})
    loading = {k: args.pop(k) for k in ("revision", "attn_implementation") if k in args}
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, _DTYPE_ALIASES.get(dtype, dtype), None)
    if torch_dtype != "auto" and not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r} (try float32, bfloat16 or float16)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(target, trust_remote_code=trust_remote_code,
                                                  **{k: v for k, v in loading.items() if k == "revision"})
        if args:
            loading["config"] = configured(target, args, trust_remote_code, loading.get("revision"))
        model = AutoModelForCausalLM.from_pretrained(target, dtype=torch_dtype,
                                                     trust_remote_code=trust_remote_code, **loading)
    except OSError as exc:
        raise ValueError(f"model {target} could not be found locally or on the Hugging Face hub "
                         f"({type(exc).__name__})") from None
    model.to(device).eval()
    return HFModel(model=model, tokenizer=tokenizer, device=torch.device(device))


def configured(target: str, overrides: dict, trust_remote_code: bool = False, revision: str | None = None):
    """The checkpoint's config with `overrides` applied (see :func:`override`)."""
    from transformers import AutoConfig

    kwargs = {"revision": revision} if revision else {}
    config = AutoConfig.from_pretrained(target, trust_remote_code=trust_remote_code, **kwargs)
    return override(config, overrides)


def override(config, overrides: dict):
    """`config` with each key of `overrides` set: `rope_scaling` replaces the RoPE scaling (the
    config's rope_theta kept) and is validated as transformers validates it, a refusal or a
    warning of its validation being an error; `rope_theta` sets the base; any other key must be
    one the config has. A ValueError of one line says what is wrong."""
    what = config.model_type
    for key, value in overrides.items():
        if key in ("rope_scaling", "rope_theta"):
            _set_rope(config, key, value)
        elif hasattr(config, key):
            setattr(config, key, value)
        else:
            raise ValueError(f"model argument {key!r} is neither revision, attn_implementation nor dtype, nor a key "
                             f"of the {what} config")
    return config


def _set_rope(config, key: str, value) -> None:
    import logging

    current = getattr(config, "rope_parameters", None)
    if not isinstance(current, dict) or not current:
        raise ValueError(f"{key}: the {config.model_type} config has no rotary position embeddings to scale")
    if config.nested_rope_parameter_keys(current):
        raise ValueError(f"{key}: the {config.model_type} config sets RoPE per layer type; overriding it is not "
                         "supported")
    kept = {k: current[k] for k in ("rope_theta", "partial_rotary_factor") if k in current}
    if key == "rope_theta":
        new = {**current, "rope_theta": value}
    elif value is None:
        new = {"rope_type": "default", **kept}
    else:
        new = {**kept, **value}
        if "type" in new:  # the old name of rope_type, as older configs and lm-eval users write it
            new.setdefault("rope_type", new.pop("type"))
    warned: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warned.append(record.getMessage())
    logger = logging.getLogger("transformers.modeling_rope_utils")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    try:
        config.rope_parameters = new
        config.standardize_rope_params()
        config.validate_rope()
    except (KeyError, ValueError, TypeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise ValueError(f"transformers refuses {key}={json.dumps(value)}: {message}") from None
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    if warned:
        raise ValueError(f"transformers refuses {key}={json.dumps(value)}: {warned[0]}")


def declared_length(config) -> int | None:
    """The training context a config declares, or None when it declares none."""
    for attr in _LENGTH_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prompt_ids(tokenizer, text: str, template: str = "base", answer_prefix: str = "",
               what: str = "this model", system: str | None = None) -> list[int]:
    """Token ids of a prompt, never truncated: :func:`prompt_text` tokenized, with the tokenizer's
    special tokens (BOS) under ``base`` (under ``chat`` the template wrote its own)."""
    prompt = prompt_text(tokenizer, text, template, answer_prefix, what, system)
    return list(tokenizer(prompt, add_special_tokens=template == "base", truncation=False)["input_ids"])


def prompt_text(tokenizer, text: str, template: str = "base", answer_prefix: str = "",
                what: str = "this model", system: str | None = None) -> str:
    """The text of a prompt as it is tokenized.

    ``base``: ``text`` + ``answer_prefix``, after the ``system`` prompt and a blank line (none
    when it ends in whitespace). ``chat``: ``text`` as the user's message in the tokenizer's own
    chat template (after the ``system`` prompt as the system message), the assistant's turn
    opened, then ``answer_prefix`` (which the model continues), as RULER places the answer prefix
    after a chat template.
    """
    if template == "base":
        lead = "" if not system else system if system[-1].isspace() else system + "\n\n"
        return lead + text + answer_prefix
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {what} has no chat template; use the 'base' template")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        try:
            opened = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as error:  # a template that refuses a system message raises its own error
            if not system:
                raise
            raise ValueError(f"the chat template of {what} refuses a system prompt: {error}") from None
        return opened + answer_prefix
    raise ValueError(f"unknown prompt template {template!r}; expected one of {TEMPLATES}")


def _returned_cache(out, cache):
    """The cache a forward returns (`cache`, or `past_key_values`), else the one passed in, which
    RecurrentGemma updates in place without returning it."""
    for name in ("cache", "past_key_values"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    return cache


@dataclass
class HFModel:
    """A loaded causal LM and its tokenizer; greedy decoding over token-id prompts."""

    model: object
    tokenizer: object
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def kind(self) -> str:
        return self.model.config.model_type

    @property
    def declared_length(self) -> int | None:
        return declared_length(self.model.config)

    @property
    def chunkable(self) -> bool:
        """Whether prefill in pieces through the cache is exact for this kind."""
        return self.kind not in WHOLE_PREFILL_KINDS

    @property
    def mixes_lengths(self) -> bool:
        """Whether prompts of different lengths may share a batch (exactly, see PADDED_KINDS)."""
        return self.kind in PADDED_KINDS

    def beyond_training(self, n_tokens: int) -> bool:
        """Whether a sequence of ``n_tokens`` runs past the declared training length."""
        limit = self.declared_length
        return limit is not None and n_tokens > limit

    @property
    def eos_ids(self) -> set[int]:
        """End-of-sequence ids named by the generation config, the model config or the tokenizer."""
        ids = set()
        for source in (self.model.generation_config, self.model.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(v for v in value if isinstance(v, int))
        return ids

    # -- prompts ---------------------------------------------------------------

    def prompt(self, text: str, template: str = "base", answer_prefix: str = "", system: str | None = None) -> list[int]:
        """Token ids of ``text`` under the ``base`` or ``chat`` template; never truncated (see
        :func:`prompt_ids`)."""
        return prompt_ids(self.tokenizer, text, template, answer_prefix, what=f"this {self.kind} model", system=system)

    def prompt_text(self, text: str, template: str = "base", answer_prefix: str = "",
                    system: str | None = None) -> str:
        """The text :meth:`prompt` tokenizes."""
        return prompt_text(self.tokenizer, text, template, answer_prefix, what=f"this {self.kind} model",
                           system=system)

    # -- forward through the cache --------------------------------------------------

    def _step(self, ids: torch.Tensor, cache, past: int):
        """Forward ``ids`` (batch, n) after ``past`` cached tokens; returns (last logits, cache).

        Positions are passed explicitly where the model takes them (RecurrentGemma
        resets its recurrence wherever a position is 0).
        """
        kwargs = {"use_cache": True, "logits_to_keep": 1}
        if self._takes_positions:
            positions = torch.arange(past, past + ids.shape[1], device=ids.device)
            kwargs["position_ids"] = positions.expand(ids.shape[0], -1)
        if self.kind == "rwkv":
            out = self.model(input_ids=ids, state=cache, **kwargs)
            return out.logits[:, -1, :].float(), out.state
        if cache is None and self.kind == "recurrent_gemma":
            cache = self._fresh_recurrent_gemma_cache(ids.shape[0])
        out = self.model(input_ids=ids, cache=cache, **kwargs)
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = getattr(out, "past_key_values", None)
        if new_cache is None:  # updated in place but not returned (RecurrentGemma)
            new_cache = cache
        return out.logits[:, -1, :].float(), new_cache

    def _fresh_recurrent_gemma_cache(self, batch: int):
        """RecurrentGemma keeps its recurrent state on the modules and does not return the
        cache it makes, so we zero that state and pass in a cache we keep hold of."""
        from transformers import DynamicCache

        dtype = next(self.model.parameters()).dtype
        self.model._setup_cache(self.model.config, batch, self.device, dtype)
        return DynamicCache(config=self.model.config)

    @property
    def _takes_positions(self) -> bool:
        return "position_ids" in inspect.signature(self.model.forward).parameters

    def _prefill(self, ids: torch.Tensor, chunk: int | None):
        """Run the prompt batch ``ids``, whole or in ``chunk``-token pieces where that is exact."""
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be a positive number of tokens, got {chunk}")
        if chunk is None or not self.chunkable or chunk >= ids.shape[1]:
            return self._step(ids, None, 0)
        return self._prefill_in_pieces(ids, chunk)

    def _prefill_in_pieces(self, ids: torch.Tensor, chunk: int):
        """Feed ``ids`` ``chunk`` tokens at a time through the cache (no kind check)."""
        cache, logits = None, None
        for start in range(0, ids.shape[1], chunk):
            logits, cache = self._step(ids[:, start:start + chunk], cache, start)
        return logits, cache

    @torch.no_grad()
    def next_token_logits(self, prompt_ids: list[int], chunk: int | None = None) -> torch.Tensor:
        """Logits (V,) for the token after ``prompt_ids``."""
        if not prompt_ids:
            raise ValueError("prompt is empty")
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        logits, _ = self._prefill(ids, chunk)
        return logits[0]

    @torch.no_grad()
    def _generate_batch(self, prompts: list[list[int]], max_new_tokens: int, chunk: int | None):
        if len({len(p) for p in prompts}) > 1:
            return self._generate_padded(prompts, max_new_tokens, chunk)
        ids = torch.tensor(prompts, dtype=torch.long, device=self.device)
        logits, cache = self._prefill(ids, chunk)
        return self._decode(logits, cache, max_new_tokens, lambda token, cache, step: self._step(
            token[:, None], cache, ids.shape[1] + step))

    @torch.no_grad()
    def _generate_padded(self, prompts: list[list[int]], max_new_tokens: int, chunk: int | None = None):
        """Prompts of different lengths in one batch, padded on the left (PADDED_KINDS only);
        prefilled whole: the batch is short, since batch_tokens bounds it."""
        longest = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        ids = torch.full((len(prompts), longest), pad, dtype=torch.long, device=self.device)  # (B, L)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, longest - len(prompt):] = torch.tensor(prompt, device=self.device)
            mask[row, longest - len(prompt):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, L): 0 at each row's first real token
        kwargs = {"use_cache": True, "logits_to_keep": 1, "attention_mask": mask}
        if self._takes_positions:
            kwargs["position_ids"] = positions
        cache = self._fresh_recurrent_gemma_cache(len(prompts)) if self.kind == "recurrent_gemma" else None
        out = self.model(input_ids=ids, cache=cache, **kwargs)
        state = {"mask": mask, "last": positions[:, -1]}

        def step(token, cache, _):
            state["mask"] = torch.cat([state["mask"], torch.ones_like(token[:, None])], dim=1)  # (B, past + 1)
            state["last"] = state["last"] + 1
            kwargs = {"use_cache": True, "logits_to_keep": 1}
            if self.kind not in _STEP_WITHOUT_MASK:
                kwargs["attention_mask"] = state["mask"]
            if self._takes_positions:
                kwargs["position_ids"] = state["last"][:, None]
            out = self.model(input_ids=token[:, None], cache=cache, **kwargs)
            return out.logits[:, -1, :].float(), _returned_cache(out, cache)

        return self._decode(out.logits[:, -1, :].float(), _returned_cache(out, cache), max_new_tokens, step)

    def _decode(self, logits, cache, max_new_tokens: int, step):
        """Greedy tokens from the prefill's last logits (B, V); `step(token, cache, i)` feeds the
        i-th decoded token (B,) and returns (logits, cache). EOS ends a row and is not kept."""
        eos = self.eos_ids
        outputs: list[list[int]] = [[] for _ in range(logits.shape[0])]
        done = [False] * len(outputs)
        for i in range(max_new_tokens):
            token = logits.argmax(dim=-1)  # (B,)
            for row, value in enumerate(token.tolist()):
                if not done[row]:
                    done[row] = value in eos
                    if not done[row]:
                        outputs[row].append(value)
            if all(done) or i == max_new_tokens - 1:
                break
            logits, cache = step(token, cache, i)
        return outputs

    def generate(self, prompts: list[list[int]], max_new_tokens: int, chunk: int | None = None,
                 batch_tokens: int = 16384) -> list[list[int]]:
        """Greedy continuations of ``prompts`` (new tokens only), in input order.

        Prompts are batched by length, at most ``batch_tokens`` (padded) prompt tokens per batch,
        always at least one prompt. For :data:`PADDED_KINDS` prompts of different lengths share a
        batch, padded on the left and prefilled whole; other kinds batch only prompts of equal
        length, and :data:`UNBATCHED_KINDS` decode one prompt at a time. A batch of equal lengths
        prefills in ``chunk``-token pieces where that is exact.
        Decoding stops after ``max_new_tokens`` tokens or at EOS, which is not
        returned: a row that stops early has fewer than ``max_new_tokens``.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        for index, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {index} is empty")
        results: list[list[int] | None] = [None] * len(prompts)
        for group in self._batches([len(p) for p in prompts], batch_tokens):
            if max_new_tokens == 0:
                outs = [[] for _ in group]
            else:
                outs = self._generate_batch([list(prompts[i]) for i in group], max_new_tokens, chunk)
            for index, out in zip(group, outs):
                results[index] = out
        return results

    def _batches(self, lengths: list[int], batch_tokens: int) -> list[list[int]]:
        """Indices grouped into batches: longest first, each within batch_tokens when padded to
        its longest prompt; mixed lengths only where padding is exact for this kind."""
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        batches: list[list[int]] = []
        for index in order:
            batch = batches[-1] if batches else None
            fits = batch is not None and self.kind not in UNBATCHED_KINDS and \
                (len(batch) + 1) * lengths[batch[0]] <= batch_tokens and \
                (self.mixes_lengths or lengths[index] == lengths[batch[0]])
            if fits:
                batch.append(index)
            else:
                batches.append([index])
        return batches
