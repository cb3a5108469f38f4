# bixweb: `make run` starts the service, `make test` runs every check.
# Both create .venv and install what they need; neither needs root yet.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=

.PHONY: run test lint typecheck pytest install install-test clean

run: install                 ## create the venv, install bixweb, start the server (ARGS="--port 9000 ...")
	$(BIN)/python -m bixweb $(ARGS)

test: install-test lint typecheck pytest   ## install what the tests need and run them all

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

lint:
	$(BIN)/ruff check bixweb tests

typecheck:
	$(BIN)/mypy

pytest:
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
