"""The architecture registry: name -> layer pattern, defaults and a one-line description, and
what is built from it (configs, models, sizes to a parameter budget).

The architectures are declared beside their mixers (each mixer file's ARCHITECTURES list; the
hybrids in mixers/hybrids.py) or by a plugin (mixers/plugins.py), and found by mixers/__init__.py:
adding one is one file, and the registry-driven tests cover it automatically.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import os
from pathlib import Path

import torch

from .. import mixers
from ..mixers.base import ArchSpec
from .lm import LanguageModel, ModelConfig


REGISTRY = mixers.ARCHITECTURES  # name -> ArchSpec: the built-ins, then any plugin's (a live view)

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)} - {"mixer"}


class UnknownArchitecture(ValueError):
    pass


def names() -> list[str]:
    return list(REGISTRY)


def spec(name: str) -> ArchSpec:
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownArchitecture(f"unknown architecture {name!r}{hint} (known: {', '.join(REGISTRY)})")
    return REGISTRY[name]


def family(name: str, config: ModelConfig | None = None, declared: str | None = None) -> str | None:
    """The family of architecture `name` as built (`config`, whose pattern may be overridden):
    `declared` (a model entry's `family:`), else the architecture's own when its pattern is kept,
    else its mixers' (one family, or "hybrid"); None when a plugin mixer leaves it unsaid."""
    arch = spec(name)
    pattern = arch.pattern if config is None else config.pattern
    kept = mixers.canonical(pattern) == mixers.canonical(arch.pattern)
    return mixers.family_of(pattern, declared or (arch.family if kept else None))


def config(name: str, vocab_size: int = 64, **overrides) -> ModelConfig:
    """The ModelConfig of a registered architecture. Overrides are ModelConfig fields
    (d_model, n_layers, pattern, mlp_ratio, init, tie_head) or mixer options (n_heads, d_state, ...)."""
    arch = spec(name)
    top = {"d_model": 64, "pattern": arch.pattern, "n_layers": arch.n_layers, "mlp_ratio": arch.mlp_ratio,
           "init": arch.init, "tie_head": arch.tie_head}
    mixer = dict(arch.mixer)
    for key, value in overrides.items():
        target = top if key in _CONFIG_FIELDS else mixer
        default = target.get(key)
        if isinstance(default, (int, float)) and not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, (int, float))
                or (isinstance(default, int) and not isinstance(value, int))):
            kind = "an integer" if isinstance(default, int) else "a number"
            raise ValueError(f"{name}: {key} must be {kind}, not {value!r}")
        target[key] = value
    return ModelConfig(vocab_size=vocab_size, mixer=mixer, **top)


def build(name: str, **overrides) -> LanguageModel:
    """Build a registered architecture: `build("mamba2", d_model=96, vocab_size=64)`."""
    return LanguageModel(config(name, **overrides))


def count_params(model_config: ModelConfig, embeddings: bool = True) -> int:
    """Parameters of a model; with embeddings=False, without the token embedding and the output
    head (non-embedding parameters, as scaling-law papers count them)."""
    # the plugin sources in the key: an edited plugin's mixer is counted anew
    total = _count_params(json.dumps(model_config.to_dict(), sort_keys=True), str(mixers.sources(model_config.pattern)))
    if embeddings:
        return total
    return total - model_config.vocab_size * model_config.d_model * (1 if model_config.tie_head else 2)


@functools.lru_cache(maxsize=1 << 14)
def _count_params(config_json: str, sources: str) -> int:
    key = config_json + sources
    known = _stored_counts()
    if key not in known:
        with torch.device("meta"):  # shapes only, no memory
            known[key] = LanguageModel(ModelConfig(**json.loads(config_json))).num_params()
        _UNSAVED[0] = True
    return known[key]


# Counts kept between processes. A count on the meta device is cheap, but the first arithmetic on
# meta tensors imports torch._dynamo (2-3 s on 2 cores), and sizing a study to its budget counts
# ~90 shapes per architecture: most of a rerun's start-up. The file is named by a digest of the
# code that decides the shapes (models/ and mixers/, torch's version), so an edit starts a new one.
_COUNTS: dict[str, int] = {}
_UNSAVED = [False]


def _counts_file() -> Path | None:
    """The cache file (LONGARCH_COUNT_CACHE: its folder, "off": none), as the text tasks' cache."""
    root = os.environ.get("LONGARCH_COUNT_CACHE", str(Path.home() / ".cache" / "longarch" / "counts"))
    if root in ("", "off"):
        return None
    digest = hashlib.sha256(torch.__version__.encode())
    here = Path(__file__).resolve().parent.parent
    for path in sorted([*(here / "models").glob("*.py"), *(here / "mixers").glob("*.py")]):
        digest.update(path.name.encode() + path.read_bytes())
    return Path(root) / f"param-counts-{digest.hexdigest()[:16]}.json"


@functools.lru_cache(maxsize=1)
def _stored_counts() -> dict[str, int]:
    try:
        path = _counts_file()
        stored = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    except (OSError, ValueError):
        stored = {}
    _COUNTS.update({k: v for k, v in stored.items() if isinstance(k, str) and type(v) is int}
                   if isinstance(stored, dict) else {})
    return _COUNTS


def save_counts() -> None:
    """Write the counts this process made to the cache file (atomically; silently not at all
    where it cannot be written)."""
    if not _UNSAVED[0]:
        return
    _UNSAVED[0] = False
    try:
        path = _counts_file()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(_COUNTS))
        os.replace(temporary, path)
    except OSError:
        pass


def size_to_budget(name: str, params: int, vocab_size: int = 64, tolerance: float = 0.02, embeddings: bool = True,
                   **overrides) -> dict:
    """The overrides that bring `name` closest to `params` parameters: d_model, and when that
    alone cannot get within `tolerance`, the architecture's `size_knobs` too. embeddings=False
    counts non-embedding parameters only (see count_params).

    Each model within 2% of one budget puts any two within about 4% of each other.
    Raises ValueError when nothing gets within `tolerance` (relative)."""
    overrides = {k: v for k, v in overrides.items() if k != "d_model"}
    arch = spec(name)
    alternatives = [{}] + [{knob: value} for knob, values in arch.size_knobs.items() if knob not in overrides
                           for value in values]
    best = None
    for extra in alternatives:
        candidate = _best_d_model(name, params, vocab_size, {**overrides, **extra}, embeddings)
        if best is None or abs(candidate[1] - params) < abs(best[1] - params):
            best = candidate
        if abs(best[1] - params) <= tolerance / 4 * params:  # close enough: keep the default shape
            break
    chosen, achieved = best
    save_counts()
    if abs(achieved - params) > tolerance * params:
        raise ValueError(f"no size of {name} has {params:,} parameters within {tolerance:.0%} "
                         f"(closest: d_model={chosen['d_model']} with {achieved:,})")
    return chosen


def _best_d_model(name: str, params: int, vocab_size: int, overrides: dict, embeddings: bool = True
                  ) -> tuple[dict, int]:
    def count(d_model: int) -> int:
        return count_params(config(name, vocab_size=vocab_size, d_model=d_model, **overrides), embeddings)

    lo, hi = 4, 8192
    while hi - lo > 1:  # parameter counts grow with d_model, up to small steps
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= params else (lo, mid)
    d_model = min(range(max(4, lo - 3), hi + 4), key=lambda d: abs(count(d) - params))
    return {**overrides, "d_model": d_model}, count(d_model)
