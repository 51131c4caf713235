"""longarch: how well does each sequence-model architecture use long context?"""

__version__ = "0.1.0"
