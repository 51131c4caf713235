# The README's commands. Each creates its venv with the project's own files only, and installs
# the exact versions of requirements*.txt, the lock of the tested dependency set.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := -m pip install --quiet --disable-pip-version-check
OUT    ?= runs/quick
LATEST ?= .venv-latest

.PHONY: demo test test-slow test-all test-latest lock setup clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# The lock is used as a constraints file: every package pip installs gets the lock's version.
# torch is the exception: pyproject.toml pins it exactly (torch==2.13.0), which takes the CPU
# build where one is on offer and leaves a CUDA build of the same release in place (README:
# Installing for a GPU). The build backend comes from the lock too, so the package builds without
# an isolated environment that would fetch the newest setuptools.
define install_locked
	$(1) $(PIP) -c $(2) setuptools
	$(1) $(PIP) -c $(2) --no-build-isolation -e "$(3)"
endef

$(VENV)/.installed: pyproject.toml requirements.txt | $(PY)
	$(call install_locked,$(PY),requirements.txt,.)
	touch $@

$(VENV)/.installed-test: pyproject.toml requirements-test.txt | $(PY)
	$(call install_locked,$(PY),requirements-test.txt,.[test])
	touch $@ $(VENV)/.installed

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/longarch run quick --out $(OUT)

# What guards correctness, in a few minutes; `make test-slow` runs the tests marked slow.
test: $(VENV)/.installed-test
	$(PY) -m pytest -m "not slow"

test-slow: $(VENV)/.installed-test
	$(PY) -m pytest -m slow

# Everything, as CI runs it.
test-all: $(VENV)/.installed-test
	$(PY) -m pytest

# The newest releases pyproject.toml allows, in a venv of their own, against the whole suite:
# run it before `make lock`, and now and then to learn of a release that breaks longarch before
# its users do. It prints which versions differ from the lock.
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python $(PIP) --upgrade --upgrade-strategy eager -e ".[test]"
	@echo "Installed versions that differ from requirements-test.txt:"
	@diff <(grep -E '^[A-Za-z0-9]' requirements-test.txt | tr 'A-Z_' 'a-z-' | grep -v '^setuptools==\|^torch==' | sort) \
	      <($(LATEST)/bin/python -m pip freeze --exclude-editable | tr 'A-Z_' 'a-z-' | grep -v '^torch==' | sort) \
	  | sed -n 's/^</  lock:     /p; s/^>/  installed:/p' || true
	LONGARCH_UNLOCKED=1 $(LATEST)/bin/python -m pytest

# Regenerate the lock from pyproject.toml at the newest allowed versions (pip-tools, in a venv
# of its own). requirements-test.txt is resolved first; requirements.txt (runtime) and
# requirements-ray.txt take its versions. pip-compile
# leaves torch out (its wheels on PyPI would drag CUDA packages into the lock); its exact pin from
# pyproject.toml is appended to each file, so that the lock names every package installed.
LOCK_TOOL := .venv-lock
TORCH_PIN := $(shell grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
COMPILE   := CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_TOOL)/bin/pip-compile --quiet --upgrade --all-build-deps --strip-extras --no-emit-find-links \
             --no-emit-index-url --unsafe-package torch
lock:
	test -x $(LOCK_TOOL)/bin/pip-compile || ($(PYTHON) -m venv $(LOCK_TOOL) && $(LOCK_TOOL)/bin/python $(PIP) pip-tools==7.7.0)
	$(COMPILE) --extra test -o requirements-test.txt pyproject.toml
	$(COMPILE) -c requirements-test.txt -o requirements.txt pyproject.toml
	$(COMPILE) -c requirements-test.txt --extra ray -o requirements-ray.txt pyproject.toml
	for lock in requirements-test requirements requirements-ray; do printf '%s\n    # pinned by pyproject.toml (a CUDA build of the same release satisfies it)\n' \
	  "$(TORCH_PIN)" >> $$lock.txt; done

clean:
	rm -rf $(VENV) $(LATEST) $(LOCK_TOOL) runs build src/*.egg-info
