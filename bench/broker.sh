#!/usr/bin/env bash
# Benchmark podkit broker against HAProxy mode tcp (see bench/broker.py for the set-up).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" bench/broker.py "$@"
