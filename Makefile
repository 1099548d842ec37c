# The README's commands. `make demo` and `make test` each do all the set-up they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODELS ?= artifacts/models
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: help setup proto models demo test test-fast bench bench-quick image-test check lint format typecheck imports clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned: any other version (or one pulled in unpinned) is a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py
	$(BIN)/pip install -q torch==2.13.0
	$(MAKE) proto
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed ## virtual environment with serving, build, eval, bench and dev extras

proto: ## generate gRPC code (+ .pyi stubs) from proto/
	@test -x $(BIN)/python -a -n "$$($(BIN)/pip list 2>/dev/null | grep -i grpcio-tools)" || $(BIN)/pip install -q grpcio-tools==1.85.1 mypy-protobuf==5.1.0
	cd proto && PATH="$(abspath $(BIN)):$$PATH" ../$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. \
		--mypy_out=. --mypy_grpc_out=. neuralir/v1/*.proto

models: setup ## export, quantize and verify both models (skips what is current)
	$(BIN)/neuralir models build --out $(MODELS)

demo: models ## build the demo index, start every service, run example queries, stop
	$(BIN)/neuralir demo --models $(MODELS)

test: models ## the whole test suite (slow tests included)
	$(BIN)/python -m pytest -q

test-fast: models ## the test suite without slow tests
	$(BIN)/python -m pytest -q -m "not slow"

bench-quick: models ## every benchmark scenario, briefly (a smoke test)
	$(BIN)/neuralir bench --quick --out artifacts/bench-quick

bench: models ## the full benchmark run; results in benchmarks/results/
	$(BIN)/neuralir bench --out benchmarks/results

# Options after IMAGE_TEST_ARGS=, e.g. "--no-cache" for a cold build (deploy/image-test.sh --help).
image-test: models ## build the image with podman, run it, search it from outside (SKIP: no containers)
	deploy/image-test.sh $(IMAGE_TEST_ARGS)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# mypy and import-linter read the folders through a link tree shaped like the installed
# `neuralir` namespace (built from pyproject's package-dir).
build/tree: setup pyproject.toml
	$(BIN)/python tools/link_tree.py build/tree

typecheck: build/tree
	cd build/tree && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p neuralir

imports: build/tree ## the layering rules (import-linter contracts in pyproject.toml)
	cd build/tree && PYTHONPATH=. ../../$(BIN)/lint-imports --config ../../pyproject.toml --no-cache --no-logo

check: lint typecheck imports ## ruff (lint + format), mypy and the import rules

clean: ## remove built models, indexes and caches (keeps the virtual environment)
	rm -rf artifacts build .pytest_cache .mypy_cache .ruff_cache
