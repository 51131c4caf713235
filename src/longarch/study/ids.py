"""Content-addressed ids and evaluation seeds: what makes a stored result findable again."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np


def content_id(payload: dict) -> str:
    """A short stable hash of a JSON-able description of a cell."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def eval_seed(base: int, length: int, depth: float | None, model_seed: int | None = None) -> int:
    """The seed of the samples of one evaluation cell.

    Every model trained with the same seed sees the same samples at a given (length, depth), so
    comparisons between models are paired; models of different training seeds see independent
    samples, so a model's seeds add up to seeds x samples distinct samples per cell, as the
    intervals of `analysis.intervals` assume. `model_seed` None (pretrained checkpoints, which have
    no training seed) keeps one set of samples per (length, depth).
    """
    depth_part = 10**9 if depth is None else int(round(depth * 1000))
    parts = [base, length, depth_part] + ([] if model_seed is None else [1, model_seed])
    return int(np.random.SeedSequence(parts).generate_state(1)[0])


def slug(name: str) -> str:
    """A file-name-safe form of a model or task name (figures, predictions)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"
