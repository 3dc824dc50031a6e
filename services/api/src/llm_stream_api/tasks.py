"""The one way a request becomes a task, whatever its dialect (native, Chat Completions, Responses).

Each dialect's protocol module turns its body into a ``TaskRequest``: the conversation, the
model and the generation parameters. ``enqueue`` claims the session id, builds the
``ChatTask`` and waits for the broker's confirm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace

import structlog
from fastapi import Request
from mqcommon.errors import PublishRefused
from mqcommon.schemas import ChatMessage, ChatTask, new_id
from mqcommon.tracing import TRACEPARENT_HEADER, child_of, trace_id_of

from llm_stream_api import admission, auth, metrics
from llm_stream_api.broker import Broker
from llm_stream_api.errors import SessionConflict
from llm_stream_api.hub import SessionHub
from llm_stream_api.models import ChatRequest

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class TaskRequest:
    """What a client asks the LLM for, in no particular dialect."""

    message: str | None = None  # one user turn (the first format)
    messages: tuple[ChatMessage, ...] | None = None  # or a whole conversation
    model: str | None = None
    session_id: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    user: str | None = None
    include_usage: bool | None = None
    owner: str | None = None  # the key id of the request (``auth``), set by ``enqueue``

    def task(self, session_id: str, reply_to: str | None) -> ChatTask:
        given = {
            f.name: getattr(self, f.name) for f in fields(self)
            if f.name not in ("session_id", "message") and getattr(self, f.name) is not None
        }
        # A conversation also carries its last user turn as ``message``: a worker that predates
        # conversations still answers it.
        message = self.message or _last_user_turn(self.messages)
        return ChatTask(session_id=session_id, message=message, reply_to=reply_to, **given)


def _last_user_turn(messages: tuple[ChatMessage, ...] | None) -> str | None:
    for turn in reversed(messages or ()):
        if turn.role == "user":
            return turn.content or None
    return None


async def enqueue(
    wanted: TaskRequest, request: Request, broker: Broker, hub: SessionHub, *, reader_here: bool = True
) -> tuple[ChatTask, str]:
    """Queue ``wanted`` durably; returns the task and its W3C traceparent.

    ``reader_here``: this request reads the answer itself (``/chat``, a streamed completion),
    so the workers send its frames here from the start. Otherwise (``/chat/async``) the
    replica a client later reads it from asks for them: without affinity, that is rarely
    this one, and a replica should not receive what it does not serve.

    Raises ``SessionConflict`` when the session id is taken, ``Overloaded`` when the queue is
    full, ``BrokerUnavailable`` when the broker is down or does not confirm in time.
    """
    admission.check_queue(broker.settings, broker.queue)
    wanted = replace(wanted, owner=auth.key_id(request))
    limits = request.app.state.key_limits
    if wanted.owner is not None:
        limits.admit(wanted.owner, hub)
    session_id = wanted.session_id or new_id()
    session = hub.session(session_id)
    if session.known:
        raise SessionConflict(session_id)
    # Claimed before the first await, so a concurrent POST with the same id gets 409. Across
    # processes the claim travels as the "accepted" event, milliseconds later.
    session.reserved = True
    session.owner = wanted.owner
    # Per-key limits count the session until it ends: its end must reach this replica.
    reader_here = reader_here or (wanted.owner is not None and limits.counts_sessions)
    traceparent = child_of(request.headers.get(TRACEPARENT_HEADER))
    task = wanted.task(session_id, broker.replica_id if reader_here else None)
    structlog.contextvars.bind_contextvars(
        session_id=session_id, task_id=task.task_id, trace_id=trace_id_of(traceparent)
    )
    started = time.perf_counter()
    try:
        await broker.enqueue(task, traceparent)
    except PublishRefused as exc:
        raise admission.queue_full(broker.settings, broker.queue) from exc
    finally:
        session.reserved = False
    metrics.ENQUEUE_DURATION.observe(time.perf_counter() - started)
    if wanted.owner is not None:
        limits.started(wanted.owner, session_id)
    log.info("task queued")
    return task, traceparent


def from_native(body: ChatRequest) -> TaskRequest:
    """``POST /chat`` and ``/chat/async``: ``message`` alone, or ``messages``.

    With both, ``message`` is the latest question: it is added as the last user turn unless
    ``messages`` already ends with it (what the chat page sends).
    """
    messages = None
    if body.messages is not None:
        turns = [ChatMessage(role=t.role, content=t.content) for t in body.messages]
        last = turns[-1]
        if body.message is not None and not (last.role == "user" and last.content == body.message):
            turns.append(ChatMessage(role="user", content=body.message))
        messages = tuple(turns)
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop) if body.stop else None
    return TaskRequest(
        message=body.message, messages=messages, model=body.model, session_id=body.session_id,
        temperature=body.temperature, top_p=body.top_p, max_tokens=body.max_tokens, stop=stop,
        seed=body.seed, user=body.user,
    )
