"""Each evaluated sample's raw output, kept beside the store: `<out>/predictions/<model>/
[s<seed>/]<task label>-<length>[-d<depth>].jsonl`, one JSON object a line with at least
"index" (the sample), "prediction" and "answers" (a list: any one of them is right, or the
one answer). The store keeps the scores; these files are what `longarch export` shows beside
them, and what a reader inspects when a score looks wrong. Any kind writes them the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from .ids import slug

FOLDER = "predictions"


def path_of(out: Path, model: str, label: str, length: int, depth: float | None, seed: int | None = None) -> Path:
    """Where a cell's raw outputs are: by its model's and task's labels as stored (and the seed
    of a model trained here: one file per trained model)."""
    shown = "" if depth is None else f"-d{depth:g}"
    folder = Path(out) / FOLDER / slug(model)
    if seed is not None:
        folder = folder / f"s{seed}"
    return folder / f"{slug(label)}-{length}{shown}.jsonl"


def write(path: Path, lines: list[dict]) -> None:
    """The file whole or not at all (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as file:
        for line in lines:
            file.write(json.dumps(line, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read(path: Path) -> dict[int, tuple[str, str]] | None:
    """sample index -> (prediction, its answers joined by " | "); None when the file is missing
    or unreadable (the scores in the store stand without it)."""
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return {int(line["index"]): (str(line["prediction"]), " | ".join(str(a) for a in line["answers"]))
                for line in lines}
    except (OSError, ValueError, TypeError, KeyError):
        return None
