#!/usr/bin/env bash
# Compile podkit's data-plane hot path to C extension modules with mypyc, in place (next to
# the sources under src/). Python prefers an extension module to a .py of the same name, so
# an editable install picks them up; everything still runs without them.
#
#   bash scripts/build-native.sh          build (skipped when the stamp says it is current)
#   bash scripts/build-native.sh --clean  remove the compiled modules (pure Python again)
#   bash scripts/build-native.sh --check  exit 1 when compiled modules are present but stale
#   PODKIT_NATIVE=0 make setup            never build
#
# A failed build (no C compiler, no Python headers) removes what it made and exits 0 with a
# warning: the pure-Python modules are used instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(realpath -s "${PY:-.venv/bin/python}")  # absolute, symlinks kept (a venv's python)
STAMP=src/.native-stamp
# The modules compiled, relative to src/ (each must pass mypy --strict; see docs/native.md).
MODULES=(
    podkit/engines/http/rules.py
    podkit/engines/http/client.py
    podkit/engines/http/server.py
    podkit/serving/balance/_endpoint.py
    podkit/serving/balance/_pool.py
    podkit/serving/balance/_pickers.py
    podkit/serving/balance/_retry.py
    podkit/serving/balance/_direct.py
    podkit/ambassador/shard/_resp.py
    podkit/ambassador/shard/_memcache.py
    podkit/ambassador/shard/_redis_commands.py
    podkit/ambassador/shard/_router.py
    podkit/ambassador/shard/_hotkeys.py
    podkit/ambassador/shard/_connections.py
    podkit/ambassador/split/_direct.py
)

clean() {
    for module in "${MODULES[@]}"; do
        rm -f "src/${module%.py}".cpython-*.so
    done
    rm -f src/*__mypyc.cpython-*.so "$STAMP"
    rm -rf src/build src/.mypy_cache
}

if [[ "${1:-}" == "--clean" || "${PODKIT_NATIVE:-1}" == "0" ]]; then
    clean
    exit 0
fi

# The stamp holds the hash of the sources and of the compiler's version: rebuild on a change.
digest=$(cd src && { sha256sum "${MODULES[@]}"; "$PY" -m mypy --version; "$PY" -V; } | sha256sum | cut -d' ' -f1)
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$digest" ]]; then
    exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
    if compgen -G "src/*__mypyc.cpython-*.so" >/dev/null; then
        echo "compiled modules are stale: run bash scripts/build-native.sh (or make setup)" >&2
        exit 1
    fi
    exit 0
fi
clean
echo "compiling the data plane (about a minute, once): ${#MODULES[@]} modules with mypyc..."
if (cd src && "$PY" -m mypyc "${MODULES[@]}" >build-native.log 2>&1); then
    echo "$digest" >"$STAMP"
    rm -rf src/build src/build-native.log src/.mypy_cache
else
    echo "warning: mypyc could not compile the data plane (see src/build-native.log);" \
        "podkit runs as pure Python" >&2
    mv src/build-native.log build-native.log 2>/dev/null || true
    clean
fi
