#!/usr/bin/env bash
# Fetches, into .whl/ (git-ignored), the wheels that benchmarks/gpu.sh
# needs and the device tool's H200 image lacks (its package list:
# /work/.library/device/KINDS.md): diffusers, ml_collections and
# importlib_metadata, all pure Python. Run here, in the repository root,
# where the package registry is reachable; then name .whl in the device
# call's carry.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  -d .whl diffusers==0.42.1 ml_collections==1.1.0 importlib_metadata==10.2.0
ls -l .whl
