#!/usr/bin/env bash
# First start only (the image's entrypoint runs /docker-entrypoint-initdb.d on an empty data
# directory, upstream postgres:15 and the local image alike), against a socket-only server:
#   - the global roles every project authenticator is granted: anon, authenticated, service_role;
#   - PgBouncer's auth user ($PGBOUNCER_AUTH_USER, password $PGBOUNCER_AUTH_PASSWORD);
#   - the auth lookup pgbouncer.get_auth(username) in template1 (so every project database made
#     later has it: PgBouncer 1.18 runs auth_query in the database being connected to) and in
#     postgres. It is SECURITY DEFINER and returns nothing for superusers, so no superuser can
#     log in through PgBouncer.
# Passwords reach psql on stdin (\set), never on a command line.
set -euo pipefail

auth_user="${PGBOUNCER_AUTH_USER:-pgbouncer_auth}"
auth_pw="${PGBOUNCER_AUTH_PASSWORD:?PGBOUNCER_AUTH_PASSWORD must be set}"
export PGPASSWORD="${PGPASSWORD:-${POSTGRES_PASSWORD:-}}"
case "$auth_user" in *[!a-z0-9_]* | "") echo "10-launchdb: bad PGBOUNCER_AUTH_USER" >&2; exit 1 ;; esac
case "$auth_pw" in *[!A-Za-z0-9._~+/=-]*)
    echo "10-launchdb: PGBOUNCER_AUTH_PASSWORD may only hold [A-Za-z0-9._~+/=-]" >&2; exit 1 ;;
esac

run_sql() { # <database>, SQL on stdin
    psql -v ON_ERROR_STOP=1 --no-password -q --username "${POSTGRES_USER:-postgres}" --dbname "$1"
}

run_sql postgres <<SQL
\\set auth_user '$auth_user'
\\set pw '$auth_pw'
CREATE ROLE anon NOLOGIN NOINHERIT;
CREATE ROLE authenticated NOLOGIN NOINHERIT;
CREATE ROLE service_role NOLOGIN NOINHERIT BYPASSRLS;
CREATE ROLE :"auth_user" LOGIN NOINHERIT PASSWORD :'pw';
-- Project authenticators may connect to their own database only (create-project-db.sh).
REVOKE CONNECT, TEMPORARY ON DATABASE postgres, template1 FROM PUBLIC;
GRANT CONNECT ON DATABASE postgres TO :"auth_user";
SQL

for db in template1 postgres; do
    run_sql "$db" <<SQL
\\set auth_user '$auth_user'
CREATE SCHEMA pgbouncer;
REVOKE ALL ON SCHEMA pgbouncer FROM PUBLIC;
GRANT USAGE ON SCHEMA pgbouncer TO :"auth_user";
CREATE FUNCTION pgbouncer.get_auth(p_usename text)
    RETURNS TABLE (username text, password text)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS \$\$
    SELECT usename::text, passwd::text
    FROM pg_catalog.pg_shadow
    WHERE usename = p_usename AND NOT usesuper
\$\$;
REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(text) TO :"auth_user";
SQL
done
echo "10-launchdb: roles anon, authenticated, service_role, $auth_user and pgbouncer.get_auth created"
