#!/bin/sh
# docker-entrypoint.sh: PID 1 wrapper around PostgREST, so signals mean what LaunchDB expects.
#
# PostgREST has no SIGHUP handler: as PID 1 it would never see a HUP, and as a child a HUP kills
# it. This wrapper stays PID 1, runs PostgREST as its child and turns HUP into USR2 (PostgREST's
# config reload), so the seed's `kill -HUP $(cat /var/run/postgrest.pid)` reloads instead of
# crashing. USR2, USR1, TERM and INT are forwarded as they are. The wrapper exits with
# PostgREST's exit status. POSIX sh: runs in busybox ash and Alpine's ash.
#
# Early reloads: PostgREST installs its USR1/USR2 handlers only during start-up (v11.2.2
# `App.run`: after reading the config and starting the connection worker, before the admin and
# API servers listen); until then either signal kills it (default action). So USR1/USR2 (and HUP)
# are held back until PostgREST's admin server answers `/live` on ADMIN_PORT (default 3001),
# then delivered, once each, in arrival order: a reload that arrives early is not lost (the
# config file may have changed) and does not kill. `/live` answering proves the handlers are in
# place. Without an admin server (no `admin-server-port`) held signals are never delivered: the
# manager always renders one. TERM and INT are never held.
#
# With arguments, it runs them instead (e.g. `postgrest --dump-config ...`).
set -u

if [ "$#" -gt 0 ]; then
    exec "$@"
fi

config="${PGRST_CONFIG:-/etc/postgrest/postgrest.conf}"
pidfile="${PGRST_PIDFILE:-/var/run/postgrest.pid}"
here="$(dirname "$0")"
child=
ready=
held=

log() { echo "docker-entrypoint: $*" >&2; }

forward() {
    case "$1" in
    USR1 | USR2)
        if [ -z "$ready" ]; then
            # Hold it; a second one of the same kind adds nothing (a reload reads the latest file).
            case " $held " in
            *" $1 "*) ;;
            *) held="${held:+$held }$1" ;;
            esac
            log "SIG$1 held until postgrest answers /live"
            return
        fi
        ;;
    esac
    if [ -n "$child" ]; then
        kill -s "$1" "$child" 2>/dev/null || :
    else
        # TERM/INT before the child exists: remember it, delivered right after the start.
        early_stop="$1"
    fi
}
early_stop=

# The same probe as the image's healthcheck (curl, else busybox wget), quietly.
alive() {
    ADMIN_PORT="${ADMIN_PORT:-3001}" sh "$here/healthcheck.sh" >/dev/null 2>&1
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
if [ -n "$early_stop" ]; then
    kill -s "$early_stop" "$child" 2>/dev/null || :
fi

# Until /live answers: poll, backing off from 50 ms to 1 s. Traps run between commands, so a
# signal waits at most one sleep or one probe (3 s at worst).
delay=0.05
while [ -z "$ready" ] && kill -0 "$child" 2>/dev/null; do
    if alive; then
        ready=1
        for sig in $held; do
            log "delivering held SIG$sig"
            kill -s "$sig" "$child" 2>/dev/null || :
        done
        held=
        break
    fi
    sleep "$delay"
    case "$delay" in
    0.05) delay=0.1 ;;
    0.1) delay=0.2 ;;
    0.2) delay=0.5 ;;
    *) delay=1 ;;
    esac
done

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
