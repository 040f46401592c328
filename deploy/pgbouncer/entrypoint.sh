#!/bin/sh
# PgBouncer for the LaunchDB stack: writes pgbouncer.ini and the auth file from the environment
# at every start (0600, in a private tmpfs-like dir of the container user, never in the image),
# then execs pgbouncer. POSIX sh: runs on the local Debian image and on Alpine-based upstream
# images alike (needs `pgbouncer` on PATH).
#
# Per-project logins (<id>_authenticator) need no userlist: PgBouncer asks PostgreSQL through
# auth_user + auth_query (pgbouncer.get_auth, created by deploy/postgres/initdb.d). Only the auth
# user itself is in the auth file.
#
# [databases] holds no wildcard: it %includes PGBOUNCER_DATABASES_INCLUDE, which the PostgREST
# manager writes from its desired state (one entry per project database, with its pool) and
# applies with SIGHUP, PgBouncer's reload. A database no project names is not reachable
# through PgBouncer. The file must exist (deploy/up.sh creates it empty); an empty one is
# created here when the directory is writable.
set -eu

auth_user="${PGBOUNCER_AUTH_USER:-pgbouncer_auth}"
auth_pw="${PGBOUNCER_AUTH_PASSWORD:?PGBOUNCER_AUTH_PASSWORD must be set}"
case "$auth_pw" in *'"'* | *"'"* | *'\'*)
    echo "pgbouncer-entrypoint: PGBOUNCER_AUTH_PASSWORD must not contain quotes or backslashes" >&2
    exit 1
    ;;
esac
dir="${PGBOUNCER_RUN_DIR:-/tmp/pgbouncer}"
include="${PGBOUNCER_DATABASES_INCLUDE:-/etc/launchdb/pgbouncer-include/databases.ini}"
case "$include" in /*) ;; *)
    echo "pgbouncer-entrypoint: PGBOUNCER_DATABASES_INCLUDE must be an absolute path" >&2
    exit 1
    ;;
esac
# In a subshell: a failed redirection of `:` would end the whole script.
if [ ! -f "$include" ] && ! (: >>"$include") 2>/dev/null; then
    echo "pgbouncer-entrypoint: $include is missing and cannot be created: create it (empty) on the host (deploy/up.sh does)" >&2
    exit 1
fi

umask 077
mkdir -p "$dir"
chmod 700 "$dir"
printf '"%s" "%s"\n' "$auth_user" "$auth_pw" >"$dir/userlist.txt"
cat >"$dir/pgbouncer.ini" <<INI
[databases]
; one entry per project database, written by the PostgREST manager; no wildcard
%include $include

[pgbouncer]
listen_addr = *
listen_port = 6432
unix_socket_dir =
pool_mode = transaction
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
auth_user = $auth_user
auth_query = SELECT username, password FROM pgbouncer.get_auth(\$1)
; the health check asks the admin console (SHOW VERSION): with no wildcard there is no
; database it could reach without a project
stats_users = $auth_user
max_client_conn = ${PGBOUNCER_MAX_CLIENT_CONN:-1000}
default_pool_size = ${PGBOUNCER_DEFAULT_POOL_SIZE:-20}
; PgBouncer refuses a pool for this long after a failed server login (default 15 s)
server_login_retry = ${PGBOUNCER_SERVER_LOGIN_RETRY:-3}
ignore_startup_parameters = extra_float_digits
log_connections = ${PGBOUNCER_LOG_CONNECTIONS:-0}
log_disconnections = ${PGBOUNCER_LOG_CONNECTIONS:-0}
INI
chmod 600 "$dir/pgbouncer.ini" "$dir/userlist.txt"
exec pgbouncer "$dir/pgbouncer.ini"
