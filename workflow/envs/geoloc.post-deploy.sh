#!/usr/bin/env bash
# Snakemake runs this inside the freshly created environment: install the geoloc package, whose
# dependencies come from geoloc.yaml, in editable mode, so the jobs import the workflow's own
# src/geoloc and an edit reaches the environment without recreating it. Snakemake runs a copy of
# this file from the conda prefix (--conda-prefix puts it anywhere), so the source is found
# through GEOLOC_SOURCE, which workflow/rules/common.smk sets to the workflow's own repository.
set -euo pipefail
python -m pip install --no-deps --no-build-isolation --editable "${GEOLOC_SOURCE:?GEOLOC_SOURCE is set by workflow/rules/common.smk}"
