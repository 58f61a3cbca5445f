#!/usr/bin/env bash
# The main job: run the quick-start pod file when the pod supervisor is there,
# else a small replicated whoami demo (three replicas).
set -euo pipefail
cd "$(dirname "$0")/.."
PODKIT=.venv/bin/podkit
if $PODKIT up --help >/dev/null 2>&1 && [ -f examples/quickstart.yaml ]; then
  exec $PODKIT up examples/quickstart.yaml
fi
pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait || true; }
trap cleanup EXIT
trap "exit 130" INT TERM
for i in 1 2 3; do
  $PODKIT whoami --listen "127.0.0.1:800$i" --name "web-$i" --admin "127.0.0.1:900$i" --log-format text &
  pids+=($!)
done
echo "whoami replicas: http://127.0.0.1:8001  http://127.0.0.1:8002  http://127.0.0.1:8003 (Ctrl-C stops)"
wait
