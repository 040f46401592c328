#!/usr/bin/env bash
# create-project-db.sh <project_id>: a project's database as the platform creates it (stands in
# for the platform API; used by the end-to-end test). The authenticator password is read from
# stdin (one line), never from argv or the environment, and reaches psql on its stdin too.
#
# Creates (idempotent: what exists is kept, the password is (re)set, so this also rotates it):
#   - database <id>, CONNECT only for <id>_authenticator and PgBouncer's auth user (not PUBLIC);
#   - role <id>_authenticator LOGIN NOINHERIT with that password (SCRAM-SHA-256), member of the
#     global roles anon, authenticated, service_role (made once by deploy/postgres/initdb.d);
#   - in the database: USAGE on schemas public and storage (PostgREST's default db-schemas) for
#     anon, authenticated, service_role. Tables and their grants are the caller's business.
# The database inherits pgbouncer.get_auth from template1 (PgBouncer's auth_query).
#
# Example: printf '%s\n' "$password" | deploy/scripts/create-project-db.sh proj_abc123
# Environment: LAUNCHDB_POSTGRES_CONTAINER (default launchdb-postgres), PGBOUNCER_AUTH_USER
# (default pgbouncer_auth). Runs psql in that container as its superuser (POSTGRES_PASSWORD of
# the container's environment). Exit codes: 0 done; 1 failure; 2 invalid id or password.
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "Usage: $0 <project_id>   (authenticator password on stdin)" >&2
    exit 1
fi
id="$1"
if ! [[ "$id" =~ ^[a-z][a-z0-9_]{0,48}$ ]]; then
    echo "$0: invalid project id '$id': a lowercase letter, then [a-z0-9_], at most 49 characters" >&2
    exit 2
fi
container="${LAUNCHDB_POSTGRES_CONTAINER:-launchdb-postgres}"
auth_user="${PGBOUNCER_AUTH_USER:-pgbouncer_auth}"

pw=""
if [ -t 0 ]; then
    IFS= read -r -s -p "password for ${id}_authenticator: " pw || true
    echo >&2
else
    IFS= read -r pw || true
fi
if [ -z "$pw" ]; then
    echo "$0: empty password (give it on stdin)" >&2
    exit 2
fi
# psql's quoting inside \set '...': a backslash and a quote are escaped.
pw_quoted="${pw//\\/\\\\}"
pw_quoted="${pw_quoted//\'/\'\'}"

docker exec -i "$container" sh -c \
    'PGPASSWORD="$POSTGRES_PASSWORD" PGOPTIONS="-c client_min_messages=warning" exec psql -X -q -v ON_ERROR_STOP=1 --no-password -U "${POSTGRES_USER:-postgres}" -d postgres' <<SQL
\\set id '$id'
\\set role '${id}_authenticator'
\\set auth_user '$auth_user'
\\set pw '$pw_quoted'
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') AS need_role \\gset
\\if :need_role
CREATE ROLE :"role" LOGIN NOINHERIT;
\\endif
ALTER ROLE :"role" WITH LOGIN NOINHERIT PASSWORD :'pw';
\\unset pw
GRANT anon, authenticated, service_role TO :"role";
SELECT NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'id') AS need_db \\gset
\\if :need_db
CREATE DATABASE :"id";
\\endif
REVOKE CONNECT, TEMPORARY ON DATABASE :"id" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"id" TO :"role", :"auth_user";
\\connect :"id"
CREATE SCHEMA IF NOT EXISTS storage;
GRANT USAGE ON SCHEMA public, storage TO anon, authenticated, service_role;
SQL
echo "create-project-db: database $id and role ${id}_authenticator ready" >&2
