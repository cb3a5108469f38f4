# bixweb: `make run` starts the service, `make test` runs every check.
# Both create .venv and install what they need (PyPI packages into .venv,
# htmx from npm into node_modules). `make test` also installs Debian's
# chromium, nginx (with envsubst from gettext-base) and redis-server with
# apt-get when they are missing, which needs root.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=
APT_PACKAGES := chromium fonts-dejavu-core nginx redis-server gettext-base

.PHONY: run test lint typecheck pytest install install-test system-packages dist clean

run: install                 ## create the venv, install bixweb and htmx, start the server (ARGS="--port 9000 ...")
	BIXWEB_DATA_DIR="$${BIXWEB_DATA_DIR:-$(CURDIR)/data}" $(BIN)/bixweb $(ARGS)

test: install-test lint typecheck pytest   ## install what the tests need and run them all

install: $(VENV)/.installed node_modules/.installed
install-test: $(VENV)/.installed-test node_modules/.installed system-packages

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# exact versions from constraints.txt; pyproject.toml keeps the ranges a package needs
$(VENV)/.installed: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[redis]'
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@ $(VENV)/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

system-packages:             ## Debian packages the tests drive: chromium, nginx, redis-server (root: apt-get)
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing with apt-get (needs root)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# the sdist, then the wheel built from it (so the sdist provably carries everything), refused if the
# wheel lacks a template, a static file, a schema or htmx (python -m bixweb.assets says which)
dist: install                ## build dist/bixweb-*.tar.gz and dist/bixweb-*.whl (pip install dist/bixweb-*.whl)
	$(BIN)/pip install --quiet -c constraints.txt build
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/python -m bixweb.assets dist/*.whl || { rm -rf dist; exit 1; }

lint:                        ## ruff's lint rules and its formatting (`ruff format bixweb tests` applies it)
	$(BIN)/ruff check bixweb tests
	$(BIN)/ruff format --check bixweb tests

typecheck:
	$(BIN)/mypy

pytest:                      ## one process: timing-bound tests must not share the 2 cores (pytest -n 2 works for a quick look)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) node_modules *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts build dist
