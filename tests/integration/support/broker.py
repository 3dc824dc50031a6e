"""The broker the tests run against, and the uuid-named topology each test group uses.

A RabbitMQ container when a Docker engine answers; otherwise the broker named by
``RABBITMQ_URL``. Neither reachable is an error of the test run, never a reason to skip.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import aio_pika
from aio_pika.exceptions import AMQPException
from aiormq.exceptions import AMQPError

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"
CONTAINER_IMAGE = os.environ.get("RABBITMQ_IMAGE", "rabbitmq:4.2.5-management")
DOCKER_PING_TIMEOUT_S = 2
CONNECT_TIMEOUT_S = 5.0

HOW_TO_START = (
    "The integration tests need a RabbitMQ broker (3.9 or later, for streams).\n"
    "Either make a Docker engine reachable (a container is started for the run), or start a\n"
    "broker and point RABBITMQ_URL at it, e.g. `rabbitmq-server -detached` for the default\n"
    f"{DEFAULT_URL}"
)

T = TypeVar("T")


def run_sync(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code (fixtures).

    It runs on a thread of its own so that it never touches the event loop of a test.
    """

    async def main() -> T:
        return await factory()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


def docker_reachable() -> bool:
    """A cheap check: ``GET /_ping`` on the engine named by ``DOCKER_HOST``, short timeout.

    A plain socket rather than the docker client, which leaves a socket open when the
    engine is missing (an error under warnings-as-errors).
    """
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    parts = urlsplit(host)
    if parts.scheme == "unix":
        if not os.path.exists(parts.path):
            return False
        family, address = socket.AF_UNIX, parts.path
    elif parts.scheme == "tcp" and not os.environ.get("DOCKER_TLS_VERIFY"):
        family, address = socket.AF_INET, (parts.hostname or "localhost", parts.port or 2375)
    else:
        return _docker_client_ping()
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(DOCKER_PING_TIMEOUT_S)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = sock.recv(64).split(b"\r\n", 1)[0]
    except OSError:
        return False
    return status_line.startswith(b"HTTP/1.") and status_line.split()[1:2] == [b"200"]


def _docker_client_ping() -> bool:
    """For engines behind TLS: the docker client knows how to talk to them."""
    try:
        import docker

        client = docker.from_env(timeout=DOCKER_PING_TIMEOUT_S)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


async def check_reachable(url: str) -> None:
    """Open and close one connection; raises if the broker does not answer."""
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        connection = await aio_pika.connect(url)
    await connection.close()


@contextmanager
def rabbitmq_container() -> Iterator[str]:
    from testcontainers.community.rabbitmq import RabbitMqContainer

    with RabbitMqContainer(CONTAINER_IMAGE) as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(container.port)
        yield f"amqp://{container.username}:{container.password}@{host}:{port}/"


@dataclass(frozen=True, slots=True)
class Names:
    """Queue and exchange names of one isolated llm-stream deployment on the shared broker."""

    task_queue: str
    events_stream: str
    presence_exchange: str
    dead_letter_exchange: str
    dead_letter_queue: str

    @classmethod
    def fresh(cls) -> Names:
        prefix = f"it.{uuid.uuid4().hex}"
        return cls(
            task_queue=f"{prefix}.tasks",
            events_stream=f"{prefix}.events",
            presence_exchange=f"{prefix}.presence",
            dead_letter_exchange=f"{prefix}.dlx",
            dead_letter_queue=f"{prefix}.dead",
        )

    def env(self) -> dict[str, str]:
        return {
            "TASK_QUEUE": self.task_queue,
            "EVENTS_STREAM": self.events_stream,
            "PRESENCE_EXCHANGE": self.presence_exchange,
            "DEAD_LETTER_EXCHANGE": self.dead_letter_exchange,
            "DEAD_LETTER_QUEUE": self.dead_letter_queue,
        }


async def delete_topology(url: str, names: Names) -> None:
    """Delete every queue and exchange of ``names`` (missing ones are fine)."""
    connection = await aio_pika.connect(url)
    try:
        for queue in (names.task_queue, names.events_stream, names.dead_letter_queue):
            channel = await connection.channel()
            try:
                await channel.queue_delete(queue)
            except (AMQPException, AMQPError):
                pass  # a failed delete closes the channel; the next one gets a new channel
            finally:
                if not channel.is_closed:
                    await channel.close()
        for exchange in (names.presence_exchange, names.dead_letter_exchange):
            channel = await connection.channel()
            try:
                await channel.exchange_delete(exchange)
            except (AMQPException, AMQPError):
                pass
            finally:
                if not channel.is_closed:
                    await channel.close()
    finally:
        await connection.close()


async def message_count(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (a passive declaration: the queue must exist)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await connection.close()


async def wait_for_messages(url: str, queue: str, count: int, *, timeout: float) -> None:
    """Poll ``queue`` until it holds at least ``count`` messages; TimeoutError otherwise."""
    async with asyncio.timeout(timeout):
        while True:
            if await message_count(url, queue) >= count:
                return
            await asyncio.sleep(0.2)
