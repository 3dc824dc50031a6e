"""The RabbitMQ broker a test run uses, chosen once per run by ``TEST_BROKER``.

| ``TEST_BROKER`` | broker |
|---|---|
| ``node`` (default) | a private node started from the machine's RabbitMQ (``rabbitmq_node``) |
| ``container`` | a RabbitMQ 4 container through testcontainers (``rabbitmq_container``) |
| ``external`` (default when ``RABBITMQ_URL`` is set) | the broker at ``RABBITMQ_URL`` |

An external broker's management API is ``RABBITMQ_MANAGEMENT_URL`` (default: its host, port
15672, its credentials) and its prometheus plugin ``RABBITMQ_PROMETHEUS_TARGET`` (default: its
host, port 15692).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import aio_pika
import httpx

from .broker import Broker, BrokerUnavailable

__all__ = ["Broker", "BrokerUnavailable", "broker_for_run", "selected_kind"]

KINDS = ("node", "container", "external")
DEFAULT_EXTERNAL_URL = "amqp://guest:guest@localhost:5672/"
CONNECT_TIMEOUT_S = 5.0


def selected_kind() -> str:
    kind = os.environ.get("TEST_BROKER") or ("external" if os.environ.get("RABBITMQ_URL") else "node")
    if kind not in KINDS:
        raise BrokerUnavailable(f"TEST_BROKER={kind!r}: choose one of {', '.join(KINDS)}")
    return kind


@contextmanager
def broker_for_run(kind: str | None = None) -> Iterator[Broker]:
    """Start (or find) the broker of the run; stop what was started on the way out."""
    kind = kind or selected_kind()
    if kind == "node":
        from .rabbitmq_node import NodeError, RabbitMQNode

        node = RabbitMQNode()
        try:
            broker = node.start()
        except NodeError as exc:
            raise BrokerUnavailable(str(exc)) from None
        try:
            yield broker
        finally:
            node.stop()
    elif kind == "container":
        from .rabbitmq_container import rabbitmq_container

        with rabbitmq_container() as broker:
            yield broker
    else:
        yield external_broker()


def external_broker() -> Broker:
    url = os.environ.get("RABBITMQ_URL", DEFAULT_EXTERNAL_URL)
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    user, password = parts.username or "guest", parts.password or "guest"
    management = os.environ.get("RABBITMQ_MANAGEMENT_URL", f"http://{user}:{password}@{host}:15672")
    prometheus = os.environ.get("RABBITMQ_PROMETHEUS_TARGET", f"{host}:15692")
    try:
        asyncio.run(check_reachable(url))
    except Exception as exc:
        raise BrokerUnavailable(
            f"No RabbitMQ broker answers at {url.rsplit('@', 1)[-1]} (RABBITMQ_URL): "
            f"{type(exc).__name__}: {exc}.\nStart it, or unset RABBITMQ_URL and the tests start "
            "a RabbitMQ node of their own (TEST_BROKER=node)."
        ) from None
    version = None
    try:
        mgmt = httpx.URL(management)
        with httpx.Client(timeout=5, trust_env=False, auth=(mgmt.username, mgmt.password)) as client:
            response = client.get(str(mgmt.copy_with(username=None, password=None, path="/api/overview")))
            if response.status_code == 200:
                version = response.json().get("rabbitmq_version")
    except (httpx.HTTPError, ValueError):
        pass
    return Broker(
        description=f"RabbitMQ {version or '(version unknown: no management API)'} at "
        f"{url.rsplit('@', 1)[-1]} (RABBITMQ_URL)",
        amqp_url=url,
        management_url=management,
        prometheus_target=prometheus,
        version=version,
    )


async def check_reachable(url: str) -> None:
    """Open and close one connection; raises if the broker does not answer."""
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        connection = await aio_pika.connect(url)
    await connection.close()
