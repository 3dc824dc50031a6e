"""A private three-node RabbitMQ cluster behind an AMQP balancer, for tests, chaos and the bench.

``BrokerCluster`` is what a test sees of a cluster, whatever runs it: the nodes, one balanced
AMQP URL (HAProxy, ``amqp_balancer``, standing in for a Kubernetes Service), the list of node
URLs, faults (SIGKILL, SIGSTOP/SIGCONT, ``rabbitmqctl stop_app``/``start_app``) and questions
to the management API (which node leads a queue, which node a connection sits on).
``HostCluster`` runs it from the machine's RabbitMQ (3.10 on Debian bookworm); the podman
cluster of RabbitMQ 4.0 lives in ``rabbitmq_container_cluster``; ``clusters.cluster_for(kind)`` picks one.

    with host_cluster() as cluster:
        cluster.balanced_url             # amqp://guest:guest@127.0.0.1:<haproxy port>/
        cluster.kill(cluster.leader_of("tasks"))

The host cluster's nodes are ``RabbitMQNode``s (``rabbitmq_node``): unique names
(``llmstream-c-<hex>-<n>@localhost``), free ports, directories of their own, one shared Erlang
cookie and one shared epmd on a free port (nodes on one host find each other through one
epmd). Node 1 starts first; nodes 2 and 3 join it through ``classic_config`` peer discovery,
which lists node 1 only, and start together (each joins node 1 on its own: a join needs only
the node it joins). The cluster is ready once node 1's ``/api/nodes`` shows all three running.
A node started again after a kill rejoins from its own data (peer discovery runs only on a
blank node).

Configuration on every node: ``cluster_partition_handling = pause_minority`` (a node cut off
from the majority stops serving rather than diverge), and ``net_ticktime``, a constructor
parameter. Erlang declares a silent peer down between 0.75 and 1.25 ``net_ticktime`` after it
went silent; the default 60 s makes a hung (SIGSTOPped) node take 45-75 s to be noticed.
``DEFAULT_NET_TICKTIME_S`` is 10 s: a hang is noticed in 7.5-12.5 s, and a VM would have to
miss every tick for 7.5 s to be declared down wrongly. That is long even for this 2-core
machine under a full test run; RabbitMQ's guide on net ticks warns against going much lower
(a few seconds), where a busy VM gives false partitions. A SIGKILLed node is noticed at once
whatever the value (its distribution connection closes). Measured here (3.10.8, load 2-9 on
2 cores): the cluster starts in 10-16 s; after a SIGKILL of a quorum queue's leader, a publish
through the balancer is confirmed by a new leader within about a second; after a SIGSTOP of
the leader, peers declare it down and the queue takes publishes again after 10-12.5 s (17.8 s
with ``net_ticktime = 15``).

On 3.10 a node resumed (SIGCONT) after its peers declared it down often stays partitioned
from them (in three runs of five here): it pings its peers back, so pause_minority finds a
majority and does not pause it, while Mnesia keeps the partition. The node goes on accepting
AMQP connections (the balancer's AMQP check passes) although its peers see it down.
``partitions()`` shows it; ``restart_app`` (``stop_app``, ``start_app``) mends it, as an
operator would. The VMs run with ``+sbwt none``
(no busy waiting of idle schedulers): three nodes on two cores would otherwise spin against
each other and everything else.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import httpx

from .amqp_balancer import AmqpBalancer, amqp_ready
from .rabbitmq_node import (
    NodeError,
    RabbitMQNode,
    _free_port,
    _listening,
    _stop,
    spawn,
)

SIZE = 3
DEFAULT_NET_TICKTIME_S = 10
JOIN_TIMEOUT_S = 90.0
HTTP_TIMEOUT_S = 3.0
STATS_WAIT_S = 15.0  # the management API's statistics come every 5 s
ERL_ARGS = "+sbwt none +sbwtdcpu none +sbwtdio none"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ClusterNode:
    name: str
    """The Erlang node name (``rabbit@host``), as the management API reports it."""
    amqp_port: int
    management_port: int
    amqp_url: str
    management_url: str
    """``http://user:password@host:port`` of this node's management API."""


class BrokerCluster(Protocol):
    """A running cluster as tests, chaos and the bench see it."""

    nodes: list[ClusterNode]
    version: str
    balanced_url: str
    """``amqp://guest:guest@127.0.0.1:<balancer port>/``: one address for the whole cluster."""
    node_urls: str
    """The nodes' AMQP URLs joined by ``,`` (``RABBIT_MQ`` accepts such a list)."""

    def management_url(self) -> str:
        """The management API (with credentials) of a node that answers right now."""
        ...

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL the node's VM; it stays down."""
        ...

    def start(self, node: ClusterNode) -> None:
        """Start a killed or stopped node again (same name, same data); return once it is back
        in the cluster and serving AMQP."""
        ...

    def pause(self, node: ClusterNode) -> None:
        """SIGSTOP the node's VM: a hang."""
        ...

    def resume(self, node: ClusterNode) -> None:
        """SIGCONT the node's VM."""
        ...

    def stop_app(self, node: ClusterNode) -> None:
        """``rabbitmqctl stop_app``, as an operator's rolling restart does."""
        ...

    def start_app(self, node: ClusterNode) -> None:
        """``rabbitmqctl start_app``."""
        ...

    def leader_of(self, queue: str) -> ClusterNode | None:
        """The node leading ``queue`` (a quorum queue or stream), or hosting it (classic)."""
        ...

    def members_of(self, queue: str) -> list[str]:
        """The Erlang names of the nodes holding a replica of ``queue``."""
        ...

    def node_of_connection(self, connection_name: str) -> ClusterNode | None:
        """The node that a client connection named ``connection_name`` sits on."""
        ...

    def close(self) -> None:
        """Stop everything started and remove its files."""
        ...


# -- the management API, for any cluster ------------------------------------------------------


def _client(management_url: str) -> httpx.Client:
    url = httpx.URL(management_url)
    base = str(url.copy_with(username=None, password=None))
    return httpx.Client(
        base_url=base, auth=(url.username, url.password), timeout=HTTP_TIMEOUT_S, trust_env=False
    )


def queue_info(management_url: str, queue: str, vhost: str = "/") -> dict[str, Any] | None:
    """``/api/queues/<vhost>/<queue>``, or None when there is no such queue."""
    with _client(management_url) as client:
        response = client.get(f"/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    info: dict[str, Any] = response.json()
    return info


def leader_name(info: dict[str, Any] | None) -> str | None:
    """A quorum queue's ``leader``; a stream on 3.10 names its writer in ``node``."""
    if not info:
        return None
    leader = info.get("leader") or info.get("node")
    return leader if isinstance(leader, str) else None


def running_node_names(management_url: str) -> set[str]:
    """The nodes that the answering node sees running (``/api/nodes``)."""
    with _client(management_url) as client:
        response = client.get("/api/nodes", params={"columns": "name,running"})
    response.raise_for_status()
    return {node["name"] for node in response.json() if node.get("running")}


def connection_node(management_url: str, connection_name: str) -> str | None:
    """The Erlang name of the node that the client connection ``connection_name`` sits on."""
    with _client(management_url) as client:
        response = client.get("/api/connections")
    response.raise_for_status()
    for connection in response.json():
        named = connection.get("user_provided_name") or (
            connection.get("client_properties", {}).get("connection_name")
        )
        if named == connection_name:
            return str(connection["node"])
    return None


def _wait(check: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``check`` until it gives something other than None or False; NodeError after
    ``timeout``. Broker and HTTP errors count as not yet."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            got = check()
        except (httpx.HTTPError, OSError, NodeError, ValueError) as exc:
            got, last = None, exc
        if got is not None and got is not False:
            return got
        if time.monotonic() > deadline:
            error = f" (last error: {type(last).__name__}: {last})" if last else ""
            raise NodeError(f"{what}: not within {timeout:g}s{error}")
        time.sleep(0.2)


# -- the host cluster ---------------------------------------------------------------------------


class HostCluster:
    """Three nodes from the machine's RabbitMQ, one shared epmd, and an AMQP balancer."""

    def __init__(
        self,
        *,
        size: int = SIZE,
        net_ticktime: int = DEFAULT_NET_TICKTIME_S,
        parallel_join: bool = True,
        check_interval_ms: int = 500,
        extra_config: tuple[str, ...] = (),
    ) -> None:
        self.size = size
        self.net_ticktime = net_ticktime
        self.parallel_join = parallel_join
        self.check_interval_ms = check_interval_ms
        self.extra_config = extra_config
        self.prefix = f"llmstream-c-{uuid.uuid4().hex[:8]}"
        self.cookie = uuid.uuid4().hex
        self.epmd_port = 0
        self.nodes: list[ClusterNode] = []
        self.version = ""
        self.balanced_url = ""
        self.node_urls = ""
        self.started_in_s: float | None = None
        self.balancer: AmqpBalancer | None = None
        self._members: dict[str, RabbitMQNode] = {}
        self._state: dict[str, str] = {}  # up, killed, paused, app_stopped
        self._epmd: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> HostCluster:
        return self.start_cluster()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- start ------------------------------------------------------------------------------

    def start_cluster(self) -> HostCluster:
        began = time.monotonic()
        try:
            self._start_epmd()
            first, *others = [self._make_node(index) for index in range(1, self.size + 1)]
            broker = first.start()
            self.version = broker.version or ""
            if self.parallel_join:
                for node in others:
                    node.launch()
                for node in others:
                    node.wait_started()
            else:
                for node in others:
                    node.start()
            self.nodes = [self._cluster_node(node) for node in (first, *others)]
            self._state = {node.name: "up" for node in self.nodes}
            expected = {node.name for node in self.nodes}
            _wait(
                lambda: running_node_names(self.nodes[0].management_url) >= expected,
                JOIN_TIMEOUT_S,
                f"the cluster's {self.size} nodes running together",
            )
            self.balancer = AmqpBalancer(
                [("127.0.0.1", node.amqp_port) for node in self.nodes],
                check_interval_ms=self.check_interval_ms,
            )
            port = self.balancer.start()
        except BaseException as exc:
            logs = "\n".join(f"=== {node.nodename}\n{node.log_tail()}" for node in self._members.values())
            self.close()
            if isinstance(exc, NodeError):
                raise NodeError(f"the test RabbitMQ cluster did not start: {exc}\n{logs}") from None
            raise
        self.balanced_url = f"amqp://guest:guest@127.0.0.1:{port}/"
        self.node_urls = ",".join(node.amqp_url for node in self.nodes)
        self.started_in_s = time.monotonic() - began
        return self

    def _start_epmd(self) -> None:
        program = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        self.epmd_port = _free_port()
        self._epmd = spawn(
            [program, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not _listening(self.epmd_port):
            if self._epmd.poll() is not None or time.monotonic() > deadline:
                raise NodeError(f"epmd did not start on port {self.epmd_port}")
            time.sleep(0.05)

    def _make_node(self, index: int) -> RabbitMQNode:
        config = [
            "cluster_partition_handling = pause_minority",
            f"net_ticktime = {self.net_ticktime}",
            *self.extra_config,
        ]
        if index > 1:
            config += [
                "cluster_formation.peer_discovery_backend = classic_config",
                f"cluster_formation.classic_config.nodes.1 = {self.prefix}-1@localhost",
            ]
        node = RabbitMQNode(
            nodename=f"{self.prefix}-{index}@localhost",
            cookie=self.cookie,
            epmd_port=self.epmd_port,
            extra_config=config,
            erl_args=ERL_ARGS,
            ctl_erl_args=f"-kernel net_ticktime {self.net_ticktime}",
        )
        self._members[node.nodename] = node
        return node

    @staticmethod
    def _cluster_node(node: RabbitMQNode) -> ClusterNode:
        assert node.broker is not None and node.broker.management_url is not None
        return ClusterNode(
            name=node.nodename,
            amqp_port=node.amqp_port,
            management_port=node.management_port,
            amqp_url=node.broker.amqp_url,
            management_url=node.broker.management_url,
        )

    # -- questions --------------------------------------------------------------------------

    def node(self, name: str) -> ClusterNode | None:
        return next((node for node in self.nodes if node.name == name), None)

    def member(self, node: ClusterNode) -> RabbitMQNode:
        """The ``RabbitMQNode`` behind ``node`` (its directory, logs, ``ctl``)."""
        return self._members[node.name]

    def state(self, node: ClusterNode) -> str:
        """``up``, ``killed``, ``paused`` or ``app_stopped``, as this cluster left it."""
        return self._state[node.name]

    def management_url(self) -> str:
        for node in self.nodes:
            if self._state.get(node.name) != "up":
                continue
            with contextlib.suppress(httpx.HTTPError):
                with _client(node.management_url) as client:
                    # whoami is answered by the node alone; overview waits for every peer,
                    # a hung one included, until it is declared down.
                    if client.get("/api/whoami", timeout=2.0).status_code == 200:
                        return node.management_url
        raise NodeError("no node of the cluster answers on its management API")

    def leader_of(self, queue: str) -> ClusterNode | None:
        leader = leader_name(queue_info(self.management_url(), queue))
        return self.node(leader) if leader is not None else None

    def members_of(self, queue: str) -> list[str]:
        """On 3.10 a new stream shows no ``members`` until its first statistics (a few seconds):
        for a queue that exists, this waits for them (up to ``STATS_WAIT_S``)."""
        deadline = time.monotonic() + STATS_WAIT_S
        while True:
            info = queue_info(self.management_url(), queue)
            if info is None:
                return []
            if info.get("members") or time.monotonic() > deadline:
                return list(info.get("members") or [])
            time.sleep(0.5)

    def node_of_connection(self, connection_name: str) -> ClusterNode | None:
        name = connection_node(self.management_url(), connection_name)
        return self.node(name) if name else None

    def running(self) -> set[str]:
        """The nodes that a node still up sees running."""
        return running_node_names(self.management_url())

    def partitions(self) -> dict[str, list[str]]:
        """Each running node's view of the peers it is partitioned from (``/api/nodes``); empty
        lists when the cluster is whole."""
        with _client(self.management_url()) as client:
            response = client.get("/api/nodes", params={"columns": "name,running,partitions"})
        response.raise_for_status()
        return {
            node["name"]: list(node.get("partitions") or [])
            for node in response.json()
            if node.get("running")
        }

    # -- faults -----------------------------------------------------------------------------

    def kill(self, node: ClusterNode) -> None:
        if self._state[node.name] == "paused":
            self.member(node).signal_vm(signal.SIGCONT)  # a stopped VM dies all the same; reaped sooner
        self.member(node).kill()
        self._state[node.name] = "killed"

    def start(self, node: ClusterNode) -> None:
        member, state = self.member(node), self._state[node.name]
        if state == "killed":
            member.restart()
        elif state == "app_stopped":
            member.ctl("start_app")
        elif state == "paused":
            raise NodeError(f"{node.name} is paused: resume it")
        self._state[node.name] = "up"
        self._wait_back(node)

    def pause(self, node: ClusterNode) -> None:
        self.member(node).signal_vm(signal.SIGSTOP)
        self._state[node.name] = "paused"

    def resume(self, node: ClusterNode) -> None:
        """SIGCONT. A node stopped for longer than ``net_ticktime`` was declared down by its
        peers; on 3.10 it then often stays partitioned from them while still serving AMQP (see
        the module's docstring); ``restart_app`` mends that."""
        self.member(node).signal_vm(signal.SIGCONT)
        self._state[node.name] = "up"

    def restart_app(self, node: ClusterNode) -> None:
        """``stop_app`` then ``start_app``: what an operator does to a node left partitioned."""
        self.stop_app(node)
        self.start_app(node)

    def stop_app(self, node: ClusterNode) -> None:
        self.member(node).ctl("stop_app")
        self._state[node.name] = "app_stopped"

    def start_app(self, node: ClusterNode) -> None:
        if self._state[node.name] == "app_stopped":
            self.start(node)
        else:
            self.member(node).ctl("start_app")

    def _wait_back(self, node: ClusterNode, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Until a peer sees ``node`` running and it answers the AMQP header."""
        peers = [other for other in self.nodes if other != node and self._state[other.name] == "up"]
        asked = peers[0].management_url if peers else node.management_url
        _wait(
            lambda: node.name in running_node_names(asked) and amqp_ready("127.0.0.1", node.amqp_port),
            timeout,
            f"{node.name} back in the cluster",
        )

    # -- stop -------------------------------------------------------------------------------

    def close(self) -> None:
        """Balancer first, then every VM killed (nothing of a test cluster is worth a clean
        shutdown; its directories go), then epmd."""
        if self.balancer is not None:
            self.balancer.stop()
            self.balancer = None
        for node in self._members.values():
            with contextlib.suppress(NodeError, OSError):
                node.signal_vm(signal.SIGCONT)
            node.kill()
            node.stop()
        self._members.clear()
        if self._epmd is not None:
            _stop(self._epmd, 5)
            self._epmd = None

    def log_tails(self) -> str:
        return "\n".join(f"=== {name}\n{node.log_tail()}" for name, node in self._members.items())


@contextlib.contextmanager
def host_cluster(**options: Any) -> Iterator[HostCluster]:
    """A started ``HostCluster`` (``options`` go to its constructor), closed on the way out."""
    with HostCluster(**options) as cluster:
        yield cluster
