#!/usr/bin/env bash
# Install the servers podkit's tests and examples run for real, when they are missing.
# Idempotent; exits non-zero naming what could not be installed.
set -euo pipefail

# binary -> Debian package
declare -A PACKAGES=(
  [redis-server]=redis-server
  [etcd]=etcd-server
  [etcdctl]=etcd-client
  [memcached]=memcached
  [nginx]=nginx
  [haproxy]=haproxy
  [promtool]=prometheus
  [nutcracker]=nutcracker        # twemproxy: podkit shard's placement and bench peer
  [memcaslap]=libmemcached-tools # memcached load generator for bench/shard.sh
  [kubectl]=kubectl              # `kubectl kustomize` builds the rendered manifests (offline)
  [chromium]=chromium            # the dashboard's browser test (Playwright, executable_path)
)

# Debian keeps PostgreSQL's server programs (initdb, pg_ctl, postgres) off PATH, under
# /usr/lib/postgresql/VERSION/bin; the metrics and health adapters' tests run one.
have_postgres() {
  command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

missing=()
for bin in "${!PACKAGES[@]}"; do
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
    missing+=("${PACKAGES[$bin]}")
  fi
done
have_postgres || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "podkit setup: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "podkit setup: error: need ${missing[*]}; install them with: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "podkit setup: error: need ${missing[*]} and there is no apt-get; install them with your package manager" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null || true
if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
  echo "podkit setup: error: could not install ${missing[*]}; install them with: apt-get install ${missing[*]}" >&2
  exit 1
fi
# Debian starts services it installs where it can; the tests start their own on free ports.
for svc in redis-server etcd memcached nginx haproxy postgresql prometheus nutcracker; do
  (command -v service >/dev/null 2>&1 && $SUDO service "$svc" stop >/dev/null 2>&1) || true
done
for bin in "${!PACKAGES[@]}"; do
  if ! command -v "$bin" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$bin" ]; then
    echo "podkit setup: error: $bin is still missing after installing; install ${PACKAGES[$bin]} by hand" >&2
    exit 1
  fi
done
if ! have_postgres; then
  echo "podkit setup: error: initdb is still missing after installing; install postgresql by hand" >&2
  exit 1
fi
