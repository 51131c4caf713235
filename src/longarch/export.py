"""`longarch export`: a study's results as one tidy table, one row per evaluated sample, for
analysis elsewhere (pandas, R, a spreadsheet) without reading SQLite or the JSON inside it.

The store keeps each cell's per-sample scores as a JSON list; this unrolls them, one row per
sample, with the cell's model, task, length and depth beside each score, and the intervention it
was made under (`intervention`: empty for the baseline and for a pretrained study; under one,
the model is named `<model>+<intervention>`, controlled/interventions.py). Each kind keeps every
sample's raw output beside the store (`predictions/.../*.jsonl`, study/predictions.py: decoded
text for a pretrained model, symbol ids for a model trained here) and hands it over through its
`sample_outputs(out, row)`; a cell whose file is missing (a store from before they were kept)
exports an empty prediction and answer, and the export says how many. The store is opened
read-only and left byte for byte as it was; any kind of study exports the same columns.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from .kinds import kind_named
from .study.store import read_only

# the columns, in this order in every format
COLUMNS = ("study", "model", "intervention", "family", "seed", "task", "label", "length", "depth", "sample", "score",
           "prediction", "answer", "cell_id", "model_id")
FORMATS = ("csv", "jsonl", "parquet")
PARQUET_HINT = "--format parquet needs pyarrow, which is not installed: pip install pyarrow (or use csv or jsonl)"


def check_format(fmt: str, dest: str | None) -> None:
    """Refuse a format this export cannot write before anything is read (ValueError)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "parquet":
        if dest == "-":
            raise ValueError("--out - (standard output) is for csv and jsonl; parquet is written to a file")
        if _parquet_writer() is None:
            raise ValueError(PARQUET_HINT)


def destination(directory: Path, fmt: str, out: str | None) -> Path | None:
    """Where the table goes: `out`, else DIR/export.<format>; None for standard output. A path
    that is a directory, or one of the store's own files, is refused (ValueError)."""
    if out == "-":
        return None
    dest = Path(out) if out is not None else directory / f"export.{fmt}"
    if dest.is_dir():
        raise ValueError(f"--out {dest} is a directory; give a file name")
    store = (directory / "results.sqlite").resolve()
    if dest.resolve() in {store, *(store.with_name(store.name + s) for s in ("-wal", "-shm", "-journal"))}:
        raise ValueError(f"--out {dest} is the study's results database; export never writes over it")
    if out is None and not os.access(directory, os.W_OK):
        raise ValueError(f"{directory} is read-only: the export cannot be written there; give --out FILE")
    return dest


def rows(directory: Path, notes: list[str] | None = None) -> Iterator[dict]:
    """The table's rows (dicts keyed by COLUMNS), cell by cell in the store's order (model,
    label, length, depth), sample by sample. The store is read here, before a row is written (a
    store that cannot be read is an error with nothing written); what could not be read of the
    samples' outputs is said in `notes` once the rows are consumed."""
    path = Path(directory) / "results.sqlite"
    with read_only(path, untouched=True) as store:  # immutable: no lock, no side file, no migration
        meta, results, families = store.meta(), store.results(), _families(store)
    kind = kind_named(meta, directory)
    study = meta.get("name") or (meta.get("config") or {}).get("name") or ""
    return _unrolled(Path(directory), study, results, families, getattr(kind, "sample_outputs", None), notes)


def _unrolled(directory: Path, study: str, results: list, families: dict[str, str], outputs: Callable | None,
              notes: list[str] | None) -> Iterator[dict]:
    """Each cell's samples as rows; `outputs(directory, row)`: sample index -> (prediction,
    answer), or None where they cannot be read (then both are empty, as for a kind without it)."""
    missing = 0
    for row in results:
        found = outputs(directory, row) if outputs is not None else None
        missing += outputs is not None and found is None
        for index, score in enumerate(row.scores):
            prediction, answer = (found or {}).get(index, ("", ""))
            yield {"study": study, "model": row.model, "intervention": row.intervention,
                   "family": families.get(row.model_id, ""), "seed": row.seed,
                   "task": row.task, "label": row.label or row.task, "length": row.length, "depth": row.depth,
                   "sample": index, "score": score, "prediction": prediction, "answer": answer,
                   "cell_id": row.cell_id, "model_id": row.model_id}
    if missing and notes is not None:
        notes.append(f"{missing} of {len(results)} cells have no readable raw predictions file; their prediction "
                     "and answer are empty")


def _families(store) -> dict[str, str]:
    """model_id -> family, from trained models and pretrained checkpoints alike."""
    families = {m.model_id: m.family for m in store.models()}
    families.update({p["model_id"]: p.get("family") or "" for p in store.pretrained()})
    return families


def export(directory: Path, fmt: str, dest: Path | None) -> tuple[int, list[str]]:
    """Write the table of the study in `directory` as `fmt` to `dest` (None: standard output);
    return the rows written and the notes on what could not be read. A file is written whole or
    not at all (a temporary file renamed into place)."""
    notes: list[str] = []
    table = rows(directory, notes)
    if dest is None:
        count = _write(fmt, table, sys.stdout)
        sys.stdout.flush()
        return count, notes
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        if fmt == "parquet":
            count = _parquet_writer()(list(table), tmp)
        else:
            with tmp.open("w", encoding="utf-8", newline="") as file:
                count = _write(fmt, table, file)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)
    return count, notes


def _write(fmt: str, table: Iterator[dict], file) -> int:
    """csv (a header line, then the rows; an empty cell for a missing depth) or jsonl (one JSON
    object a line, numbers as numbers, null for a missing depth)."""
    count = 0
    if fmt == "csv":
        writer = csv.DictWriter(file, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in table:
            writer.writerow(row)
            count += 1
    else:
        for row in table:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def _parquet_writer() -> Callable[[list[dict], Path], int] | None:
    """A function writing rows as parquet, through pyarrow, else pandas (with an engine of its
    own); None when neither is installed (longarch does not depend on them)."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        pass
    else:
        def with_pyarrow(table: list[dict], path: Path) -> int:
            columns = {c: [r[c] for r in table] for c in COLUMNS}
            pyarrow.parquet.write_table(pyarrow.table(columns, schema=_arrow_schema(pyarrow)), path)
            return len(table)
        return with_pyarrow
    try:
        import pandas
    except ImportError:
        return None

    def with_pandas(table: list[dict], path: Path) -> int:
        try:
            pandas.DataFrame(table, columns=list(COLUMNS)).to_parquet(path, index=False)
        except ImportError:  # pandas without a parquet engine
            raise ValueError(PARQUET_HINT) from None
        return len(table)
    return with_pandas


def _arrow_schema(pyarrow):
    """Fixed column types, so that an empty study and a full one give the same schema."""
    types = {"seed": pyarrow.int64(), "length": pyarrow.int64(), "sample": pyarrow.int64(),
             "depth": pyarrow.float64(), "score": pyarrow.float64()}
    return pyarrow.schema([(c, types.get(c, pyarrow.string())) for c in COLUMNS])

