#!/usr/bin/env bash
# postgrest-stop.sh: the seed's script ("stops and removes a project's PostgREST container"),
# now a thin wrapper over `postgrest-manager stop`. It disables the project: the manager
# removes the container and keeps the desired state, so postgrest-spawn.sh brings it back, as
# the seed's config file survived its stop. To delete a project for good, use
# `postgrest-manager remove <project_id>` or DELETE /internal/postgrest/<project_id>.
# Waits (up to $PGM_WAIT_SECS, default 30) until the container is gone.
#
# Exit codes: 0 stopped; 1 usage error or failure (including "still there after the wait";
# the desired state is saved then); 2 invalid id; 3 no such project.
# Environment: PGM_BIN (default: postgrest-manager on PATH), PGM_STATE_DIR, PGM_INSTANCE,
# PGM_WAIT_SECS (0: do not wait), DOCKER_HOST.
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "Usage: $0 <project_id>" >&2
    exit 1
fi

exec "${PGM_BIN:-postgrest-manager}" stop --wait "${PGM_WAIT_SECS:-30}" "$1"
