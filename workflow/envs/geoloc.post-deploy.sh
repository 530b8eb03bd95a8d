#!/usr/bin/env bash
# Snakemake runs this inside the freshly created environment: install geoloc from this
# repository (two folders up), its dependencies already come from geoloc.yaml.
set -euo pipefail
python -m pip install --no-deps "$(dirname "$0")/../.."
