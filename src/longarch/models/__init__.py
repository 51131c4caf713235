"""Models: the LanguageModel and the registry of architectures."""

from .lm import LanguageModel, ModelConfig, forward_in_chunks
from .registry import REGISTRY, ArchSpec, UnknownArchitecture, build, config, count_params, family, names, size_to_budget, spec

__all__ = ["LanguageModel", "ModelConfig", "forward_in_chunks", "REGISTRY", "ArchSpec", "UnknownArchitecture",
           "build", "config", "count_params", "family", "names", "size_to_budget", "spec"]
