#!/usr/bin/env bash
# build-test-image.sh: builds launchdb/postgrest:v1-test from local material only (no registry).
#
# It is the production Dockerfile with two build args changed: BASE_IMAGE is a busybox root
# filesystem imported from the host's busybox-static, and POSTGREST_SOURCE=local installs the
# PostgREST test double (postgrest/double) instead of the release download. Idempotent: a second
# run reuses the base image, cargo's and docker's caches, and takes a few seconds.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
base_image="launchdb/busybox-base:local"
image="${IMAGE:-launchdb/postgrest:v1-test}"
triple=x86_64-unknown-linux-gnu

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

log() { echo "build-test-image: $*" >&2; }

# ldd exits non-zero for a static binary, so capture its answer rather than pipe it (pipefail).
is_static() {
    local out
    out="$(ldd "$1" 2>&1 || true)"
    case "$out" in
    *"not a dynamic executable"* | *"statically linked"*) return 0 ;;
    *) return 1 ;;
    esac
}

# 1. A static busybox from the host (Debian's busybox-static).
if [ ! -x /bin/busybox ]; then
    log "installing busybox-static"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
fi
if ! is_static /bin/busybox; then
    log "/bin/busybox is not static; install busybox-static"
    exit 1
fi

# 2. The base root filesystem: busybox and its applets, users, the directories the image needs.
rootfs="$work/rootfs"
mkdir -p "$rootfs"/{bin,etc/postgrest,root,run,tmp,usr/local/bin,var}
cp /bin/busybox "$rootfs/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
done
ln -s /run "$rootfs/var/run" # as on Alpine
chmod 1777 "$rootfs/tmp"
cat >"$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
postgrest:x:10001:10001:postgrest:/nonexistent:/bin/false
PASSWD
cat >"$rootfs/etc/group" <<'GROUP'
root:x:0:
postgrest:x:10001:
GROUP
# A reproducible tar, so its hash identifies the content and a rerun can skip the import.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$work/rootfs.tar" .
hash="$(sha256sum "$work/rootfs.tar" | cut -c1-64)"
have="$(docker image inspect -f '{{index .Config.Labels "launchdb.content-hash"}}' "$base_image" 2>/dev/null || true)"
if [ "$have" = "$hash" ]; then
    log "$base_image is up to date"
else
    log "importing $base_image"
    docker import \
        --change "LABEL launchdb.content-hash=$hash" \
        --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/sh"]' \
        "$work/rootfs.tar" "$base_image" >/dev/null
fi

# 3. The double, statically linked and stripped (the Dockerfile's COPY-then-install keeps two
#    copies in the layers, so size counts). --target keeps these flags away from the host
#    builds' cache (target/<triple>/ instead of target/release/).
log "building the PostgREST test double"
(cd "$repo" && RUSTFLAGS='-C target-feature=+crt-static' \
    CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --quiet --release -p postgrest-double --target "$triple")
binary="$repo/target/$triple/release/postgrest"
if ! is_static "$binary"; then
    log "$binary is not static"
    exit 1
fi
cp "$binary" "$here/bin/postgrest.tmp"
mv "$here/bin/postgrest.tmp" "$here/bin/postgrest"

# 4. The image. The context is a copy of just the files the Dockerfile uses: postgrest/ may also
#    hold the manager's rendered configs (secrets, 0700 dirs owned by UID 10001).
ctx="$work/context"
mkdir -p "$ctx/bin"
cp "$here"/{Dockerfile,docker-entrypoint.sh,healthcheck.sh,install-postgrest.sh} "$ctx/"
cp "$here/bin/postgrest" "$ctx/bin/postgrest"
log "building $image"
if ! docker build \
    --build-arg BASE_IMAGE="$base_image" \
    --build-arg POSTGREST_SOURCE=local \
    -t "$image" "$ctx" >"$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    exit 1
fi
log "built $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)"
