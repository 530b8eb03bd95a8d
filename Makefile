# Two entry points for people: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Every package of the venv, pinned with its hashes (torch==2.14.1 and torchvision==0.29.1 included);
# `make lock` writes it again from pyproject.toml and requirements/venv.in.
LOCK := requirements/venv.txt
STAMP := $(VENV)/.installed
PIP_COMPILE := /tmp/geoloc-pip-tools/bin/pip-compile

.PHONY: demo test lint clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The lock first, then the project itself, editable and without dependencies (the lock holds them
# all, setuptools too): the jobs run this checkout's src/geoloc, never a copy.
$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# pip-tools lives outside the venv, so the lock does not pin the tool that writes it.
$(PIP_COMPILE):
	$(PYTHON) -m venv /tmp/geoloc-pip-tools
	/tmp/geoloc-pip-tools/bin/pip install --quiet pip-tools

lock: $(PIP_COMPILE)
	$(PIP_COMPILE) --quiet --generate-hashes --allow-unsafe --strip-extras --extra workflow --extra dev \
		--no-emit-index-url --no-emit-find-links -o $(LOCK) pyproject.toml requirements/venv.in

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
