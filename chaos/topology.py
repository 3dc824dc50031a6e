"""A scenario's queues and exchanges on the run's broker: read back, deleted, checked gone.

Each scenario has names of its own, ``chaos.<run id>-<scenario>.*`` (``bench/stack.py``'s
``broker_names``). With pools it also has a line per (pool, lane) and a dead-letter queue per
pool (:mod:`pools`). At the end of a scenario, once its processes are stopped:

- :func:`dead_lettered` reads the dead-letter queues back (left in place, then deleted);
- :func:`queued_in` reads every line's queue log (a stream: each task as published, so the
  sessions each line really received);
- :func:`delete` deletes every queue and exchange of the scenario, the pools' included, as
  ``tests/integration/support/broker.py`` does for a test's topology;
- :func:`leftovers` lists what the management API still shows under the scenario's prefix
  (the run fails on anything left).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from urllib.parse import quote

import aio_pika
import httpx
import orjson
from aio_pika.exceptions import AMQPException
from aiormq.exceptions import AMQPError

from pools import Pools

LOG_IDLE_S = 1.0
"""A queue log read ends once no record came for this long (its records are all stored)."""
LOG_PREFETCH = 500


@dataclass(frozen=True)
class Names:
    """The broker names of one scenario."""

    prefix: str
    env: dict[str, str]
    pools: Pools | None = None
    lines: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Pools only: each line's task queue and its (pool, lane)."""
    dead_letters: dict[str, str] = field(default_factory=dict)
    """Each pool's dead-letter queue (without pools: ``DEAD_LETTER_QUEUE``, as pool "")."""

    @classmethod
    def of(cls, env: dict[str, str], pools: Pools | None = None) -> Names:
        """``env``: ``bench/stack.py``'s ``broker_names`` (``<prefix>tasks``, ``<prefix>events``...)."""
        tasks = env["TASK_QUEUE"]
        prefix = tasks.removesuffix("tasks")
        if pools is None:
            return cls(prefix, env, None, {}, {"": env["DEAD_LETTER_QUEUE"]})
        return cls(prefix, env, pools, pools.lines(tasks), pools.dead_letter_queues(tasks))

    @property
    def task_queues(self) -> list[str]:
        """``TASK_QUEUE`` and every line of the pools."""
        return [self.env["TASK_QUEUE"], *self.lines]

    def queues(self) -> list[str]:
        env = self.env
        dead = {env["DEAD_LETTER_QUEUE"], *self.dead_letters.values()}
        per_line = ("", ".log", ".watermarks", ".keeper")
        return [
            *(f"{line}{suffix}" for line in self.task_queues for suffix in per_line),
            env["EVENTS_STREAM"], env["CANCELS_STREAM"],
            *(f"{q}{suffix}" for q in sorted(dead) for suffix in ("", ".notices")),
        ]

    def exchanges(self) -> list[str]:
        env = self.env
        return [
            env["LIVE_EXCHANGE"], env["PRESENCE_EXCHANGE"], env["WORKERS_EXCHANGE"],
            env["DEAD_LETTER_EXCHANGE"],
            *(f"{line}{suffix}" for line in self.task_queues for suffix in (".intake", ".positions")),
        ]


def _management(management_url: str) -> httpx.AsyncClient:
    url = httpx.URL(management_url)
    return httpx.AsyncClient(
        base_url=str(url.copy_with(username=None, password=None)), auth=(url.username, url.password),
        timeout=10, trust_env=False,
    )


async def dead_lettered(management_url: str, queues: list[str]) -> list[str]:
    """Session ids of the tasks in ``queues`` (read back, left in place)."""
    sids = []
    async with _management(management_url) as management:
        for queue in queues:
            try:
                response = await management.post(
                    f"/api/queues/%2F/{quote(queue, safe='')}/get",
                    json={"count": 10_000, "ackmode": "ack_requeue_true", "encoding": "auto"},
                )
            except httpx.HTTPError as exc:
                sids.append(f"(could not read {queue}: {exc})")
                continue
            if response.status_code == 404:
                continue  # never declared: nothing was dead-lettered there
            if response.status_code != 200:
                sids.append(f"(could not read {queue}: {response.status_code} {response.text[:100]})")
                continue
            for message in response.json():
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    sids.append(json.loads(message["payload"])["session_id"])
    return sids


async def queued_in(amqp_url: str, lines: list[str]) -> dict[str, set[str]]:
    """Session id -> the lines whose queue log (``<line>.log``) holds its task."""
    found: dict[str, set[str]] = {}
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        logs = await asyncio.gather(*(_read_log(connection, f"{line}.log") for line in lines))
        for line, sids in zip(lines, logs, strict=True):
            for sid in sids:
                found.setdefault(sid, set()).add(line)
    return found


async def _read_log(connection: aio_pika.abc.AbstractConnection, stream: str) -> list[str]:
    channel = await connection.channel()
    sids = []
    try:
        await channel.set_qos(prefetch_count=LOG_PREFETCH)
        try:
            queue = await channel.declare_queue(stream, passive=True)
        except (AMQPException, AMQPError):
            return []  # a line nobody declared received nothing
        async with queue.iterator(arguments={"x-stream-offset": "first"}) as records:
            while True:
                try:
                    record = await asyncio.wait_for(anext(records), LOG_IDLE_S)
                except (TimeoutError, StopAsyncIteration):
                    break
                await record.ack()
                if record.body:  # a task; a "left" record has headers only
                    with contextlib.suppress(ValueError, TypeError, AttributeError):
                        sids.append(str(orjson.loads(record.body).get("session_id")))
    finally:
        with contextlib.suppress(AMQPException, AMQPError, RuntimeError):
            if not channel.is_closed:
                await channel.close()
    return sids


async def delete(amqp_url: str, names: Names) -> list[str]:
    """Delete every queue and exchange of ``names`` (missing ones are fine); what failed."""
    failed = []
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        for kind, objects in (("queue", names.queues()), ("exchange", names.exchanges())):
            for name in objects:
                channel = await connection.channel()
                try:
                    if kind == "queue":
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)
                except (AMQPException, AMQPError) as exc:
                    if "NOT_FOUND" not in str(exc):
                        failed.append(f"{kind} {name}: {exc}")
                finally:
                    with contextlib.suppress(AMQPException, AMQPError, RuntimeError):
                        if not channel.is_closed:
                            await channel.close()
    return failed


async def leftovers(management_url: str, prefix: str) -> list[str]:
    """Queues and exchanges the broker still has whose names start with ``prefix``."""
    left = []
    async with _management(management_url) as management:
        for kind in ("queues", "exchanges"):
            try:
                response = await management.get(f"/api/{kind}/%2F", params={"columns": "name"})
                response.raise_for_status()
            except httpx.HTTPError as exc:
                left.append(f"(could not list the {kind}: {exc})")
                continue
            left += [f"{kind[:-1]} {o['name']}" for o in response.json() if o["name"].startswith(prefix)]
    return left
