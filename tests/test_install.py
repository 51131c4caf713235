"""The install: every dependency pyproject.toml declares is importable here in its declared range
(a missing one fails the suite instead of skipping tests), and the committed lock
(requirements*.txt, `make lock`) pins each of them inside that range, one version per package
across the three files."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCKS = {"runtime": [], "test": ["test"], "ray": ["ray"]}
FILES = {"runtime": "requirements.txt", "test": "requirements-test.txt", "ray": "requirements-ray.txt"}  # the lock


def declared(extras: list[str]) -> list[Requirement]:
    lines = PROJECT["dependencies"] + [r for extra in extras for r in PROJECT["optional-dependencies"][extra]]
    return [Requirement(line) for line in lines]


def pins(lock: str) -> dict[str, str]:
    """name -> version of every `name==version` line of the lock's file (FILES)."""
    out = {}
    for line in (ROOT / FILES[lock]).read_text().splitlines():
        if line and not line.startswith((" ", "#", "-")):
            name, version = line.split("==")
            out[canonicalize_name(name)] = version.strip()
    return out


@pytest.mark.parametrize("requirement", declared(["test"]), ids=str)
def test_every_declared_dependency_is_installed_in_its_range(requirement):
    version = metadata.version(requirement.name)  # PackageNotFoundError: the install is broken
    assert requirement.specifier.contains(version, prereleases=True), (requirement, version)


@pytest.mark.parametrize("lock, extras", LOCKS.items())
def test_the_lock_pins_every_declared_dependency_in_its_range(lock, extras):
    pinned = pins(lock)
    for requirement in declared(extras):
        name = canonicalize_name(requirement.name)
        if name == "torch":  # pinned exactly by pyproject.toml itself, so a CUDA build can stand in
            assert str(requirement.specifier) == f"=={pinned.get(name)}", (lock, requirement, pinned.get(name))
            continue
        assert name in pinned, f"{name} is missing from {FILES[lock]}: run `make lock`"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (lock, requirement, pinned[name])
    assert "setuptools" in pinned  # the build backend, installed before the package


def test_the_locks_agree_on_every_shared_package():
    test = pins("test")
    for lock in ("runtime", "ray"):
        differ = {n: (v, test.get(n)) for n, v in pins(lock).items() if test.get(n, v) != v}
        assert not differ, f"{FILES[lock]} and {FILES['test']} differ: {differ}"


@pytest.mark.skipif(os.environ.get("LONGARCH_UNLOCKED") == "1", reason="`make test-latest` installs the newest releases")
def test_what_is_installed_is_the_lock():
    """`make test` installs from requirements-test.txt: every package of the lock at its locked
    version (a local build label such as torch's +cpu aside), and nothing the lock leaves out
    but pip and longarch itself. Read from the environment's site-packages only: Ray, once
    imported, puts its vendored copies (psutil, colorama) on sys.path."""
    locked = pins("test")
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    installed = {canonicalize_name(d.metadata["Name"]): d.version.split("+")[0]
                 for d in metadata.distributions(path=site)}
    assert {n: v for n, v in locked.items() if installed.get(n) != v} == {}
    assert set(installed) - set(locked) - {"pip", "longarch"} == set()
