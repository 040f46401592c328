#!/usr/bin/env bash
# postgrest-reload.sh: the seed's script, now a thin wrapper over `postgrest-manager reload`.
# The seed sent SIGHUP to the PID in /var/run/postgrest.pid; PostgREST has no SIGHUP handler,
# so instead this bumps the project's reload_token and the manager re-renders the config and
# sends the reload signal (SIGUSR2 by default) through the Docker API. The container keeps
# its id. It returns once the request is written; the manager acts within milliseconds when
# it runs (POST /internal/postgrest/<id>/restart waits for the signal instead).
#
# With --schema (after a migration) it asks for a schema-cache reload instead: SIGUSR1, the
# config and the container unchanged (`postgrest-manager reload --schema`).
#
# Exit codes: 0 requested; 1 usage error or failure; 2 invalid id; 3 no such project.
# Environment: PGM_BIN (default: postgrest-manager on PATH), PGM_STATE_DIR.
set -euo pipefail

schema=()
if [ "${1:-}" = "--schema" ]; then
    schema=(--schema)
    shift
fi
if [ "$#" -ne 1 ]; then
    echo "Usage: $0 [--schema] <project_id>" >&2
    exit 1
fi

exec "${PGM_BIN:-postgrest-manager}" reload "${schema[@]}" "$1"
