"""A private RabbitMQ node for one test run, started from the machine's RabbitMQ installation.

The node never touches the machine's own broker: it gets a unique node name, free ports (AMQP,
management, prometheus plugin, Erlang distribution), its own epmd on a free port, and a
temporary directory holding its configuration, enabled-plugins file, data, logs and Erlang
cookie (``HOME``). Stopping it stops the node and its epmd, then removes the directory.

    with RabbitMQNode() as broker:
        broker.amqp_url        # amqp://guest:guest@127.0.0.1:<port>/
        broker.management_url  # http://guest:guest@127.0.0.1:<port>

Nodes of one cluster (``rabbitmq_cluster``) are given a name, a shared Erlang cookie, the port
of an epmd they share (started by the cluster) and extra ``rabbitmq.conf`` lines. A node's VM
can be signalled (``kill``: SIGKILL, ``signal_vm(SIGSTOP)``: a hang), started again on the
same directory and ports (``restart``), and driven with ``rabbitmqctl`` (``ctl``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import httpx
import psutil

from .broker import Broker

START_TIMEOUT_S = float(os.environ.get("RABBITMQ_NODE_START_TIMEOUT_S", "90"))
STOP_TIMEOUT_S = float(os.environ.get("RABBITMQ_NODE_STOP_TIMEOUT_S", "30"))
PLUGINS = ("rabbitmq_management", "rabbitmq_prometheus")
# The CLI tools talk to a node from ports 10000 above its distribution port: keep it low enough.
DIST_PORT_RANGE = (20000, 45000)
LOG_TAIL_LINES = 40
DIR_PREFIX = "llm-stream-rabbitmq-"
# A node directory whose node is gone is removed by the next run after this long (a run that
# was killed cannot remove its own).
STALE_AFTER_S = float(os.environ.get("RABBITMQ_NODE_STALE_AFTER_S", "1800"))

# Debian's /usr/sbin/rabbitmq-server switches to the rabbitmq user when run as root, which
# would lose this environment; the scripts it wraps run as whoever calls them.
SERVER_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server",)
CTL_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmqctl",)

INSTALL_HINT = (
    "RabbitMQ is not installed, and the tests start a RabbitMQ node of their own from it.\n"
    "`make test` installs it (scripts/ensure-test-tools.sh); by hand: apt-get install -y "
    "rabbitmq-server.\nOr point RABBITMQ_URL at a broker of yours (with the management and "
    "prometheus plugins enabled)."
)


class NodeError(RuntimeError):
    """The node could not be started; the message says why and what to do."""


def server_program() -> str:
    for candidate in SERVER_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("rabbitmq-server")
    if found is None or Path(found).resolve() == Path("/usr/sbin/rabbitmq-server"):
        raise NodeError(INSTALL_HINT)
    return found


def ctl_program() -> str:
    for candidate in CTL_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("rabbitmqctl")
    if found is None:
        raise NodeError(INSTALL_HINT)
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_port_in(low: int, high: int) -> int:
    for _ in range(200):
        port = random.randrange(low, high)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise NodeError(f"no free TCP port between {low} and {high} for the node's distribution")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _die_with_parent() -> None:  # in the child, between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def spawn(args: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """``Popen`` of a child that gets SIGTERM when this process dies.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, so a child started
    from a short-lived thread (a pool's, ``asyncio.to_thread``'s) would be stopped with it.
    Outside the main thread, children are forked from one thread that lives as long as the
    process."""
    def fork() -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, preexec_fn=_die_with_parent, **options)

    if threading.current_thread() is threading.main_thread():
        return fork()
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(1, thread_name_prefix="child-spawner")
    return _spawner.submit(fork).result()


class RabbitMQNode:
    """One RabbitMQ node in a temporary directory; a context manager yielding its ``Broker``."""

    def __init__(
        self,
        plugins: tuple[str, ...] = PLUGINS,
        start_timeout: float = START_TIMEOUT_S,
        *,
        nodename: str | None = None,
        cookie: str | None = None,
        epmd_port: int | None = None,
        extra_config: Sequence[str] = (),
        erl_args: str = "",
        ctl_erl_args: str = "",
    ):
        """``epmd_port``: an epmd already running there (the node then starts none of its own);
        ``extra_config``: lines added to ``rabbitmq.conf``; ``erl_args``: added to the VM's
        arguments (``RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS``); ``ctl_erl_args``: to those of
        ``rabbitmqctl``'s VM (a node with a short ``net_ticktime`` drops a CLI ticking slower)."""
        self.plugins = plugins
        self.start_timeout = start_timeout
        self.nodename = nodename or f"llmstream-test-{uuid.uuid4().hex[:10]}@localhost"
        self.cookie = cookie
        self.shared_epmd = epmd_port is not None
        self.extra_config = list(extra_config)
        self.erl_args = erl_args
        self.ctl_erl_args = ctl_erl_args
        self.dir: Path | None = None
        self.amqp_port = self.management_port = self.prometheus_port = 0
        self.dist_port = 0
        self.epmd_port = epmd_port or 0
        self._env: dict[str, str] = {}
        self._began = 0.0
        self._epmd: subprocess.Popen[bytes] | None = None
        self._server: subprocess.Popen[bytes] | None = None
        self.broker: Broker | None = None
        self.started_in_s: float | None = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start ------------------------------------------------------------------------------

    def start(self) -> Broker:
        self.launch()
        return self.wait_started()

    def launch(self) -> None:
        """The first half of ``start``: files, ports and processes, without waiting (nodes of
        a cluster boot side by side)."""
        program = server_program()
        self._began = time.monotonic()
        _sweep_stale(Path(tempfile.gettempdir()))
        self.dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        try:
            self._allocate_ports()
            env = self._env = self._write_files()
            if not self.shared_epmd:
                self._start_epmd(env)
            self._spawn(program, "w")
        except BaseException as exc:
            self._failed(exc)

    def wait_started(self) -> Broker:
        """The second half of ``start``: until the node serves, then its ``Broker``."""
        try:
            version = self._wait_ready()
        except BaseException as exc:
            self._failed(exc)
        self.started_in_s = time.monotonic() - self._began
        prometheus = "rabbitmq_prometheus" in self.plugins
        self.broker = Broker(
            description=f"RabbitMQ {version}, private node {self.nodename}",
            amqp_url=f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/",
            management_url=f"http://guest:guest@127.0.0.1:{self.management_port}",
            prometheus_target=f"127.0.0.1:{self.prometheus_port}" if prometheus else None,
            version=version,
        )
        return self.broker

    def _failed(self, exc: BaseException) -> NoReturn:
        """Stop what was started; raise ``exc``, or a NodeError with the log if there is one."""
        log = self.log_tail()
        self.stop()
        if isinstance(log, str) and log:
            raise NodeError(f"the test RabbitMQ node did not start; its log:\n{log}") from None
        raise exc

    def _spawn(self, program: str, mode: str) -> None:
        assert self.dir is not None
        with (self.dir / "log" / "server.out").open(mode + "b") as out:
            self._server = spawn(
                [program], env=self._env, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    def _allocate_ports(self) -> None:
        taken: set[int] = {self.epmd_port} if self.shared_epmd else set()
        ports: list[int] = []
        while len(ports) < (3 if self.shared_epmd else 4):
            port = _free_port()
            if port not in taken:
                taken.add(port)
                ports.append(port)
        self.amqp_port, self.management_port, self.prometheus_port = ports[:3]
        if not self.shared_epmd:
            self.epmd_port = ports[3]
        while (dist := _free_port_in(*DIST_PORT_RANGE)) in taken:
            pass
        self.dist_port = dist

    def _write_files(self) -> dict[str, str]:
        assert self.dir is not None
        home, log, data = self.dir / "home", self.dir / "log", self.dir / "mnesia"
        for path in (home, log, data):
            path.mkdir()
        cookie = home / ".erlang.cookie"
        cookie.write_text(self.cookie or uuid.uuid4().hex)
        cookie.chmod(0o400)
        (self.dir / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")  # not the machine's /etc/rabbitmq one
        (self.dir / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    "loopback_users = none",
                    f"management.tcp.port = {self.management_port}",
                    "management.tcp.ip = 127.0.0.1",
                    f"prometheus.tcp.port = {self.prometheus_port}",
                    "prometheus.tcp.ip = 127.0.0.1",
                    "log.console = false",
                    "log.file.level = info",
                    *self.extra_config,
                    "",
                ]
            )
        )
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        extra = {"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": self.erl_args} if self.erl_args else {}
        return {
            **extra,
            **keep,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(data),
            "RABBITMQ_LOG_BASE": str(log),
            "RABBITMQ_PID_FILE": str(self.dir / "node.pid"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.dir / "plugins-expand"),
        }

    def _start_epmd(self, env: dict[str, str]) -> None:
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        assert self.dir is not None
        with (self.dir / "log" / "epmd.out").open("wb") as out:
            self._epmd = spawn(
                [epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while not _listening(self.epmd_port):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                raise NodeError(f"epmd did not start on port {self.epmd_port}")
            time.sleep(0.05)

    def _wait_ready(self) -> str:
        """Wait until AMQP, the management API and the prometheus endpoint answer."""
        assert self._server is not None
        deadline = time.monotonic() + self.start_timeout
        overview = f"http://127.0.0.1:{self.management_port}/api/overview"
        with httpx.Client(timeout=2.0, trust_env=False, auth=("guest", "guest")) as client:
            while True:
                if self._server.poll() is not None:
                    raise NodeError(
                        f"the test RabbitMQ node exited with {self._server.returncode} during "
                        f"start-up; its log:\n{self.log_tail()}"
                    )
                version = None
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    response = client.get(overview)
                    if response.status_code == 200:
                        version = response.json().get("rabbitmq_version")
                if (
                    version
                    and _listening(self.amqp_port)
                    and ("rabbitmq_prometheus" not in self.plugins or _listening(self.prometheus_port))
                ):
                    return str(version)
                if time.monotonic() > deadline:
                    raise NodeError(
                        f"the test RabbitMQ node was not ready within {self.start_timeout:g}s "
                        f"(RABBITMQ_NODE_START_TIMEOUT_S); its log:\n{self.log_tail()}"
                    )
                time.sleep(0.2)

    # -- faults -----------------------------------------------------------------------------

    def vm_pid(self) -> int | None:
        """The pid of the node's Erlang VM (``beam.smp``, under the server script), if it runs."""
        if self._server is None or self._server.poll() is not None:
            return None
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self._server.pid).children(recursive=True):
                if child.name().startswith("beam"):
                    return int(child.pid)
        return None

    def signal_vm(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the VM alone (SIGSTOP: the node hangs; SIGCONT: it goes on)."""
        pid = self.vm_pid()
        if pid is None:
            raise NodeError(f"{self.nodename} has no running VM to signal")
        os.kill(pid, sig)

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL the VM, as a crash or an OOM kill would; return once the server script is gone."""
        pid = self.vm_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._server is not None:
            try:
                self._server.wait(timeout)
            except subprocess.TimeoutExpired:
                _stop(self._server, 5)

    def restart(self) -> Broker:
        """Start the node again (after ``kill``) on the same directory, name and ports."""
        if self.dir is None or self.broker is None:
            raise NodeError("the node was never started, or it was stopped")
        if self._server is not None and self._server.poll() is None:
            raise NodeError(f"{self.nodename} is still running")
        began = time.monotonic()
        self._spawn(server_program(), "a")
        self._wait_ready()
        self.started_in_s = time.monotonic() - began
        return self.broker

    def ctl(self, *args: str, timeout: float = 240.0) -> str:
        """Run ``rabbitmqctl -n <node> <args>``; return its output (NodeError if it fails).

        The CLI boots a VM of its own (seconds, more on a busy machine)."""
        if self.dir is None:
            raise NodeError("the node is not running")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.dir / "home"),  # the node's Erlang cookie
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),  # the CLI takes a port 10000 above it
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "rabbitmq-env.conf"),
        )
        if self.ctl_erl_args:
            env["RABBITMQ_CTL_ERL_ARGS"] = self.ctl_erl_args
        done = subprocess.run(
            [ctl_program(), "-n", self.nodename, *args],
            env=env, capture_output=True, text=True, timeout=timeout,
        )
        if done.returncode != 0:
            raise NodeError(
                f"rabbitmqctl {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        return done.stdout

    # -- stop -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the node (SIGTERM: a clean shutdown), then its epmd; remove the directory."""
        if self._server is not None:
            _stop(self._server, STOP_TIMEOUT_S)
            self._server = None
        if self._epmd is not None:
            _stop(self._epmd, 5)
            self._epmd = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self.dir is None:
            return ""
        parts = []
        for path in sorted((self.dir / "log").glob("*")):
            if path.is_file():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)


def _sweep_stale(parent: Path) -> None:
    """Remove node directories left by killed runs: no live node, untouched for a while."""
    for path in parent.glob(f"{DIR_PREFIX}*"):
        try:
            age = time.time() - path.stat().st_mtime
            pid_file = path / "node.pid"
            pid = int(pid_file.read_text().strip()) if pid_file.exists() else None
        except (OSError, ValueError):
            continue
        if age > STALE_AFTER_S and (pid is None or not psutil.pid_exists(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM to the process group while its leader runs, then SIGKILL if it lingers.

    Descendants that outlive the leader (erl, beam.smp under the server script) are found
    before the signal and killed one by one, by identity.
    """
    if proc.poll() is not None:
        return
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
