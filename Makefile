# The two commands of the README: `make train` (the default run) and `make test` (what CI runs,
# with `make lint`). Each creates .venv and installs the project into it on first use.
# `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help train test test-fast lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /\1\t/'

train: $(VENV)/.installed  ## the default training run; pass Hydra overrides as ARGS="..."
	$(PY) experiments/train.py $(ARGS)

test: $(VENV)/.installed  ## the whole test suite, as CI runs it: no network, no GPU
	$(PY) -m pytest -q $(ARGS)

test-fast: $(VENV)/.installed  ## the tests not marked slow (no subprocess runs, kills, bench), 2 workers: under a minute
	$(PY) -m pytest -q -m "not slow" -n 2 $(ARGS)

lint: $(VENV)/.installed  ## ruff, as CI runs it
	$(VENV)/bin/ruff check .

clean:  ## remove outputs/, multirun/ and pytest's cache
	rm -rf outputs multirun .pytest_cache
