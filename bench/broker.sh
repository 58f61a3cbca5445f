#!/usr/bin/env bash
# Benchmark podkit broker against HAProxy mode tcp in interleaved rounds (see bench/broker.py).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" bench/broker.py "$@"
