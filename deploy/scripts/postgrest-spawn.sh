#!/usr/bin/env bash
# postgrest-spawn.sh: the seed's script, now a thin wrapper over `postgrest-manager spawn`.
# It enables an existing project's desired state (its state file must exist, like the seed's
# config file) and waits (up to $PGM_WAIT_SECS, default 30) until the manager runs its
# container. Idempotent: spawning a running project changes nothing.
#
# Exit codes: 0 running; 1 usage error or failure (including "not running within the wait";
# the desired state is saved then); 2 invalid id; 3 no such project (run add-project first).
# Environment: PGM_BIN (default: postgrest-manager on PATH), PGM_STATE_DIR, PGM_INSTANCE,
# PGM_WAIT_SECS (0: do not wait), DOCKER_HOST.
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "Usage: $0 <project_id>" >&2
    exit 1
fi

exec "${PGM_BIN:-postgrest-manager}" spawn --wait "${PGM_WAIT_SECS:-30}" "$1"
