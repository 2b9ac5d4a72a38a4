#!/usr/bin/env bash
# Run by Snakemake once, inside a new conda environment made from nanogpt.yaml: adds this checkout's `nanogpt`
# package (editable, so the environment follows the checkout). The Snakefile exports NANOGPT_SOURCE_DIR.
set -euo pipefail
python -m pip install --no-deps -e "${NANOGPT_SOURCE_DIR:?expected the repository folder, set by the Snakefile}"
