# Shared by up.sh and down.sh (sourced, not run).
# shellcheck shell=bash

deploy_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
env_file="$deploy_dir/.env"
project_name=launchdb
stack_containers=(launchdb-postgres launchdb-pgbouncer launchdb-caddy launchdb-postgrest-manager)
image_vars=(LAUNCHDB_POSTGRES_IMAGE LAUNCHDB_PGBOUNCER_IMAGE LAUNCHDB_CADDY_IMAGE LAUNCHDB_MANAGER_IMAGE PGM_IMAGE)

# Loads deploy/.env into the environment without overriding what the caller already exported,
# skipping the given keys (image choices are recomputed by up.sh on every run).
load_env() { # [key to skip]...
    local line key skip
    [ -f "$env_file" ] || return 0
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in '' | '#'*) continue ;; esac
        key="${line%%=*}"
        for skip in "$@"; do [ "$key" = "$skip" ] && continue 2; done
        if [ -z "${!key+x}" ]; then export "$key=${line#*=}"; fi
    done <"$env_file"
}

# The socket the manager's container is given: the daemon DOCKER_HOST names when it is a unix
# socket (a private daemon), else the machine's.
case "${DOCKER_HOST:-}" in
unix://*) export LAUNCHDB_DOCKER_SOCKET="${DOCKER_HOST#unix://}" ;;
esac

# docker compose v2 when the plugin is there, else docker-compose (1.29 here).
compose() {
    local args=(-p "$project_name" -f "$deploy_dir/compose.yaml")
    [ -f "$env_file" ] && args=(--env-file "$env_file" "${args[@]}")
    if docker compose version >/dev/null 2>&1; then
        docker compose "${args[@]}" "$@"
    else
        docker-compose "${args[@]}" "$@"
    fi
}
