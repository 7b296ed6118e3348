# Two entry points for a fresh machine: `make demo` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the package metadata changes; the editable install picks up code edits.
# PYTHONWARNINGS silences setuptools' notice about editable installs, which asks nothing of the user.
$(STAMP): pyproject.toml | $(BIN)/python
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/retinaslim demo --out demo

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) demo runs .pytest_cache
