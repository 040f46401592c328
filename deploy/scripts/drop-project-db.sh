#!/usr/bin/env bash
# drop-project-db.sh <project_id>: drops database <id> (closing its connections, PgBouncer's
# pooled ones included) and role <id>_authenticator. Missing ones are fine (idempotent).
# Environment: LAUNCHDB_POSTGRES_CONTAINER (default launchdb-postgres).
# Exit codes: 0 done; 1 failure; 2 invalid id.
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "Usage: $0 <project_id>" >&2
    exit 1
fi
id="$1"
if ! [[ "$id" =~ ^[a-z][a-z0-9_]{0,48}$ ]]; then
    echo "$0: invalid project id '$id': a lowercase letter, then [a-z0-9_], at most 49 characters" >&2
    exit 2
fi
container="${LAUNCHDB_POSTGRES_CONTAINER:-launchdb-postgres}"

docker exec -i "$container" sh -c \
    'PGPASSWORD="$POSTGRES_PASSWORD" PGOPTIONS="-c client_min_messages=warning" exec psql -X -q -v ON_ERROR_STOP=1 --no-password -U "${POSTGRES_USER:-postgres}" -d postgres' <<SQL
\\set id '$id'
\\set role '${id}_authenticator'
DROP DATABASE IF EXISTS :"id" WITH (FORCE);
DROP ROLE IF EXISTS :"role";
SQL
echo "drop-project-db: database $id and role ${id}_authenticator dropped" >&2
