"""HAProxy in TCP mode in front of broker nodes, as a Kubernetes Service is in front of pods.

Clients connect to one address (``127.0.0.1:<port>``); each new TCP connection goes to the next
healthy node (round-robin). A node is healthy when it answers the AMQP 0-9-1 protocol header
with the first bytes of a ``connection.start`` frame (type 1, channel 0), checked every
``check_interval_ms``; two failed checks mark it down and two good ones bring it back.
``on-marked-down shutdown-sessions`` closes the client connections that sit on a node marked
down, so that clients reconnect (through the balancer, to a healthy node) instead of waiting
on a hung peer for a heartbeat timeout. Client and server timeouts are an hour: AMQP
connections are long-lived and carry their own heartbeats.

    with AmqpBalancer([("127.0.0.1", 5673), ("127.0.0.1", 5674)]) as balancer:
        url = f"amqp://guest:guest@127.0.0.1:{balancer.port}/"

The configuration and log live in a temporary directory removed by ``stop``. ``haproxy``
comes from Debian (``apt-get install -y haproxy``; 2.6 on bookworm).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .rabbitmq_node import _free_port, _listening, _stop, spawn

READY_TIMEOUT_S = 20.0
DIR_PREFIX = "llm-stream-haproxy-"
# The AMQP 0-9-1 protocol header; a broker answers with a connection.start method frame:
# type 1 (method), channel 0, then its size.
AMQP_HEADER_HEX = "414d515000000901"
CONNECTION_START_HEX = "010000"

INSTALL_HINT = "haproxy is not installed: apt-get install -y haproxy (scripts/ensure-test-tools.sh)"


def haproxy_program() -> str:
    found = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    return found


class AmqpBalancer:
    """HAProxy in TCP mode in front of broker nodes, with an AMQP health check; stands in for a
    Kubernetes Service."""

    def __init__(self, backends: list[tuple[str, int]], *, check_interval_ms: int = 500) -> None:
        if not backends:
            raise ValueError("the balancer needs at least one backend")
        self.backends = list(backends)
        self.check_interval_ms = check_interval_ms
        self.dir: Path | None = None
        self._port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the balancer is not started")
        return self._port

    def config(self, port: int) -> str:
        servers = "\n".join(
            f"    server node{i} {host}:{backend_port} check inter {self.check_interval_ms} "
            "fall 2 rise 2 on-marked-down shutdown-sessions"
            for i, (host, backend_port) in enumerate(self.backends, start=1)
        )
        return f"""\
global
    maxconn 4000
    nbthread 1

defaults
    mode tcp
    timeout connect 2s
    timeout client 3600s
    timeout server 3600s
    timeout check 2s
    retries 2
    option redispatch

frontend amqp
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance roundrobin
    option tcp-check
    tcp-check connect
    tcp-check send-binary {AMQP_HEADER_HEX}
    tcp-check expect binary {CONNECTION_START_HEX}
{servers}
"""

    def start(self) -> int:
        """Start haproxy on a free 127.0.0.1 port; return once that port accepts connections."""
        program = haproxy_program()
        self.dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        try:
            port = _free_port()
            config_path = self.dir / "haproxy.cfg"
            config_path.write_text(self.config(port))
            check = subprocess.run(
                [program, "-c", "-q", "-f", str(config_path)], capture_output=True, text=True
            )
            if check.returncode != 0:
                raise RuntimeError(f"haproxy refuses its configuration:\n{check.stdout}{check.stderr}")
            with (self.dir / "haproxy.log").open("wb") as log:
                self._proc = spawn(
                    [program, "-db", "-f", str(config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not _listening(port):
                if self._proc.poll() is not None:
                    raise RuntimeError(f"haproxy exited with {self._proc.returncode}:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"haproxy did not listen on {port} within {READY_TIMEOUT_S:g}s")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        self._port = port
        return port

    def log_tail(self, lines: int = 40) -> str:
        if self.dir is None:
            return ""
        with contextlib.suppress(OSError):
            text = (self.dir / "haproxy.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """Stop haproxy and remove its directory."""
        if self._proc is not None:
            _stop(self._proc, 10)
            self._proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        self._port = 0

    def __enter__(self) -> AmqpBalancer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def amqp_ready(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when ``host:port`` answers the AMQP header with a ``connection.start`` frame."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(bytes.fromhex(AMQP_HEADER_HEX))
        expected = bytes.fromhex(CONNECTION_START_HEX)
        received = b""
        while len(received) < len(expected):
            chunk = sock.recv(len(expected) - len(received))
            if not chunk:
                return False
            received += chunk
        return received == expected
    return False
