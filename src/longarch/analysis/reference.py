"""Published numbers shown beside a run's own: facts from the paper, not data files.

Huang, "How Well Can a Long Sequence Model Model Long Sequences? Comparing Architectural
Inductive Biases on Long-Context Abilities", COLING 2025 (arXiv 2407.08112): RULER averages over
its 13 tasks (x100) per model and length, and the depth ablation's averages over its three
formats at the training length (T) and twice it (2T). The model names are the `paper` preset's.
Models the paper reports only as "about 99-100 everywhere" have no depth entries here.
"""

from __future__ import annotations

HUANG2025 = {
    "citation": "Huang (COLING 2025), arXiv 2407.08112",
    "averages": {  # model -> {length: RULER average over 13 tasks}
        "Mamba2": {1024: 38.52, 2048: 32.91, 4096: 12.98, 8192: 6.51, 16384: 0.1},
        "M2A": {1024: 39.14, 2048: 30.43, 4096: 12.89, 8192: 7.8, 16384: 3.49},
        "TPP": {1024: 46.61, 2048: 36.74, 4096: 0.31, 8192: 0.06, 16384: 0.03},
        "RG": {1024: 78.82, 2048: 71.72, 4096: 22.45, 8192: 11.21, 16384: 6.29},
        "SL": {1024: 84.38, 2048: 69.89, 4096: 58.37, 8192: 0.0, 16384: 0.0},
        "RWKV": {1024: 68.09, 2048: 55.27, 4096: 37.47, 8192: 23.73, 16384: 13.81},
        "RG-IT": {1024: 85.64, 2048: 79.45, 4096: 44.33, 8192: 24.19, 16384: 14.18},
        "SL-IT": {1024: 86.22, 2048: 77.54, 4096: 74.25, 8192: 0.0, 16384: 0.0},
    },
    "depths": [0, 20, 40, 50, 60, 80, 100],
    "depth_averages": {  # factor of the training length -> model -> score at each depth above
        1: {"Mamba2": [59.07, 31.47, 33.07, 39.07, 40.0, 31.33, 66.0],
            "M2A": [40.27, 36.53, 30.27, 29.33, 29.33, 35.07, 37.2],
            "TPP": [53.33, 33.47, 22.8, 26.27, 31.33, 35.07, 55.73],
            "RWKV": [82.4, 100, 100, 80.27, 100, 100, 100]},
        2: {"Mamba2": [26.8, 19.6, 17.73, 18.93, 18.93, 20.13, 21.87],
            "M2A": [38.8, 26.27, 18.93, 28.8, 10.13, 21.6, 66.67],
            "TPP": [0, 0, 0, 0, 0, 0, 0], "SL": [0, 0, 0, 0, 0, 0, 0], "SL-IT": [0, 0, 0, 0, 0, 0, 0],
            "RG": [0, 0, 0, 99.87, 100, 100, 96.27], "RG-IT": [0, 0, 0, 100, 99.6, 100, 99.73],
            "RWKV": [33.47, 99.6, 100, 36.53, 100, 100, 100]},
    },
}

REFERENCES = {"huang2025": HUANG2025}
