"""Sequence mixers: one file per architecture family.

Every mixer maps (B, L, D) -> (B, L, D) and carries a `state` that continues the sequence:
`mixer(x, state) -> (y, new_state)`. A layer pattern names mixers by one letter each.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from .attention import AttentionConfig, CausalSelfAttention, LocalAttentionConfig
from .deltanet import DeltaNetConfig, DeltaNetMixer, GatedDeltaNetConfig
from .gla import GLAConfig, GLAMixer
from .mamba import MambaConfig, MambaMixer
from .mamba2 import Mamba2Config, Mamba2Mixer
from .retnet import RetNetConfig, RetNetMixer
from .s4d import S4DConfig, S4DMixer
from .rglru import RGLRUConfig, RGLRUMixer
from .rwkv6 import RWKV6Config, RWKV6Mixer

# letter -> (config dataclass, module class, family)
MIXERS: dict[str, tuple[type, type[nn.Module], str]] = {
    "A": (AttentionConfig, CausalSelfAttention, "attention"),
    "W": (LocalAttentionConfig, CausalSelfAttention, "attention"),  # sliding window
    "D": (S4DConfig, S4DMixer, "state-space"),
    "S": (MambaConfig, MambaMixer, "state-space"),
    "M": (Mamba2Config, Mamba2Mixer, "state-space"),
    "R": (RetNetConfig, RetNetMixer, "linear-recurrent"),
    "G": (GLAConfig, GLAMixer, "linear-recurrent"),
    "T": (DeltaNetConfig, DeltaNetMixer, "linear-recurrent"),
    "E": (GatedDeltaNetConfig, DeltaNetMixer, "linear-recurrent"),
    "L": (RGLRUConfig, RGLRUMixer, "linear-recurrent"),
    "K": (RWKV6Config, RWKV6Mixer, "linear-recurrent"),
}


def option_names(letter: str) -> set[str]:
    """The options a mixer accepts besides d_model."""
    config_cls = MIXERS[letter][0]
    return {f.name for f in dataclasses.fields(config_cls)} - {"d_model"}


def mixer_config(letter: str, d_model: int, options: dict):
    """The config of mixer `letter`, taking from `options` only the fields it has."""
    config_cls = MIXERS[letter][0]
    return config_cls(d_model=d_model, **{k: v for k, v in options.items() if k in option_names(letter)})


def make_mixer(letter: str, d_model: int, options: dict) -> nn.Module:
    return MIXERS[letter][1](mixer_config(letter, d_model, options))


def state_floats(letter: str, d_model: int, options: dict, length: int) -> int:
    return MIXERS[letter][1].state_floats(mixer_config(letter, d_model, options), length)
