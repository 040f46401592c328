#!/usr/bin/env bash
# postgrest-add-project.sh: the seed's script, now a thin wrapper over
# `postgrest-manager add-project`. It writes the project's desired state (enabled) to
# $PGM_STATE_DIR/<project_id>.toml; the running manager renders the config and creates the
# container, and this script waits (up to $PGM_WAIT_SECS, default 30) until it runs, as the
# seed's add-project + spawn did. The secrets go to the CLI on stdin, never on its command line.
#
# Exit codes: 0 done; 1 usage error or failure (including "not running within the wait";
# the desired state is saved then); 2 invalid id or value; 3 no such project.
# Environment: PGM_BIN (default: postgrest-manager on PATH), PGM_STATE_DIR, PGM_INSTANCE,
# PGM_WAIT_SECS (0: do not wait), DOCKER_HOST.
set -euo pipefail

if [ "$#" -ne 3 ]; then
    echo "Usage: $0 <project_id> <jwt_secret> <authenticator_password>" >&2
    exit 1
fi
case "$2$3" in
*$'\n'*)
    echo "$0: secrets cannot contain newlines" >&2
    exit 1
    ;;
esac

printf '%s\n%s\n' "$2" "$3" |
    exec "${PGM_BIN:-postgrest-manager}" add-project --wait "${PGM_WAIT_SECS:-30}" "$1" - -
