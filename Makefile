# cogmap-lab: every stage of the lab is a target. `make help` lists them.
# Settings: PRESET=smoke|small|full|<configs/NAME.toml>, STUDY=<name>, MODEL="transformer lstm",
# TASK=<name>, SEED="0 1", ARGS="--set train.steps=100" (reach every stage alike);
# GRID="train.lr=[1e-3,3e-3]" adds hyper-parameter axes to sweep and paper.

PRESET ?= small
PYTHON ?= python3.11
EXTRAS ?= dev
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

SELECT = --preset $(PRESET) $(foreach s,$(STUDY),--study $(s)) $(foreach m,$(MODEL),--model $(m)) \
	$(foreach t,$(TASK),--task $(t)) $(foreach s,$(SEED),--seed $(s)) $(ARGS)
GRID_AXES = $(foreach g,$(GRID),--grid $(g))
STUDIES = $(PY) -m studies

.DEFAULT_GOAL := help
.PHONY: help install plan train probe census analyze causal tables figures paper sweep test \
	test-slow test-gpu bench lint clean notebooks

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: ## Create .venv and install the lab with its dev extras (EXTRAS=dev,gpu on a GPU machine)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"

plan: ## List the runs the preset (and STUDY, MODEL, TASK, SEED) asks for
	$(STUDIES) plan $(SELECT)

train: ## Train the selected runs (runs that exist are resumed, finished ones skipped)
	$(STUDIES) train $(SELECT)

probe: ## Cache activations on held-out environments; decode every declared target by depth
	$(STUDIES) probe $(SELECT)

census: ## Score every unit (place, grid, border, time, ramp, splitter...) against shuffle nulls
	$(STUDIES) census $(SELECT)

analyze: ## The studies' own analyses (memory agents, RSA against the SR, belief simplex...)
	$(STUDIES) analyze $(SELECT)

causal: ## Ablate labelled populations (vs random/matched units); steer along probe directions
	$(STUDIES) causal $(SELECT)

tables: ## Gather every finished run into runs/<experiment>/results/*.csv
	$(STUDIES) tables $(SELECT)

figures: ## Tables, then one paper figure per study (PNG + PDF) in runs/<experiment>/figures/
	$(STUDIES) figures $(SELECT)

paper: ## Every stage for every selected study, runs side by side on Ray (ARGS=--serial: one by one)
	$(STUDIES) paper $(SELECT) $(GRID_AXES)

sweep: ## The same, at every point of GRID="key=[v1,v2] ..." and the preset's [sweep] grid
	$(STUDIES) sweep $(SELECT) $(GRID_AXES)

test: ## Fast test suite (CPU, a few minutes)
	$(PY) -m pytest

test-slow: ## Tests marked slow (longer training runs)
	$(PY) -m pytest -m slow

test-gpu: ## On a GPU machine, in under 3 min: Mamba's GPU scans, fallbacks, a CUDA training run; the GPU analysis
	@$(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'test-gpu: torch sees no CUDA device')"
	@echo "== the Triton scan's tests, compiled on CUDA (limit 60 s)"
	timeout 60 $(PY) -m pytest -q -rs --durations=3 tests/test_mamba.py -k "(triton or initial_state) and not compile_for_the_gpu"
	@echo "== CUDA-marked Mamba tests: scans vs reference, fallback, models.train with scan=auto (limit 90 s)"
	timeout 90 $(PY) -m pytest -m gpu -q -rs --durations=5 tests/test_mamba.py
	@echo "== the other CUDA-marked tests (limit 30 s)"
	timeout 30 $(PY) -m pytest -m gpu -q -rs --durations=3 --ignore=tests/test_mamba.py

notebooks: ## Generate notebooks/*.ipynb from their jupytext sources and execute them (smoke preset)
	$(VENV)/bin/jupytext --to ipynb notebooks/[0-9][0-9]_*.py
	$(VENV)/bin/jupyter-execute --inplace notebooks/[0-9][0-9]_*.ipynb

bench: ## Speed benchmarks: every benchmarks/bench_*.py, printed as tables
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

lint: ## ruff
	$(VENV)/bin/ruff check .

clean: ## Delete runs/ outputs and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
