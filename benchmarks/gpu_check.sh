#!/usr/bin/env bash
# The GPU check (see benchmarks/gpu_check.py): one command, from a checkout, installed or not.
#   bash benchmarks/gpu_check.sh                     # on a CUDA machine
#   bash benchmarks/gpu_check.sh --dry-run --out DIR # the same code on the CPU, small models
# Exits with the check's own code: nonzero when any part failed (skips are not failures).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
