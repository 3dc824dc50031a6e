"""Confirmed publishing: a publish returns only once the broker has taken responsibility."""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, DeliveryMode
from aiormq.exceptions import AMQPError
from pamqp.commands import Basic

from mqcommon.errors import BrokerUnavailable, PublishRefused


async def publish_confirmed(
    channel: AbstractChannel,
    routing_key: str,
    body: bytes,
    *,
    timeout_s: float,
    persistent: bool = True,
    headers: dict[str, str] | None = None,
    message_id: str | None = None,
    exchange: str | AbstractExchange = "",
) -> None:
    """Publish to ``exchange`` (a name, or one already declared) and wait for the broker's confirm.

    Raises ``PublishRefused`` when the broker refuses it (nack), ``BrokerUnavailable`` when
    the broker is unreachable, cannot route the message (mandatory) or does not confirm
    within ``timeout_s``.
    """
    message = aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=DeliveryMode.PERSISTENT if persistent else DeliveryMode.NOT_PERSISTENT,
        headers=dict(headers) if headers else None,
        message_id=message_id,
    )
    try:
        if isinstance(exchange, str):
            target = channel.default_exchange if not exchange else await channel.get_exchange(exchange)
        else:
            target = exchange
        await target.publish(message, routing_key=routing_key, mandatory=True, timeout=timeout_s)
    except aio_pika.exceptions.DeliveryError as exc:
        if isinstance(exc.frame, Basic.Nack):
            where = routing_key or (exchange if isinstance(exchange, str) else exchange.name)
            raise PublishRefused(f"the broker refused the publish to {where!r}") from exc
        raise BrokerUnavailable(f"publish to {routing_key!r} failed: {exc or type(exc).__name__}") from exc
    except (AMQPError, aio_pika.exceptions.AMQPException, ConnectionError, RuntimeError) as exc:
        raise BrokerUnavailable(f"publish to {routing_key!r} failed: {exc or type(exc).__name__}") from exc
    except TimeoutError as exc:
        raise BrokerUnavailable(f"broker did not confirm within {timeout_s}s") from exc
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the caller is cancelled (a client went away): not the broker's doing
        # The channel closed under the publish (its connection was lost): aio-pika cancels
        # the confirm it waited for.
        raise BrokerUnavailable(f"publish to {routing_key!r} lost with its channel") from exc
