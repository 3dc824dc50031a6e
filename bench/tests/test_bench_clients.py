"""The async and sync clients against a small stand-in for the API's HTTP contract."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn
from llm_stream_mockllm.answer import answer_tokens

import loadgen

TOKENS = 6


class FakeAPI:
    """``POST /chat/async``, ``GET /stream/{id}`` and ``POST /chat`` answering like the mock."""

    def __init__(self) -> None:
        self.messages: dict[str, str] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/chat/async":
            message = orjson.loads(await _body(receive))["message"]
            session_id = uuid.uuid4().hex
            self.messages[session_id] = message
            queued = {"status": "queued", "session_id": session_id, "stream_url": f"/stream/{session_id}"}
            await _respond(send, "application/json", [orjson.dumps(queued)])
        elif path.startswith("/stream/"):
            message = self.messages.pop(path.removeprefix("/stream/"))
            frames = [b": ping\r\n\r\n"]
            for i, token in enumerate(answer_tokens(message, TOKENS)):
                frames.append(b"id: %d\r\ndata: %s\r\n\r\n" % (i, orjson.dumps({"chunk": token})))
            if "fail" in message:
                frames = [*frames[:3], b'data: {"type": "error", "error": "upstream failed"}\r\n\r\n']
            else:
                frames.append(b'data: {"type": "done"}\r\n\r\n')
            await _respond(send, "text/event-stream", frames)
        elif path == "/chat":
            message = orjson.loads(await _body(receive))["message"]
            pieces = [t.encode() for t in answer_tokens(message, TOKENS)]
            if "fail" in message:
                pieces = [*pieces[:2], b"\n[error] upstream failed\n"]
            # Split a multi-byte character across two writes, as a network may.
            data = b"".join(pieces)
            await _respond(send, "text/plain; charset=utf-8", [data[:5], data[5:]])


async def _body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Any, content_type: str, parts: list[bytes]) -> None:
    headers = [(b"content-type", content_type.encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for part in parts:
        await send({"type": "http.response.body", "body": part, "more_body": True})
        await asyncio.sleep(0)
    await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def serve(app: FakeAPI) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http="httptools", ws="none", lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_async_and_sync_clients_check_answers_and_report_failures() -> None:
    async with serve(FakeAPI()) as url, loadgen.new_session(20) as session:
        for client in (loadgen.chat_async(url, TOKENS), loadgen.chat_sync(url, TOKENS)):
            prompts = [f"bench test {i}" for i in range(30)]
            run = await loadgen.closed_loop(session, client, prompts, 5, request_timeout=10, deadline=30)
            assert [r.error for r in run.results] == [None] * 30
            assert all(r.correct and r.ttft is not None for r in run.results)

            failed = await loadgen.guarded(session, client, "please fail", 10)
            assert not failed.ok
            assert failed.error is not None and "upstream failed" in failed.error

        wrong = await loadgen.guarded(session, loadgen.chat_async(url, TOKENS + 1), "x", 10)
        assert wrong.ok and not wrong.correct
        assert wrong.post is not None
