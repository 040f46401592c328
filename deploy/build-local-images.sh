#!/usr/bin/env bash
# build-local-images.sh: builds the stack's images offline-from-a-registry, i.e. from Debian's
# package mirror and this repository only (this machine has no image registry). Idempotent: an
# image that already exists is skipped (FORCE=1 rebuilds the manager image, which changes with
# every build of the binary; the others only change with their Dockerfiles).
#
# Images (names from env, defaults are the local names deploy/up.sh uses):
#   LAUNCHDB_BASE_IMAGE      launchdb/debian-base:bookworm   debootstrap --variant=minbase + docker import
#   LAUNCHDB_POSTGRES_IMAGE  launchdb/postgres:15-local      Debian postgresql-15   (upstream: postgres:15)
#   LAUNCHDB_PGBOUNCER_IMAGE launchdb/pgbouncer:1.18-local   Debian pgbouncer 1.18  (upstream: edoburu/pgbouncer:1.18.0)
#   LAUNCHDB_CADDY_IMAGE     launchdb/caddy:2.6.2-local      Debian caddy 2.6.2     (upstream: caddy:2.6.2)
#   LAUNCHDB_MANAGER_IMAGE   launchdb/postgrest-manager:local  host-built binary    (production: launchdb/postgrest-manager:v1)
#   PGM_IMAGE                launchdb/postgrest:v1-test      postgrest/build-test-image.sh (only for that name)
#
# Measured on this machine (2 cores, shared with other builds), cold:
#   base: debootstrap + import 32 s (117 MB image)
#   postgres 42 s (598 MB), pgbouncer 40 s (291 MB), caddy 18 s (262 MB)
#   manager image 17 s once the binary exists (a cold cargo build --release: about 3 min)
#   PostgREST test image 18 s (the double already compiled)
# Warm (every image exists): 0.1 s; nothing is built, not even cargo.
#
# LAUNCHDB_MANAGER_BIN=<path> puts that binary in the manager image instead of building one.
# Set LAUNCHDB_SKIP_MANAGER=1 to skip the manager image, LAUNCHDB_SKIP_POSTGREST=1 for PGM_IMAGE.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"

base_image="${LAUNCHDB_BASE_IMAGE:-launchdb/debian-base:bookworm}"
postgres_image="${LAUNCHDB_POSTGRES_IMAGE:-launchdb/postgres:15-local}"
pgbouncer_image="${LAUNCHDB_PGBOUNCER_IMAGE:-launchdb/pgbouncer:1.18-local}"
caddy_image="${LAUNCHDB_CADDY_IMAGE:-launchdb/caddy:2.6.2-local}"
manager_image="${LAUNCHDB_MANAGER_IMAGE:-launchdb/postgrest-manager:local}"
postgrest_image="${PGM_IMAGE:-launchdb/postgrest:v1-test}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

log() { echo "build-local-images: $*" >&2; }
exists() { docker image inspect "$1" >/dev/null 2>&1; }
elapsed() { echo "$(($(date +%s) - $1)) s"; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. Debian bookworm base: debootstrap (about 26 s) and docker import (about 5 s).
if exists "$base_image"; then
    log "$base_image exists"
else
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    t0=$(date +%s)
    log "debootstrap bookworm (minbase) from $mirror"
    if ! debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
        tail -20 "$work/debootstrap.log" >&2
        exit 1
    fi
    cat >"$work/rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
    # Keep images small: no docs/man pages/recommends from later apt-get installs.
    cat >"$work/rootfs/etc/apt/apt.conf.d/90launchdb" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
APT
    cat >"$work/rootfs/etc/dpkg/dpkg.cfg.d/90launchdb-nodoc" <<'DPKG'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
DPKG
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    log "importing $base_image ($(elapsed "$t0") so far)"
    tar --numeric-owner -C "$work/rootfs" -c . |
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["/bin/bash"]' \
            - "$base_image" >/dev/null
    rm -rf "$work/rootfs"
    log "built $base_image in $(elapsed "$t0")"
fi

# 2. Package images on that base (apt-get inside docker build; Debian's mirror only).
build_pkg_image() { # <image> <dir under deploy/images>
    local image="$1" dir="$here/images/$2" t0
    if exists "$image"; then
        log "$image exists"
        return
    fi
    t0=$(date +%s)
    log "building $image"
    if ! docker build --build-arg BASE_IMAGE="$base_image" -t "$image" "$dir" >"$work/build.log" 2>&1; then
        tail -30 "$work/build.log" >&2
        exit 1
    fi
    log "built $image in $(elapsed "$t0")"
}
build_pkg_image "$postgres_image" postgres
build_pkg_image "$pgbouncer_image" pgbouncer
build_pkg_image "$caddy_image" caddy

# 3. The manager image: the host-built binary and the seed's scripts. The context is a temp dir
#    with just those files (the repository holds target/, state and rendered configs).
if [ "${LAUNCHDB_SKIP_MANAGER:-0}" != 1 ]; then
    if exists "$manager_image" && [ "${FORCE:-0}" != 1 ]; then
        log "$manager_image exists (FORCE=1 rebuilds it from a fresh cargo build)"
    else
        t0=$(date +%s)
        binary="${LAUNCHDB_MANAGER_BIN:-}"
        if [ -z "$binary" ]; then
            log "cargo build --release --bin postgrest-manager"
            (cd "$repo" && cargo build --quiet --release --bin postgrest-manager)
            binary="$repo/target/release/postgrest-manager"
        fi
        ctx="$work/manager"
        mkdir -p "$ctx/scripts"
        cp "$binary" "$ctx/postgrest-manager"
        # The release profile keeps debuginfo (50 MB); the image does not need it (about 10 MB).
        if command -v strip >/dev/null; then strip --strip-debug "$ctx/postgrest-manager"; fi
        cp "$here"/scripts/postgrest-*.sh "$ctx/scripts/"
        chmod 755 "$ctx/postgrest-manager" "$ctx"/scripts/*.sh
        cp "$here/images/manager/Dockerfile" "$ctx/"
        if ! docker build --build-arg BASE_IMAGE="$base_image" -t "$manager_image" "$ctx" >"$work/build.log" 2>&1; then
            tail -30 "$work/build.log" >&2
            exit 1
        fi
        log "built $manager_image in $(elapsed "$t0")"
    fi
fi

# 4. The PostgREST image the manager runs, when it is the local test image.
if [ "${LAUNCHDB_SKIP_POSTGREST:-0}" != 1 ]; then
    if [ "$postgrest_image" = launchdb/postgrest:v1-test ]; then
        if exists "$postgrest_image"; then
            log "$postgrest_image exists"
        else
            t0=$(date +%s)
            bash "$repo/postgrest/build-test-image.sh"
            log "built $postgrest_image in $(elapsed "$t0")"
        fi
    elif ! exists "$postgrest_image"; then
        log "warning: $postgrest_image is missing; build it (docker-compose --profile build build postgrest-image)"
    fi
fi
