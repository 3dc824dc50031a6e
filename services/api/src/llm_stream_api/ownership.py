"""Every session belongs to the key that created it; to any other key it does not exist.

With API keys on, a session's owner (a key id, never the key) travels with it: in the task,
the ``accepted`` history record, the worker's first frame and every replay, and the
transcript. So any replica learns whose a session is as it learns of the session itself, and
a request of another key gets the same 404 as a request for a session nobody knows.
"""

from __future__ import annotations

import asyncio

from llm_stream_api.broker import Broker
from llm_stream_api.hub import SessionHub
from llm_stream_api.routes.openai_common import look_up

REASK_S = 2.0  # how often a stream waiting for an unknown session asks again
OWNER_POLL_S = 0.1  # how often a wait for a session's owner looks at the queue log again


def known_owner(hub: SessionHub, broker: Broker, session_id: str) -> str | None:
    """The owner if this replica knows it already: from its own POST, a worker's frame, a
    history record, or the queue log's ``queued`` record of a waiting task."""
    return hub.session(session_id).owner or broker.queue.owner_of(session_id)


async def owns(
    hub: SessionHub, broker: Broker, session_id: str, key_id: str, *, wait_s: float,
    until_known: bool = False,
) -> bool:
    """Whether ``key_id`` created the session, learning it within ``wait_s`` if need be.

    A waiting session's owner comes with its queue-log record, so a stream opens at once and
    carries its positions; only a session no record names yet is looked up. ``until_known``:
    while nobody knows the session, keep asking until ``wait_s`` is over (a stream may be
    opened before the POST that queues it has landed).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        owner = known_owner(hub, broker, session_id)
        if owner is not None:
            return owner == key_id
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        # Short looks, so that the queue log's record ends the wait as soon as it arrives.
        slice_s = min(remaining, OWNER_POLL_S)
        began = loop.time()
        session = await look_up(hub, broker, session_id, slice_s)
        if session is not None and session.owner is not None:
            return session.owner == key_id
        seen = hub.session(session_id)
        if not until_known and (session is not None or seen.started or seen.ended or seen.looked_up):
            return False  # known without an owner, or settled as nobody's
        if loop.time() - began < slice_s:
            # The look-up answered at once (known here, without an owner): wait for news.
            seen.readers += 1  # served while we wait, as a stream would be
            try:
                await seen.wait(min(deadline - loop.time(), REASK_S if until_known else slice_s))
            finally:
                seen.readers -= 1
