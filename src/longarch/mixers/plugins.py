"""Plugins: mixers and architectures from outside the package, named by import path.

A reference is a Python file (`examples/ema.py`) or an importable module (`my_package.mixers`),
optionally followed by `:Object` to name one thing in it (`examples/ema.py:EMAMixer`,
`my_package.mixers:MY_HYBRID`). Loading a plugin imports it and registers what it declares, as
a built-in mixer file does:
- the module-level lists `MIXERS` (MixerSpec) and `ARCHITECTURES` (ArchSpec), if it has them;
- any other MixerSpec or ArchSpec at module level;
- every mixer class defined in it (an nn.Module with a `state_floats` static method). Its name is
  the class attribute `name`, else the class name without "Mixer", lowercased with hyphens
  ("EMAMixer" -> "ema", "GatedEMAMixer" -> "gated-ema"); its config is the class attribute
  `Config`, else the annotation of `__init__`'s `config`; its family the class attribute
  `family` (else each model entry says `family:`).
Each mixer without an architecture of its own name gets one: two layers of it, each followed by
the Transformer++'s SwiGLU MLP (ratio 4), like the `transformer` entry.

A plugin's source hash (its file's SHA-256) is recorded with each thing it registers and goes
into the ids of the models that use its mixers, so editing the plugin retrains them.
Loading is idempotent, and a worker process, a Ray worker or a later `longarch status` loads the
same references from the study (`ensure`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .. import mixers as registry
from .base import ArchSpec, MixerSpec, around

_LOADED: dict[str, "Loaded"] = {}  # canonical reference -> what loading it registered


class PluginError(ValueError):
    pass


@dataclass(frozen=True)
class Loaded:
    ref: str                        # an absolute file path, or a module name
    source: str                     # the file's SHA-256 (16 hex digits)
    mixers: tuple[str, ...]         # names registered
    architectures: tuple[str, ...]
    objects: dict                   # id(object in the module) -> the registered name, for `:Object`


def is_reference(text: object) -> bool:
    """Whether a name in a study is a plugin reference (a path, a module:object) rather than a
    registered name."""
    return isinstance(text, str) and (":" in text or _is_file(text))


def _is_file(module_ref: str) -> bool:
    """Whether a reference's module part is a file path rather than a module name."""
    return module_ref.endswith(".py") or "/" in module_ref or "\\" in module_ref


def split(ref: str) -> tuple[str, str | None]:
    """A reference's module part and object name: "a/b.py:X" -> ("a/b.py", "X")."""
    module, sep, obj = ref.rpartition(":")
    if sep and obj.isidentifier() and module:
        return module, obj
    return ref, None


def absolute(ref: str, base: Path | None = None) -> str:
    """The reference with a file path made absolute (against `base`, else the working
    directory), so that it means the same from anywhere; a module name is left as it is."""
    module, obj = split(ref)
    if _is_file(module):
        module = str(((base or Path.cwd()) / Path(module).expanduser()).resolve())
    return module if obj is None else f"{module}:{obj}"


def load(ref: str) -> Loaded:
    """Import the plugin a reference names (its module part) and register what it declares."""
    module_ref, _ = split(ref)
    path = _file_of(module_ref)
    digest = _digest(path) if path is not None else None
    known = _LOADED.get(module_ref)
    if known is not None and (digest is None or known.source == digest):
        return known
    same = next((x for x in _LOADED.values() if digest is not None and x.source == digest), None)
    if same is not None:  # the same file elsewhere (a study directory's copy of it): already registered
        _LOADED[module_ref] = same
        return same
    module = _import(module_ref, path, digest)
    digest = digest or _digest(Path(module.__file__))
    loaded = _register(module, module_ref, digest)
    _LOADED[module_ref] = loaded
    return loaded


def ensure(refs) -> None:
    """Load every reference (a worker calls this before it builds a model)."""
    for ref in refs or ():
        load(ref)


def resolve(ref: str) -> str:
    """The registered name of what a reference names: its `:Object` (an ArchSpec, a MixerSpec or
    a mixer class), else the one architecture or mixer its module registers."""
    loaded = load(ref)
    module_ref, obj = split(ref)
    if obj is not None:
        module = sys.modules[_module_name(loaded.ref, loaded.source)]
        if not hasattr(module, obj):
            raise PluginError(f"plugin {module_ref} has no {obj!r}")
        name = loaded.objects.get(id(getattr(module, obj)))
        if name is None:
            raise PluginError(f"plugin {module_ref}: {obj!r} is not a mixer class, a MixerSpec or an ArchSpec")
        return name
    names = loaded.architectures or loaded.mixers
    if len(names) != 1:
        what = f"declares {', '.join(names)}" if names else "declares no mixer or architecture"
        raise PluginError(f"plugin {module_ref} {what}; name one as {module_ref}:Object")
    return names[0]


def _file_of(module_ref: str) -> Path | None:
    if not _is_file(module_ref):
        return None
    path = Path(module_ref)
    if not path.is_file():
        raise PluginError(f"plugin file {module_ref} does not exist")
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _module_name(module_ref: str, digest: str) -> str:
    if _is_file(module_ref):
        stem = re.sub(r"\W", "_", Path(module_ref).stem)
        return f"longarch_plugin_{stem}_{digest[:8]}"
    return module_ref


def _import(module_ref: str, path: Path | None, digest: str | None):
    """The plugin's module: a file under a name of its own (with its hash, so that an edited
    file is imported anew), or an importable module."""
    try:
        if path is None:
            return importlib.import_module(module_ref)
        name = _module_name(module_ref, digest)
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look their module up there
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    except ModuleNotFoundError as error:
        if path is None and error.name and module_ref.startswith(error.name):
            raise PluginError(f"plugin module {module_ref!r} cannot be imported: not installed and not on "
                              "PYTHONPATH (or name a .py file)") from None
        raise PluginError(f"plugin {module_ref}: {type(error).__name__}: {error}") from None
    except Exception as error:  # the plugin's own code failed: its error, in one line
        line = str(error).splitlines()[0] if str(error) else ""
        raise PluginError(f"plugin {module_ref} failed to import: {type(error).__name__}: {line}") from None


def _register(module, origin: str, digest: str) -> Loaded:
    mixers, archs, objects = _declared(module)
    stamp = {"source": digest, "origin": origin}
    registered_mixers, registered_archs = [], []
    try:
        for obj, spec in mixers:
            spec = dataclasses.replace(spec, **stamp)
            registry.register_mixer(spec)
            objects[id(obj)] = spec.name
            registered_mixers.append(spec.name)
        for obj, spec in archs:
            registry.register_architecture(dataclasses.replace(spec, origin=origin))
            objects[id(obj)] = spec.name
            registered_archs.append(spec.name)
        for name in registered_mixers:  # a mixer alone, unless an architecture has its name
            known = registry.ARCHITECTURES.get(name)
            if name not in registered_archs and (known is None or known.origin == origin):
                registry.register_architecture(lone(registry.MIXERS[name]))
    except ValueError as error:
        raise PluginError(f"plugin {origin}: {error}") from None
    return Loaded(origin, digest, tuple(registered_mixers), tuple(registered_archs), objects)


def _declared(module) -> tuple[list, list, dict]:
    """(object, MixerSpec) and (object, ArchSpec) pairs a module declares, in its order."""
    mixers = [(spec, spec) for spec in _listed(module, "MIXERS", MixerSpec)]
    archs = [(spec, spec) for spec in _listed(module, "ARCHITECTURES", ArchSpec)]
    for value in list(vars(module).values()):
        if isinstance(value, MixerSpec) and all(value is not o for o, _ in mixers):
            mixers.append((value, value))
        elif isinstance(value, ArchSpec) and all(value is not o for o, _ in archs):
            archs.append((value, value))
    classes = {spec.mixer for _, spec in mixers}
    objects = {id(spec.mixer): spec.name for _, spec in mixers}
    for value in list(vars(module).values()):
        if _is_mixer_class(value) and value.__module__ == module.__name__ and value not in classes:
            mixers.append((value, from_class(value)))
    return mixers, archs, objects


def _listed(module, name: str, kind: type) -> list:
    """A module's list `name` of specs, as a built-in mixer file declares them (anything else of
    that name, such as the registry itself imported by the plugin, is not a declaration)."""
    value = getattr(module, name, None)
    if isinstance(value, (list, tuple)) and all(isinstance(item, kind) for item in value):
        return list(value)
    return []


def _is_mixer_class(value) -> bool:
    return inspect.isclass(value) and issubclass(value, nn.Module) and callable(getattr(value, "state_floats", None))


def from_class(cls: type) -> MixerSpec:
    """The MixerSpec of a mixer class (see the module docstring for what it is read from)."""
    name = getattr(cls, "name", None) or _name_of(cls.__name__)
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise PluginError(f"{cls.__name__}: mixer name {name!r} must be lowercase letters, digits, - and _")
    config = getattr(cls, "Config", None)
    if config is None:
        try:
            config = typing.get_type_hints(cls.__init__).get("config")
        except Exception:  # an annotation that does not resolve
            config = None
    if not (dataclasses.is_dataclass(config) and "d_model" in {f.name for f in dataclasses.fields(config)}):
        raise PluginError(f"{cls.__name__}: cannot tell its config: annotate __init__(self, config: MyConfig) "
                          "with a dataclass that has d_model, or set Config = MyConfig on the class")
    if not isinstance(inspect.getattr_static(cls, "state_floats"), staticmethod):
        raise PluginError(f"{cls.__name__}: state_floats must be a @staticmethod (config, length) -> int")
    return MixerSpec(name, config, cls, family=getattr(cls, "family", None))


def _name_of(class_name: str) -> str:
    base = class_name[:-len("Mixer")] if class_name.endswith("Mixer") and class_name != "Mixer" else class_name
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", base).lower()


def lone(spec: MixerSpec) -> ArchSpec:
    """The architecture of one mixer alone: two layers of it, each with a SwiGLU MLP of ratio 4."""
    doc = (inspect.getdoc(spec.mixer) or "").strip().splitlines()
    description = doc[0] if doc else f"{spec.mixer.__name__} (plugin)"
    return ArchSpec(spec.name, description, pattern=(spec.name,), n_layers=2, mlp_ratio=4.0,
                    size_knobs={"mlp_ratio": around(4.0)}, origin=spec.origin)


def alone(mixer: str) -> str:
    """The architecture of mixer `mixer` alone: the one of its own name (a built-in's, or what
    its plugin declares), else `lone`'s, registered now."""
    spec = registry.MIXERS[mixer] if mixer in registry.MIXERS else None
    if spec is None:
        raise PluginError(f"unknown mixer {mixer!r} (known: {', '.join(registry.MIXERS)})")
    if spec.name not in registry.ARCHITECTURES:
        registry.register_architecture(lone(spec))
    return spec.name


def mixers_named(target: str) -> list[MixerSpec]:
    """The mixers `longarch check TARGET` checks: a mixer's name or letter; an architecture's
    mixers; or a plugin reference's (the one it names with `:Object`, else every one it registers)."""
    def of(archs) -> list[str]:
        return list(dict.fromkeys(n for a in archs for n in registry.layers(registry.ARCHITECTURES[a].pattern)))

    if is_reference(target):
        loaded = load(absolute(target))
        if split(target)[1] is not None:
            name = resolve(absolute(target))
            names = [name] if name in registry.MIXERS else of([name])
        else:
            names = list(loaded.mixers) or of(loaded.architectures)
        if not names:
            raise PluginError(f"plugin {loaded.ref} declares no mixer or architecture")
        return [registry.MIXERS[n] for n in names]
    if target in registry.MIXERS or (len(target) == 1 and target.isupper()):
        return [registry.get(target)]
    if target in registry.ARCHITECTURES:
        return [registry.MIXERS[n] for n in of([target])]
    raise PluginError(f"{target!r} is neither a mixer ({', '.join(registry.MIXERS)}), an architecture "
                      f"({', '.join(registry.ARCHITECTURES)}) nor a plugin file or module:Object")
