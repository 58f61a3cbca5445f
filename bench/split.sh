#!/usr/bin/env bash
# Benchmark podkit split against podkit balance and nginx in interleaved rounds (see bench/split.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" bench/split.py "$@"
