# Two entry points for people: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Installed before the project so pip takes these builds (they lie on the build machines' disk).
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[workflow,dev]'
	touch $(STAMP)

# Rules call the `geoloc` command: the venv's bin must be on PATH for them.
demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --profile profiles/demo

# pytest-xdist: one worker per logical CPU (at most 4), each test file on one worker (its module fixtures run once).
test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest -n logical --maxprocesses=4 --dist loadfile --durations=30 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check workflow
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/snakemake --lint --profile profiles/demo

clean:
	rm -rf results .snakemake
