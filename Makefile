# The two commands of the README. Both create .venv with the project's own files only.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
OUT    ?= runs/quick

.PHONY: demo test setup clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# The package and its runtime dependencies (torch pinned to a CPU-friendly release).
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $@

# The same plus the test extras.
$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/longarch run quick --out $(OUT)

test: $(VENV)/.installed-test
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs build src/*.egg-info
