"""A private three-node RabbitMQ 4.0 cluster in podman containers, behind an AMQP balancer.

The nodes run the project's RabbitMQ 4 test image (``rabbitmq_container.ensure_image``: built
on a debootstrapped Debian trixie base, reused while its inputs are unchanged), one container
each, on a podman network of the cluster's own. Everything is named after one prefix,
``llmstream-c-<hex>``: the network is the prefix, container ``n`` is ``<prefix>-<n>`` and has
that as its hostname, so its Erlang node is ``rabbit@<prefix>-<n>`` and the network's DNS
(aardvark-dns) resolves it for its peers. Each container's AMQP (5672) and management (15672)
ports are published on 127.0.0.1 ports that podman picks; a container started again keeps them.

    with container_cluster() as cluster:
        cluster.balanced_url             # amqp://guest:guest@127.0.0.1:<haproxy port>/
        cluster.kill(cluster.leader_of("tasks"))

What every node is given, from a temporary directory mounted read-only (the image is not
changed, so its tag, a hash of its inputs, stays the same):

- the cluster's Erlang cookie as ``/var/lib/rabbitmq/.erlang.cookie`` (mode 0400, handed to the
  image's user by podman's ``U`` mount option; the ``RABBITMQ_ERLANG_COOKIE`` variable is
  deprecated in 4.0);
- ``/etc/rabbitmq/conf.d/20-cluster.conf``: ``classic_config`` peer discovery listing all three
  nodes, ``cluster_partition_handling = pause_minority`` and ``net_ticktime``. All three start
  together as blank nodes and form one cluster at boot; a node started again after a kill
  rejoins from its own data (peer discovery runs only on a blank node).

``net_ticktime`` is 10 s, as in the host cluster (``rabbitmq_cluster``): a silent peer is
declared down 7.5-12.5 s after it went silent, instead of 45-75 s with Erlang's default. The
CLI tools run in the containers (``podman exec``) get the same value through
``RABBITMQ_CTL_ERL_ARGS``, or a node would drop a CLI connection that waits longer than 10 s.

Faults, as ``BrokerCluster`` names them:

- ``kill``: ``podman kill --signal KILL``. The container's first process is the server script
  (``/bin/sh``); when it dies, the kernel kills everything else in the container.
- ``pause``/``resume``: SIGSTOP/SIGCONT to every process of the container, by host pid
  (``podman top <container> hpid``). ``podman kill --signal STOP`` would reach only the server
  script, not the Erlang VM, and the VM would go on serving. While a node hangs, its peers'
  management API stalls on every question that gathers from all nodes (``/api/nodes``,
  ``/api/overview``) until they declare it down. A hang longer than ``net_ticktime`` ends in a
  partition that pause_minority does not heal: on SIGCONT the node reconnects to both peers
  before it can find itself in a minority, Mnesia reports ``running_partitioned_network``,
  and each side lists the other under ``partitions`` (the node serves clients on its own,
  its peers see it not running). ``stop_app`` then ``start_app`` on it rejoins it (about 2 s).
- ``stop_app``/``start_app``: ``rabbitmqctl`` in the container.
- ``partition``/``heal``: ``podman network disconnect``/``connect`` (with the address the node
  had). Cut off from both peers, the node pauses itself (pause_minority) once its ticks time
  out; connected again, it starts its application and rejoins by itself.

``close`` removes the containers (``podman rm -f``), the network and the temporary directory,
and runs when start-up fails too. Every container carries the label ``llm-stream.cluster=<prefix>``:
``podman rm -f $(podman ps -aq --filter label=llm-stream.cluster)`` removes what a killed test
run left behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from . import rabbitmq_container
from .amqp_balancer import AmqpBalancer, amqp_ready
from .broker import BrokerUnavailable
from .rabbitmq_cluster import (
    ClusterNode,
    _client,
    _wait,
    connection_node,
    leader_name,
    queue_info,
    running_node_names,
)
from .rabbitmq_node import NodeError

SIZE = 3
NET_TICKTIME_S = 10
USER = PASSWORD = "guest"
READY_TIMEOUT_S = float(os.environ.get("RABBITMQ_CLUSTER_READY_TIMEOUT_S", "180"))
JOIN_TIMEOUT_S = 120.0
PAUSE_TIMEOUT_S = 60.0
MEMBERS_WAIT_S = 10.0
PODMAN_TIMEOUT_S = 120.0
RUN_ATTEMPTS = 3
LABEL = "llm-stream.cluster"
DIR_PREFIX = "llm-stream-cluster-"
CONTAINER_CONF_DIR = "/etc/rabbitmq/conf.d"
CONTAINER_COOKIE = "/var/lib/rabbitmq/.erlang.cookie"


def podman_usable() -> str | None:
    """None when podman can run the cluster's containers here, else why not (for the failure)."""
    if shutil.which("podman") is None:
        return "podman is not installed (scripts/containers.sh install)"
    try:
        info = _podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    except subprocess.TimeoutExpired:
        return "`podman info` did not answer within 60 s"
    if info.returncode != 0:
        return f"`podman info` fails: {info.stderr.strip()[-500:]}"
    return None


def _podman(
    *args: str, check: bool = True, timeout: float = PODMAN_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """podman with the project's configuration; NodeError on failure when ``check``."""
    os.environ.setdefault("CONTAINERS_CONF", str(rabbitmq_container.ROOT / "scripts" / "containers.conf"))
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise NodeError(f"`podman {' '.join(args)}` exited {result.returncode}: {result.stderr.strip()}")
    return result


class ContainerCluster:
    """Three RabbitMQ 4.0 containers on a podman network of their own, and an AMQP balancer."""

    def __init__(
        self,
        *,
        size: int = SIZE,
        image: str | None = None,
        net_ticktime: int = NET_TICKTIME_S,
        check_interval_ms: int = 500,
        extra_config: tuple[str, ...] = (),
    ) -> None:
        self.size = size
        self.image = image
        self.net_ticktime = net_ticktime
        self.check_interval_ms = check_interval_ms
        self.extra_config = extra_config
        self.prefix = f"llmstream-c-{uuid.uuid4().hex[:8]}"
        self.network = self.prefix
        self.nodes: list[ClusterNode] = []
        self.version = ""
        self.balanced_url = ""
        self.node_urls = ""
        self.description = ""
        self.started_in_s: float | None = None
        self.balancer: AmqpBalancer | None = None
        self.dir: Path | None = None
        self._containers: dict[str, str] = {}  # Erlang node name -> container name
        self._state: dict[str, str] = {}  # up, killed, paused, app_stopped
        self._cut: dict[str, str] = {}  # partitioned node -> its address on the network
        self._network_made = False

    def __enter__(self) -> ContainerCluster:
        return self.start_cluster()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- start ------------------------------------------------------------------------------

    def start_cluster(self) -> ContainerCluster:
        try:
            image = self.image or rabbitmq_container.ensure_image()
        except BrokerUnavailable as exc:
            raise NodeError(str(exc)) from None
        image_note = rabbitmq_container.last_image_note if self.image is None else None
        began = time.monotonic()
        try:
            names = [f"{self.prefix}-{index}" for index in range(1, self.size + 1)]
            self._write_files(names)
            _podman("network", "create", "--label", f"{LABEL}={self.prefix}", self.network)
            self._network_made = True
            for name in names:
                self._run(image, name)
            self.nodes = [self._cluster_node(name) for name in names]
            self._state = {node.name: "up" for node in self.nodes}
            expected = {node.name for node in self.nodes}
            _wait(
                lambda: any(self._sees_all(node, expected) for node in self.nodes),
                READY_TIMEOUT_S,
                f"the cluster's {self.size} nodes running together (RABBITMQ_CLUSTER_READY_TIMEOUT_S)",
            )
            _wait(
                lambda: all(amqp_ready("127.0.0.1", node.amqp_port) for node in self.nodes),
                JOIN_TIMEOUT_S,
                "every node serving AMQP",
            )
            with _client(self.management_url()) as client:
                self.version = str(client.get("/api/overview").json()["rabbitmq_version"])
            self.balancer = AmqpBalancer(
                [("127.0.0.1", node.amqp_port) for node in self.nodes],
                check_interval_ms=self.check_interval_ms,
            )
            port = self.balancer.start()
        except BaseException as exc:
            logs = self.log_tails()
            self.close()
            if isinstance(exc, NodeError | httpx.HTTPError | subprocess.TimeoutExpired):
                raise NodeError(f"the RabbitMQ container cluster did not start: {exc}\n{logs}") from None
            raise
        self.balanced_url = f"amqp://{USER}:{PASSWORD}@127.0.0.1:{port}/"
        self.node_urls = ",".join(node.amqp_url for node in self.nodes)
        self.started_in_s = time.monotonic() - began
        self.description = f"RabbitMQ {self.version}, {self.size} containers of {image}" + (
            f" (image {image_note})" if image_note else ""
        )
        return self

    def _write_files(self, names: list[str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        cookie = self.dir / "cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        config = [
            "cluster_formation.peer_discovery_backend = classic_config",
            *(
                f"cluster_formation.classic_config.nodes.{i} = rabbit@{name}"
                for i, name in enumerate(names, 1)
            ),
            "cluster_partition_handling = pause_minority",
            f"net_ticktime = {self.net_ticktime}",
            # The balancer's health check opens and drops a connection per node twice a
            # second: at info level each is two lines of every node's log.
            "log.connection.level = error",
            *self.extra_config,
        ]
        (self.dir / "cluster.conf").write_text("\n".join(config) + "\n")

    def _run(self, image: str, name: str) -> None:
        assert self.dir is not None
        options = [
            ("--name", name),
            ("--hostname", name),
            ("--network", self.network),
            ("--label", f"{LABEL}={self.prefix}"),
            ("--publish", "127.0.0.1::5672"),
            ("--publish", "127.0.0.1::15672"),
            ("--volume", f"{self.dir / 'cookie'}:{CONTAINER_COOKIE}:ro,U"),
            ("--volume", f"{self.dir / 'cluster.conf'}:{CONTAINER_CONF_DIR}/20-cluster.conf:ro"),
            ("--env", f"RABBITMQ_CTL_ERL_ARGS=-kernel net_ticktime {self.net_ticktime}"),
        ]
        args = ["run", "--detach", *(part for option in options for part in option), image]
        self._containers[f"rabbit@{name}"] = name
        for attempt in range(1, RUN_ATTEMPTS + 1):
            try:
                _podman(*args)
                return
            except NodeError:
                # The engine sometimes fails a start ("write child: broken pipe" from runc): a
                # new container gets another chance; the last failure is reported.
                _podman("rm", "--force", "--time", "0", name, check=False)
                if attempt == RUN_ATTEMPTS:
                    raise

    def _cluster_node(self, name: str) -> ClusterNode:
        amqp, management = (self._published(name, port) for port in (5672, 15672))
        return ClusterNode(
            name=f"rabbit@{name}",
            amqp_port=amqp,
            management_port=management,
            amqp_url=f"amqp://{USER}:{PASSWORD}@127.0.0.1:{amqp}/",
            management_url=f"http://{USER}:{PASSWORD}@127.0.0.1:{management}",
        )

    @staticmethod
    def _published(container: str, port: int) -> int:
        out = _podman("port", container, f"{port}/tcp").stdout.strip()
        return int(out.splitlines()[0].rsplit(":", 1)[1])

    @staticmethod
    def _sees_all(node: ClusterNode, expected: set[str]) -> bool:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            return running_node_names(node.management_url) >= expected
        return False

    # -- questions --------------------------------------------------------------------------

    def node(self, name: str) -> ClusterNode | None:
        return next((node for node in self.nodes if node.name == name), None)

    def container(self, node: ClusterNode) -> str:
        """The name of ``node``'s container."""
        return self._containers[node.name]

    def state(self, node: ClusterNode) -> str:
        """``up``, ``killed``, ``paused`` or ``app_stopped``, as this cluster left it."""
        return self._state[node.name]

    def partitioned(self, node: ClusterNode) -> bool:
        return node.name in self._cut

    def management_url(self) -> str:
        # /api/whoami is answered by the node alone; /api/overview gathers from every node and
        # stalls while a peer hangs (until the peer is declared down, up to net_ticktime).
        for node in self.nodes:
            if self._state.get(node.name) != "up" or node.name in self._cut:
                continue
            with contextlib.suppress(httpx.HTTPError), _client(node.management_url) as client:
                if client.get("/api/whoami", timeout=2.0).status_code == 200:
                    return node.management_url
        raise NodeError("no node of the container cluster answers on its management API")

    def leader_of(self, queue: str) -> ClusterNode | None:
        leader = leader_name(queue_info(self.management_url(), queue))
        return self.node(leader) if leader is not None else None

    def members_of(self, queue: str) -> list[str]:
        """A queue's ``members`` come with its statistics: for a new queue that exists, this
        waits for them (up to ``MEMBERS_WAIT_S``)."""
        deadline = time.monotonic() + MEMBERS_WAIT_S
        while True:
            info = queue_info(self.management_url(), queue)
            if info is None:
                return []
            if info.get("members") or time.monotonic() > deadline:
                return list(info.get("members") or [])
            time.sleep(0.5)

    def online_of(self, queue: str) -> list[str]:
        """The members of a quorum queue or stream that are online, as the management API says."""
        info = queue_info(self.management_url(), queue)
        return list(info.get("online") or []) if info else []

    def node_of_connection(self, connection_name: str) -> ClusterNode | None:
        name = connection_node(self.management_url(), connection_name)
        return self.node(name) if name else None

    def running(self) -> set[str]:
        """The nodes that a reachable node sees running."""
        return running_node_names(self.management_url())

    def app_running(self, node: ClusterNode) -> bool:
        """Whether RabbitMQ's application runs on ``node``, asked inside its container (false on
        a node that pause_minority paused, which the host cannot reach while partitioned)."""
        check = ("exec", self.container(node), "rabbitmq-diagnostics", "-q", "check_running")
        return _podman(*check, check=False, timeout=60).returncode == 0

    # -- faults -----------------------------------------------------------------------------

    def kill(self, node: ClusterNode) -> None:
        container = self.container(node)
        _podman("kill", "--signal", "KILL", container)
        _podman("wait", container, check=False, timeout=60)
        self._state[node.name] = "killed"

    def start(self, node: ClusterNode) -> None:
        state = self._state[node.name]
        if state == "paused":
            raise NodeError(f"{node.name} is paused: resume it")
        if state == "killed":
            if node.name in self._cut:
                self._connect(node)
            _podman("start", self.container(node))
        elif state == "app_stopped":
            self._ctl(node, "start_app")
        self._state[node.name] = "up"
        self._wait_back(node)

    def pause(self, node: ClusterNode) -> None:
        self._signal_all(node, signal.SIGSTOP)
        self._state[node.name] = "paused"

    def resume(self, node: ClusterNode) -> None:
        self._signal_all(node, signal.SIGCONT)
        self._state[node.name] = "up"

    def stop_app(self, node: ClusterNode) -> None:
        self._ctl(node, "stop_app")
        self._state[node.name] = "app_stopped"

    def start_app(self, node: ClusterNode) -> None:
        if self._state[node.name] == "app_stopped":
            self.start(node)
        else:
            self._ctl(node, "start_app")

    def partition(self, node: ClusterNode) -> None:
        """Disconnect ``node``'s container from the cluster's network (its published ports go
        nowhere meanwhile)."""
        container = self.container(node)
        address = _podman(
            "inspect",
            "--format",
            f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}',
            container,
        ).stdout.strip()
        _podman("network", "disconnect", self.network, container)
        self._cut[node.name] = address

    def heal(self, node: ClusterNode, *, wait: bool = True) -> None:
        """Connect ``node`` again, with its former address; with ``wait``, return once it is back
        in the cluster and serving AMQP."""
        self._connect(node)
        if wait and self._state[node.name] == "up":
            self._wait_back(node)

    def wait_paused(self, node: ClusterNode, timeout: float = PAUSE_TIMEOUT_S) -> float:
        """Seconds until RabbitMQ's application no longer runs on ``node`` (pause_minority)."""
        began = time.monotonic()
        _wait(lambda: not self.app_running(node), timeout, f"{node.name} paused")
        return time.monotonic() - began

    def _connect(self, node: ClusterNode) -> None:
        address = self._cut.pop(node.name)
        fixed = ("--ip", address) if address else ()
        _podman("network", "connect", *fixed, self.network, self.container(node))

    def _ctl(self, node: ClusterNode, *args: str) -> str:
        return _podman("exec", self.container(node), "rabbitmqctl", *args).stdout

    def _signal_all(self, node: ClusterNode, sig: signal.Signals) -> None:
        listed = _podman("top", self.container(node), "hpid").stdout.split()[1:]
        for pid in (int(value) for value in listed if value.isdigit()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _wait_back(self, node: ClusterNode, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Until a peer sees ``node`` running and it answers the AMQP header."""
        peers = [
            other
            for other in self.nodes
            if other != node and self._state[other.name] == "up" and other.name not in self._cut
        ]
        asked = peers[0].management_url if peers else node.management_url
        _wait(
            lambda: node.name in running_node_names(asked) and amqp_ready("127.0.0.1", node.amqp_port),
            timeout,
            f"{node.name} back in the cluster",
        )

    # -- stop -------------------------------------------------------------------------------

    def close(self) -> None:
        """Balancer, containers (killed: nothing of a test cluster is worth a clean shutdown),
        network, temporary directory."""
        if self.balancer is not None:
            self.balancer.stop()
            self.balancer = None
        if self._containers:
            _podman("rm", "--force", "--time", "0", *self._containers.values(), check=False)
            self._containers.clear()
        if self._network_made:
            if _podman("network", "rm", self.network, check=False).returncode != 0:
                _podman("network", "rm", "--force", self.network, check=False)
            self._network_made = False
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def log_tails(self, lines: int = 30) -> str:
        tails = []
        for container in self._containers.values():
            logs = _podman("logs", "--tail", str(lines), container, check=False)
            tails.append(f"=== {container}\n{(logs.stdout + logs.stderr).strip()}")
        return "\n".join(tails)


@contextlib.contextmanager
def container_cluster(**options: Any) -> Iterator[ContainerCluster]:
    """A started ``ContainerCluster`` (``options`` go to its constructor), closed on the way out."""
    with ContainerCluster(**options) as cluster:
        yield cluster
