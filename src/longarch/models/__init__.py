"""Models: the LanguageModel and the registry of architectures."""

from .lm import LanguageModel, ModelConfig, bounded_layers, detached, forward_in_chunks, layer_interventions
from .registry import REGISTRY, ArchSpec, UnknownArchitecture, build, config, count_params, family, names, size_to_budget, spec

__all__ = ["LanguageModel", "ModelConfig", "bounded_layers", "detached", "forward_in_chunks", "layer_interventions", "REGISTRY", "ArchSpec", "UnknownArchitecture",
           "build", "config", "count_params", "family", "names", "size_to_budget", "spec"]
