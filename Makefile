# dsnn: `make run` trains, attacks and reports the default model; `make test` runs the fast tests.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
EPS ?= 0.3
MINUTES ?= 24
# One run directory per `make run`, named to the microsecond.
RUN_DIR := outputs/runs/make-run/$(shell date +%Y-%m-%d_%H-%M-%S-%N)

.DEFAULT_GOAL := help
.PHONY: help install run test test-all lint format docs bench bench-budget bench-peers smoke clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/dsnn: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,docs]'
	@touch $@

install: $(BIN)/dsnn ## create .venv and install dsnn with its test and docs tools

run: $(BIN)/dsnn ## train the default model for MINUTES (24), attack it at EPS (0.3), report (ARGS=overrides)
	$(BIN)/dsnn train hydra.run.dir=$(RUN_DIR) trainer.max_minutes=$(MINUTES) $(ARGS)
	$(BIN)/dsnn attack run=$(RUN_DIR) eps=$(EPS)
	$(BIN)/dsnn report dir=$(RUN_DIR)

test: $(BIN)/dsnn ## layer contracts, the docs build, then the fast test suite (what CI runs)
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	$(BIN)/python -m pytest -m "not slow" -q -n auto --dist loadfile --durations=15

test-all: $(BIN)/dsnn ## every test, slow ones included
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=15

docs: $(BIN)/dsnn ## the documentation site into site/ (mkdocs build --strict: broken links fail)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

smoke: $(BIN)/dsnn ## a CPU smoke run on synthetic data
	$(BIN)/dsnn train data=synthetic debug=smoke hydra.run.dir=$(RUN_DIR)
	$(BIN)/dsnn attack run=$(RUN_DIR) debug=smoke

lint: $(BIN)/dsnn ## ruff lint and format check, layer contracts
	$(BIN)/lint-imports
	$(BIN)/ruff check dsnn_cli tests benchmarks hydra_plugins
	$(BIN)/ruff format --check dsnn_cli tests benchmarks hydra_plugins

format: $(BIN)/dsnn ## ruff format and autofix
	$(BIN)/ruff format dsnn_cli tests benchmarks hydra_plugins
	$(BIN)/ruff check --fix dsnn_cli tests benchmarks hydra_plugins

bench: $(BIN)/dsnn ## speed benchmarks (ratios against a baseline in the same process; share of the matmul peak)
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_peak.py

bench-budget: $(BIN)/dsnn ## accuracy per CPU-minute: each recipe for BUDGET_MINUTES (3) on ROOT (a CIFAR-10 copy); BENCH_ARGS="--set all"
	$(BIN)/python benchmarks/bench_budget.py --minutes $(or $(BUDGET_MINUTES),3) $(if $(ROOT),--root $(ROOT)) $(BENCH_ARGS)

bench-peers: $(BIN)/dsnn ## the field's layers (AOL, SLL, CPL, SOC, BRO, Cayley) beside ours, BUDGET_MINUTES (4) each on ROOT; BENCH_ARGS="--test --test-pgd 1000 --out DIR" for the final table (rerun the same command to go on after a kill)
	$(BIN)/python benchmarks/bench_budget.py --set peers --minutes $(or $(BUDGET_MINUTES),4) --pgd 500 $(if $(ROOT),--root $(ROOT)) $(BENCH_ARGS)

clean: ## remove caches (keeps .venv and outputs/)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
