#!/usr/bin/env bash
# Benchmark podkit balance against HAProxy and nginx (see bench/balance.py for the set-up).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" bench/balance.py "$@"
