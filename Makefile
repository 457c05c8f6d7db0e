# make run: set up .venv, train on the built-in synthetic data, predict on held-out images.
# make test: set up .venv, run ruff and the whole test suite (what CI runs).
# make test-fast: the inner loop: ruff and every test not marked slow (no end-to-end CLI runs), under a minute.
# make bench: plain vs fast path throughput (training and prediction, 512×512, classic U-Net).
# make isbi: train experiment=isbi on ISBI 2012 slices 0-19, score it on 20-24, overlay the test slices.
# make isbi-classic: the classic recipe on the same slices, scored the same way (about an hour on 2 CPU cores).
# make isbi-long: the preset at twice the width and 1,440 steps (about 36 minutes on 2 CPU cores), scored the same way.
# make bench-memory: peak memory and time of unetseg predict on 1k, 4k and 8k images (8k: ~10+ min on 2 cores).
# make bench-predict: the backends per image, and unetseg predict on the ISBI test slices against a plain loop.
# make bench-train: one epoch of the classic recipe with unetseg train against a plain fp32 loop (ISBI slices).
PYTHON ?= python3
VENV ?= .venv
# This machine has a local CPU wheel of exactly this version; override on a GPU box, e.g. TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.unetseg-installed
HELDOUT := outputs/heldout-synthetic
# ISBI 2012, laid out as docs/isbi.md says (train/image, train/label, test): make isbi ISBI=path/to/isbi2012
ISBI ?= data/isbi2012

.PHONY: install run test test-fast lint bench bench-memory bench-big-data bench-predict bench-train isbi isbi-auto isbi-auto-folds isbi-split isbi-classic isbi-long isbi-data clean

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

test-fast: lint
	$(BIN)/pytest -m "not slow"

bench: install
	$(BIN)/python benchmarks/throughput.py --json outputs/benchmark-throughput.json

bench-memory: install
	$(BIN)/python benchmarks/predict_memory.py --json outputs/benchmark-predict-memory.json

bench-big-data: install
	$(BIN)/python benchmarks/big_data.py --json outputs/benchmark-big-data.json

bench-predict: install isbi-data
	$(BIN)/python benchmarks/backends.py --json outputs/benchmark-backends.json
	$(BIN)/python benchmarks/predict_end_to_end.py --input $(ISBI)/test --also backend=torch \
		--json outputs/benchmark-predict-end-to-end.json

bench-train: install isbi-data
	$(BIN)/python benchmarks/train_end_to_end.py --data $(ISBI)/train --json outputs/benchmark-train-end-to-end.json

# $(call isbi_run,NAME,TRAIN OVERRIDES): train into outputs/isbi/NAME, then evaluate best.pt on slices 20-24
# without and with test-time augmentation (the 4 flips). An earlier run of that name is moved aside to
# outputs/isbi/NAME-<date> (training never starts in a folder that holds a run).
define isbi_run
	if [ -e outputs/isbi/$(1) ]; then mv outputs/isbi/$(1) outputs/isbi/$(1)-$$(date +%Y%m%d-%H%M%S); fi
	$(BIN)/unetseg train $(2) data.root=$(ISBI)/train hydra.run.dir=outputs/isbi/$(1)
	$(BIN)/unetseg evaluate checkpoint=outputs/isbi/$(1)/checkpoints/best.pt data.root=$(ISBI)/train \
		output=outputs/isbi/$(1)/evaluate overwrite=true
	$(BIN)/unetseg evaluate checkpoint=outputs/isbi/$(1)/checkpoints/best.pt data.root=$(ISBI)/train \
		output=outputs/isbi/$(1)/evaluate-flip overwrite=true tta=flip
endef

isbi-data:
	@test -d "$(ISBI)/train" || { echo "no ISBI 2012 data in $(ISBI)/train: get it and lay it out as docs/isbi.md says, then run make $(MAKECMDGOALS) ISBI=path/to/isbi2012" >&2; exit 2; }

isbi: install isbi-data
	$(call isbi_run,preset,experiment=isbi)
	$(BIN)/unetseg predict input=$(ISBI)/test checkpoint=outputs/isbi/preset/checkpoints/best.pt \
		output=outputs/isbi/preset/test save=[mask,overlay] overlay_classes=[membrane] tta=flip overwrite=true

# Slices 0-19 as a folder to train on, 20-24 as one to score on (links to the files, nothing copied).
isbi-split: isbi-data
	rm -rf outputs/isbi/split && mkdir -p outputs/isbi/split/train/image outputs/isbi/split/train/label \
		outputs/isbi/split/test/image outputs/isbi/split/test/label
	for i in $$(seq 0 24); do part=$$([ $$i -lt 20 ] && echo train || echo test); \
		ln -s "$$(realpath $(ISBI)/train/image/$$i.png)" outputs/isbi/split/$$part/image/$$i.png; \
		ln -s "$$(realpath $(ISBI)/train/label/$$i.png)" outputs/isbi/split/$$part/label/$$i.png; done

# The planned recipe on slices 0-19 (it holds out its own validation block, 18-19) within BUDGET, scored on
# slices 20-24, which it never saw: make isbi-auto BUDGET=20m
BUDGET ?= 20m
isbi-auto: install isbi-split
	if [ -e outputs/isbi/auto-$(BUDGET) ]; then mv outputs/isbi/auto-$(BUDGET) outputs/isbi/auto-$(BUDGET)-$$(date +%Y%m%d-%H%M%S); fi
	$(BIN)/unetseg train experiment=auto data.root=outputs/isbi/split/train \
		data.class_names=[membrane,cell] trainer.time_budget=$(BUDGET) hydra.run.dir=outputs/isbi/auto-$(BUDGET)
	for tta in none flip; do $(BIN)/unetseg evaluate checkpoint=outputs/isbi/auto-$(BUDGET)/checkpoints/best.pt \
		input=outputs/isbi/split/test/image labels=outputs/isbi/split/test/label tta=$$tta \
		output=outputs/isbi/auto-$(BUDGET)/evaluate-$$tta overwrite=true; done

# The planned recipe as a 5-fold ensemble on slices 0-19 (each fold validates on its block of 4), FOLD_BUDGET
# per fold, scored on slices 20-24 averaging the five: make isbi-auto-folds FOLD_BUDGET=4m
FOLD_BUDGET ?= 4m
isbi-auto-folds: install isbi-split
	if [ -e outputs/isbi/auto-folds-$(FOLD_BUDGET) ]; then mv outputs/isbi/auto-folds-$(FOLD_BUDGET) outputs/isbi/auto-folds-$(FOLD_BUDGET)-$$(date +%Y%m%d-%H%M%S); fi
	$(BIN)/unetseg train -m experiment=auto data.root=outputs/isbi/split/train data.class_names=[membrane,cell] \
		data.folds=5 data.fold=0,1,2,3,4 trainer.time_budget=$(FOLD_BUDGET) hydra.sweep.dir=outputs/isbi/auto-folds-$(FOLD_BUDGET)
	for tta in none flip; do $(BIN)/unetseg evaluate checkpoint=outputs/isbi/auto-folds-$(FOLD_BUDGET)/ensemble.yaml \
		input=outputs/isbi/split/test/image labels=outputs/isbi/split/test/label tta=$$tta \
		output=outputs/isbi/auto-folds-$(FOLD_BUDGET)/evaluate-$$tta overwrite=true; done

isbi-classic: install isbi-data
	$(call isbi_run,classic,data=isbi)

isbi-long: install isbi-data
	$(call isbi_run,long,experiment=isbi model.base_channels=32 trainer.epochs=72)

clean:
	rm -rf $(VENV) outputs multirun
