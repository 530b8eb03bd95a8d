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

demo: $(STAMP)
	$(BIN)/snakemake --profile profiles/demo

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/snakefmt --check workflow
	$(BIN)/snakemake --lint --configfile config/demo.yaml

clean:
	rm -rf results .snakemake
