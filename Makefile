# Caliber: `make run` (embedded app with demo data) and `make test` (the whole suite).
SHELL := /bin/bash
PORT ?= 8000
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench bench-peers chromium clean

$(PY):
	@PYBIN=$$(scripts/find-python) || exit 1; \
	echo "Creating $(VENV) with $$PYBIN"; \
	"$$PYBIN" -m venv $(VENV)

$(STAMP): pyproject.toml caliber_client/pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet -e ./caliber_client
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo
	PORT=$(PORT) $(PY) manage.py serve

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "Installing Debian's chromium for the browser tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy .

pytest: $(STAMP) chromium
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# BENCH: module names (e2e policy ...); BENCH_WORKERS x BENCH_CONCURRENCY: worker processes
# x prefork children; BENCH_REPEAT: repetitions (medians reported).
BENCH_WORKERS ?= 1
BENCH_CONCURRENCY ?= 2
BENCH_REPEAT ?= 3
BENCH_ARGS = --workers $(BENCH_WORKERS) --concurrency $(BENCH_CONCURRENCY) --repeat $(BENCH_REPEAT)
PEERS_STAMP := $(VENV)/.peers-installed

bench: $(STAMP)
	scripts/ensure-services
	$(PY) -m bench $(BENCH_ARGS) $(BENCH)

# The peer comparison's LangGraph is an optional extra, installed only here.
$(PEERS_STAMP): pyproject.toml | $(STAMP)
	$(PY) -m pip install --quiet -e '.[peers]'
	@touch $(PEERS_STAMP)

bench-peers: $(STAMP) $(PEERS_STAMP)
	scripts/ensure-services
	$(PY) -m bench.peers $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
