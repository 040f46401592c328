#!/usr/bin/env bash
# tests/db.sh up|down: the database the integration tests' PostgREST containers log in to.
#
#   up    starts a real PostgreSQL 15 (launchdb/postgres:15-local, from
#         deploy/build-local-images.sh) and a real PgBouncer 1.18 in front of it, on a network
#         of their own, and prints `export` lines for the harness:
#           PGMT_PGBOUNCER             the PgBouncer container; the harness connects it to each
#                                      test's network under the alias `pgbouncer` (the manager's
#                                      default PGM_DB_HOST), so projects need no db_host
#           PGMT_POSTGRES              the PostgreSQL container (SCRAM passwords: a test that
#                                      needs a real login failure connects it to its network)
#           PGRST_DOUBLE_TEST_DB_URI   a superuser URI for the PostgREST double's own DB test
#   down  removes both containers and the network (also what the tests connected).
#
# The one liberty taken: this PgBouncer runs `auth_type = any` and maps every database to one
# database `pgmt` as one role `pgmt_tester` (member of anon, authenticated and service_role).
# So the tests' many projects (`<id>_authenticator`, database `<id>`) need no provisioning, and
# a project's PostgREST really connects, logs in (to PgBouncer), switches roles per request
# and reads rows. Credentials are checked elsewhere: the stack's PgBouncer (auth_query, SCRAM)
# in deploy/e2e.sh, and PostgreSQL's SCRAM in the double's own test (postgrest/double/tests/db.rs).
#
# The database `pgmt` holds table public.items (id, name) readable by anon and authenticated,
# and table public.secrets readable by authenticated only.
set -euo pipefail

tag="${PGMT_DB_TAG:-pgmt-db}"
net="$tag-net"
pg="$tag-postgres"
bouncer="$tag-pgbouncer"
pg_image="${LAUNCHDB_POSTGRES_IMAGE:-launchdb/postgres:15-local}"
bouncer_image="${LAUNCHDB_PGBOUNCER_IMAGE:-launchdb/pgbouncer:1.18-local}"
# PostgreSQL's connection limit: the bench's `scale` scenario (1,000 projects, each its own
# PgBouncer pool) needs more than the tests' 300.
max_connections="${PGMT_DB_MAX_CONNECTIONS:-300}"
log() { echo "tests/db.sh: $*" >&2; }

down() {
    local n
    for c in "$bouncer" "$pg"; do
        if docker inspect "$c" >/dev/null 2>&1; then
            # Networks the tests connected it to go with it.
            for n in $(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$c"); do
                [ "$n" = "$net" ] || docker network disconnect -f "$n" "$c" >/dev/null 2>&1 || true
            done
            docker rm -f -v "$c" >/dev/null
        fi
    done
    docker network rm "$net" >/dev/null 2>&1 || true
}

up() {
    for image in "$pg_image" "$bouncer_image"; do
        docker image inspect "$image" >/dev/null 2>&1 ||
            { log "image $image is missing: run bash deploy/build-local-images.sh"; exit 1; }
    done
    down
    local pw tester_pw
    pw="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
    tester_pw="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
    docker network create "$net" >/dev/null
    # The superuser password reaches initdb through the image's entrypoint, as upstream's does.
    local here
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    docker run -d --name "$pg" --network "$net" -e POSTGRES_PASSWORD="$pw" \
        -v "$here/../deploy/postgres/pg_hba.conf:/etc/launchdb/pg_hba.conf:ro" \
        --label launchdb.test-db=1 "$pg_image" postgres -c listen_addresses='*' \
        -c hba_file=/etc/launchdb/pg_hba.conf -c max_connections="$max_connections" >/dev/null
    local i
    for i in $(seq 1 120); do
        # The entrypoint's first, socket-only server does not count: wait for TCP on the network.
        docker exec "$pg" pg_isready -q -h "$pg" 2>/dev/null && break
        [ "$i" -lt 120 ] || { docker logs "$pg" >&2; log "PostgreSQL did not start"; exit 1; }
        sleep 0.5
    done
    docker exec -i -e PGPASSWORD="$pw" "$pg" psql -v ON_ERROR_STOP=1 -qAt -h 127.0.0.1 -U postgres \
        -v tester_pw="$tester_pw" >/dev/null <<'SQL'
CREATE ROLE anon NOLOGIN;
CREATE ROLE authenticated NOLOGIN;
CREATE ROLE service_role NOLOGIN BYPASSRLS;
CREATE ROLE pgmt_tester LOGIN NOINHERIT PASSWORD :'tester_pw';
GRANT anon, authenticated, service_role TO pgmt_tester;
CREATE DATABASE pgmt;
\c pgmt
CREATE SCHEMA storage;
GRANT USAGE ON SCHEMA public, storage TO anon, authenticated, service_role;
CREATE TABLE public.items (id int PRIMARY KEY, name text);
INSERT INTO public.items VALUES (1, 'first'), (2, 'second');
GRANT SELECT ON public.items TO anon, authenticated;
CREATE TABLE public.secrets (id int PRIMARY KEY, body text);
INSERT INTO public.secrets VALUES (1, 'for authenticated eyes');
GRANT SELECT ON public.secrets TO authenticated;
SQL

    # PgBouncer's config goes in by `docker cp`, not the environment: it holds a password.
    local ini
    ini="$(mktemp)"
    cat >"$ini" <<INI
[databases]
* = host=$pg port=5432 dbname=pgmt user=pgmt_tester password=$tester_pw

[pgbouncer]
listen_addr = *
listen_port = 6432
unix_socket_dir =
pool_mode = transaction
auth_type = any
max_client_conn = 4000
default_pool_size = 2
max_user_connections = 200
server_login_retry = 1
; every project is its own pool: give the server connections of finished tests back soon
server_idle_timeout = 10
ignore_startup_parameters = extra_float_digits
INI
    chmod 644 "$ini"
    docker create --name "$bouncer" --network "$net" --label launchdb.test-db=1 \
        "$bouncer_image" pgbouncer /tmp/pgbouncer.ini >/dev/null
    docker cp "$ini" "$bouncer:/tmp/pgbouncer.ini"
    rm -f "$ini"
    docker start "$bouncer" >/dev/null
    for i in $(seq 1 60); do
        docker exec "$bouncer" psql -qAt -h 127.0.0.1 -p 6432 -U probe_authenticator -d probe \
            -c 'select 1' >/dev/null 2>&1 && break
        [ "$i" -lt 60 ] || { docker logs "$bouncer" >&2; log "PgBouncer did not start"; exit 1; }
        sleep 0.5
    done
    local ip
    ip="$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$pg")"
    echo "export PGMT_PGBOUNCER=$bouncer"
    echo "export PGMT_POSTGRES=$pg"
    echo "export PGRST_DOUBLE_TEST_DB_URI=postgres://postgres:$pw@$ip:5432/postgres"
    log "PostgreSQL $pg and PgBouncer $bouncer are up on $net"
}

case "${1:-}" in
up) up ;;
down) down ;;
*)
    echo "Usage: $0 up|down" >&2
    exit 1
    ;;
esac
