#!/usr/bin/env bash
# up.sh: brings the LaunchDB stack up (deploy/compose.yaml) and waits until every service is
# healthy. Idempotent: a second run changes nothing and returns in a few seconds.
#
# 1. deploy/.env (mode 0600) with fresh random secrets on the first run: POSTGRES_PASSWORD,
#    PGBOUNCER_AUTH_PASSWORD, INTERNAL_API_KEY; and LAUNCHDB_DATA_DIR, the host directory of the
#    manager's state/ and rendered configs (default deploy/data, gitignored).
# 2. Images: for each service the upstream image (pinned tag) when it exists locally or
#    LAUNCHDB_USE_UPSTREAM=1 (compose then pulls what is missing), else a local equivalent built
#    by deploy/build-local-images.sh. An image variable exported by the caller always wins.
#    The choice is written back to deploy/.env, so plain docker-compose commands see it.
# 3. docker compose up -d, then a bounded wait for healthy (LAUNCHDB_UP_TIMEOUT, default 180 s).
#
# A changed manager binary is not rebuilt when the local manager image exists:
# FORCE=1 bash deploy/build-local-images.sh (or LAUNCHDB_REBUILD_MANAGER=1 bash deploy/up.sh).
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

log() { echo "up: $*" >&2; }
t_start=$(date +%s)

# Image choices the caller made explicitly (before .env is read).
declare -A explicit=()
for v in "${image_vars[@]}"; do
    if [ -n "${!v:-}" ]; then explicit[$v]="${!v}"; fi
done

secret() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; } # 48 hex characters

# 1. deploy/.env
if [ ! -f "$env_file" ]; then
    log "writing $env_file with fresh secrets"
    (
        umask 077
        cat >"$env_file.tmp" <<ENV
# LaunchDB stack settings, written by deploy/up.sh. Secrets: never commit this file.
COMPOSE_PROJECT_NAME=$project_name
POSTGRES_PASSWORD=$(secret)
PGBOUNCER_AUTH_PASSWORD=$(secret)
INTERNAL_API_KEY=$(secret)
LAUNCHDB_DATA_DIR=$deploy_dir/data
PGM_INSTANCE=launchdb
ENV
        mv "$env_file.tmp" "$env_file"
    )
fi
chmod 600 "$env_file"
load_env "${image_vars[@]}"

# 2. Images
have() { docker image inspect "$1" >/dev/null 2>&1; }
declare -A chosen=()
need_build=0
choose() { # <var> <upstream> <local>
    local var="$1" upstream="$2" local_name="$3"
    if [ -n "${explicit[$var]:-}" ]; then
        chosen[$var]="${explicit[$var]}"
    elif [ "${LAUNCHDB_USE_UPSTREAM:-0}" = 1 ] || have "$upstream"; then
        chosen[$var]="$upstream"
    else
        chosen[$var]="$local_name"
    fi
    export "$var=${chosen[$var]}"
    if ! have "${chosen[$var]}" && [ "${chosen[$var]}" = "$local_name" ]; then need_build=1; fi
}
choose LAUNCHDB_POSTGRES_IMAGE postgres:15 launchdb/postgres:15-local
choose LAUNCHDB_PGBOUNCER_IMAGE edoburu/pgbouncer:1.18.0 launchdb/pgbouncer:1.18-local
choose LAUNCHDB_CADDY_IMAGE caddy:2.6.2 launchdb/caddy:2.6.2-local
choose LAUNCHDB_MANAGER_IMAGE launchdb/postgrest-manager:v1 launchdb/postgrest-manager:local
choose PGM_IMAGE launchdb/postgrest:v1 launchdb/postgrest:v1-test
if [ "$need_build" = 1 ] || [ "${LAUNCHDB_REBUILD_MANAGER:-0}" = 1 ]; then
    log "building missing local images"
    skip_manager=1
    if [ "$LAUNCHDB_MANAGER_IMAGE" = launchdb/postgrest-manager:local ]; then skip_manager=0; fi
    FORCE="${LAUNCHDB_REBUILD_MANAGER:-0}" LAUNCHDB_SKIP_MANAGER=$skip_manager \
        bash "$deploy_dir/build-local-images.sh"
fi
# Record the choice in .env (non-secret lines, rewritten on every run).
(
    umask 077
    grep -v -E "^($(
        IFS='|'
        echo "${image_vars[*]}"
    ))=" "$env_file" >"$env_file.tmp" || true
    for v in "${image_vars[@]}"; do echo "$v=${!v}"; done >>"$env_file.tmp"
    mv "$env_file.tmp" "$env_file"
)

# 3. Host directories, then the stack.
mkdir -p "$LAUNCHDB_DATA_DIR/state" "$LAUNCHDB_DATA_DIR/projects"
chmod 700 "$LAUNCHDB_DATA_DIR" "$LAUNCHDB_DATA_DIR/state" "$LAUNCHDB_DATA_DIR/projects"
# PgBouncer's [databases] include, written by the manager (root) and read by PgBouncer (its own
# user): a world-readable directory and file; no secret in it. Empty until the manager runs.
mkdir -p "$LAUNCHDB_DATA_DIR/pgbouncer"
chmod 755 "$LAUNCHDB_DATA_DIR/pgbouncer"
if [ ! -f "$LAUNCHDB_DATA_DIR/pgbouncer/databases.ini" ]; then
    : >"$LAUNCHDB_DATA_DIR/pgbouncer/databases.ini"
    chmod 644 "$LAUNCHDB_DATA_DIR/pgbouncer/databases.ini"
fi
# The manager runs as root in its container and refuses a state or config directory that
# another user owns (README, "Security model"): say so here rather than as an unhealthy stack.
for dir in "$LAUNCHDB_DATA_DIR/state" "$LAUNCHDB_DATA_DIR/projects"; do
    if [ "$(stat -c %u "$dir")" != 0 ]; then
        log "$dir is owned by UID $(stat -c %u "$dir"), not root: run up.sh as root or chown it to root"
        exit 1
    fi
done

# One manager per instance on a Docker daemon (README, PGM_INSTANCE): a claim held for another
# state directory makes the manager refuse to start, so say it now instead of after a timeout.
lease="pgm-lease-${PGM_INSTANCE:-launchdb}"
holder="$(docker volume inspect -f '{{index .Labels "launchdb.lease-holder"}}' "$lease" 2>/dev/null || true)"
mine="$(tr -d '[:space:]' 2>/dev/null <"$LAUNCHDB_DATA_DIR/state/.instance-id" || true)"
if [ -n "$holder" ] && [ "$holder" != "$mine" ]; then
    log "instance ${PGM_INSTANCE:-launchdb} is claimed on this Docker daemon by the manager of another state directory (its id $holder, $LAUNCHDB_DATA_DIR/state has ${mine:-none yet}); set another PGM_INSTANCE in $env_file, or, if that manager is gone for good, drop its claim: docker volume rm $lease"
    exit 1
fi

fail() {
    log "$*"
    compose ps >&2 || true
    compose logs --tail=30 >&2 || true
    exit 1
}

log "starting the stack"
compose up -d --remove-orphans || fail "docker compose up failed"

timeout="${LAUNCHDB_UP_TIMEOUT:-180}"
deadline=$(($(date +%s) + timeout))
while :; do
    pending=()
    for c in "${stack_containers[@]}"; do
        status="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$c" 2>/dev/null || echo missing)"
        [ "$status" = healthy ] || pending+=("$c=$status")
    done
    [ "${#pending[@]}" -eq 0 ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then
        fail "not healthy after ${timeout} s: ${pending[*]}"
    fi
    sleep 1
done

log "healthy in $(($(date +%s) - t_start)) s"
cat <<INFO
LaunchDB stack is up (compose project $project_name, network launchdb-internal).
  manager API: http://127.0.0.1:${PGM_API_PORT:-9000}  (header X-Internal-Key: INTERNAL_API_KEY from $env_file)
  Caddy:       http://127.0.0.1:${LAUNCHDB_HTTP_PORT:-8080}/db/<project_id>/
  scripts:     docker exec launchdb-postgrest-manager /scripts/postgrest-add-project.sh <id> <jwt_secret> <password>
               printf '%s\n' <password> | $deploy_dir/scripts/create-project-db.sh <id>
  state:       $LAUNCHDB_DATA_DIR/state, rendered configs $LAUNCHDB_DATA_DIR/projects
  stop:        bash $deploy_dir/down.sh [--volumes]
INFO
