#!/usr/bin/env bash
# down.sh [--volumes]: removes the LaunchDB stack and the postgrest-<id> containers its manager
# made (labels launchdb.managed-by=postgrest-manager and launchdb.instance=$PGM_INSTANCE), then
# the network. Data is kept unless --volumes: then also the PostgreSQL volume and the host
# directories of state/ and rendered configs ($LAUNCHDB_DATA_DIR). deploy/.env is kept.
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

log() { echo "down: $*" >&2; }
volumes=0
case "${1:-}" in
"") ;;
--volumes | -v) volumes=1 ;;
*)
    echo "Usage: $0 [--volumes]" >&2
    exit 1
    ;;
esac

load_env
# compose.yaml requires these; down needs none of their values.
export POSTGRES_PASSWORD="${POSTGRES_PASSWORD:-unused}" PGBOUNCER_AUTH_PASSWORD="${PGBOUNCER_AUTH_PASSWORD:-unused}" \
    INTERNAL_API_KEY="${INTERNAL_API_KEY:-unused}" LAUNCHDB_DATA_DIR="${LAUNCHDB_DATA_DIR:-$deploy_dir/data}"
instance="${PGM_INSTANCE:-launchdb}"

# 1. Stop the manager first, or it recreates the containers removed next.
if docker inspect launchdb-postgrest-manager >/dev/null 2>&1; then
    log "stopping the manager"
    docker stop -t 10 launchdb-postgrest-manager >/dev/null
fi

# 2. The manager's project containers (only this instance's).
mapfile -t ids < <(docker ps -aq \
    --filter label=launchdb.managed-by=postgrest-manager \
    --filter "label=launchdb.instance=$instance")
if [ "${#ids[@]}" -gt 0 ]; then
    log "removing ${#ids[@]} project container(s) of instance $instance"
    docker rm -f "${ids[@]}" >/dev/null
fi

# 3. The stack and its network (and the volume with --volumes).
args=(down --remove-orphans)
[ "$volumes" = 1 ] && args+=(--volumes)
compose "${args[@]}"

if [ "$volumes" = 1 ]; then
    dir="$LAUNCHDB_DATA_DIR"
    case "$dir" in
    "" | / | "$HOME" | "$deploy_dir")
        log "refusing to remove LAUNCHDB_DATA_DIR=$dir"
        exit 1
        ;;
    esac
    if [ -d "$dir" ]; then
        log "removing $dir (state and rendered configs)"
        rm -rf "$dir"
    fi
    # The manager's claim on this daemon belongs to the state just removed.
    docker volume rm -f "pgm-lease-$instance" >/dev/null 2>&1 || true
fi
left="$(docker ps -aq --filter label=launchdb.managed-by=postgrest-manager --filter "label=launchdb.instance=$instance")"
if [ -n "$left" ] || docker network inspect launchdb-internal >/dev/null 2>&1; then
    log "warning: something is left (containers: ${left:-none}; network launchdb-internal exists: other containers may use it)"
fi
log "done"
