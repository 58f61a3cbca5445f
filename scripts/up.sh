#!/usr/bin/env bash
# The main job: run the quick-start pod file when the pod supervisor is there. While a component
# the quick start uses is missing, run examples/whoami.yaml instead and say why; without the
# supervisor, a small replicated whoami demo (three replicas).
set -euo pipefail
cd "$(dirname "$0")/.."
PODKIT=.venv/bin/podkit
QUICKSTART=examples/quickstart.yaml
FALLBACK=examples/whoami.yaml
# EXAMPLE=NAME (make up EXAMPLE=search): run examples/NAME/pods.yaml instead, with .venv/bin on
# PATH for the commands its containers run (`podkit ...`). Its README says what to try.
if [ -n "${EXAMPLE:-}" ]; then
  file="examples/$EXAMPLE/pods.yaml"
  if [ ! -f "$file" ]; then
    echo "podkit: error: no $file (EXAMPLE names a directory of examples/ with a pods.yaml)" >&2
    exit 2
  fi
  export PATH="$PWD/.venv/bin:$PATH"
  $PODKIT up --check "$file" >/dev/null
  echo "podkit: running $file; examples/$EXAMPLE/README.md walks through it."
  echo "Ctrl-C or \`.venv/bin/podkit down\` (another terminal, this directory) stops everything."
  exec $PODKIT up "$file"
fi
if $PODKIT up --help >/dev/null 2>&1 && [ -f "$QUICKSTART" ]; then
  if why=$($PODKIT up --check "$QUICKSTART" 2>&1); then
    cat <<'BANNER'
podkit quick start: web (3 x whoami) <- lb (balance) <- cache; a singleton job under elect;
a queue source and autoscaled workers on SQLite. When `cache ready` shows:
  curl http://127.0.3.1:8080/            cache -> balance -> a web replica (see "name")
  curl http://127.0.3.1:8080/cache/30    a cached answer: the same replica for 30 s
  .venv/bin/podkit status                every container (another terminal, this directory)
  .venv/bin/podkit scale web 5           the balancer follows the replicas
  the dashboard: the address printed as "dashboard at" (127.0.0.1:8400 when free)
Ctrl-C or `.venv/bin/podkit down` stops everything (or `. .venv/bin/activate`, then `podkit ...`).
BANNER
    exec $PODKIT up "$QUICKSTART"
  fi
  case "$why" in
    *"unknown component"*)
      echo "podkit: $QUICKSTART needs a component this podkit does not have yet:" >&2
      echo "  $why" >&2
      echo "podkit: running $FALLBACK instead (three whoami replicas)" >&2
      cat <<'BANNER'
  curl http://127.0.1.1:8000/   curl http://127.0.1.2:8000/   curl http://127.0.1.3:8000/
  .venv/bin/podkit status    .venv/bin/podkit scale web 5    (another terminal, this directory)
Ctrl-C or `.venv/bin/podkit down` stops everything (or `. .venv/bin/activate`, then `podkit ...`).
BANNER
      exec $PODKIT up "$FALLBACK"
      ;;
    *)
      echo "$why" >&2
      exit 2
      ;;
  esac
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
