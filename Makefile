# cogmap-lab: every stage of the lab is a target. `make help` lists them.
# Settings: PRESET=smoke|small|<configs/NAME.toml>, MODEL="transformer lstm", TASK=<name>,
# SEED="0 1", ARGS="--set train.steps=100" (passed to the stage's command line).

PRESET ?= small
PYTHON ?= python3.11
EXTRAS ?= dev
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

SELECT = $(foreach m,$(MODEL),--model $(m)) $(foreach s,$(SEED),--seed $(s))

.DEFAULT_GOAL := help
.PHONY: help install train probe figures paper test test-slow test-gpu bench lint clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: ## Create .venv and install the lab with its dev extras (EXTRAS=dev,gpu on a GPU machine)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"

train: ## Train the preset's models (resumes runs that exist): PRESET, MODEL, TASK, SEED, ARGS
	$(PY) -m models.train --preset $(PRESET) --resume $(SELECT) $(if $(TASK),--task $(TASK)) $(ARGS)

probe: ## Cache activations on held-out environments and probe every layer
	$(PY) -m probes.run --preset $(PRESET) $(SELECT) $(ARGS)

figures: ## Draw the paper figures (PNG + PDF) under runs/<experiment>/figures/
	$(PY) -m analysis.figures --preset $(PRESET) $(ARGS)

paper: ## train -> probe -> figures on PRESET (small: a few minutes on CPU)
	$(MAKE) train probe figures PRESET=$(PRESET)

test: ## Fast test suite (CPU, a few minutes)
	$(PY) -m pytest

test-slow: ## Tests marked slow (longer training runs)
	$(PY) -m pytest -m slow

test-gpu: ## Tests that need CUDA (skipped without a GPU)
	$(PY) -m pytest -m gpu -rs

bench: ## Speed benchmarks: every benchmarks/bench_*.py, printed as tables
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

lint: ## ruff
	$(VENV)/bin/ruff check .

clean: ## Delete runs/ outputs and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
