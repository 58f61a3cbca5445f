#!/usr/bin/env bash
# Benchmark podkit shard against nutcracker (see bench/shard.py for the set-up).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" bench/shard.py "$@"
