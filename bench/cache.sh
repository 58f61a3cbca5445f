#!/usr/bin/env bash
# Benchmark podkit cache against Varnish and nginx proxy_cache (see bench/cache.py for the set-up).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-.venv/bin/python}" bench/cache.py "$@"
