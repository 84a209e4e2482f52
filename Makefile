# The two commands of the README: `make train` (the default run) and `make test`.
# Each creates .venv and installs the project into it on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: train test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

train: $(VENV)/.installed  ## the default training run; pass Hydra overrides as ARGS="..."
	$(PY) experiments/train.py $(ARGS)

test: $(VENV)/.installed  ## the test suite: no network, no GPU, a few minutes
	$(PY) -m pytest -q $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

clean:
	rm -rf outputs multirun .pytest_cache
