#!/bin/sh
# healthcheck.sh: exit 0 when PostgREST's admin server says it is alive, 1 otherwise.
# Uses curl when the image has it (production, Alpine), else busybox wget (test image).
# Never through a proxy: the target is this container's own loopback.
url="http://127.0.0.1:${ADMIN_PORT:-3001}/live"
if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --noproxy '*' --max-time 3 "$url" || exit 1
else
    # Not `wget -T`: Debian's static busybox 1.35 segfaults on it. `timeout` bounds it instead.
    timeout 3 wget -q -Y off -O /dev/null "$url" || exit 1
fi
exit 0
