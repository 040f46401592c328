#!/bin/sh
# install-postgrest.sh: puts a PostgREST binary at /usr/local/bin/postgrest at image build time.
#
#   POSTGREST_SOURCE=release  official static release from GitHub, sha1-checked (production)
#   POSTGREST_SOURCE=local    bin/postgrest from the build context, copied to $LOCAL_DIR (tests)
#
# Runs from the Dockerfile's single RUN so that production and test images differ only in
# their base image and this switch.
set -eu

: "${POSTGREST_SOURCE:=release}"
: "${POSTGREST_VERSION:=v11.2.2}"
: "${POSTGREST_SHA1:=9997e5969c2a600c2ded35121ff339f35ba53e84}"
LOCAL_DIR="${LOCAL_DIR:-/tmp/postgrest-bin}"
target=/usr/local/bin/postgrest

mkdir -p /usr/local/bin /etc/postgrest /run
# A tmpfs mounted on /run takes the mode of the image's /run (Docker copies it up), whatever its
# mode= option says. PostgREST's UID (10001) must be able to write the wrapper's /var/run/postgrest.pid there.
chmod 1777 /run
[ -e /var/run ] || { mkdir -p /var && ln -s /run /var/run; } # Alpine has it; the pid file path relies on it
case "$POSTGREST_SOURCE" in
release)
    # curl and CA certificates stay (health checks); xz is only needed to unpack.
    apk add --no-cache curl ca-certificates
    apk add --no-cache --virtual .postgrest-unpack xz
    tarball="postgrest-${POSTGREST_VERSION}-linux-static-x64.tar.xz"
    work=$(mktemp -d)
    curl -fsSL --retry 3 -o "$work/$tarball" \
        "https://github.com/PostgREST/postgrest/releases/download/${POSTGREST_VERSION}/${tarball}"
    # PostgREST publishes no checksums: the pin is ours. A mismatch fails the build.
    echo "${POSTGREST_SHA1}  $work/$tarball" | sha1sum -c -
    xz -dc "$work/$tarball" | tar -x -C "$work"
    cp "$work/postgrest" "$target"
    rm -rf "$work"
    apk del --no-cache .postgrest-unpack
    ;;
local)
    if [ ! -f "$LOCAL_DIR/postgrest" ]; then
        echo "install-postgrest.sh: no bin/postgrest in the build context; run build-test-image.sh" >&2
        exit 1
    fi
    cp "$LOCAL_DIR/postgrest" "$target"
    ;;
*)
    echo "install-postgrest.sh: POSTGREST_SOURCE must be release or local, not '$POSTGREST_SOURCE'" >&2
    exit 1
    ;;
esac
rm -rf "$LOCAL_DIR"
chmod 0755 "$target" /usr/local/bin/docker-entrypoint.sh /usr/local/bin/healthcheck.sh
# Fail the build now rather than at container start if the binary cannot run here.
"$target" --help >/dev/null
