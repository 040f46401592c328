#!/bin/sh
# docker-entrypoint.sh: PID 1 wrapper around PostgREST, so signals mean what LaunchDB expects.
#
# PostgREST has no SIGHUP handler: as PID 1 it would never see a HUP, and as a child a HUP kills
# it. This wrapper stays PID 1, runs PostgREST as its child and turns HUP into USR2 (PostgREST's
# config reload), so the seed's `kill -HUP $(cat /var/run/postgrest.pid)` reloads instead of
# crashing. USR2, USR1, TERM and INT are forwarded as they are. The wrapper exits with
# PostgREST's exit status. POSIX sh: runs in busybox ash and Alpine's ash.
#
# With arguments, it runs them instead (e.g. `postgrest --dump-config ...`).
set -u

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

config="${PGRST_CONFIG:-/etc/postgrest/postgrest.conf}"
pidfile=/var/run/postgrest.pid
child=

log() { echo "docker-entrypoint: $*" >&2; }

# Signals that arrive before the child exists have no one to go to; they are dropped.
forward() {
    if [ -n "$child" ]; then
        kill -s "$1" "$child" 2>/dev/null || :
    fi
}

trap 'log "SIGHUP received: sending SIGUSR2 (config reload) to postgrest"; forward USR2' HUP
trap 'forward USR2' USR2
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward INT' INT

# Our own pid (1), not PostgREST's: a HUP must reach the wrapper. /var/run is a tmpfs in the
# hardened container; without it there is no pid file, and the Docker kill API still works.
echo "$$" >"$pidfile" 2>/dev/null || log "cannot write $pidfile (continuing without it)"

postgrest "$config" &
child=$!

# `wait` returns >128 both when a trapped signal interrupts it (the trap then runs and the child
# lives on) and when the child died of a signal. So: wait until the child is really gone, then
# ask once more. The shell remembers a finished child's status, so this last `wait` gives the
# real one even when the child died just after a signal interrupted the previous `wait`.
while :; do
    wait "$child"
    rc=$?
    if [ "$rc" -le 128 ] || ! kill -0 "$child" 2>/dev/null; then
        break
    fi
done
wait "$child"
status=$?
rm -f "$pidfile" 2>/dev/null || :
exit "$status"
