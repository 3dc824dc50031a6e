"""The session service: every use case of a session, whatever the dialect that asks.

It queues a request as a task, follows a session to its end, finds a session this replica
does not hold (another replica accepted it, or a worker runs it), settles whose it is, and
cancels it. Routes translate HTTP to these calls and back; nothing else here knows HTTP.

How long it waits to learn about a session is one policy (``Waits``):

- a look-up (``GET`` of a response, the start of an ownership check) waits ``lookup_s`` for a
  worker's replay or the history's answer;
- settling a session (cancel, and whose it is before a cancel) waits ``settle_s``: long enough
  for a session queued a moment ago to be named by its worker, or for the history to answer;
- a stream may be opened before the POST that queues it has landed: it waits ``stream_s``
  (STREAM_WAIT_TIMEOUT_S) for anybody to know the session.

With API keys on, a session belongs to the key that created it; to any other key it does not
exist. Its owner (a key id, never the key) travels with it: in the task, its queue-log record,
the ``accepted`` history record, the worker's frames and the transcript.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import structlog
from mqcommon.errors import BrokerUnavailable, PublishRefused
from mqcommon.pools import ModelNotServed, Route
from mqcommon.schemas import ChatTask, id_time, new_id
from mqcommon.tracing import child_of, trace_id_of

from llm_stream_api import metrics
from llm_stream_api.broker.connection import BrokerConnection
from llm_stream_api.broker.history import History
from llm_stream_api.broker.intake import Intake
from llm_stream_api.broker.lines import Lines
from llm_stream_api.broker.presence import PresenceAnnouncer
from llm_stream_api.protocol.errors import ModelNotFound, SessionConflict
from llm_stream_api.protocol.task import TaskRequest
from llm_stream_api.quota import admission
from llm_stream_api.quota.admission import StreamCount
from llm_stream_api.quota.key_limits import KeyLimits
from llm_stream_api.quota.service_tiers import TierPolicy
from llm_stream_api.service import streams
from llm_stream_api.service.follow import Piece, follow
from llm_stream_api.sessions.hub import Session, SessionHub
from llm_stream_api.settings import APISettings

log = structlog.get_logger(__name__)

SWEEP_INTERVAL_S = 5.0
# A running session's replay from its worker usually arrives within milliseconds; only when it
# does not is the history read. A session the API named less than YOUNG_S ago is queued,
# running or just ended (workers keep ended answers KEEP_ENDED_S, 15 s), so a worker answers
# or will route it here when it starts: its history is read later, only if still silent.
REPLAY_GRACE_S = 0.15
YOUNG_S = 10.0
YOUNG_GRACE_S = 2.0
LOOKUP_WAIT_S = 3.0
REASK_S = 2.0  # how often a stream waiting for an unknown session's owner asks again
OWNER_POLL_S = 0.1  # how often a wait for a session's owner looks again
POSITION_WAIT_S = 0.5  # how long a look at a waiting session's position waits for the keeper
KEPT_ANNOTATIONS = 10_000


@dataclass(frozen=True, slots=True)
class Waits:
    """How long the service waits to learn about a session (see the module's docstring)."""

    lookup_s: float
    settle_s: float
    stream_s: float

    @classmethod
    def from_settings(cls, settings: APISettings) -> Waits:
        return cls(
            lookup_s=LOOKUP_WAIT_S,
            settle_s=YOUNG_GRACE_S + settings.history_timeout_s,
            stream_s=settings.stream_wait_timeout_s,
        )


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """``cancelled``: it ended cancelled. ``finished``: it had already ended (``end`` says how).
    ``cancelling``: not ended yet (queued: its task is dropped when a worker takes it).
    ``not_found``: no replica or worker knows it (or, with keys on, another key created it)."""

    status: str
    end: str | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    kind: str
    error: str | None


class SessionService:
    def __init__(
        self, settings: APISettings, hub: SessionHub, broker: BrokerConnection, *, replica_id: str,
        intake: Intake, history: History, lines: Lines, presence: PresenceAnnouncer,
        key_limits: KeyLimits, streams: StreamCount, tiers: TierPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.broker = broker
        self.replica_id = replica_id
        self.lines = lines
        self.positions = lines  # positions of a session in whichever line it waits
        self.tiers = tiers or TierPolicy({})
        self.key_limits = key_limits
        self.streams = streams
        self.waits = Waits.from_settings(settings)
        self._intake = intake
        self._history = history
        self._presence = presence
        self._discovering: dict[str, asyncio.Task[None]] = {}
        self._kept_served: set[asyncio.Task[Answer]] = set()
        self._annotations: OrderedDict[str, Any] = OrderedDict()
        hub.on_gap = self.resync

    def start(self) -> None:
        self.broker.run_in_background("hub-sweep", self._sweep_forever())
        self.broker.run_in_background("presence", self._presence.announce_forever())

    async def stop(self) -> None:
        for task in (*self._discovering.values(), *self._kept_served):
            task.cancel()

    # -- queueing --------------------------------------------------------------------------

    async def enqueue(
        self, wanted: TaskRequest, *, owner: str | None, traceparent: str | None, reader_here: bool = True,
    ) -> tuple[ChatTask, str]:
        """Queue ``wanted`` durably; returns the task and its W3C traceparent.

        ``reader_here``: this request reads the answer itself (``/chat``, a streamed completion),
        so the workers send its frames here from the start. Otherwise (``/chat/async``) the
        replica a client later reads it from asks for them: without affinity, that is rarely
        this one, and a replica should not receive what it does not serve.

        The task waits in the line of its model's pool and its service tier (``route``).

        Raises ``ModelNotFound`` for a model no pool serves, ``Forbidden`` for a tier the key
        may not use, ``SessionConflict`` when the session id is taken, ``Overloaded`` when its
        line is full, ``RateLimited`` past a key's limits, ``BrokerUnavailable`` when the
        broker is down or does not confirm in time.
        """
        route = self.route(wanted, owner)
        line = self.lines.get(route.line.queue).positions
        admission.check_queue(self.settings, line)
        wanted = replace(wanted, owner=owner, model=route.model)
        if owner is not None:
            self.key_limits.admit(owner, self.hub)
        session_id = wanted.session_id or new_id()
        session = self.hub.session(session_id)
        if session.known:
            raise SessionConflict(session_id)
        # Claimed before the first await, so a concurrent POST with the same id gets 409. Across
        # processes the claim travels as the "accepted" event, milliseconds later.
        session.reserved = True
        session.owner = owner
        # Per-key limits count the session until it ends: its end must reach this replica.
        reader_here = reader_here or (owner is not None and self.key_limits.counts_sessions)
        parent = child_of(traceparent)
        task = wanted.task(session_id, self.replica_id if reader_here else None)
        trace_id = trace_id_of(parent)
        structlog.contextvars.bind_contextvars(session_id=session_id, task_id=task.task_id, trace_id=trace_id)
        started = time.perf_counter()
        try:
            await self._intake.publish_task(task, parent, route.line.queue)
            # The acceptance marker lets any other replica learn that the session exists while
            # it waits, and in which line.
            await self._history.accepted(
                task.session_id, task.created_at, trace_id, task.owner,
                line=route.line.queue if self.lines.many else None,
            )
            self.hub.accept(
                task.session_id, task.created_at, trace_id, tracked=task.reply_to == self.replica_id,
                owner=owner, line=route.line.queue,
            )
        except PublishRefused as exc:
            if admission.near_bound(self.settings, line):
                raise admission.queue_full(self.settings, line) from exc
            # Refused far from the bound: not a full queue but a queue without a leader (a
            # failover), or a channel that kept a stale one; the next publish gets a new channel.
            self.broker.renew_channel()
            raise BrokerUnavailable("the broker refused the task (its queue is failing over)") from exc
        finally:
            session.reserved = False
        metrics.ENQUEUE_DURATION.observe(time.perf_counter() - started)
        if owner is not None:
            self.key_limits.started(owner, session_id)
        log.info("task queued")
        return task, parent

    def route(self, wanted: TaskRequest, owner: str | None) -> Route:
        """The pool, lane and upstream model of a request; raises ``ModelNotFound`` or ``Forbidden``."""
        tier = self.tiers.choose(owner, wanted.service_tier)
        try:
            return self.lines.pools.route(wanted.model, tier)
        except ModelNotServed as exc:
            raise ModelNotFound(exc.model, exc.served) from None

    def check_streams(self) -> None:
        """Raise ``Overloaded`` while this process serves MAX_OPEN_STREAMS streams."""
        admission.check_streams(self.settings, self.streams)

    # -- reading ---------------------------------------------------------------------------

    def session(self, session_id: str) -> Session:
        return self.hub.session(session_id)

    def get(self, session_id: str) -> Session | None:
        return self.hub.get(session_id)

    def follow(self, session_id: str, after: int = 0, *, positions: bool = False) -> AsyncIterator[Piece]:
        """The session's text from character ``after`` on, then its end (``service.follow``);
        ``positions``: its queue positions too while it waits."""
        return follow(
            self.hub, session_id, after, self.settings, self.discover, self.positions if positions else None
        )

    def sse(self, session_id: str, after: int, *, typed: bool = False) -> AsyncIterator[bytes]:
        """The native SSE stream of a session, with its queue positions; ``typed``: every
        part of the answer, not its text alone (``streams.sse_frame``)."""
        return streams.sse_body(
            self.hub, session_id, after, self.settings, self.discover, self.positions, streams=self.streams,
            typed=typed,
        )

    def text(self, session_id: str, requested_at: float) -> AsyncIterator[bytes]:
        """The answer as plain text; its client going away cancels the generation."""
        return streams.text_body(
            self.hub, session_id, self.settings, requested_at, self.discover, self.cancel_soon,
            streams=self.streams,
        )

    async def answer(self, session_id: str) -> Answer:
        """Wait for the whole answer: its text (without its other parts, which the session
        holds), how it ended, and the error if any."""
        parts: list[str] = []
        async for piece in self.follow(session_id):
            if piece.kind is None:
                parts.append(piece.content)
            else:
                return Answer("".join(parts), piece.kind, piece.error)
        raise AssertionError("follow ended without a final piece")

    def keep_served(self, session_id: str) -> None:
        """Serve the session until it ends, with no client reading (a background response):
        the workers do not take it for abandoned while nobody polls."""
        task = asyncio.create_task(self.answer(session_id))
        self._kept_served.add(task)
        task.add_done_callback(self._kept_served.discard)

    async def position_of(self, session_id: str) -> tuple[int, float | None] | None:
        """Where a waiting session stands (1: next to start) and its ETA; None if not waiting.

        Asked of the keeper of the queue log, for at most ``POSITION_WAIT_S``."""
        session = self.hub.session(session_id)
        if session.started or session.ended:
            return None
        try:
            with session.read():
                self.positions.watch(session)
                if session.queue_position is None:
                    await session.wait(POSITION_WAIT_S)
                position = session.queue_position
        finally:
            self.positions.unwatch(session)  # once the reader is gone: it counts readers
        return None if position is None else (position, self.positions.eta(position, session))

    def annotate(self, session_id: str, value: Any) -> None:
        """Keep what a dialect knows of a session it created (model, parameters), for the
        most recent KEPT_ANNOTATIONS sessions."""
        self._annotations[session_id] = value
        while len(self._annotations) > KEPT_ANNOTATIONS:
            self._annotations.popitem(last=False)

    def annotation(self, session_id: str) -> Any:
        return self._annotations.get(session_id)

    # -- finding a session this replica does not hold --------------------------------------

    async def look_up(self, session_id: str, wait_s: float | None = None) -> Session | None:
        """The session if this replica, another one or a worker knows it; None otherwise."""
        session = self.hub.session(session_id)
        if session.known and (session.tracked or session.ended):
            return session
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.waits.lookup_s if wait_s is None else wait_s)
        with session.read():  # served while we ask, so nobody abandons it meanwhile
            self.discover(session)
            while not (session.started or session.ended or session.looked_up):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await session.wait(remaining)
        return session if session.known else None

    async def find(self, session_id: str, key_id: str | None) -> Session | None:
        """The session as ``key_id`` may see it: None if nobody knows it, or another key's."""
        session = await self.look_up(session_id)
        if session is None or (key_id is not None and session.owner != key_id):
            return None
        return session

    def discover(self, session: Session) -> None:
        """A client asks for a session whose frames do not come here: ask for them.

        The workers replay it from offset 0 if it runs (or just ended) and route it here from
        now on; if no replay comes quickly, the history says whether it is queued or over.
        """
        session.tracked = True
        self._presence.want(session.id)
        if session.id not in self._discovering:
            task = asyncio.create_task(self._read_history(session))
            self._discovering[session.id] = task
            task.add_done_callback(lambda _: self._discovering.pop(session.id, None))

    def resync(self, session_id: str) -> None:
        """Text went missing (a lost message): have it replayed, or read the transcript."""
        session = self.hub.get(session_id)
        if session is not None and session.tracked:
            self.discover(session)

    async def _read_history(self, session: Session) -> None:
        before = (session.started, len(session.text))
        queued_here = session.accepted_at is not None and not session.started
        made = id_time(session.id)
        young = made is not None and time.time() - made < YOUNG_S
        await asyncio.sleep(YOUNG_GRACE_S if young else REPLAY_GRACE_S)
        if session.ended or (session.started, len(session.text)) != before:
            return  # a worker answered: it runs, or has just finished
        if queued_here and young:
            return  # queued by this replica a moment ago: the worker that takes it routes it here
        try:
            records = await self._history.lookup(session.id)
        except BrokerUnavailable as exc:
            log.warning("history lookup failed", session_id=session.id, error=str(exc))
            session.lookup_failed = True
            return
        session.looked_up, session.lookup_failed = True, False
        for record in records:
            self.hub.apply_record(record)
        session.notify()

    # -- whose it is -----------------------------------------------------------------------

    def known_owner(self, session_id: str) -> str | None:
        """The owner if this replica knows it already: from its own POST, a worker's frame, a
        history record, or the keeper of the queue log (for a waiting task)."""
        return self.hub.session(session_id).owner

    async def owns(self, session_id: str, key_id: str, *, stream: bool = False) -> bool:
        """Whether ``key_id`` created the session, learning it within the wait policy.

        A waiting session's owner comes with its queue-log record, so a stream opens at once and
        carries its positions; only a session no record names yet is looked up. ``stream``:
        while nobody knows the session, keep asking until ``stream_s`` is over (a stream may be
        opened before the POST that queues it has landed); otherwise wait ``settle_s``.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.waits.stream_s if stream else self.waits.settle_s)
        asked = self.hub.session(session_id)
        try:
            with asked.read():  # watched while we ask: the keeper says whose a waiting task is
                self.positions.watch(asked)
                return await self._owned_by(session_id, key_id, deadline, stream=stream)
        finally:
            self.positions.unwatch(asked)

    async def _owned_by(self, session_id: str, key_id: str, deadline: float, *, stream: bool) -> bool:
        loop = asyncio.get_running_loop()
        while True:
            owner = self.known_owner(session_id)
            if owner is not None:
                return owner == key_id
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            # Short looks, so that the queue log's record ends the wait as soon as it arrives.
            slice_s = min(remaining, OWNER_POLL_S)
            began = loop.time()
            session = await self.look_up(session_id, slice_s)
            if session is not None and session.owner is not None:
                return session.owner == key_id
            seen = self.hub.session(session_id)
            if not stream and (session is not None or seen.started or seen.ended or seen.looked_up):
                return False  # known without an owner, or settled as nobody's
            if loop.time() - began < slice_s:
                # The look-up answered at once (known here, without an owner): wait for news.
                with seen.read():  # served while we wait, as a stream would be
                    await seen.wait(min(deadline - loop.time(), REASK_S if stream else slice_s))

    # -- cancelling ------------------------------------------------------------------------

    async def cancel(self, session_id: str, key_id: str | None = None) -> CancelOutcome:
        """Cancel a session from any replica; idempotent. Another key's session is not found,
        and is left running: one client cannot stop another's. Raises ``BrokerUnavailable``."""
        if key_id is not None and not await self.owns(session_id, key_id):
            return CancelOutcome("not_found")
        if not self.broker.connected:
            raise BrokerUnavailable("not connected to the broker")
        session = self.hub.session(session_id)
        if not session.tracked:
            self.discover(session)
        # Until a worker replays it, or the history says whether it exists.
        deadline = time.monotonic() + self.waits.settle_s
        while not session.known and (finding := self._discovering.get(session_id)) is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            waiter = asyncio.ensure_future(session.wait(remaining))
            await asyncio.wait([finding, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        if session.ended:
            return _outcome(session)
        if not session.known:
            if session.lookup_failed:  # not known here, and the history could not say
                raise BrokerUnavailable("the session's history could not be read")
            return CancelOutcome("not_found")
        await self._intake.publish_cancel(session_id)
        deadline = time.monotonic() + self.settings.cancel_wait_s
        while not session.ended and (remaining := deadline - time.monotonic()) > 0:
            await session.wait(remaining)
        return _outcome(session) if session.ended else CancelOutcome("cancelling")

    def cancel_soon(self, session_id: str) -> None:
        """Cancel without waiting (the only client of a stream went away)."""
        self.broker.send_soon(self._cancel_quietly(session_id))

    async def _cancel_quietly(self, session_id: str) -> None:
        with contextlib.suppress(BrokerUnavailable):
            await self.cancel(session_id)

    # -- background ------------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while True:
            metrics.BROKER_CONNECTED.set(1 if self.broker.connected else 0)
            metrics.HUB_SESSIONS.set(len(self.hub))
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.hub.sweep()


def _outcome(session: Session) -> CancelOutcome:
    if session.end_kind == "cancelled":
        return CancelOutcome("cancelled", "cancelled")
    return CancelOutcome("finished", session.end_kind)
