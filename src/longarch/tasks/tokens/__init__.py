"""Symbol-level tasks over integer vocabularies, for models trained from scratch."""
