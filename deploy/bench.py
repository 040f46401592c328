#!/usr/bin/env python3
"""deploy/bench.py: the serving path through the whole stack, measured (issue 9's numbers).

Against a running stack (bash deploy/up.sh), for each of --runs fresh projects:

  spawn   POST /internal/postgrest/spawn -> 201, and -> the first 200 through Caddy
          (GET /db/<id>/items with a JWT), polled every 2 ms from the request on;
  ready   the moment the new container itself first answers GET /ready (polled on its own
          address every 2 ms), and how long after it Caddy first proxied the project (the
          route lag: Caddy routes a project only once the manager saw it serve);
  floor   the same image and rendered config started by hand with `docker run -d` on the same
          network, -> its /ready: what a container costs without the manager or Caddy;
  rotate  PUT a new JWT secret -> the PUT's answer, and -> the first 200 for a token signed
          with the new secret through Caddy (the old one is then refused).

Prints a Markdown table (median, p90, max) and the machine. Standard library only.
Usage: python3 deploy/bench.py [--runs N]
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

DEPLOY = pathlib.Path(__file__).resolve().parent


def env_file():
    values = {}
    for line in (DEPLOY / ".env").read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
    return values


ENV = env_file()
API = f"http://127.0.0.1:{os.environ.get('PGM_API_PORT', '9000')}"
WEB = f"http://127.0.0.1:{os.environ.get('LAUNCHDB_HTTP_PORT', '8080')}"
KEY = ENV["INTERNAL_API_KEY"]
DATA = pathlib.Path(ENV.get("LAUNCHDB_DATA_DIR", DEPLOY / "data"))


def jwt(secret, role="authenticated"):
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"role": role, "aud": "authenticated", "exp": int(time.time()) + 3600}
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def http(method, url, body=None, headers=None, timeout=120):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def manager(method, path, body=None):
    return http(method, API + path, body, {"X-Internal-Key": KEY})


def poll_until(check, deadline_s=60, every=0.002):
    """Returns the monotonic time at which check() first held."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if check():
            return time.monotonic()
        time.sleep(every)
    raise TimeoutError("not within the deadline")


def sh(*args, stdin=None):
    return subprocess.run(args, input=stdin, capture_output=True, text=True, check=True).stdout


def container_ip(name):
    try:
        out = sh("docker", "inspect", "-f",
                 '{{(index .NetworkSettings.Networks "launchdb-internal").IPAddress}}', name)
        return out.strip() or None
    except subprocess.CalledProcessError:
        return None


def ready(ip):
    return http("GET", f"http://{ip}:3001/ready", timeout=1)[0] == 200


class Watch(threading.Thread):
    """Polls in the background from now on; .at is when check() first held."""

    def __init__(self, check):
        super().__init__(daemon=True)
        self.check, self.at = check, None
        self.start()

    def run(self):
        self.at = poll_until(self.check)


def one_run(n):
    pid = f"bench_{os.getpid()}_{n}"
    secret_a, secret_b = os.urandom(24).hex(), os.urandom(24).hex()
    password = "pw-" + os.urandom(12).hex()
    sh("bash", str(DEPLOY / "scripts/create-project-db.sh"), pid, stdin=password + "\n")
    sql = ("CREATE TABLE public.items (id int); INSERT INTO public.items VALUES (1);"
           "GRANT SELECT ON public.items TO authenticated;")
    subprocess.run(["docker", "exec", "-i", "launchdb-postgres", "sh", "-c",
                    'PGPASSWORD="$POSTGRES_PASSWORD" psql -q -U postgres -d "$0"', pid],
                   input=sql, text=True, check=True, capture_output=True)
    token_a, token_b = jwt(secret_a), jwt(secret_b)
    through_caddy = lambda token: http(
        "GET", f"{WEB}/db/{pid}/items", headers={"Authorization": f"Bearer {token}"},
        timeout=5)[0] == 200
    floor_name = f"{pid}_floor"
    try:
        # spawn, the container's own /ready, and Caddy
        t0 = time.monotonic()
        caddy = Watch(lambda: through_caddy(token_a))
        own = Watch(lambda: (ip := container_ip(f"postgrest-{pid}")) is not None and ready(ip))
        status, body = manager("POST", "/internal/postgrest/spawn",
                               {"projectId": pid, "jwtSecret": secret_a,
                                "authenticatorPassword": password})
        t_201 = time.monotonic()
        assert status == 201, (status, body)
        caddy.join(60)
        own.join(60)
        result = {
            "spawn_201": t_201 - t0,
            "spawn_caddy_200": caddy.at - t0,
            "route_lag": caddy.at - own.at,
        }

        # floor: the same image and config by hand
        config = tempfile.mkdtemp(prefix="pgm-bench-floor-")
        shutil.copy(DATA / "projects" / pid / "postgrest.conf", config)
        os.chown(config, 1000, 1000)
        os.chown(os.path.join(config, "postgrest.conf"), 1000, 1000)
        os.chmod(config, 0o700)
        image = sh("docker", "inspect", "-f", "{{.Config.Image}}", f"postgrest-{pid}").strip()
        t0 = time.monotonic()
        sh("docker", "run", "-d", "--name", floor_name, "--network", "launchdb-internal",
           "--user", "1000:1000", "--read-only", "--tmpfs", "/run:uid=1000,gid=1000",
           "-v", f"{config}:/etc/postgrest:ro", image)
        ip = container_ip(floor_name)
        result["floor_ready"] = poll_until(lambda: ready(ip)) - t0

        # JWT rotation through Caddy
        t0 = time.monotonic()
        rotated = Watch(lambda: through_caddy(token_b))
        status, body = manager("PUT", f"/internal/postgrest/{pid}",
                               {"jwtSecret": secret_b, "authenticatorPassword": password})
        t_put = time.monotonic()
        assert status == 200, (status, body)
        rotated.join(60)
        assert not through_caddy(token_a), "the old token still works"
        result["rotate_put"] = t_put - t0
        result["rotate_caddy_200"] = rotated.at - t0
        return result
    finally:
        subprocess.run(["docker", "rm", "-f", floor_name], capture_output=True)
        manager("DELETE", f"/internal/postgrest/{pid}")
        subprocess.run(["bash", str(DEPLOY / "scripts/drop-project-db.sh"), pid],
                       capture_output=True)
        shutil.rmtree(locals().get("config", "/nonexistent"), ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    runs = [one_run(n) for n in range(args.runs)]
    rows = [
        ("spawn: request -> 201", "spawn_201"),
        ("spawn: request -> first 200 through Caddy", "spawn_caddy_200"),
        ("floor: `docker run` -> the container's /ready", "floor_ready"),
        ("route lag: the container's first /ready -> first 200 through Caddy", "route_lag"),
        ("JWT rotation: PUT -> answer", "rotate_put"),
        ("JWT rotation: PUT -> new token 200 through Caddy", "rotate_caddy_200"),
    ]
    print(f"runs: {args.runs}; machine: {os.cpu_count()} CPUs, "
          f"{sh('docker', 'version', '-f', '{{.Server.Version}}').strip()} Docker; "
          f"commit {sh('git', '-C', str(DEPLOY), 'rev-parse', '--short', 'HEAD').strip()}")
    print()
    print("| what | median ms | p90 ms | max ms |")
    print("|---|---:|---:|---:|")
    for label, key in rows:
        values = sorted(r[key] * 1000 for r in runs)
        p90 = values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]
        print(f"| {label} | {statistics.median(values):.1f} | {p90:.1f} | {values[-1]:.1f} |")


if __name__ == "__main__":
    main()
