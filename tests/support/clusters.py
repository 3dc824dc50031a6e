"""The three-node RabbitMQ cluster a run uses, by kind, as ``brokers`` picks a single broker.

| kind | cluster |
|---|---|
| ``node`` | three nodes from the machine's RabbitMQ (3.10), ``rabbitmq_cluster.HostCluster`` |
| ``container`` | three RabbitMQ 4.0 containers on a podman network, ``rabbitmq_container_cluster`` |
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from .rabbitmq_cluster import BrokerCluster, host_cluster

KINDS = ("node", "container")


@contextlib.contextmanager
def cluster_for(kind: str, net_ticktime: int | None = None) -> Iterator[BrokerCluster]:
    """A started cluster of ``kind``, closed on the way out; ``net_ticktime``: the nodes'
    (default: the kind's own, 10 s)."""
    options = {} if net_ticktime is None else {"net_ticktime": net_ticktime}
    if kind == "node":
        with host_cluster(**options) as cluster:
            yield cluster
    elif kind == "container":
        from .rabbitmq_container_cluster import container_cluster

        with container_cluster(**options) as containers:
            yield containers
    else:
        raise ValueError(f"cluster kind {kind!r}: choose one of {', '.join(KINDS)}")
