#!/usr/bin/env bash
# tests/run.sh [COMMAND...]: the whole test suite, as README's "Test it" and .ci/run call it:
#   bash tests/run.sh cargo test --workspace
#
#   1. images, built offline from package registries only: the PostgREST test image
#      (postgrest/build-test-image.sh) and the stack's (deploy/build-local-images.sh: Debian
#      base, PostgreSQL 15, PgBouncer 1.18, Caddy 2.6.2, and the manager from this checkout);
#   2. the tests' database (tests/db.sh up): a real PostgreSQL behind a real PgBouncer, which
#      the harness connects to every test's network; removed again on exit, pass or fail;
#   3. COMMAND (default `cargo test --workspace`): unit tests, then integration tests against
#      the real Docker daemon (and the double's own test against PostgreSQL), with the
#      database's variables (PGMT_PGBOUNCER, PGMT_POSTGRES, PGRST_DOUBLE_TEST_DB_URI) set;
#   4. deploy/e2e.sh --up: the seed's end-to-end test against the whole stack, brought up and
#      taken down (with its volumes) around it.
#
# PGM_E2E=0 skips step 4 (e.g. `PGM_E2E=0 bash tests/run.sh cargo test --test api`).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "tests/run.sh: $*" >&2; }

log "images"
bash postgrest/build-test-image.sh
FORCE=1 bash deploy/build-local-images.sh

log "the tests' database"
trap 'bash tests/db.sh down' EXIT
eval "$(bash tests/db.sh up)"

if [ "$#" -eq 0 ]; then set -- cargo test --workspace; fi
log "$*"
"$@"

if [ "${PGM_E2E:-1}" = 1 ]; then
    log "end-to-end: deploy/e2e.sh --up"
    bash deploy/e2e.sh --up
fi
