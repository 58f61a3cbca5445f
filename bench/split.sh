#!/usr/bin/env bash
# Benchmark podkit split against podkit balance and nginx (see bench/split.py for the set-up).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" bench/split.py "$@"
