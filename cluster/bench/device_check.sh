#!/usr/bin/env bash
# The GPU check as one command on a lent GPU machine (docs/benchmarks.md, "GPU check").
#
#   here, once, with a network:  bash cluster/bench/device_check.sh --fetch-wheels
#   on the GPU machine:          bash cluster/bench/device_check.sh OUT_DIR [gpu-check options]
#
# The GPU machine has torch, transformers, accelerate, safetensors, tokenizers and numpy, and no
# network. What else the check imports is pydantic (the request core's configs) and its
# dependencies: their wheels, for that machine's Python 3.12 on x86-64 Linux, are fetched here into
# .device-wheels/ (git-ignored; the device run carries it), installed there into a fresh folder,
# and the check runs with that folder and the repository on PYTHONPATH. Ray, FastAPI, httpx, pyarrow
# and flash-attn are not needed. The results (gpu-check.json, gpu-check.md, gpu-check.log) go to
# OUT_DIR, and are written after every model, so a run cut short still leaves what it measured.
#
# Overridable: PYTHON (default python3), WHEELS (default .device-wheels), SITE (the install folder,
# default $TMPDIR/gpu-check-site, emptied first; outside OUT_DIR, which the device tool sends back), GPU_CHECK_TIMEOUT (seconds, default 540: the check budgets
# 420 s for itself and stops cleanly; this is the hard stop, short enough that a machine lent for
# 15 minutes has room for a second try, e.g. with --models gemma or --attention sdpa,eager).
set -euo pipefail
here=$PWD
repo=$(cd "$(dirname "$0")/../.." && pwd)
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$here/$1" ;; esac; }  # paths as the caller meant them
PYTHON=${PYTHON:-python3}
WHEELS=$(absolute "${WHEELS:-$repo/.device-wheels}")
cd "$repo"

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  # the pydantic this checkout is tested with, built for the GPU machine's CPython 3.12
  version=$(python -c 'import pydantic; print(pydantic.VERSION)')
  exec python -m pip download --only-binary=:all: --implementation cp --python-version 3.12 --abi cp312 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$WHEELS" "pydantic==$version"
fi

OUT=$(absolute "${1:?"usage: $0 OUT_DIR [gpu-check options]   |   $0 --fetch-wheels"}")
shift
SITE=$(absolute "${SITE:-${TMPDIR:-/tmp}/gpu-check-site}")
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if ((${#wheels[@]} == 0)); then
  echo "no wheels in $WHEELS: run 'bash cluster/bench/device_check.sh --fetch-wheels' where there is a network" >&2
  exit 2
fi
mkdir -p "$OUT"
rm -rf "$SITE"
if "$PYTHON" -m pip --version >/dev/null 2>&1; then
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" "${wheels[@]}"
else  # no pip there: a wheel is a zip of what goes into site-packages
  "$PYTHON" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
    "$SITE" "${wheels[@]}"
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
status=0
timeout "${GPU_CHECK_TIMEOUT:-540}" "$PYTHON" -m cluster gpu-check --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu-check.log" ||
  status=${PIPESTATUS[0]}
exit "$status"
