"""API keys with real processes: who may call, whose sessions are whose, per-key limits.

One deployment: API A and B with the same keys (two replicas, no affinity between them), API C
with the session limits, and API "open" without keys (the old clients), one worker, the run's
mock LLM. Each test uses keys of its own, so their per-key windows never mix.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import openai
import pytest

from .support.deployment import Deployment, mock_llm, prompt
from .support.processes import Service
from .support.sse import assert_complete, read_stream
from .support.waits import llm_was_asked

pytestmark = pytest.mark.integration

KEYS = {
    "alice": "sk-alice-7f3c9a1e5b2d4f60",
    "bob": "sk-bob-0c8e2a4b6d1f3e57",
    "carol": "sk-carol-93b1d7e5a2c4f608",
    "dave": "sk-dave-5e7a9c1b3d2f4a68",
    "erin": "sk-erin-2d4f6a8c0e1b3d59",
    "frank": "sk-frank-8a6c4e2b0d9f7a13",
}
REQUESTS_PER_MINUTE = 40
TOKENS_PER_MINUTE = 8
STREAM_WAIT_S = 3  # how long a stream of a session nobody queued waits before its 404


@dataclass(frozen=True, slots=True)
class Stack:
    deployment: Deployment
    a: str
    b: str
    c: str
    open: str
    mock: Service


def _key_env(**limits: str) -> dict[str, str]:
    named = [f"{name}:{key}" for name, key in KEYS.items() if name != "frank"]
    return {"API_KEYS": ",".join(named), "KEY_REQUESTS_PER_MINUTE": str(REQUESTS_PER_MINUTE), **limits}


async def _ready(service: Service) -> None:
    """Connected to the broker (the processes start on ``/health``)."""
    async with httpx.AsyncClient(timeout=5, headers={"X-API-Key": KEYS["alice"]}) as client:
        for _ in range(300):
            try:
                if (await client.get(service.base_url + "/health/full")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{service.name} never connected to the broker")


@pytest.fixture(scope="module")
def stack(
    module_deployment: Deployment, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Stack:
    d = module_deployment
    # frank's key only as a hash in a file, as a Kubernetes Secret would hold it.
    hashed = tmp_path_factory.mktemp("keys") / "api-keys"
    hashed.write_text(f"frank:{hashlib.sha256(KEYS['frank'].encode()).hexdigest()}\n")
    env = {**_key_env(), "API_KEYS_FILE": str(hashed), "STREAM_WAIT_TIMEOUT_S": str(STREAM_WAIT_S)}
    a = d.api(ready_path="/health", **env)
    b = d.api(ready_path="/health", **env)
    c = d.api(ready_path="/health", **env, KEY_MAX_SESSIONS="1", KEY_TOKENS_PER_MINUTE=str(TOKENS_PER_MINUTE))
    opened = d.api()
    # A mock LLM of this module's own that logs every request, for the log check.
    mock = mock_llm(d.log_dir)
    mock.env["MOCK_LOG_LEVEL"] = "info"
    mock.start().wait_ready()
    request.addfinalizer(mock.stop)
    d.worker(WORKER_CONCURRENCY="8", OPENAI_BASE_URL=mock.base_url + "/v1")
    d.start()

    async def connected() -> None:
        await asyncio.gather(*(_ready(s) for s in (a, b, c)))

    asyncio.run(connected())
    return Stack(d, a.base_url, b.base_url, c.base_url, opened.base_url, mock)


def _client(key: str | None = None, **headers: str) -> httpx.AsyncClient:
    auth = {"X-API-Key": key} if key else {}
    return httpx.AsyncClient(timeout=30, headers={**auth, **headers})


async def _queue(client: httpx.AsyncClient, base: str, text: str) -> str:
    response = await client.post(base + "/chat/async", json={"message": text})
    assert response.status_code == 200, response.text
    return response.json()["session_id"]


# -- keys off: the old clients -------------------------------------------------------------


async def test_without_keys_the_old_clients_work_unchanged(stack: Stack) -> None:
    ask = prompt("open")
    async with _client() as client:
        sid = await _queue(client, stack.open, ask.text)
        assert_complete(await read_stream(client, f"{stack.open}/stream/{sid}"), ask.expected)
        assert (await client.get(stack.open + "/stats")).status_code == 200
        # A stranger's key is ignored where keys are off.
        sync = await client.post(stack.open + "/chat", json={"message": ask.text},
                                 headers={"Authorization": "Bearer whatever"})
        assert sync.status_code == 200 and sync.text == ask.expected


# -- keys on: who may call -----------------------------------------------------------------


async def test_no_key_or_a_wrong_one_is_401_in_the_route_dialect(stack: Stack) -> None:
    async with _client() as client:
        native = await client.post(stack.a + "/chat/async", json={"message": "hi"})
        assert native.status_code == 401 and native.json()["error"] == "unauthorized"
        assert native.headers["WWW-Authenticate"].startswith("Bearer")
        for path in ("/stream/abc", "/stats", "/test", "/openapi.json", "/v1/responses/abc"):
            assert (await client.get(stack.a + path)).status_code == 401, path
        wrong = await client.get(stack.a + "/v1/models", headers={"Authorization": "Bearer sk-nobody-123456"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["type"] == "authentication_error"
        assert "sk-nobody" not in wrong.text
        # Liveness, the page and its scripts need no key; readiness and metrics do (unless
        # API_KEYS_OPEN_PROBES, what the chart sets for its probes).
        for path in ("/health", "/", "/static/vendor/marked/marked.umd.js"):
            assert (await client.get(stack.a + path)).status_code == 200, path
        for path in ("/health/full", "/metrics"):
            assert (await client.get(stack.a + path)).status_code == 401, path
        # A CORS preflight carries no credentials.
        preflight = await client.options(stack.a + "/chat/async", headers={
            "Origin": "http://example.test", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        })
        assert preflight.status_code == 200


async def test_both_header_forms_and_a_hashed_key_work(stack: Stack) -> None:
    ask = prompt("headers")
    async with _client() as client:
        bearer = await client.post(stack.a + "/chat", json={"message": ask.text},
                                   headers={"Authorization": f"Bearer {KEYS['alice']}"})
        assert bearer.status_code == 200 and bearer.text == ask.expected
        header = await client.post(stack.b + "/chat", json={"message": ask.text},
                                   headers={"X-API-Key": KEYS["alice"]})
        assert header.status_code == 200 and header.text == ask.expected
        hashed = await client.post(stack.a + "/chat", json={"message": ask.text},
                                   headers={"X-API-Key": KEYS["frank"]})
        assert hashed.status_code == 200 and hashed.text == ask.expected


async def test_the_openai_sdk_works_with_api_key(stack: Stack) -> None:
    ask = prompt("sdk")
    sdk = openai.AsyncOpenAI(api_key=KEYS["alice"], base_url=stack.a + "/v1", max_retries=0)
    try:
        stream = await sdk.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": ask.text}], stream=True
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        assert text == ask.expected
    finally:
        await sdk.close()
    stranger = openai.AsyncOpenAI(api_key="sk-stranger-0000", base_url=stack.a + "/v1", max_retries=0)
    try:
        with pytest.raises(openai.AuthenticationError):
            await stranger.models.list()
    finally:
        await stranger.close()


# -- keys on: sessions belong to their key, on every replica -------------------------------


async def test_another_key_gets_404_on_stream_cancel_and_resume_on_any_replica(stack: Stack) -> None:
    ask = prompt("owned", tokens=120, tps=40)  # about 3 s: still running while bob tries
    async with _client(KEYS["alice"]) as alice, _client(KEYS["bob"]) as bob:
        sid = await _queue(alice, stack.a, ask.text)
        first = await read_stream(alice, f"{stack.b}/stream/{sid}", max_events=2)
        assert first.status == 200 and first.chunks, first.body
        position = first.ids[-1]
        for base in (stack.a, stack.b):
            for resume in (None, str(position)):
                headers = {"Last-Event-ID": resume} if resume else {}
                refused = await bob.get(f"{base}/stream/{sid}", headers=headers)
                assert refused.status_code == 404
                assert refused.json() == {
                    "error": "not_found", "message": f"session {sid!r} not found"
                }
            for cancel in (bob.delete(f"{base}/sessions/{sid}"), bob.post(f"{base}/sessions/{sid}/cancel")):
                response = await cancel
                assert response.status_code == 404 and response.json()["error"] == "not_found"
        # A session nobody queued is a 404 too, once STREAM_WAIT_TIMEOUT_S is over.
        unknown = sid[:-4] + "0000"
        nobody = await bob.get(f"{stack.b}/stream/{unknown}")
        assert nobody.status_code == 404
        assert nobody.json() == {"error": "not_found", "message": f"session {unknown!r} not found"}
        # alice still gets the whole answer, on either replica, resumed where she was.
        rest = await read_stream(alice, f"{stack.a}/stream/{sid}", last_event_id=position)
        assert_complete(rest, ask.expected[position:], start=position)
        assert rest.last.kind == "done"


async def test_an_unknown_session_and_another_keys_look_the_same(stack: Stack) -> None:
    async with _client(KEYS["alice"]) as alice, _client(KEYS["bob"]) as bob:
        sid = await _queue(alice, stack.a, prompt("same").text)
        theirs = await bob.delete(f"{stack.b}/sessions/{sid}")
        unknown_id = sid[:-4] + "0000"
        nobody = await bob.delete(f"{stack.b}/sessions/{unknown_id}")
        assert theirs.status_code == nobody.status_code == 404
        assert theirs.json() == {"error": "not_found", "message": f"session {sid!r} not found"}
        assert nobody.json() == {"error": "not_found", "message": f"session {unknown_id!r} not found"}
        mine = await alice.delete(f"{stack.b}/sessions/{sid}")
        assert mine.status_code in (200, 202), mine.text


async def test_responses_belong_to_their_key(stack: Stack) -> None:
    ask = prompt("resp-owned", tokens=80, tps=40)
    alice = openai.AsyncOpenAI(api_key=KEYS["alice"], base_url=stack.a + "/v1", max_retries=0)
    bob = openai.AsyncOpenAI(api_key=KEYS["bob"], base_url=stack.b + "/v1", max_retries=0)
    alice_b = openai.AsyncOpenAI(api_key=KEYS["alice"], base_url=stack.b + "/v1", max_retries=0)
    try:
        created = await alice.responses.create(model="mock", input=ask.text, background=True)
        with pytest.raises(openai.NotFoundError):
            await bob.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            await bob.responses.cancel(created.id)
        mine = await alice_b.responses.retrieve(created.id)
        assert mine.id == created.id and mine.status in ("queued", "in_progress", "completed")
        for _ in range(100):
            mine = await alice_b.responses.retrieve(created.id)
            if mine.status == "completed":
                break
            await asyncio.sleep(0.1)
        assert mine.status == "completed" and mine.output_text == ask.expected  # never cancelled
    finally:
        for sdk in (alice, bob, alice_b):
            await sdk.close()


# -- keys on: per-key limits ---------------------------------------------------------------


async def test_requests_per_minute_are_counted_by_each_replica(stack: Stack) -> None:
    """Documented: each replica counts its own requests, so two let a key make twice the limit."""
    async with _client(KEYS["erin"]) as erin, _client(KEYS["dave"]) as dave:
        for base in (stack.a, stack.b):
            for n in range(REQUESTS_PER_MINUTE):
                response = await erin.get(base + "/v1/models")
                assert response.status_code == 200, (base, n, response.text)
        for base in (stack.a, stack.b):
            native = await erin.get(base + "/stats")
            assert native.status_code == 429 and native.json()["error"] == "rate_limited"
            assert native.json()["limit"] == "requests_per_minute"
            assert 1 <= int(native.headers["Retry-After"]) <= 60
            sdk = openai.AsyncOpenAI(api_key=KEYS["erin"], base_url=base + "/v1", max_retries=0)
            try:
                with pytest.raises(openai.RateLimitError) as refused:
                    await sdk.models.list()
            finally:
                await sdk.close()
            assert refused.value.response.headers["Retry-After"].isdigit()
            # Another key is not affected.
            assert (await dave.get(base + "/v1/models")).status_code == 200


async def test_sessions_at_once_answer_429_with_a_computed_retry_after(stack: Stack) -> None:
    slow = prompt("busy", tokens=120, tps=40)
    async with _client(KEYS["carol"]) as carol:
        sid = await _queue(carol, stack.c, slow.text)
        second = await carol.post(stack.c + "/chat/async", json={"message": prompt("second").text})
        assert second.status_code == 429 and second.json()["limit"] == "sessions"
        # No answer of carol's measured yet: the running one's age says at least how long it takes.
        assert 1 <= int(second.headers["Retry-After"]) <= 10
        sdk = openai.AsyncOpenAI(api_key=KEYS["carol"], base_url=stack.c + "/v1", max_retries=0)
        try:
            with pytest.raises(openai.RateLimitError):
                await sdk.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}])
        finally:
            await sdk.close()
        # carol's slot frees when her answer ends; its 120 tokens are then over her tokens per
        # minute, which is what refuses her next.
        assert_complete(await read_stream(carol, f"{stack.c}/stream/{sid}"), slow.expected)
        for _ in range(50):
            again = await carol.post(stack.c + "/chat/async", json={"message": prompt("third").text})
            if again.status_code != 429 or again.json()["limit"] != "sessions":
                break
            await asyncio.sleep(0.1)
        assert again.status_code == 429 and again.json()["limit"] == "tokens_per_minute"


async def test_tokens_per_minute_answer_429_until_the_window_frees(stack: Stack) -> None:
    ask = prompt("tokens", tokens=12)  # more than TOKENS_PER_MINUTE by itself
    async with _client(KEYS["dave"]) as dave:
        first = await dave.post(stack.c + "/chat", json={"message": ask.text})
        assert first.status_code == 200
        refused = None
        for _ in range(50):  # the end reaches the replica a moment after the body
            refused = await dave.post(stack.c + "/chat", json={"message": prompt("more").text})
            if refused.status_code == 429:
                break
            await asyncio.sleep(0.1)
        assert refused is not None and refused.status_code == 429, refused.text
        assert refused.json()["limit"] == "tokens_per_minute"
        # The answer ended a moment ago: it leaves the window in about a minute.
        assert 50 <= int(refused.headers["Retry-After"]) <= 60


# -- the chat page -------------------------------------------------------------------------


async def test_the_chat_page_sends_its_key(stack: Stack) -> None:
    from playwright.async_api import async_playwright

    from .support.pages import CHROMIUM_ARGS, chromium

    refused, answered = prompt("page-no-key"), prompt("page-key", tokens=40, tps=80)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            sent: list[str | None] = []

            def on_request(request) -> None:
                if "/stream/" in request.url:
                    sent.append(request.headers.get("authorization"))

            page.on("request", on_request)
            await page.goto(stack.a + "/")
            await page.fill("#message", refused.text)
            await page.keyboard.press("Enter")
            await page.wait_for_selector(".msg.bot[data-state='error']", timeout=30_000)
            assert "401" in await page.locator(".msg.bot .notes").first.text_content()
            await page.fill("#api-key", KEYS["alice"])
            await page.dispatch_event("#api-key", "change")
            await page.fill("#message", answered.text)
            await page.keyboard.press("Enter")
            await page.wait_for_selector(".msg.bot[data-state='done']", timeout=30_000)
            raw = await page.evaluate("document.querySelectorAll('.msg.bot')[1].dataset.raw")
            assert raw == answered.expected
            assert sent and set(sent) == {f"Bearer {KEYS['alice']}"}
            # Kept for the tab: a reload still has it.
            await page.reload()
            assert await page.input_value("#api-key") == KEYS["alice"]
        finally:
            await browser.close()


# -- no key in any log ---------------------------------------------------------------------


def _leaks(lines: list[str], secrets: list[str]) -> list[str]:
    pattern = re.compile("|".join(re.escape(s) for s in secrets))
    return [line for line in lines if pattern.search(line)]


async def test_no_key_appears_in_any_log_line(stack: Stack) -> None:
    """Runs last in the module: every process has logged what the tests above made it do."""
    ask = prompt("logs")
    async with _client(KEYS["alice"]) as alice:
        sid = await _queue(alice, stack.b, ask.text)
        assert_complete(await read_stream(alice, f"{stack.a}/stream/{sid}"), ask.expected)
        await alice.post(f"{stack.a}/sessions/{sid}/cancel")
        assert (await alice.get(stack.a + "/metrics")).status_code == 200
    async with _client("sk-wrong-key-for-the-log") as stranger:
        assert (await stranger.get(stack.a + "/stats")).status_code == 401
    secrets = [*KEYS.values(), "sk-wrong-key-for-the-log"]
    secrets += [hashlib.sha256(k.encode()).hexdigest() for k in KEYS.values()]
    processes = [*stack.deployment.apis, *stack.deployment.workers, stack.mock]
    assert len(processes) == 6 and all(s.log_path.stat().st_size > 0 for s in processes)
    logged = {s.name: s.log_path.read_text(errors="replace").splitlines() for s in processes}
    lines = [line for each in logged.values() for line in each]
    assert any(sid in line for line in logged["worker-1"])
    # The check can fail: a key planted in one line is found.
    assert _leaks([*lines[:10], f"oops {KEYS['bob']}"], secrets) == [f"oops {KEYS['bob']}"]
    assert _leaks(lines, secrets) == []
    # Key ids are what the logs and metrics name.
    async with _client(KEYS["alice"]) as alice:
        scrape = (await alice.get(stack.a + "/metrics")).text
    assert 'llmstream_key_requests_total{key="alice"}' in scrape
    assert 'key="erin",limit="requests_per_minute"' in scrape
    assert _leaks(scrape.splitlines(), secrets) == []


async def test_with_keys_a_waiting_sessions_stream_opens_at_once_with_its_position(
    make_deployment: Callable[[], Deployment], mock_url: str
) -> None:
    """Whose a waiting session is travels with its queue-log record: the stream opens on any
    replica and carries ``event: queued`` while the task waits, not once it starts."""
    d = make_deployment()
    a = d.api(ready_path="/health", **_key_env()).base_url
    b = d.api(ready_path="/health", **_key_env()).base_url
    d.worker(WORKER_CONCURRENCY="1")
    d.start()
    await asyncio.gather(*(_ready(s) for s in d.apis))
    blocker = prompt("keyed-blocker", tokens=2000, tps=20)  # 100 s: busy throughout the test
    async with _client(KEYS["dave"]) as client, _client(KEYS["erin"]) as other:
        blocking = await _queue(client, a, blocker.text)
        await llm_was_asked(client, mock_url, [blocker.text])
        waiting = [await _queue(client, a, prompt(f"keyed-waiting-{i}").text) for i in range(2)]
        for base in (a, b):
            # Headers and a position while the worker is still busy with the blocker.
            transcript = await read_stream(client, f"{base}/stream/{waiting[-1]}", max_events=1, timeout=20)
            assert transcript.status == 200, transcript.body
            first = transcript.events[0]
            assert first.kind == "queued" and first.data["position"] == 2, first
            # Another key still gets a 404, on either replica.
            assert (await other.get(f"{base}/stream/{waiting[-1]}")).status_code == 404
        assert (await client.delete(f"{a}/sessions/{blocking}")).status_code in (200, 202)
