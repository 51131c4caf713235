"""Pretrained studies: RULER-style text tasks on checkpoints of every family (no training)."""
