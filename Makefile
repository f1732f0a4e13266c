# tripletlab: `make run` trains the default run, `make test` runs the test suite.
# Both do the whole set-up first (venv, package, data); a second call redoes nothing.
SHELL := /bin/bash
PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# TensorFlow build: the CUDA one where nvidia-smi sees a GPU, the CPU one elsewhere.
TF_EXTRA ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
TEST_EXTRAS := dev,joblib,optuna,slurm,mlflow,onnx,index
# `make run` installs what running needs; `make test` adds the test tools and the launchers
# and sweeper the tests use. One stamp each, so that neither reinstalls when nothing changed.
STAMP := $(VENV)/.installed-$(TF_EXTRA)
TEST_STAMP := $(VENV)/.installed-$(TF_EXTRA)-test
DATASET ?= fashion_mnist
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup setup-test data run test test-fast test-slow test-example docs sweep bench mutate lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON_SYS) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(TF_EXTRA)]"
	rm -f $(VENV)/.installed-*
	touch $@

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[$(TF_EXTRA),$(TEST_EXTRAS)]"
	touch $@

setup: $(STAMP) ## create .venv and install the package (TensorFlow CPU or CUDA build)

setup-test: $(TEST_STAMP) ## setup, plus pytest, ruff, and the joblib, Optuna and Slurm plugins

data: setup ## make sure Fashion-MNIST is present (Debian package, else the official download)
	@if ! $(VENV)/bin/tripletlab-fetch --no-download $(DATASET) 2>/dev/null; then \
	  if [ "$(DATASET)" = fashion_mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's dataset-fashion-mnist"; \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || true; \
	  fi; \
	  $(VENV)/bin/tripletlab-fetch $(DATASET); \
	fi

run: data ## train the default run (Fashion-MNIST, small CNN, semi-hard); ARGS="..." adds overrides
	$(PY) run.py $(ARGS)

test: setup-test data ## the whole default test suite on 2 workers (fast; slow tests are excluded)
	$(PY) -m pytest $(ARGS)

test-fast: setup-test data ## the unit tests only: no end-to-end runs (marker e2e), no slow ones
	$(PY) -m pytest -m "not slow and not e2e" $(ARGS)

# test-slow and test-example run in one process (-n 0 over addopts' -n 2): the plugin example
# installs into this venv, which a test on another worker would see, and a slow test times
# a stopped worker against a heartbeat timeout.
test-slow: setup-test data ## only the slow tests (full datasets, long runs)
	$(PY) -m pytest -m slow -n 0 $(ARGS)

test-example: setup-test data ## the worked plugin example: installed, swept, benched, uninstalled (CI runs it)
	$(PY) -m pytest -m slow -n 0 tests/test_plugin_example.py $(ARGS)

docs: setup ## regenerate docs/configuration.md, then build the documentation into site/ (warnings fail)
	$(PY) -m pip install -q -e ".[$(TF_EXTRA),docs]"
	$(PY) -m tripletlab.config_reference
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

sweep: data ## the models x mining grid, then summary.csv; ARGS="..." adds overrides
	./sweep.sh $(ARGS)

bench: setup ## loss and training benchmarks (prints tables, writes CSVs under outputs/bench)
	$(PY) -m tripletlab.bench losses
	$(PY) -m tripletlab.bench train

mutate: setup-test ## mutation testing of one module: MODULE=tripletlab/x.py [TESTS=".."] [SAMPLE=N SEED=0] [REF=HEAD]
	@test -n "$(MODULE)" || { echo "usage: make mutate MODULE=tripletlab/x.py"; exit 2; }
	$(PY) scripts/mutate.py $(MODULE) --tests "$(TESTS)" --sample $(or $(SAMPLE),0) --seed $(or $(SEED),0) --ref "$(REF)" --pytest-args "$(PYTEST_ARGS)"

lint: setup-test ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup-test ## ruff format and fix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean: ## remove the venv and caches (keeps outputs/)
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
