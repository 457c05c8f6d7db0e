# make run: set up .venv, train on the built-in synthetic data, predict on held-out images.
# make test: set up .venv, run ruff and the whole test suite.
# make bench: plain vs fast path throughput (training and prediction, 512×512, classic U-Net).
# make bench-memory: peak memory and time of unetseg predict on 1k, 4k and 8k images (8k: ~10+ min on 2 cores).
PYTHON ?= python3
VENV ?= .venv
# This machine has a local CPU wheel of exactly this version; override on a GPU box, e.g. TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.unetseg-installed
HELDOUT := outputs/heldout-synthetic

.PHONY: install run test lint bench bench-memory clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

run: install
	$(BIN)/unetseg train experiment=quickstart
	rm -rf $(HELDOUT)
	$(BIN)/unetseg synthesize output=$(HELDOUT) count=8 seed=1000
	$(BIN)/unetseg predict input=$(HELDOUT)/image

lint: install
	$(BIN)/ruff check src tests benchmarks

test: lint
	$(BIN)/pytest

bench: install
	$(BIN)/python benchmarks/throughput.py --json outputs/benchmark-throughput.json

bench-memory: install
	$(BIN)/python benchmarks/predict_memory.py --json outputs/benchmark-predict-memory.json

clean:
	rm -rf $(VENV) outputs multirun
