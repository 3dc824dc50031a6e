"""Versioned wire formats, in one place. ``docs/events.md`` describes them for readers.

Four things travel between the processes:

- **Tasks** (API -> worker, the ``llm.tasks`` queue): one ``ChatTask`` per request.
- **Live frames** (worker -> the API replicas that serve a session, the ``llm.live`` direct
  exchange, routed by replica id): one message per replica per flush, holding one ``Frame``
  per session with all the text produced since the previous flush.
- **History records** (the ``llm.events`` stream, filtered by session id): the ``accepted``
  marker of each session, its final ``transcript``, and the ``probe`` a lookup appends to know
  where the stream ended when it started reading. The same records on the small
  ``llm.cancels`` stream: a ``cancel`` per cancelled session, which every worker reads.
- **Presence** (API -> workers, the ``llm.presence`` fanout): which sessions a replica
  serves, tracks or wants replayed.
- **The queue log** (the ``<TASK_QUEUE>.log`` stream): every task as it enters the queue (the
  intake exchange routes one publish to both), and a ``left`` record when a worker takes it or
  a ``withdrawn`` one when the queue refused it. Read by the API replicas to tell each waiting
  client its position.

Offsets are positions in characters of the answer, so a replica merges frames and replays
from any worker without gaps or duplicates, whatever their boundaries.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeGuard

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from mqcommon.parts import CONTENT, Run, runs_from_wire, runs_to_wire

SESSION_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
SESSION_ID_RE = re.compile(SESSION_ID_PATTERN)

SessionId = Annotated[str, StringConstraints(pattern=SESSION_ID_PATTERN)]
# A model name has no control characters and no line breaks of any kind (U+0085 and U+2028/9
# end lines for some SSE parsers, so a model echoed back in a stream would cut it).
MODEL_PATTERN = r"^[^\u0000-\u001f\u007f-\u009f\u2028\u2029]+$"

# 3: answers carry typed parts (``kinds``, mqcommon.parts). History readers still take 2.
FRAMES_VERSION = 3
HISTORY_VERSION = 3
HISTORY_VERSIONS = frozenset((2, 3))
PRESENCE_VERSION = 2

# How a session ends. "cancelled" is a client's decision; "error" covers everything else.
EndKind = Literal["done", "error", "cancelled"]
END_KINDS = frozenset(("done", "error", "cancelled"))

FILTER_HEADER = "x-stream-filter-value"
SESSION_HEADER = "session_id"


def new_id() -> str:
    """A UUIDv7 (RFC 9562) as 32 hex digits: unique, and ordered by the time it was made."""
    millis = time.time_ns() // 1_000_000 & (1 << 48) - 1
    rand = int.from_bytes(os.urandom(10), "big")
    value = millis << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64 | 0b10 << 62 | rand & (1 << 62) - 1
    return f"{value:032x}"


def id_time(value: str) -> float | None:
    """When an id made by ``new_id`` was made (its last 32 characters), else None."""
    tail = value[-32:]
    if len(tail) != 32 or tail[12] != "7" or tail[16] not in "89ab":
        return None
    try:
        return int(tail[:12], 16) / 1000
    except ValueError:
        return None


class MalformedMessage(ValueError):
    """A message that is not in a format this version understands (``reason`` says why)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# -- tasks ---------------------------------------------------------------------------------


class ChatMessage(BaseModel):
    """One turn of a conversation.

    ``content`` is text, or OpenAI's content parts (``text``, ``image_url``) as given. An
    assistant turn may carry ``tool_calls`` instead of text, and a ``tool`` turn answers one
    of them (``tool_call_id``).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = ""
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        """The turn's text: its text parts joined by newlines when it has parts."""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(
            part["text"] for part in self.content or () if part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )

    def to_llm(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls is not None:
            out["tool_calls"] = self.tool_calls
            out["content"] = self.content or None  # an assistant turn of tool calls alone
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


# Generation parameters of a task that are passed to the LLM as given when set. A task that
# sets any of the typed ones is version 2: a worker of version 1 refuses it (and dead-letters
# it with an error the client sees) instead of answering without them.
PASSED_THROUGH = ("temperature", "top_p", "stop", "seed", "user")
PASSED_THROUGH_TYPED = (
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "logprobs", "top_logprobs",
    "presence_penalty", "frequency_penalty", "logit_bias", "reasoning_effort", "n",
)


class ChatTask(BaseModel):
    """One chat request waiting for a worker.

    ``message`` alone is one user message (the first format). ``messages`` is a whole
    conversation; the generation parameters are optional and sent to the LLM as given.
    Unset fields are left out of the encoding, so a task without them reads as before.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1, 2] = 1
    task_id: str = Field(default_factory=new_id)
    session_id: SessionId
    message: str | None = Field(default=None, min_length=1)
    messages: tuple[ChatMessage, ...] | None = Field(default=None, min_length=1)
    model: str | None = None
    created_at: float = Field(default_factory=time.time)
    reply_to: str | None = None  # the API replica that accepted it gets live frames from the start
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    user: str | None = None
    include_usage: bool | None = None  # ask the LLM for its token usage, sent back in the end
    owner: str | None = None  # the id of the API key that created the session (never the key)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    n: int | None = Field(default=None, ge=2)  # choices above 1 (mqcommon.parts: choice.<n>.*)

    @model_validator(mode="after")
    def _has_a_prompt(self) -> ChatTask:
        if self.message is None and self.messages is None:
            raise ValueError("a task needs a message or messages")
        return self

    def conversation(self) -> list[dict[str, Any]]:
        """The messages to send, without any system prompt of the deployment."""
        if self.messages is not None:
            return [m.to_llm() for m in self.messages]
        return [{"role": "user", "content": self.message or ""}]

    def typed(self) -> bool:
        """Does it ask for more than text (tools, formats, log probabilities, ...)?"""
        return any(getattr(self, name) is not None for name in PASSED_THROUGH_TYPED) or any(
            m.role == "tool" or m.tool_calls is not None or not isinstance(m.content, str)
            for m in self.messages or ()
        )

    def parameters(self) -> dict[str, Any]:
        """The generation parameters it sets, as the LLM takes them."""
        out = {name: getattr(self, name) for name in (*PASSED_THROUGH, *PASSED_THROUGH_TYPED)}
        out["max_tokens"] = self.max_tokens
        return {name: value for name, value in out.items() if value is not None}

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def decode(cls, body: bytes) -> ChatTask:
        return cls.model_validate_json(body)


# -- live frames ---------------------------------------------------------------------------


@dataclass(slots=True)
class End:
    kind: str  # one of END_KINDS
    length: int  # characters of the whole answer
    error: str | None = None
    usage: dict[str, Any] | None = None  # the LLM's token usage, when the task asked for it
    finish: str | None = None  # the LLM's finish reason (stop, length, tool_calls, ...)
    param: str | None = None  # with an error the LLM answered: the request field it named

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "length": self.length}
        if self.error is not None:
            out["error"] = self.error
        if self.usage is not None:
            out["usage"] = self.usage
        if self.finish is not None:
            out["finish"] = self.finish
        if self.param is not None:
            out["param"] = self.param
        return out


@dataclass(slots=True)
class Frame:
    """What one session produced since its previous frame (or, in a replay, since offset 0)."""

    session_id: str
    offset: int = 0
    text: str = ""
    started: bool = False
    end: End | None = None
    attempt: int = 1
    trace_id: str | None = None
    owner: str | None = None  # key id of the session's creator: on its first frame and replays
    kinds: list[Run] | None = None  # the parts of ``text`` (mqcommon.parts); None: all content

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sid": self.session_id, "off": self.offset, "text": self.text}
        if self.kinds is not None and (wire := runs_to_wire(self.kinds)) is not None:
            out["kinds"] = wire
        if self.started:
            out["started"] = True
        if self.end is not None:
            out["end"] = self.end.to_wire()
        if self.attempt != 1:
            out["attempt"] = self.attempt
        if self.trace_id:
            out["trace"] = self.trace_id
        if self.owner:
            out["owner"] = self.owner
        return out


def encode_frames(producer: str, frames: list[dict[str, Any]]) -> bytes:
    """One live message: ``frames`` are already in wire form (``Frame.to_wire``)."""
    return orjson.dumps({"v": FRAMES_VERSION, "producer": producer, "frames": frames})


def decode_frames(body: bytes) -> tuple[list[Frame], int]:
    """The frames of a live message and how many were malformed and skipped.

    Raises ``MalformedMessage`` when the message as a whole is unusable.
    """
    data = _json_object(body)
    version = data.get("v")
    if version != FRAMES_VERSION:
        raise MalformedMessage("version", f"live message version {version!r}, expected {FRAMES_VERSION}")
    raw = data.get("frames")
    if not isinstance(raw, list):
        raise MalformedMessage("malformed", "live message without a frames list")
    frames: list[Frame] = []
    skipped = 0
    for item in raw:
        frame = _frame(item)
        if frame is None:
            skipped += 1
        else:
            frames.append(frame)
    return frames, skipped


def _frame(item: Any) -> Frame | None:
    if not isinstance(item, dict):
        return None
    sid, offset, text = item.get("sid"), item.get("off", 0), item.get("text", "")
    if not (isinstance(sid, str) and isinstance(offset, int) and offset >= 0 and isinstance(text, str)):
        return None
    end = None
    if (raw_end := item.get("end")) is not None:
        end = _end(raw_end)
        if end is None:
            return None
    kinds = _kinds(item.get("kinds"), text)
    if kinds is False:
        return None
    attempt = item.get("attempt", 1)
    trace, owner = item.get("trace"), item.get("owner")
    return Frame(
        sid, offset, text, bool(item.get("started")), end,
        attempt if isinstance(attempt, int) else 1, trace if isinstance(trace, str) else None,
        owner if isinstance(owner, str) else None, kinds,
    )


def _kinds(raw: Any, text: str) -> list[Run] | Literal[False] | None:
    """The runs of ``text``: None when it is all content, False when malformed."""
    if raw is None:
        return None
    runs = runs_from_wire(raw, len(text))
    if runs is None:
        return False
    return None if all(key == CONTENT for key, _ in runs) else runs


def _end(raw: Any) -> End | None:
    if not isinstance(raw, dict):
        return None
    kind, length, error = raw.get("kind"), raw.get("length"), raw.get("error")
    if kind not in END_KINDS or not isinstance(length, int) or length < 0:
        return None
    usage, finish, param = raw.get("usage"), raw.get("finish"), raw.get("param")
    return End(
        kind, length, error if isinstance(error, str) else None, usage if isinstance(usage, dict) else None,
        finish if isinstance(finish, str) else None, param if isinstance(param, str) else None,
    )


# -- history records -----------------------------------------------------------------------


@dataclass(slots=True)
class HistoryRecord:
    kind: Literal["accepted", "transcript", "probe", "cancel", "stored"]
    session_id: str
    at: float = 0.0
    text: str = ""
    end: End | None = None
    probe: str | None = None
    trace_id: str | None = None
    owner: str | None = None  # key id of the session's creator (accepted, transcript)
    kinds: list[Run] | None = None  # a transcript's parts (mqcommon.parts); None: all content
    # A stored response's conversation before its answer (``stored``): turns as the task
    # carries them, so a later request continues it (``previous_response_id``).
    conversation: list[dict[str, Any]] | None = None
    # The task queue an ``accepted`` session waits in, when it is not the default one (ADR 0006).
    line: str | None = None

    def encode(self) -> bytes:
        out: dict[str, Any] = {"v": HISTORY_VERSION, "kind": self.kind, "sid": self.session_id, "at": self.at}
        if self.line is not None:
            out["q"] = self.line
        if self.kind == "transcript":
            out["text"] = self.text
            if self.kinds is not None and (wire := runs_to_wire(self.kinds)) is not None:
                out["kinds"] = wire
            if self.end is not None:
                out["end"] = self.end.to_wire()
        if self.kind == "stored":
            out["conversation"] = self.conversation or []
        if self.probe is not None:
            out["probe"] = self.probe
        if self.trace_id:
            out["trace"] = self.trace_id
        if self.owner:
            out["owner"] = self.owner
        return orjson.dumps(out)

    def headers(self) -> dict[str, str]:
        """The stream filter value (RabbitMQ >= 3.13) and the same id for older brokers."""
        return {FILTER_HEADER: self.session_id, SESSION_HEADER: self.session_id}

    @classmethod
    def decode(cls, body: bytes) -> HistoryRecord:
        data = _json_object(body)
        if data.get("v") not in HISTORY_VERSIONS:
            raise MalformedMessage("version", f"history record version {data.get('v')!r}")
        kind, sid = data.get("kind"), data.get("sid")
        if kind not in ("accepted", "transcript", "probe", "cancel", "stored") or not isinstance(sid, str):
            raise MalformedMessage("malformed", "history record without a kind and a session id")
        end = _end(data["end"]) if data.get("end") is not None else None
        text = data.get("text", "")
        if kind == "transcript" and (end is None or not isinstance(text, str)):
            raise MalformedMessage("malformed", "transcript without text and end")
        conversation = data.get("conversation")
        if kind == "stored" and not (
            isinstance(conversation, list) and all(isinstance(turn, dict) for turn in conversation)
        ):
            raise MalformedMessage("malformed", "stored record without its conversation")
        kinds = _kinds(data.get("kinds"), text) if isinstance(text, str) else None
        if kinds is False:
            raise MalformedMessage("malformed", "transcript whose kinds do not cover its text")
        at = data.get("at", 0.0)
        probe, trace, owner = data.get("probe"), data.get("trace"), data.get("owner")
        return cls(
            kind, sid, float(at) if isinstance(at, int | float) else 0.0,
            text if isinstance(text, str) else "", end,
            probe if isinstance(probe, str) else None, trace if isinstance(trace, str) else None,
            owner if isinstance(owner, str) else None, kinds,
            conversation if kind == "stored" else None,
            data["q"] if isinstance(data.get("q"), str) else None,
        )


# -- the queue log -------------------------------------------------------------------------

QUEUE_EVENT_HEADER = "queue_event"
OWNER_HEADER = "owner"
QUEUED, LEFT, WITHDRAWN = "queued", "left", "withdrawn"


@dataclass(frozen=True, slots=True)
class QueueEvent:
    """One entry of the queue log: a task entered the queue, or left it.

    Read from the headers alone: a ``queued`` entry is the task itself (its body is the
    ``ChatTask``), so a reader never decodes bodies.
    """

    kind: str  # QUEUED, LEFT or WITHDRAWN
    session_id: str
    at: float = 0.0
    owner: str | None = None
    """On ``queued``, with API keys on: the key id that created it, so that every replica can
    tell whose a waiting session is without waiting for its task to start."""

    def headers(self) -> dict[str, Any]:
        # Milliseconds as an integer: AMQP client libraries encode a float header as 32 bits,
        # which rounds a Unix time to minutes.
        at_ms = round(self.at * 1000)
        headers: dict[str, Any] = {
            QUEUE_EVENT_HEADER: self.kind, SESSION_HEADER: self.session_id, "at_ms": at_ms,
        }
        if self.owner is not None:
            headers[OWNER_HEADER] = self.owner
        return headers

    @classmethod
    def from_headers(cls, headers: dict[str, Any] | None) -> QueueEvent | None:
        """The entry a message's headers describe; None if they describe none."""
        if not headers:
            return None
        kind, sid, at_ms = headers.get(QUEUE_EVENT_HEADER), headers.get(SESSION_HEADER), headers.get("at_ms")
        if kind not in (QUEUED, LEFT, WITHDRAWN) or not isinstance(sid, str):
            return None
        at = at_ms / 1000 if isinstance(at_ms, int) and not isinstance(at_ms, bool) else 0.0
        owner = headers.get(OWNER_HEADER)
        return cls(kind, sid, at, owner if isinstance(owner, str) else None)


# -- queue positions: the keeper's watermark, a replica's watch, the keeper's answer ---------
#
# One API replica, the keeper, reads the queue log; the others learn from it what they need:
# a watermark a few times a second on a fanout (the waiting count and the drain rate, for
# admission and ETAs), and the positions of the sessions they watch, on their live queue.
# docs/adr/0004-queue-positions-without-a-broadcast.md.

POSITIONS_VERSION = 1
MESSAGE_KIND_HEADER = "kind"  # on a live-exchange message that is not answer frames
LINE_HEADER = "q"  # on a watch or positions message: its line's task queue (absent: the default)
WATCH, POSITIONS = "watch", "positions"


@dataclass(frozen=True, slots=True)
class Watermark:
    """The state of the waiting line, as the keeper publishes it."""

    keeper: str  # the replica id of the keeper (where watches go)
    head: int  # log offset of the oldest waiting task (the next offset when none waits)
    waiting: int  # tasks waiting in the queue
    left: int  # tasks that left the queue since this keeper began
    rate: float  # tasks leaving per second, 0 before two have left
    at: float = 0.0

    def encode(self) -> bytes:
        return orjson.dumps({
            "v": POSITIONS_VERSION, "keeper": self.keeper, "head": self.head, "waiting": self.waiting,
            "left": self.left, "rate": self.rate, "at_ms": round(self.at * 1000),
        })

    @classmethod
    def decode(cls, body: bytes) -> Watermark:
        data = _versioned(body, "watermark")
        keeper, head, waiting = data.get("keeper"), data.get("head"), data.get("waiting")
        left, rate = data.get("left"), data.get("rate")
        if not (isinstance(keeper, str) and _count(head, -1) and _count(waiting) and _count(left)
                and isinstance(rate, int | float) and rate >= 0):
            raise MalformedMessage("malformed", "watermark without keeper, head, waiting, left and rate")
        at_ms = data.get("at_ms")
        return cls(keeper, head, waiting, left, float(rate), at_ms / 1000 if _count(at_ms) else 0.0)


@dataclass(frozen=True, slots=True)
class Watch:
    """A replica asks the keeper for the positions of sessions its clients wait for."""

    replica: str
    sessions: tuple[str, ...]

    def encode(self) -> bytes:
        return orjson.dumps(
            {"v": POSITIONS_VERSION, "replica": self.replica, "sessions": list(self.sessions)}
        )

    @classmethod
    def decode(cls, body: bytes) -> Watch:
        data = _versioned(body, "watch")
        replica, sessions = data.get("replica"), data.get("sessions")
        if not (isinstance(replica, str) and isinstance(sessions, list)
                and all(isinstance(sid, str) for sid in sessions)):
            raise MalformedMessage("malformed", "watch without replica and sessions")
        return cls(replica, tuple(sessions))


@dataclass(frozen=True, slots=True)
class Positions:
    """The keeper's answer: each watched session's position (None: not waiting) and owner."""

    keeper: str
    rate: float
    positions: dict[str, tuple[int | None, str | None]]

    def encode(self) -> bytes:
        return orjson.dumps({
            "v": POSITIONS_VERSION, "keeper": self.keeper, "rate": self.rate,
            "positions": {sid: list(where) for sid, where in self.positions.items()},
        })

    @classmethod
    def decode(cls, body: bytes) -> Positions:
        data = _versioned(body, "positions")
        keeper, rate, raw = data.get("keeper"), data.get("rate"), data.get("positions")
        if not (isinstance(keeper, str) and isinstance(rate, int | float) and isinstance(raw, dict)):
            raise MalformedMessage("malformed", "positions without keeper, rate and positions")
        positions: dict[str, tuple[int | None, str | None]] = {}
        for sid, where in raw.items():
            if not (isinstance(where, list) and len(where) == 2):
                continue
            position, owner = where
            positions[sid] = (
                position if _count(position, 1) else None, owner if isinstance(owner, str) else None
            )
        return cls(keeper, float(rate), positions)


def _versioned(body: bytes, what: str) -> dict[str, Any]:
    data = _json_object(body)
    if data.get("v") != POSITIONS_VERSION:
        raise MalformedMessage("version", f"{what} version {data.get('v')!r}, expected {POSITIONS_VERSION}")
    return data


def _count(value: Any, least: int = 0) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


# -- presence ------------------------------------------------------------------------------


@dataclass(slots=True)
class Presence:
    """What one API replica tells every worker.

    ``served``: sessions a client is reading there now (a generation nobody serves for long is
    abandoned). ``tracked``: unfinished sessions the replica holds and wants live frames for.
    ``want``: sessions it needs replayed from offset 0 (a new reader, or a gap it noticed).
    """

    replica: str | None
    served: list[str]
    tracked: list[str]
    want: list[str]

    def encode(self) -> bytes:
        return orjson.dumps({
            "v": PRESENCE_VERSION, "replica": self.replica,
            "served": self.served, "tracked": self.tracked, "want": self.want,
        })

    @classmethod
    def decode(cls, body: bytes) -> Presence:
        data = _json_object(body)
        if data.get("v") != PRESENCE_VERSION:
            # The first format listed the served sessions only.
            return cls(None, _ids(data.get("sessions")), [], [])
        replica = data.get("replica")
        return cls(
            replica if isinstance(replica, str) else None,
            _ids(data.get("served")), _ids(data.get("tracked")), _ids(data.get("want")),
        )


def _ids(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, str)]


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage("malformed", f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise MalformedMessage("malformed", "not a JSON object")
    return data
