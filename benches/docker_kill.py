#!/usr/bin/env python3
"""Docker's own cost of one reload signal, against the number of running containers.

Issue 14's reload goal asks a reload among 1,000 running projects to take no longer than
among 200, plus 10 ms. A reload is one `kill -s SIGUSR2` through the Docker API; this measures
that call with no manager anywhere: on a daemon of its own (DOCKER_HOST, a private one, see
../shared/docs/private-docker-daemon.md), it starts N containers, signals them, grows to the
next N, and comes back to the first N at the end (so that a slowdown that stays is age, not
size). At each size, per layer of Docker's signal path:

- api:  POST /containers/{id}/kill?signal=SIGUSR2, one kept-alive connection (as bollard's
        pool), each sample on a container not signalled before (a reload's case: the project
        edited has been idle since it started);
- same: the same call on one container signalled again and again (the bench's floor case);
- ctr:  `ctr task kill` straight to the daemon's containerd (dockerd left out);
- runc: `runc kill` straight on the container's state (what the containerd shim runs);
- the host's mount table, which `runc` reads whole on every run (each container adds its
  rootfs and its network namespace to it): its lines and the time to read it;
- and the host's CPU busy while nothing is asked, and the idling shims' share of it.

The containers run busybox `sh` from the test image, ignoring SIGUSR2: what runs inside does
not take part in the call (the signal is delivered before it returns).

    DOCKER_HOST=unix:///tmp/pd-x/docker.sock python3 benches/docker_kill.py --sizes 200,1000,200

Prints one Markdown row per size. Removes its containers and network at the end, also on
failure or Ctrl-C.
"""

import argparse
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

LABEL = "launchdb.bench=docker-kill"
NETWORK = "pgm-bench-docker-kill"


class Docker(http.client.HTTPConnection):
    """One kept-alive connection to the daemon's unix socket."""

    def __init__(self, path):
        super().__init__("docker")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)

    def call(self, method, url, body=None):
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.request(method, url, json.dumps(body) if body is not None else None, headers)
        response = self.getresponse()
        data = response.read()
        if response.status >= 300:
            raise RuntimeError(f"{method} {url}: {response.status} {data[:200]!r}")
        return json.loads(data) if data else None


def socket_path():
    host = os.environ.get("DOCKER_HOST", "")
    if not host.startswith("unix://") or host == "unix:///var/run/docker.sock":
        raise SystemExit("DOCKER_HOST must name a private daemon's socket (unix://...)")
    return host[len("unix://"):]


def start_one(path, image, name):
    docker = Docker(path)
    body = {
        "Image": image,
        "Entrypoint": ["sh", "-c", 'trap "" USR2; while :; do sleep 3600; done'],
        "Labels": dict([LABEL.split("=")]),
        "HostConfig": {"NetworkMode": NETWORK, "Memory": 32 << 20},
    }
    created = docker.call("POST", f"/containers/create?name={name}", body)
    docker.call("POST", f"/containers/{created['Id']}/start")
    docker.close()
    return created["Id"]


def remove_one(path, cid):
    docker = Docker(path)
    docker.call("DELETE", f"/containers/{cid}?force=true")
    docker.close()


def labelled(docker):
    """Every container this script made, also those of a batch that failed half-way."""
    filters = urllib.parse.quote(json.dumps({"label": [LABEL]}))
    return [c["Id"] for c in docker.call("GET", f"/containers/json?all=1&filters={filters}")]


def remove_network(docker):
    """Docker 20.10 may still count endpoints of containers just removed in bulk: ask again
    for a while, then say what is left instead of failing the run."""
    for _ in range(30):
        try:
            return docker.call("DELETE", f"/networks/{NETWORK}")
        except RuntimeError as e:
            error = e
            time.sleep(1)
    print(f"left behind: network {NETWORK} ({error})")


def shim_ticks():
    """CPU ticks used so far by the containerd shims (one per running container)."""
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if name == "containerd-shim":
            ticks += int(fields[11]) + int(fields[12])
    return ticks


def idle_cost(seconds):
    """Over `seconds` with nothing asked: the host's CPU busy (% of all CPUs) and the
    shims' own share (% of one CPU)."""

    def read():
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(fields), fields[3] + fields[4], shim_ticks()

    (t0, i0, s0), w0 = read(), time.monotonic()
    time.sleep(seconds)
    (t1, i1, s1), w1 = read(), time.monotonic()
    shims = 100.0 * (s1 - s0) / os.sysconf("SC_CLK_TCK") / (w1 - w0)
    return 100.0 * (1 - (i1 - i0) / (t1 - t0)), shims


def mount_table():
    """The host's mount table, which every `runc` run reads whole: lines, and ms to read it."""
    reads = [timed(lambda: open("/proc/self/mountinfo").read()) for _ in range(10)]
    return len(open("/proc/self/mountinfo").readlines()), statistics.median(reads)


def timed(call):
    t0 = time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1000.0


def summary(samples):
    samples = sorted(samples)
    p90 = samples[int(0.9 * (len(samples) - 1))]
    return f"{statistics.median(samples):.1f} ({samples[0]:.1f}–{p90:.1f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200,1000,200")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--image", default="launchdb/postgrest:v1-test")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument(
        "--exec-root",
        help="the daemon's --exec-root (default: exec/ beside its socket, as in "
        "private-docker-daemon.md)",
    )
    args = parser.parse_args()
    path = socket_path()
    docker = Docker(path)
    info = docker.call("GET", "/info")
    exec_root = args.exec_root or os.path.dirname(path) + "/exec"
    containerd = f"{exec_root}/containerd/containerd.sock"
    print(
        f"Docker {info['ServerVersion']}, {info['NCPU']} CPUs, storage {info['Driver']}, "
        f"{info['MemTotal'] / 2**30:.1f} GiB, kernel {info['KernelVersion']}"
    )

    docker.call(
        "POST",
        "/networks/create",
        {"Name": NETWORK, "CheckDuplicate": True, "Labels": dict([LABEL.split("=")])},
    )
    running, signalled, serial = [], set(), 0
    pool = ThreadPoolExecutor(args.parallel)
    rows = []
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            if size > len(running):
                names = [f"pgm-kill-{serial + i}" for i in range(size - len(running))]
                serial += len(names)
                t0 = time.monotonic()
                running += list(pool.map(lambda n: start_one(path, args.image, n), names))
                print(f"started {len(names)} in {time.monotonic() - t0:.0f} s")
            elif size < len(running):
                gone, running = running[size:], running[:size]
                list(pool.map(lambda c: remove_one(path, c), gone))
            # runc keeps one state directory per containerd namespace: the daemon's own.
            (namespace,) = os.listdir(f"{exec_root}/runtime-runc")
            runc_root = f"{exec_root}/runtime-runc/{namespace}"
            time.sleep(10)  # the daemon's own work after a bulk settles
            busy, shims = idle_cost(10)
            mounts, mounts_ms = mount_table()
            fresh = [c for c in running if c not in signalled] or list(running)
            random.shuffle(fresh)
            cold, same, ctr, runc, ctr_start, runc_start = [], [], [], [], [], []
            hot = running[0]
            for i in range(args.samples):
                cid = fresh[i % len(fresh)]
                signalled.add(cid)
                cold.append(timed(lambda: docker.call("POST", f"/containers/{cid}/kill?signal=SIGUSR2")))
                time.sleep(0.1)
                same.append(timed(lambda: docker.call("POST", f"/containers/{hot}/kill?signal=SIGUSR2")))
                time.sleep(0.1)
                if i % 2 == 0:
                    other = random.choice(running)
                    ctr.append(timed(lambda: subprocess.run(
                        ["ctr", "--address", containerd, "--namespace", namespace,
                         "task", "kill", "--signal", "SIGUSR2", other], check=True)))
                    runc.append(timed(lambda: subprocess.run(
                        ["runc", "--root", runc_root, "kill", other, "USR2"], check=True)))
                    # The programs' own start, which both calls above include.
                    ctr_start.append(timed(lambda: subprocess.run(
                        ["ctr", "--version"], check=True, capture_output=True)))
                    runc_start.append(timed(lambda: subprocess.run(
                        ["runc", "--version"], check=True, capture_output=True)))
                    time.sleep(0.1)
            row = (f"| {size} | {summary(cold)} | {summary(same)} | {summary(ctr)} "
                   f"({summary(ctr_start)}) | {summary(runc)} ({summary(runc_start)}) "
                   f"| {mounts}, {mounts_ms:.1f} | {busy:.1f}, {shims:.1f} |")
            print(row, flush=True)
            rows.append(row)
    finally:
        list(pool.map(lambda c: remove_one(path, c), labelled(Docker(path))))
        remove_network(Docker(path))
    print("\n| running | api, fresh container | api, same container | ctr task kill (`ctr --version`) "
          "| runc kill (`runc --version`) | host mount table: lines, ms to read "
          "| idle: host CPU busy %, shims % of one CPU |\n|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("ms: median (min–p90)")


if __name__ == "__main__":
    main()
