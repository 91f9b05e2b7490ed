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

.PHONY: install browser run test test-slow test-all lint bench textseg-weights help

help:
	@echo "make run [DATA=path|s3://...] [ARGS='key=value ...']  the pipeline, locally on Ray"
	@echo "make test                                            default test suite (< 20 min on 2 cores)"
	@echo "make test-slow                                       slow tests (minutes each)"
	@echo "make bench                                           benchmarks (print tables)"
	@echo "make textseg-weights                                 retrain the shipped text segmenter (~25 min)"
	@echo "make cluster-up / cluster-status / cluster-down      local two-node Ray cluster (token auth)"
	@echo "make submit [DATA=...] [ARGS='key=value ...']        the pipeline as a Ray job on that cluster"
	@echo "make cluster-test                                    cluster configs + real two-node cluster tests"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

run: install
	$(BIN)/python jobs/pipeline.py $(DATA) $(ARGS)

test: install browser
	$(BIN)/python -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)

# Headless Chromium + its driver for the web inspector's browser test (Debian packages; the test skips,
# saying why, where they cannot be installed).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
	  echo "chromium not installed: the web inspector's browser test will be skipped"

test-slow: install
	$(BIN)/python -m pytest -m "slow and not gpu" --timeout 1800 $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest --timeout 1800 $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check weldray jobs tests benchmarks

# The text segmenter's weights: procedural text on procedural welds and, with ARGS=--backgrounds=DIR (as the shipped
# weights were trained), on text-free crops of real photos (docs/text_removal.md).
textseg-weights: install
	$(BIN)/weldray train-segmenter weldray/text_removal/weights/textseg.pt $(ARGS)

# Every benchmark in turn; each prints a table (run on a quiet machine: they measure wall time).
bench: clean-text-bench train-bench bench-generate bench-inference bench-serve bench-chaos bench-chaos-pipeline

# ----- Ray cluster (cluster/README.md) -------------------------------------------------------------
# A head + worker node on this machine, ports CLUSTER_PORT..CLUSTER_PORT+99, token in CLUSTER_DIR/auth_token.
CLUSTER_DIR ?= /tmp/weldray-cluster
CLUSTER_PORT ?= 26400
CLUSTER_ENV := WELDRAY_CLUSTER_DIR=$(CLUSTER_DIR)

.PHONY: cluster-up cluster-down cluster-status cluster-test submit

cluster-up: install
	$(CLUSTER_ENV) $(BIN)/weldray cluster up --port-base $(CLUSTER_PORT)

cluster-status: install
	$(CLUSTER_ENV) $(BIN)/weldray cluster status

cluster-down: install
	$(CLUSTER_ENV) $(BIN)/weldray cluster down

# Results land in ./outputs (both local nodes share this filesystem).
submit: install
	$(CLUSTER_ENV) $(BIN)/weldray submit --output-dir outputs $(DATA) $(ARGS)

cluster-test: install
	$(BIN)/python -m pytest tests/cluster -m "not gpu" $(PYTEST_ARGS)

# Training.
.PHONY: train cv ablation train-bench
train: install
	$(BIN)/weldray train $(or $(DATA),../shared/data/welds) $(ARGS)

cv: install
	$(BIN)/weldray cv $(or $(DATA),../shared/data/welds) $(ARGS)

# Recipe ablation table by 5-fold group CV (in-process, 3-10 min per recipe and fold on 2 cores, so every
# recipe takes hours: choose with ARGS='--recipes default,weight_ema'; resumes if interrupted).
ablation: install
	$(BIN)/python benchmarks/ablation.py $(or $(DATA),../shared/data/welds) $(ARGS)

train-bench: install
	$(BIN)/python benchmarks/train_throughput.py $(ARGS)

# Export and serving. RUN=outputs/runs/<run_id>; MODEL defaults to the export's output.
RUN ?=
MODEL ?= models/onnx/weld_classifier.onnx
.PHONY: export serve bench-inference bench-serve bench-chaos bench-chaos-pipeline bench-generate
export: install
	$(BIN)/weldray export $(RUN) export.check_images=$(or $(DATA),../shared/data/welds) $(ARGS)

serve: install
	$(BIN)/weldray serve $(MODEL) $(ARGS)

bench-inference: install
	$(BIN)/python benchmarks/inference.py $(ARGS)

bench-serve: install
	$(BIN)/python benchmarks/serve_load.py $(ARGS)

# Faults under load (replica SIGKILL / ray.kill, SIGTERM of weldray serve): a few minutes, 127.0.0.1 only.
bench-chaos: install
	$(BIN)/python benchmarks/chaos_serve.py $(ARGS)

bench-chaos-pipeline: install
	$(BIN)/python benchmarks/chaos_pipeline.py $(ARGS)

# Synthetic generation, Ray Data job vs a plain loop (ARGS=--tiny-sdxl: sdxl_turbo with tiny random models).
bench-generate: install
	PYTHONPATH=. $(BIN)/python benchmarks/generate_throughput.py $(ARGS)

# Text removal. OUT defaults to outputs/welds_clean.
OUT ?= outputs/welds_clean
.PHONY: clean-text clean-text-bench
clean-text: install
	$(BIN)/weldray clean $(or $(DATA),../shared/data/welds) $(OUT) $(ARGS)

clean-text-bench: install
	$(BIN)/python benchmarks/text_removal.py --n 24 --procedural 16 $(ARGS)
