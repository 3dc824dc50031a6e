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


async def owns(
    hub: SessionHub, broker: Broker, session_id: str, key_id: str, *, wait_s: float,
    until_known: bool = False,
) -> bool:
    """Whether ``key_id`` created the session, learning it within ``wait_s`` if need be.

    ``until_known``: while nobody knows the session, keep asking until ``wait_s`` is over (a
    stream may be opened before the POST that queues it has landed).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        session = await look_up(hub, broker, session_id, max(0.0, deadline - loop.time()))
        if session is not None and session.owner is not None:
            return session.owner == key_id
        remaining = deadline - loop.time()
        if not until_known or remaining <= 0:
            return False
        waiting = hub.session(session_id)
        waiting.readers += 1  # served while we wait, as a stream would be
        try:
            await waiting.wait(min(remaining, REASK_S))
        finally:
            waiting.readers -= 1
