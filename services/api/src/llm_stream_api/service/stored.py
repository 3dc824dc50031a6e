"""Stored responses: a conversation a later request continues (``previous_response_id``).

A stored response's conversation before its answer (its turns, without its instructions, as
OpenAI leaves those out of a continuation) is one ``stored`` record in the history stream,
next to the session's transcript. Any replica continues it: a history lookup by the response
id finds both, and the answer becomes the assistant turn (its text and tool calls; reasoning
is not sent back to the LLM). A response is continued within ``RESPONSES_STORE_S`` of its
creation, which the history stream's own retention (``EVENTS_MAX_AGE``) bounds; past it,
or when it was created with ``store: false`` or by another key, it does not exist (404).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog
from mqcommon.errors import BrokerUnavailable
from mqcommon.parts import Kinds, Part
from mqcommon.schemas import ChatMessage, HistoryRecord, id_time

from llm_stream_api import metrics
from llm_stream_api.broker.history import History
from llm_stream_api.protocol.chat_completions import message_of
from llm_stream_api.protocol.errors import BrokerDown, NotFound, OpenAIError
from llm_stream_api.sessions.hub import Session

log = structlog.get_logger(__name__)

PARAM = "previous_response_id"


# The session service's ``find``: a session as a key may see it, wherever it lives.
Find = Callable[[str, str | None], Awaitable[Session | None]]


class StoredConversations:
    def __init__(self, find: Find, history: History, *, keep_s: float) -> None:
        self._find = find
        self._history = history
        self._keep = keep_s

    async def store(self, response_id: str, turns: list[ChatMessage], owner: str | None) -> None:
        """Record the conversation of a response just queued. Confirmed; a broker that does not
        confirm leaves the response unstored (its answer is unaffected), which is logged."""
        record = HistoryRecord(
            "stored", response_id, at=time.time(), owner=owner,
            conversation=[turn.model_dump(exclude_none=True) for turn in turns],
        )
        try:
            await self._history.append(record)
        except BrokerUnavailable as exc:
            metrics.HISTORY_FAILURES.labels("stored").inc()
            log.warning("response not stored", session_id=response_id, error=str(exc))

    async def conversation(self, response_id: str, key_id: str | None) -> list[ChatMessage]:
        """The whole conversation of a stored, completed response, its answer last."""
        made = id_time(response_id)
        if made is None or time.time() - made > self._keep:
            raise _missing(response_id)
        try:
            records = await self._history.lookup(response_id, window_s=self._keep)
        except BrokerUnavailable as exc:
            raise BrokerDown(str(exc)) from exc
        stored = next((r for r in records if r.kind == "stored"), None)
        if stored is None or (key_id is not None and stored.owner != key_id):
            raise _missing(response_id)
        ended = [r for r in records if r.kind == "transcript" and r.end is not None]
        transcript = next((r for r in ended if r.owner == stored.owner), None)
        if transcript is not None and transcript.end is not None:
            kind, text, parts = transcript.end.kind, transcript.text, _parts(transcript)
        else:  # ended a moment ago: its transcript may still be on its way; its worker replays it
            session = await self._find(response_id, key_id)
            if session is None or not session.ended:
                raise OpenAIError(400, f"Previous response {response_id!r} has not completed yet; "
                                  "continue it once it has.", param=PARAM)
            kind, text, parts = session.end_kind or "", session.text, session.parts()
        if kind != "done":
            raise OpenAIError(400, f"Previous response {response_id!r} did not complete ({kind}); "
                              "it cannot be continued.", param=PARAM)
        turns = [ChatMessage.model_validate(turn) for turn in stored.conversation or []]
        message, _ = message_of(parts, text)
        content = message["content"] if message["content"] or not message["refusal"] else message["refusal"]
        turns.append(ChatMessage(role="assistant", content=content, tool_calls=message.get("tool_calls")))
        return turns


def _parts(record: HistoryRecord) -> list[Part] | None:
    if record.kinds is None:
        return None
    kinds = Kinds()
    for key, count in record.kinds:
        kinds.add(key, count)
    return kinds.parts(record.text, 0)


def _missing(response_id: str) -> NotFound:
    return NotFound(f"Previous response with id {response_id!r} not found.", param=PARAM)
