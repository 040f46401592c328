#!/usr/bin/env bash
# e2e.sh: the seed's "End-to-End Test (Spawn -> Reload -> Destroy)" against a running stack
# (bash deploy/up.sh), through Caddy on 127.0.0.1:$LAUNCHDB_HTTP_PORT and the manager's API on
# 127.0.0.1:$PGM_API_PORT, plus what a rotation means for a user:
#
#   1. the platform creates the project's database, authenticator and a table; PgBouncer has no
#      entry for it yet and refuses its login (no wildcard);
#   2. the seed's add-project script (docker exec into the manager), then POST spawn: 201; the
#      manager's include has the database with its pool (and no password), PgBouncer serves it;
#   3. through Caddy: the OpenAPI listing shows the table to `authenticated`, a row is read
#      with its JWT, `anon` is refused;
#   4. JWT rotation (PUT a new secret): the old token 401, the new one 200, same container;
#   5. password rotation (ALTER ROLE, then PUT): serves again with the new password, from a
#      new container; a wrong password is never a 201, the serving container keeps serving, and the status says why;
#   6. PgBouncer stopped: the status says not ready and why, Caddy answers 503; started again:
#      the project serves again with nobody acting, same container;
#   7. the seed's reload script reloads; DELETE removes it, Caddy answers 404 JSON and PgBouncer
#      no longer knows the database.
#
# With --up it owns this daemon's launchdb stack: it takes down whatever is there (with
# --volumes and the instance's claim), brings the stack up, and takes it down again at the end,
# also when a step fails; that is how .ci/run calls it. Every check waits on a condition with a
# generous bound, never a fixed sleep. Exit 0 when every step passed.
set -euo pipefail
deploy="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/lib.sh
. "$deploy/lib.sh"

own_stack=0
if [ "${1:-}" = "--up" ]; then own_stack=1; fi

id="e2e_$(od -An -tx1 -N4 /dev/urandom | tr -d ' \n')"
step() { echo "e2e: == $*" >&2; }
fail() {
    echo "e2e: FAILED: $*" >&2
    exit 1
}

cleanup() {
    local rc=$?
    if [ -n "$body_file" ]; then rm -f "$body_file"; fi
    if [ "$rc" -ne 0 ]; then
        echo "e2e: manager log (tail):" >&2
        docker logs --tail 40 launchdb-postgrest-manager 2>&1 | sed 's/^/    /' >&2 || true
        docker logs --tail 20 "postgrest-$id" 2>&1 | sed 's/^/    postgrest: /' >&2 || true
    fi
    curl -s -o /dev/null -X DELETE -H "X-Internal-Key: ${INTERNAL_API_KEY:-}" "$api/internal/postgrest/$id" || true
    "$deploy/scripts/drop-project-db.sh" "$id" >/dev/null 2>&1 || true
    if [ "$own_stack" = 1 ]; then bash "$deploy/down.sh" --volumes >&2 || rc=1; fi
    exit "$rc"
}

body_file=""
api="http://127.0.0.1:${PGM_API_PORT:-9000}"
if [ "$own_stack" = 1 ]; then
    trap cleanup EXIT
    # The test owns this daemon's launchdb stack, as it does at the end (down --volumes): start
    # from none, so a stack or an instance claim an earlier checkout left cannot fail the run.
    bash "$deploy/down.sh" --volumes >&2
    # Short API and replacement waits, so the wrong-password step answers 504 in seconds; the
    # failed replacement is given up (and reported) once its login is refused, 20 s at most.
    PGM_API_TIMEOUT_SECS="${PGM_API_TIMEOUT_SECS:-15}" \
        PGM_REPLACE_TIMEOUT_SECS="${PGM_REPLACE_TIMEOUT_SECS:-20}" bash "$deploy/up.sh" >&2
fi
load_env
api="http://127.0.0.1:${PGM_API_PORT:-9000}"
web="http://127.0.0.1:${LAUNCHDB_HTTP_PORT:-8080}"
body_file="$(mktemp)"
trap cleanup EXIT

# --- helpers ------------------------------------------------------------------------------

# Prints the HTTP status, and the body into $body_file.
http() { # method url [token] [json]
    local args=(-s -o "$body_file" -w '%{http_code}' -X "$1" --max-time 120)
    if [ -n "${3:-}" ]; then args+=(-H "Authorization: Bearer $3"); fi
    if [ -n "${4:-}" ]; then args+=(-H 'Content-Type: application/json' --data-binary "$4"); fi
    curl "${args[@]}" "$2"
}
manager() { # method path [json]: the manager's API with the key (kept out of argv via a file)
    local key_file args
    key_file="$(mktemp)"
    printf 'header = "X-Internal-Key: %s"\n' "$INTERNAL_API_KEY" >"$key_file"
    args=(-s -o "$body_file" -w '%{http_code}' -X "$1" --max-time 120 -K "$key_file")
    if [ -n "${3:-}" ]; then args+=(-H 'Content-Type: application/json' --data-binary "$3"); fi
    curl "${args[@]}" "$api$2"
    rm -f "$key_file"
}
body() { cat "$body_file"; }

# An HS256 JWT for `role`, signed with the secret in $JWT_KEY (from the environment, so the
# secret is never in a process's arguments).
jwt() { # role
    ROLE="$1" python3 -c '
import base64, hashlib, hmac, json, os, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = {"role": os.environ["ROLE"], "aud": "authenticated", "exp": int(time.time()) + 3600}
body = b64(json.dumps(claims).encode())
sig = hmac.new(os.environ["JWT_KEY"].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b64(sig)}")'
}

# Waits (up to $2 seconds) until the command in $1 succeeds.
wait_for() { # description seconds command...
    local what="$1" secs="$2" deadline
    shift 2
    deadline=$(($(date +%s) + secs))
    until "$@"; do
        [ "$(date +%s)" -lt "$deadline" ] || fail "$what: not within ${secs}s"
        sleep 0.2
    done
}
status_is() { [ "$(http GET "$2" "${3:-}")" = "$1" ]; }
container_id() { docker inspect -f '{{.Id}}' "postgrest-$id" 2>/dev/null || true; }
db() { # sql: as the superuser, in the project's database
    docker exec -i launchdb-postgres sh -c 'PGPASSWORD="$POSTGRES_PASSWORD" psql -v ON_ERROR_STOP=1 -qAt -U postgres -d "$0"' "$id" <<<"$1"
}
secret() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }
# `select 1` through PgBouncer as the project's authenticator (password on stdin, never in an
# argument); prints what psql answered, errors included.
through_bouncer() { # password
    printf '%s\n' "$1" | docker exec -i launchdb-pgbouncer sh -c \
        'read -r PGPASSWORD; export PGPASSWORD; psql -X -qAt -h 127.0.0.1 -p 6432 -U "$0_authenticator" -d "$0" -c "select 1" 2>&1' "$id" || true
}
# PgBouncer refuses a database it has no entry for; with auth_query it cannot even look the
# password up there, so the refusal reads "SASL authentication failed", while the same
# password works once the manager has written the entry.
refused() { through_bouncer "$1" | grep -q 'FATAL'; }

jwt_a="$(secret)"
jwt_b="$(secret)"
pw_a="pw-$(secret)"
pw_b="pw-\$\"'@:/?#%-$(secret)" # every character the db-uri must percent-encode

# --- 1. the project's database -------------------------------------------------------------
step "1. database $id, its authenticator and a table"
printf '%s\n' "$pw_a" | "$deploy/scripts/create-project-db.sh" "$id" >/dev/null
db "CREATE TABLE public.todos (id int PRIMARY KEY, task text);
    INSERT INTO public.todos VALUES (1, 'reach the database through PgBouncer');
    GRANT SELECT ON public.todos TO authenticated;"
refused "$pw_a" || fail "PgBouncer reaches $id before any project names it: $(through_bouncer "$pw_a")"

# --- 2. the seed's add-project, then spawn ---------------------------------------------------
step "2. postgrest-add-project.sh through docker exec, then POST spawn"
docker exec -e PGM_WAIT_SECS=0 launchdb-postgrest-manager \
    /scripts/postgrest-add-project.sh "$id" "$jwt_a" "$pw_a" >/dev/null
code=$(manager POST /internal/postgrest/spawn "{\"projectId\":\"$id\"}")
[ "$code" = 201 ] || fail "spawn answered $code: $(body)"
[ "$(body | jq -r .containerName)" = "postgrest-$id" ] || fail "spawn body: $(body)"
first_container="$(container_id)"
include="$LAUNCHDB_DATA_DIR/pgbouncer/databases.ini"
grep -qx "$id = host=postgres port=5432 dbname=$id pool_size=10 reserve_pool=0" "$include" ||
    fail "no pool entry for $id in $include"
if grep -qF "$pw_a" "$include" || grep -qF "$jwt_a" "$include"; then fail "a secret in $include"; fi
[ "$(through_bouncer "$pw_a")" = 1 ] || fail "PgBouncer does not serve $id: $(through_bouncer "$pw_a")"

# --- 3. through Caddy ------------------------------------------------------------------------
step "3. through Caddy: listing, a row with a JWT, anon refused"
auth_a="$(JWT_KEY="$jwt_a" jwt authenticated)"
wait_for "the route to $id" 10 status_is 200 "$web/db/$id/" "$auth_a"
body | jq -e '.paths | has("/todos")' >/dev/null || fail "the listing lacks /todos: $(body)"
code=$(http GET "$web/db/$id/todos" "$auth_a")
[ "$code" = 200 ] || fail "GET /todos as authenticated answered $code: $(body)"
[ "$(body | jq -r '.[0].task')" = "reach the database through PgBouncer" ] || fail "rows: $(body)"
code=$(http GET "$web/db/$id/todos")
[ "$code" = 401 ] || fail "GET /todos as anon answered $code (want 401): $(body)"
code=$(http GET "$web/db/nosuch_project/")
[ "$code" = 404 ] || fail "an unknown project answered $code (want 404)"
body | jq -e '.error == "not_found"' >/dev/null || fail "404 body: $(body)"

# --- 4. JWT rotation -------------------------------------------------------------------------
step "4. JWT rotation: PUT a new secret, same container"
code=$(manager PUT "/internal/postgrest/$id" "{\"jwtSecret\":\"$jwt_b\",\"authenticatorPassword\":\"$pw_a\"}")
[ "$code" = 200 ] || fail "PUT (new secret) answered $code: $(body)"
auth_b="$(JWT_KEY="$jwt_b" jwt authenticated)"
code=$(http GET "$web/db/$id/todos" "$auth_a")
[ "$code" = 401 ] || fail "the old token answered $code after the rotation (want 401)"
code=$(http GET "$web/db/$id/todos" "$auth_b")
[ "$code" = 200 ] || fail "the new token answered $code after the rotation: $(body)"
[ "$(container_id)" = "$first_container" ] || fail "a JWT rotation recreated the container"

# --- 5. password rotation --------------------------------------------------------------------
step "5. password rotation: ALTER ROLE, then PUT; a wrong password is never a 201"
printf '%s\n' "$pw_b" | "$deploy/scripts/create-project-db.sh" "$id" >/dev/null
put_b="$(jq -cn --arg s "$jwt_b" --arg p "$pw_b" '{jwtSecret: $s, authenticatorPassword: $p}')"
code=$(manager PUT "/internal/postgrest/$id" "$put_b")
[ "$code" = 200 ] || fail "PUT (new password) answered $code: $(body)"
code=$(http GET "$web/db/$id/todos" "$auth_b")
[ "$code" = 200 ] || fail "after the password rotation GET answered $code: $(body)"
second_container="$(container_id)"
[ "$second_container" != "$first_container" ] || fail "a password rotation kept the container"

# A wrong password (blue/green, PGM_REPLACE's default): the new container starts beside the
# serving one and never serves; the old one goes on serving through Caddy, and once the
# replacement is given up the status says why in PostgREST's words.
wrong="$(jq -cn --arg s "$jwt_b" '{jwtSecret: $s, authenticatorPassword: "not-the-password"}')"
code=$(manager PUT "/internal/postgrest/$id" "$wrong")
case "$code" in 200 | 201) fail "a wrong password answered $code" ;; esac
code=$(http GET "$web/db/$id/todos" "$auth_b")
[ "$code" = 200 ] || fail "a wrong password took the serving project down: GET answered $code"
reported() {
    [ "$(manager GET "/internal/postgrest/$id")" = 200 ] &&
        body | jq -e '(.lastError // "") | test("authentication failed")' >/dev/null
}
wait_for "status to show the wrong password" 60 reported
code=$(http GET "$web/db/$id/todos" "$auth_b")
[ "$code" = 200 ] || fail "after the failed replacement GET answered $code"
[ "$(container_id)" = "$second_container" ] || fail "the serving container was replaced by one that cannot log in"
code=$(manager PUT "/internal/postgrest/$id" "$put_b")
[ "$code" = 200 ] || fail "PUT (password fixed) answered $code: $(body)"
wait_for "serving again" 30 status_is 200 "$web/db/$id/todos" "$auth_b"

# --- 6. PgBouncer goes away and comes back ---------------------------------------------------
step "6. PgBouncer down: not ready with the reason, a 503 through Caddy; back: serves, no one acting"
before="$(container_id)"
docker stop -t 5 launchdb-pgbouncer >/dev/null
db_down() {
    [ "$(manager GET "/internal/postgrest/$id")" = 200 ] &&
        body | jq -e '.ready == false and (.reason | length > 0)' >/dev/null
}
wait_for "status to show the database is unreachable" 60 db_down
wait_for "Caddy to answer 503 while the project cannot serve" 10 status_is 503 "$web/db/$id/todos" "$auth_b"
docker start launchdb-pgbouncer >/dev/null
wait_for "serving again once PgBouncer is back" 90 status_is 200 "$web/db/$id/todos" "$auth_b"
[ "$(container_id)" = "$before" ] || fail "a database outage recreated the container"

# --- 7. reload, destroy ------------------------------------------------------------------------
step "7. postgrest-reload.sh, then DELETE"
before="$(container_id)"
docker exec launchdb-postgrest-manager /scripts/postgrest-reload.sh "$id" >/dev/null
reloaded() { docker logs "postgrest-$id" 2>&1 | grep -c 'Config reloaded' | awk '$1 >= 2 {ok=1} END {exit !ok}'; }
wait_for "the reload to reach PostgREST" 30 reloaded
[ "$(container_id)" = "$before" ] || fail "a reload recreated the container"
code=$(manager DELETE "/internal/postgrest/$id")
[ "$code" = 200 ] || fail "DELETE answered $code: $(body)"
[ -z "$(container_id)" ] || fail "the container is still there after DELETE"
wait_for "Caddy to answer 404 for $id" 10 status_is 404 "$web/db/$id/todos" "$auth_b"
wait_for "PgBouncer to forget $id's database" 10 refused "$pw_b"

echo "e2e: all steps passed for $id" >&2
