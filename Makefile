# weldray: `make run` (the pipeline) and `make test` (the default suite) do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?=
ARGS ?=
PYTEST_ARGS ?=
# Re-install whenever pyproject.toml changes.
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)

.PHONY: install run test test-slow test-all lint bench help

help:
	@echo "make run [DATA=path|s3://...] [ARGS='key=value ...']  the pipeline, locally on Ray"
	@echo "make test                                            default test suite (< 20 min on 2 cores)"
	@echo "make test-slow                                       slow tests (minutes each)"
	@echo "make bench                                           benchmarks (print tables)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

run: install
	$(BIN)/python jobs/pipeline.py $(DATA) $(ARGS)

test: install
	$(BIN)/python -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check weldray jobs serve tests benchmarks
