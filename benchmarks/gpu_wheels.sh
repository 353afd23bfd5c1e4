#!/usr/bin/env bash
# Fill benchmarks/.gpu_wheels/ with the small wheels a bare GPU machine lacks for the GPU check
# (Python 3.12 by default; set PYVER): safetensors (the shipped weights), onnxscript, onnx-ir and
# ml_dtypes (ONNX export). Run it where a package index is reachable and carry the folder to the
# GPU machine with the checkout (about 5 MB); gpu_check.py installs from it offline, never from
# the network. Versions follow pyproject.toml's ranges.
set -euo pipefail
cd "$(dirname "$0")"
PYVER=${PYVER:-3.12}
pip download --quiet --dest .gpu_wheels --only-binary=:all: --no-deps --python-version "$PYVER" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  "safetensors>=0.4,<0.9" "onnxscript>=0.2,<0.8" "onnx-ir>=0.1" "ml_dtypes>=0.5"
du -sh .gpu_wheels
ls .gpu_wheels
