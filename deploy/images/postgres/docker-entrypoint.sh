#!/usr/bin/env bash
# A small subset of the upstream postgres image's entrypoint: on an empty $PGDATA, initdb with
# the superuser password from POSTGRES_PASSWORD (SCRAM), run /docker-entrypoint-initdb.d once
# against a socket-only temporary server, then exec the server as user postgres.
set -euo pipefail

if [ "${1:-}" = postgres ] && [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
    export POSTGRES_USER="${POSTGRES_USER:-postgres}"
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    # POSTGRES_INITDB_ARGS is word-split on purpose, as upstream does.
    # shellcheck disable=SC2086
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth=scram-sha-256 \
        ${POSTGRES_INITDB_ARGS:-} >/dev/null
    rm -f "$pwfile"
    export PGPASSWORD="$POSTGRES_PASSWORD" PGUSER="$POSTGRES_USER" PGHOST=/var/run/postgresql
    shift
    pg_ctl -D "$PGDATA" -w -o "$(printf '%q ' "$@") -c listen_addresses=''" start >/dev/null
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
        *.sh)
            echo "docker-entrypoint: running $f"
            if [ -x "$f" ]; then "$f"; else . "$f"; fi
            ;;
        *.sql)
            echo "docker-entrypoint: running $f"
            psql -v ON_ERROR_STOP=1 --no-password --dbname postgres -f "$f"
            ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    unset PGPASSWORD
    echo "docker-entrypoint: PostgreSQL init process complete; ready for start up."
    set -- postgres "$@"
fi

exec "$@"
