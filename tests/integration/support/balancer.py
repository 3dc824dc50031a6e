"""HAProxy in front of API replicas, as an ingress without affinity would be.

Round-robin, no stickiness, no preference for the last server: every request is balanced on
its own, so a POST and the GET that follows usually land on different replicas. Each response
says which replica served it in ``X-Served-By`` (the server name, ``%s``). Timeouts are long
enough for SSE. A replica that stops accepting connections is retried elsewhere
(``redispatch``) and marked down by the health check (``GET /health``, liveness only: a replica
without its broker still answers, with 503 and ``Retry-After``, as it would behind an ingress).

The configuration lives in the test's directory; the frontend and the stats page get free
ports. ``haproxy`` comes from Debian (``apt-get install -y haproxy``).
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from .processes import Service, free_port

SERVED_BY = "X-Served-By"
READY_TIMEOUT_S = 20.0
CHECK_INTERVAL_MS = 500
# A busy replica on a shared machine may take a while to answer /health: only a replica that
# fails three checks in a row (or refuses connections: redispatch) is taken out.
CHECK_TIMEOUT = "5s"
CHECK_FALL = 3

INSTALL_HINT = "haproxy is not installed: apt-get install -y haproxy (scripts/ensure-test-tools.sh)"


def haproxy_program() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None
    )


class Balancer:
    """One HAProxy process balancing over ``apis``; ``url`` is where clients connect."""

    def __init__(self, apis: Sequence[Service], directory: Path) -> None:
        program = haproxy_program()
        if program is None:
            raise RuntimeError(INSTALL_HINT)
        self.program = program
        self.apis = list(apis)
        self.dir = directory
        self.port = free_port()
        self.stats_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = directory / "haproxy.cfg"
        self.log_path = directory / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def server_name(self, api: Service) -> str:
        """The name the balancer gives ``api`` (what ``X-Served-By`` carries)."""
        return api.name

    @property
    def server_names(self) -> list[str]:
        return [self.server_name(api) for api in self.apis]

    def config(self) -> str:
        servers = "\n".join(
            f"    server {self.server_name(api)} {api.base_url.removeprefix('http://')} "
            f"check inter {CHECK_INTERVAL_MS} fall {CHECK_FALL} rise 1"
            for api in self.apis
        )
        return f"""\
global
    maxconn 4000
    nbthread 1

defaults
    mode http
    # Clients keep their connections; each request gets a server connection of its own, so
    # the balancer never reuses one that uvicorn is closing as idle (the client would see
    # its connection dropped without a response).
    option http-server-close
    timeout connect 2s
    timeout client 300s
    timeout server 300s
    timeout http-request 30s
    timeout http-keep-alive 60s
    timeout queue 30s
    timeout tunnel 300s
    timeout check {CHECK_TIMEOUT}
    retries 3
    option redispatch 1
    retry-on conn-failure

frontend api
    bind 127.0.0.1:{self.port}
    default_backend apis

backend apis
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    http-response set-header X-Served-By %s
{servers}

listen stats
    bind 127.0.0.1:{self.stats_port}
    stats enable
    stats uri /stats
"""

    def start(self) -> Balancer:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())
        check = subprocess.run(
            [self.program, "-c", "-q", "-f", str(self.config_path)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refuses {self.config_path}:\n{check.stdout}{check.stderr}")
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [self.program, "-db", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self.wait_servers_up(self.server_names)
        return self

    def states(self) -> dict[str, str]:
        """The health of every server as the balancer sees it (``UP``, ``DOWN``, …)."""
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            response = client.get(f"http://127.0.0.1:{self.stats_port}/stats;csv")
        response.raise_for_status()
        rows = csv.DictReader(io.StringIO(response.text.lstrip("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "apis" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_servers_up(self, names: Sequence[str], timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                states = self.states()
            except httpx.HTTPError:
                states = {}
            if states and all(states.get(name, "").startswith("UP") for name in names):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the balancer's servers are not all UP within {timeout:g}s: {states}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Balancer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
