"""Hybrid architectures: stacks that interleave mixers of different families. A new hybrid is an
entry here (or a file of its own beside this one); its family ("hybrid") follows from its pattern."""

from __future__ import annotations

from .base import ArchSpec, around

MIXERS: list = []  # no mixer of their own: they stack the families' mixers
ARCHITECTURES = [
    ArchSpec("mamba2-attn", "Mamba-2 blocks with one attention block in four, as in the Mamba2-Attention model",
             pattern=("mamba2", "mamba2", "attention", "mamba2"), n_layers=4,
             mixer={"n_heads": 4, "d_state": 16, "head_dim": 16}, size_knobs={"expand": around(2.0)}),
    ArchSpec("jamba", "Jamba-style interleave: Mamba blocks with one attention block in four, SwiGLU MLP",
             pattern=("mamba", "mamba", "attention", "mamba"), n_layers=4, mlp_ratio=2.0,
             mixer={"n_heads": 4, "d_state": 16}, size_knobs={"mlp_ratio": around(2.0)}),
    ArchSpec("griffin", "Griffin / RecurrentGemma: two RG-LRU blocks per sliding-window attention block (window 64)",
             pattern=("rglru", "rglru", "local-attention"), n_layers=3, mlp_ratio=3.0,
             mixer={"expand": 4 / 3, "n_heads": 4, "window": 64}, size_knobs={"mlp_ratio": around(3.0)}),
]
