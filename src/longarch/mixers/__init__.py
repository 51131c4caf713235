"""Sequence mixers: one file per architecture family, and the registry of mixers and architectures.

Every mixer maps (B, L, D) -> (B, L, D) and carries a `state` that continues the sequence:
`mixer(x, state) -> (y, new_state)` (the contract: base.py). Each module of this package
declares what it adds as two module-level lists, `MIXERS` (MixerSpec: a mixer by name, with its
family and a one-letter shorthand) and `ARCHITECTURES` (ArchSpec: a layer pattern of mixers with
its defaults); the registry finds them, so adding a built-in architecture is one file. Plugins
(plugins.py) register theirs the same way at run time.

A layer pattern names one mixer per layer: a list of names (["mamba2", "attention"]), a string
of letters ("MA"), or one name ("mamba2"). It is kept in a canonical form: letters when every
mixer has one (as every built-in does, so the ids of models stored before names existed stay
the same), else the list of names.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from torch import nn

from .base import FAMILIES, ArchSpec, MixerSpec

_NOT_MIXER_MODULES = {"base", "checks", "conv", "plugins"}  # helpers, no registrations

MIXERS: dict[str, MixerSpec] = {}        # name -> spec, built-ins first, then plugins
LETTERS: dict[str, str] = {}             # letter -> name
ARCHITECTURES: dict[str, ArchSpec] = {}  # name -> spec


_GENERATION = [0]  # bumped by each plugin registration: caches keyed by a name key this too


class UnknownMixer(ValueError):
    pass


def generation() -> int:
    """How many times a plugin has registered something in this process."""
    return _GENERATION[0]


def register_mixer(spec: MixerSpec) -> None:
    """Add a mixer (a plugin's replaces the same plugin's earlier version, never another's)."""
    known = MIXERS.get(spec.name)
    if known is not None and known.origin != spec.origin:
        raise ValueError(f"mixer {spec.name!r} from {spec.origin or 'longarch'} clashes with the one from "
                         f"{known.origin or 'longarch (built in)'}; give it another name")
    if spec.letter is not None:
        if len(spec.letter) != 1 or not spec.letter.isupper() or LETTERS.get(spec.letter, spec.name) != spec.name:
            raise ValueError(f"mixer {spec.name!r}: letter {spec.letter!r} is not a free capital letter")
        LETTERS[spec.letter] = spec.name
    MIXERS[spec.name] = spec
    _GENERATION[0] += spec.origin is not None


def register_architecture(spec: ArchSpec) -> None:
    known = ARCHITECTURES.get(spec.name)
    if known is not None and known.origin != spec.origin:
        raise ValueError(f"architecture {spec.name!r} from {spec.origin or 'longarch'} clashes with the one from "
                         f"{known.origin or 'longarch (built in)'}; give it another name")
    layers(spec.pattern)  # every mixer it names is known
    # its family said once, by its mixers, unless it declares its own
    ARCHITECTURES[spec.name] = dataclasses.replace(spec, family=family_of(spec.pattern, spec.family))
    _GENERATION[0] += spec.origin is not None


def _discover() -> None:
    """Register what every module of this package declares: first all the mixers, then the
    architectures in the report's order of families (attention, state-space, linear-recurrent,
    hybrid), each family's in the order of its files."""
    modules = [importlib.import_module(f"{__name__}.{info.name}") for info in pkgutil.iter_modules(__path__)
               if info.name not in _NOT_MIXER_MODULES]
    for module in modules:
        for spec in getattr(module, "MIXERS", ()):
            register_mixer(spec)
    archs = [spec for module in modules for spec in getattr(module, "ARCHITECTURES", ())]
    order = {family: i for i, family in enumerate(FAMILIES)}
    for spec in sorted(archs, key=lambda s: order.get(family_of(s.pattern, s.family), len(order))):
        register_architecture(spec)


def get(name: str) -> MixerSpec:
    """The mixer named `name` (or by its letter)."""
    if name in MIXERS:
        return MIXERS[name]
    if name in LETTERS:
        return MIXERS[LETTERS[name]]
    raise UnknownMixer(f"unknown mixer {name!r} (known: {', '.join(MIXERS)}; or their letters {''.join(LETTERS)})")


def layers(pattern) -> tuple[str, ...]:
    """The mixer names of a pattern: a list of names or letters, a string of letters, or one name."""
    if isinstance(pattern, str):
        items = list(pattern) if pattern.isalpha() and pattern.isupper() else [pattern]  # names are lowercase
    elif isinstance(pattern, (list, tuple)) and all(isinstance(item, str) for item in pattern):
        items = list(pattern)
    else:
        raise UnknownMixer(f"layer pattern {pattern!r}: a list of mixer names or a string of letters")
    if not items:
        raise UnknownMixer("layer pattern is empty")
    return tuple(get(item).name for item in items)


def canonical(pattern) -> str | list[str]:
    """The stored form of a pattern: its letters when every mixer has one, else its names."""
    names = layers(pattern)
    letters = [MIXERS[name].letter for name in names]
    return "".join(letters) if all(letters) else list(names)


def shown(pattern) -> str:
    """A pattern for a table: its letters, or its names joined by spaces."""
    form = canonical(pattern)
    return form if isinstance(form, str) else " ".join(form)


def family_of(pattern, declared: str | None = None) -> str | None:
    """The family of a stack: `declared`, else its mixers' one family, "hybrid" for several, or
    None when a mixer has none (a plugin that left it to the model entry)."""
    if declared:
        return declared
    families = {MIXERS[name].family for name in layers(pattern)}
    if None in families:
        return None
    return families.pop() if len(families) == 1 else "hybrid"


def option_names(name: str) -> set[str]:
    """The options a mixer accepts besides d_model."""
    return {f.name for f in dataclasses.fields(get(name).config)} - {"d_model"}


def mixer_config(name: str, d_model: int, options: dict):
    """The config of mixer `name`, taking from `options` only the fields it has."""
    own = option_names(name)
    return get(name).config(d_model=d_model, **{k: v for k, v in options.items() if k in own})


def make_mixer(name: str, d_model: int, options: dict) -> nn.Module:
    return get(name).mixer(mixer_config(name, d_model, options))


def state_floats(name: str, d_model: int, options: dict, length: int) -> int:
    return get(name).mixer.state_floats(mixer_config(name, d_model, options), length)


def sources(pattern) -> dict[str, str]:
    """The source hash of each plugin mixer in a pattern (part of its models' ids)."""
    return {name: MIXERS[name].source for name in dict.fromkeys(layers(pattern)) if MIXERS[name].source}


_discover()
