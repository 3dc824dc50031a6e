"""The clients of a chaos run: they ask, read, resume, and write down everything they saw.

Three kinds, all judged by :mod:`oracle` afterwards (the clients decide nothing):

- ``sse``: ``POST /chat/async``, then ``GET /stream/{id}``. **Resume rule**, as an
  ``EventSource`` does it: when the connection drops (reset, refused, body cut short) the client
  waits ``retry_s`` and reconnects, to the next API process of its list, with
  ``Last-Event-ID`` set to the last id it received (none if it received none). A stream the
  server *ends* is not resumed: without a final event that is a failure.
- ``sync``: ``POST /chat``, the answer as the plain-text body (it cannot resume).
- ``openai``: the openai SDK, ``chat.completions.create(stream=True)`` on ``/v1``
  (``max_retries=0``: refusals are counted here, not retried inside the SDK).

A POST answered with anything but 200 is recorded as a :class:`oracle.Post`; users honour its
``Retry-After``. Each accepted session must end within ``deadline_s``.

With pools, each POST names a :class:`pools.Target`: its pool's model (native ``model``, the
SDK's ``model``) and a ``service_tier``; the session and the refusals record both.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import openai
import orjson
from llm_stream_mockllm.answer import expected_answer

from oracle import DEADLINE, DROPPED, EOF, FINAL_TYPES, OPEN_AFTER_FINAL, Event, Post, Read, Session
from pools import PLAIN, Target

JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = {"Accept": "text/event-stream"}
DRAIN_S = 5.0
"""How long the server may take to close a stream after its final event."""
MODEL = "gpt-4o-mini"
BROKEN = (aiohttp.ClientError, OSError, asyncio.IncompleteReadError)


class SSEParser:
    """Incremental ``text/event-stream`` parser that keeps each event's ``id`` and name.

    ``bench/loadgen.py`` has one that drops both; here the id (a position) is what the oracle
    checks. An event's id is None unless it has an ``id:`` line of its own; its name is None
    unless it has an ``event:`` line. Comments (``: ping``) are skipped.
    """

    __slots__ = ("_data", "_id", "_name", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        self._data: list[bytes] = []
        self._id: int | None = None
        self._name: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        lines = (self._tail + chunk).split(b"\n")
        self._tail = lines.pop()
        events = []
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if not line:
                if self._data:
                    events.append((self._id, self._name, b"\n".join(self._data)))
                self._data, self._id, self._name = [], None, None
            elif line[:5] == b"data:":
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line[:3] == b"id:":
                raw = line[3:].strip()
                self._id = int(raw) if raw.isdigit() else -1  # -1: an id that is no position
            elif line[:6] == b"event:":
                self._name = line[6:].strip().decode("utf-8", "replace")
        return events


def is_final(event: Event) -> bool:
    _, name, data = event
    if name is not None or b'"type"' not in data:
        return False
    with contextlib.suppress(ValueError):
        event = orjson.loads(data)
        return isinstance(event, dict) and event.get("type") in FINAL_TYPES
    return False


def position(session: Session) -> int:
    """How much of the answer an SSE client holds: the last id it received."""
    for read in reversed(session.reads):
        for event_id, _, _ in reversed(read.events):
            if event_id is not None:
                return event_id
    return 0


def finished(session: Session) -> bool:
    return session.ended_at is not None


@dataclass
class Answer:
    """What the mock LLM will say: the prompt carries its length and pace as directives."""

    tokens: int
    tps: float


class Clients:
    """The clients of one scenario, and every session and refusal they saw."""

    def __init__(
        self,
        scenario: str,
        run_id: str,
        http: aiohttp.ClientSession,
        answer: Answer,
        *,
        deadline_s: float,
        retry_s: float,
        max_reads: int,
        post_timeout_s: float,
        pick: Callable[[], Target] = lambda: PLAIN,
    ) -> None:
        self.scenario = scenario
        self.run_id = run_id
        self.http = http
        self.answer = answer
        self.deadline_s = deadline_s
        self.retry_s = retry_s
        self.max_reads = max_reads
        self.post_timeout_s = post_timeout_s
        self.pick = pick
        """The target of a POST that names none."""
        self.sessions: list[Session] = []
        self.posts: list[Post] = []
        self._numbers = itertools.count()
        self._sdk: dict[str, openai.AsyncOpenAI] = {}

    def prompt(self, answer: Answer | None = None) -> tuple[str, str]:
        """A new prompt and the answer expected for it (``answer``, or the scenario's)."""
        answer = answer or self.answer
        n = next(self._numbers)
        text = (
            f"chaos {self.scenario} {self.run_id} {n} "
            f"[[mock:tokens={answer.tokens}]] [[mock:tps={answer.tps:g}]]"
        )
        return text, expected_answer(text, answer.tokens)

    def _left(self, session: Session) -> float:
        """Seconds before the session's deadline."""
        return max(0.0, session.accepted_at + self.deadline_s - time.monotonic())

    def in_flight(self, pool: str | None = None) -> int:
        """Sessions accepted and not ended (of ``pool``, or of all)."""
        return sum(1 for s in self.sessions if s.ended_at is None and (pool is None or s.pool == pool))

    @staticmethod
    def native_body(prompt: str, target: Target) -> bytes:
        body: dict[str, str] = {"message": prompt}
        if target.model is not None:
            body["model"] = target.model
        if target.tier is not None:
            body["service_tier"] = target.tier
        return orjson.dumps(body)

    async def close(self) -> None:
        for sdk in self._sdk.values():
            await sdk.close()

    # -- POST ---------------------------------------------------------------------------------

    def _refused(
        self, client: str, url: str, sent: float, status: int | None, retry_after: str | None,
        code: object, why: str, probe: bool = False, target: Target = PLAIN,
    ) -> Post:
        post = Post(
            self.scenario, client, url, sent, status, retry_after, code if isinstance(code, str) else None,
            why[:300], probe, target.pool, target.tier,
        )
        self.posts.append(post)
        return post

    def _broken(
        self, client: str, url: str, sent: float, exc: BaseException, probe: bool, target: Target
    ) -> Post:
        why = f"{type(exc).__name__}: {exc}"
        return self._refused(client, url, sent, None, None, None, why, probe, target)

    def _native_refusal(
        self, client: str, url: str, sent: float, response: aiohttp.ClientResponse, body: bytes, probe: bool,
        target: Target,
    ) -> Post:
        text = body.decode("utf-8", "replace")
        code = None
        with contextlib.suppress(ValueError, AttributeError):
            code = orjson.loads(body).get("error")
        return self._refused(
            client, url, sent, response.status, response.headers.get("Retry-After"), code, text, probe, target
        )

    # -- sse ----------------------------------------------------------------------------------

    async def post_sse(
        self, url: str, *, probe: bool = False, target: Target | None = None, answer: Answer | None = None
    ) -> Session | Post:
        """Queue a session (``POST /chat/async``) without reading it yet."""
        target = target or self.pick()
        prompt, expected = self.prompt(answer)
        sent = time.monotonic()
        try:
            async with asyncio.timeout(self.post_timeout_s), self.http.post(
                url + "/chat/async", data=self.native_body(prompt, target), headers=JSON_HEADERS
            ) as response:
                body = await response.read()
                if response.status != 200:
                    return self._native_refusal("sse", url, sent, response, body, probe, target)
                sid = orjson.loads(body)["session_id"]
        except (TimeoutError, *BROKEN, ValueError, KeyError, TypeError) as exc:
            return self._broken("sse", url, sent, exc, probe, target)
        session = Session(
            self.scenario, "sse", sid, prompt, expected, url, time.monotonic(),
            pool=target.pool, tier=target.tier,
        )
        self.sessions.append(session)
        return session

    async def sse(
        self, url: str, read_urls: list[str] | None = None, *, probe: bool = False,
        target: Target | None = None, answer: Answer | None = None,
    ) -> Session | Post:
        outcome = await self.post_sse(url, probe=probe, target=target, answer=answer)
        if isinstance(outcome, Session):
            await self.read(outcome, read_urls or [url])
        return outcome

    async def read(self, session: Session, urls: list[str]) -> None:
        """Read the stream to its final event, resuming on dropped connections (module doc)."""
        turn = itertools.cycle(urls)
        read: Read | None = None
        try:
            async with asyncio.timeout(self._left(session)):
                while True:
                    held = position(session)
                    read = Read(next(turn), held if held else None)
                    session.reads.append(read)
                    await self._read_once(session.sid, read)
                    if read.end != DROPPED or len(session.reads) >= self.max_reads:
                        return
                    await asyncio.sleep(self.retry_s)
        except TimeoutError:
            if read is not None and not read.end:
                read.end = DEADLINE
        finally:
            session.ended_at = time.monotonic()

    async def _read_once(self, sid: str, read: Read) -> None:
        headers = dict(SSE_HEADERS)
        if read.last_event_id is not None:
            headers["Last-Event-ID"] = str(read.last_event_id)
        try:
            async with self.http.get(f"{read.url}/stream/{sid}", headers=headers) as response:
                read.status = response.status
                if response.status != 200:
                    read.why = (await response.read())[:300].decode("utf-8", "replace")
                    read.end = EOF
                    return
                parser = SSEParser()
                async for chunk in response.content.iter_any():
                    events = parser.feed(chunk)
                    read.events += events
                    if events and is_final(events[-1]):
                        break
                else:
                    read.end = EOF
                    return
                # After the final event the server closes the stream; anything more is recorded.
                try:
                    rest = await asyncio.wait_for(response.content.read(), DRAIN_S)
                except TimeoutError:
                    read.end = OPEN_AFTER_FINAL
                    return
                read.events += parser.feed(rest)
                read.end = EOF
        except BROKEN as exc:
            read.end, read.why = DROPPED, f"{type(exc).__name__}: {exc}"[:200]

    # -- sync ---------------------------------------------------------------------------------

    async def sync(self, url: str, *, target: Target | None = None) -> Session | Post:
        target = target or self.pick()
        prompt, expected = self.prompt()
        sent = time.monotonic()
        session: Session | None = None
        try:
            async with asyncio.timeout(self.post_timeout_s):
                response = await self.http.post(
                    url + "/chat", data=self.native_body(prompt, target), headers=JSON_HEADERS
                )
        except (TimeoutError, *BROKEN) as exc:
            return self._broken("sync", url, sent, exc, False, target)
        async with response:
            if response.status != 200:
                return self._native_refusal("sync", url, sent, response, await response.read(), False, target)
            session = Session(
                self.scenario, "sync", response.headers.get("X-Session-ID", "?"), prompt, expected, url,
                time.monotonic(), pool=target.pool, tier=target.tier,
            )
            self.sessions.append(session)
            body = bytearray()
            try:
                async with asyncio.timeout(self._left(session)):
                    async for chunk in response.content.iter_any():
                        body += chunk
                session.end = EOF
            except TimeoutError:
                session.end = DEADLINE
            except BROKEN as exc:
                session.end, session.why = DROPPED, f"{type(exc).__name__}: {exc}"[:200]
            finally:
                session.body = bytes(body)
                session.ended_at = time.monotonic()
        return session

    # -- openai -------------------------------------------------------------------------------

    def _client(self, url: str) -> openai.AsyncOpenAI:
        if url not in self._sdk:
            self._sdk[url] = openai.AsyncOpenAI(
                base_url=f"{url}/v1", api_key="chaos", max_retries=0,
                timeout=self.deadline_s,
            )
        return self._sdk[url]

    async def openai(self, url: str, *, target: Target | None = None) -> Session | Post:
        target = target or self.pick()
        prompt, expected = self.prompt()
        sent = time.monotonic()
        try:
            async with asyncio.timeout(self.post_timeout_s):
                stream = await self._client(url).chat.completions.create(
                    model=target.model or MODEL, messages=[{"role": "user", "content": prompt}], stream=True,
                    **({"service_tier": target.tier} if target.tier is not None else {}),  # type: ignore[arg-type]
                )
        except openai.APIStatusError as exc:
            return self._refused(
                "openai", url, sent, exc.status_code, exc.response.headers.get("Retry-After"), exc.code,
                str(exc), False, target,
            )
        except (TimeoutError, openai.APIError) as exc:
            return self._broken("openai", url, sent, exc, False, target)
        session = Session(
            self.scenario, "openai", stream.response.headers.get("X-Session-ID", "?"), prompt, expected, url,
            time.monotonic(), pool=target.pool, tier=target.tier,
        )
        self.sessions.append(session)
        try:
            async with asyncio.timeout(self._left(session)):
                async for chunk in stream:
                    for choice in chunk.choices:
                        if choice.delta.content:
                            session.pieces.append(choice.delta.content)
                        if choice.finish_reason is not None:
                            session.finish_reason = choice.finish_reason
            session.end = EOF
        except TimeoutError:
            session.end = DEADLINE
        except openai.APIConnectionError as exc:
            session.end, session.why = DROPPED, f"{type(exc).__name__}: {exc.__cause__ or exc}"[:200]
        except openai.APIError as exc:
            session.end, session.error = EOF, str(exc.message)[:200]
        finally:
            session.ended_at = time.monotonic()
            with contextlib.suppress(Exception):
                await stream.close()
        return session
