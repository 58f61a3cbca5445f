#!/usr/bin/env bash
# Sharding functions: balance, movement, lookups/s and memory (podkit hash bench), with
# uhashring's ketama ring measured in the same run as the peer (installed into .venv if absent).
#   bash bench/hashing.sh [podkit hash bench options, e.g. --keys 100000]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" -c "import uhashring" 2>/dev/null || "$PY" -m pip install --quiet "uhashring>=2.0"
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
exec "$PY" -m podkit hash bench "$@"
