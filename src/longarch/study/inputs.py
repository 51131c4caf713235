"""The files a study reads (a corpus, a QA dataset, a plugin), kept inside its study directory.

A study names its input files by path as typed. The path is not what the study means: a copy
of the directory on another machine, or a run started from another working directory, must be
the same study with the same ids. So:

- ids see a file by its content (`identity_knobs`: the SHA-256 of its bytes), never by its path;
- the configuration stored with results names each input as `inputs/<digest>/<file name>`,
  relative to the study directory (`portable`), and a run copies the file there (`keep`), so a
  moved directory still plans, resumes and reports (`resolved` makes the names absolute again).

A kind lists the keys of its configuration that hold a file path (`input_keys`); every string
under such a key, at any depth, is an input, and so is every file named in a `plugins` list.
A local checkpoint folder of a pretrained study is not copied (it is the model, often gigabytes);
it is named as given.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
from pathlib import Path

FOLDER = "inputs"
DIGITS = 16  # hex digits of the SHA-256 kept in ids and folder names
PLUGINS = "plugins"


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:DIGITS]


def digest(path: str | Path) -> str:
    """The file's SHA-256 (DIGITS hex digits); read once while the file is unchanged."""
    stat = Path(path).stat()
    return _digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def identity_knobs(knobs: dict, keys=("corpus", "path")) -> dict:
    """A task's knobs as its ids see them: each file by its content ({"sha256": digest}), so that
    the same file anywhere gives the same id and an edited file a new one. A file that cannot be
    read keeps its name (the task fails on it with its own line)."""
    out = dict(knobs)
    for key in keys:
        value = out.get(key)
        if isinstance(value, str) and Path(value).is_file():
            out[key] = {"sha256": digest(value)}
    return out


def _is_plugin_file(ref: str) -> bool:
    from ..mixers import plugins

    return isinstance(ref, str) and plugins.is_reference(ref) and plugins._is_file(plugins.split(ref)[0])


def _walk(config, keys: tuple[str, ...], change, under: str | None = None):
    """`config` with `change(path)` applied to every input it names (see the module's doc)."""
    if isinstance(config, dict):
        return {k: _walk(v, keys, change, k) for k, v in config.items()}
    if isinstance(config, list):
        if under == PLUGINS:
            return [_plugin(ref, change) if _is_plugin_file(ref) else ref for ref in config]
        return [_walk(v, keys, change, under) for v in config]
    if under in keys and isinstance(config, str):
        return change(config)
    return config


def _plugin(ref: str, change) -> str:
    from ..mixers import plugins

    module, obj = plugins.split(ref)
    changed = change(module)
    return changed if obj is None else f"{changed}:{obj}"


def stored_name(path: str | Path) -> str:
    """Where a copy of the file lies in a study directory, relative to it."""
    return f"{FOLDER}/{digest(path)}/{Path(path).name}"


def is_stored_name(text: str) -> bool:
    parts = Path(text).parts
    return not Path(text).is_absolute() and len(parts) == 3 and parts[0] == FOLDER


def portable(config, keys: tuple[str, ...]) -> tuple[object, dict[str, str]]:
    """The configuration as stored with results (every input named by `stored_name`), and the
    copies a run makes ({stored name: the file as named}). An input that is not a file on this
    machine is left as named (the run fails on it with its own line, or a stored name stays)."""
    copies: dict[str, str] = {}

    def change(path: str) -> str:
        if is_stored_name(path) or not Path(path).expanduser().is_file():
            return path
        name = stored_name(Path(path).expanduser())
        copies[name] = str(Path(path).expanduser())
        return name

    return _walk(config, keys, change), copies


def by_content(config, keys: tuple[str, ...]):
    """The configuration with each input, by path or by stored name, as {"sha256": digest}: what
    a study directory's identity compares (the same file under another name is the same study)."""
    def change(path: str):
        if is_stored_name(path):
            return {"sha256": Path(path).parts[1]}
        file = Path(path).expanduser()
        return {"sha256": digest(file)} if file.is_file() else path

    return _walk(config, keys, change)


def keep(out: Path, copies: dict[str, str]) -> None:
    """Copy each input into the study directory (once: a stored name is its content)."""
    for name, source in copies.items():
        target = Path(out) / name
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            shutil.copyfile(source, partial)
            partial.replace(target)


def resolved(config, keys: tuple[str, ...], out: Path | None):
    """A stored configuration with each stored name made a path under `out` (a path that is no
    stored name is left as it is); `out` None leaves it all as it is."""
    if out is None:
        return config
    root = Path(out).resolve()
    return _walk(config, keys, lambda path: str(root / path) if is_stored_name(path) else path)
