"""The chat page, in a real browser, used like a person would: type, send, watch, stop.

Headless Chromium (Debian's package, driven by Playwright) against real API and worker
processes on the real broker. Answers come from the mock LLM, whose answers are known exactly
(``Prompt.expected``), except in the markdown test, where a small OpenAI-compatible server in
this test echoes the question back so that the answer holds markdown and hostile HTML.

Screenshots go to ``SCREENSHOT_DIR`` when set (CI keeps them), else to each test's tmp dir;
their paths are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, Request, async_playwright

from .support.deployment import Deployment, prompt
from .support.pages import CHROMIUM_ARGS, chromium, screenshot_dir

pytestmark = pytest.mark.integration

ANSWER_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def api(module_deployment: Deployment) -> str:
    module_deployment.api()
    module_deployment.worker()
    return module_deployment.start().apis[0].base_url


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class Shots:
    def __init__(self, directory: Path, test: str) -> None:
        self.directory, self.test = directory, test

    async def take(self, page: Page, name: str) -> Path:
        path = self.directory / f"{self.test}-{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path


@pytest.fixture
def shots(tmp_path: Path, request: pytest.FixtureRequest) -> Shots:
    return Shots(screenshot_dir(tmp_path), request.node.name.replace("/", "_"))


def record_posts(page: Page) -> list[tuple[str, dict]]:
    """Every JSON POST the page sends: (path, body)."""
    posts: list[tuple[str, dict]] = []

    def on_request(request: Request) -> None:
        if request.method == "POST" and request.post_data:
            with contextlib.suppress(ValueError):
                posts.append((request.url.split("/", 3)[-1], json.loads(request.post_data)))

    page.on("request", on_request)
    return posts


async def wait_answers(page: Page, count: int, state: str = "done") -> None:
    await page.wait_for_function(
        "([n, state]) => document.querySelectorAll(`.msg.bot[data-state='${state}']`).length >= n",
        arg=[count, state], timeout=ANSWER_TIMEOUT_MS,
    )


async def raw(page: Page, index: int = -1) -> str:
    return await page.evaluate("(i) => [...document.querySelectorAll('.msg.bot')].at(i).dataset.raw", index)


# -- both modes, multi-turn -------------------------------------------------------------------


async def test_queued_mode_keeps_the_conversation_and_shows_its_figures(
    browser: Browser, api: str, shots: Shots
) -> None:
    page = await browser.new_page()
    posts = record_posts(page)
    await page.goto(api + "/")
    await page.wait_for_function(
        "document.getElementById('light-broker').dataset.state === 'ok'"
        " && document.getElementById('light-llm').dataset.state === 'ok'"
    )
    first, second = prompt("turn-1", tokens=15, tps=60), prompt("turn-2", tokens=10)

    await page.fill("#message", first.text)
    await page.keyboard.press("Enter")  # Enter sends
    await wait_answers(page, 1)
    await page.fill("#message", second.text)
    await page.click("#send")
    await wait_answers(page, 2)

    assert await page.locator(".msg.you .text").all_text_contents() == [first.text, second.text]
    assert [await raw(page, 0), await raw(page, 1)] == [first.expected, second.expected]
    chats = [body for path, body in posts if path == "chat/async"]
    assert chats[1] == {
        "message": second.text,
        "messages": [
            {"role": "user", "content": first.text},
            {"role": "assistant", "content": first.expected},
            {"role": "user", "content": second.text},
        ],
    }
    for stats in await page.locator(".msg.bot .stats").all_text_contents():
        assert stats.startswith("TTFT ") and "tok/s" in stats, stats
    assert all(await page.locator(".msg time").all_text_contents())
    assert await page.locator(".msg.bot .answer").first.text_content()  # rendered
    assert await page.is_enabled("#send") and not await page.is_enabled("#stop")
    await shots.take(page, "queued-two-turns")
    await page.set_viewport_size({"width": 390, "height": 800})
    await shots.take(page, "queued-phone")


async def test_direct_mode_streams_plain_text_from_post_chat(
    browser: Browser, api: str, shots: Shots
) -> None:
    page = await browser.new_page()
    posts = record_posts(page)
    await page.goto(api + "/chat.html")
    await page.click("label:has(#mode-direct)")
    question = prompt("direct-page", tokens=20, tps=80)
    await page.fill("#message", question.text)
    await page.click("#send")
    await wait_answers(page, 1)

    assert await raw(page) == question.expected
    assert [path for path, _ in posts] == ["chat"]
    assert await page.get_attribute(".msg.bot", "data-session")  # from X-Session-ID
    await shots.take(page, "direct")


# -- stop -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["queued", "direct"])
async def test_stop_ends_the_answer_and_says_what_happens_to_the_generation(
    browser: Browser, api: str, shots: Shots, mode: str
) -> None:
    page = await browser.new_page()
    cancels: list[int] = []
    page.on("response", lambda r: cancels.append(r.status) if r.url.endswith("/cancel") else None)
    await page.goto(api + "/")
    await page.click(f"label:has(#mode-{mode})")
    long = prompt(f"stop-{mode}", tokens=400, tps=20)
    await page.fill("#message", long.text)
    await page.keyboard.press("Enter")
    await page.wait_for_function(
        "(document.querySelector('.msg.bot')?.dataset.raw || '').length > 10", timeout=ANSWER_TIMEOUT_MS
    )
    if mode == "queued":
        await page.keyboard.press("Escape")  # Esc stops
    else:
        await page.click("#stop")
    await wait_answers(page, 1, state="stopped")

    notes = await page.locator(".msg.bot .notes").text_content()
    if mode == "queued" and cancels and cancels[0] in (404, 405):
        assert "the generation continues on the server" in notes, notes
    else:
        assert "Stopped." in notes, notes
    assert cancels, "the page asked the API to cancel"
    stopped_at = await raw(page)
    assert 0 < len(stopped_at) < len(long.expected)
    assert long.expected.startswith(stopped_at)
    # The stream is closed: nothing more arrives though the answer had 20 s to go.
    await asyncio.sleep(1.5)
    assert await raw(page) == stopped_at
    assert await page.is_enabled("#send") and not await page.is_enabled("#stop")
    await shots.take(page, f"stopped-{mode}")


# -- queue position --------------------------------------------------------------------------


async def test_the_queue_position_is_shown_while_the_answer_waits(
    browser: Browser, make_deployment: Callable[[], Deployment], shots: Shots
) -> None:
    """One busy worker and a task ahead: the page's answer waits at position 2, then 1, then
    streams; the positions are the API's own. The tasks ahead are long and are cancelled once
    the page has shown each position, so a slow machine only makes the test slower."""
    stack = make_deployment()
    stack.api()
    stack.worker(WORKER_CONCURRENCY="1")
    api = stack.start().apis[0].base_url
    async with httpx.AsyncClient(timeout=10) as client:
        blockers = []
        for label in ("page-blocker-running", "page-blocker-waiting"):
            ask = prompt(label, tokens=2000, tps=20)
            queued = await client.post(f"{api}/chat/async", json={"message": ask.text})
            assert queued.status_code == 200, queued.text
            blockers.append(queued.json()["session_id"])
        page = await browser.new_page()
        await page.goto(api + "/")
        await page.fill("#message", prompt("queue-position", tokens=5).text)
        await page.keyboard.press("Enter")
        note = page.locator(".msg.bot .notes .queue")
        await note.wait_for(timeout=ANSWER_TIMEOUT_MS)
        assert (await note.text_content()).startswith("Queued: position 2")
        assert await page.get_attribute(".msg.bot", "data-state") == "waiting"
        await shots.take(page, "queued-position")
        assert (await client.delete(f"{api}/sessions/{blockers[0]}")).status_code == 200
        await page.wait_for_function(
            "document.querySelector('.msg.bot .notes .queue')?.textContent.includes('position 1')",
            timeout=ANSWER_TIMEOUT_MS,
        )
        assert (await client.delete(f"{api}/sessions/{blockers[1]}")).status_code in (200, 202)
    await wait_answers(page, 1)
    assert await note.count() == 0  # gone once the answer streams


# -- markdown, safely ---------------------------------------------------------------------------

HOSTILE = """Here is code:

```python
print("hi")
```

- one
- **two**

<script>window.__pwned = "script"</script>
<img src="x" onerror="window.__pwned = 'img'">
[click](javascript:window.__pwned='link') and <b onmouseover="window.__pwned='b'">bold</b>"""


async def echo_llm() -> tuple[web.AppRunner, str]:
    """An OpenAI-compatible server that streams the last user message back, 7 chars a chunk."""

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(0, len(text), 7):
            chunk = {"id": "echo", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "delta": {"content": text[i:i + 7]}, "finish_reason": None}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            await asyncio.sleep(0.005)
        await response.write(b"data: [DONE]\n\n")
        return response

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "echo", "object": "model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/v1"


async def test_markdown_is_rendered_and_html_in_an_answer_stays_inert(
    browser: Browser, make_deployment: Callable[[], Deployment], shots: Shots
) -> None:
    runner, echo_url = await echo_llm()
    try:
        dep = make_deployment()
        dep.api()
        dep.worker(OPENAI_BASE_URL=echo_url)
        await asyncio.to_thread(dep.start)
        page = await browser.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: dialogs.append(d.message))
        await page.goto(dep.apis[0].base_url + "/")
        await page.fill("#message", HOSTILE)
        await page.click("#send")
        await wait_answers(page, 1)
        assert await raw(page) == HOSTILE.strip()

        answer = page.locator(".msg.bot .answer")
        assert await answer.locator("pre code").text_content() == 'print("hi")\n'
        assert await answer.locator("li").all_text_contents() == ["one", "two"]
        assert await answer.locator("strong").text_content() == "two"
        for selector in ("script", "img", "[onerror]", "[onmouseover]", "a[href^='javascript']"):
            assert await page.locator(f".msg {selector}").count() == 0, selector
        shown = await answer.text_content()
        assert '<script>window.__pwned = "script"</script>' in shown  # shown as text
        assert "<img src=" in shown
        await page.hover(".msg.bot .answer")
        assert await page.evaluate("window.__pwned") is None
        assert dialogs == []
        await shots.take(page, "markdown")
    finally:
        await runner.cleanup()


# -- the API process killed mid-answer ---------------------------------------------------------


class FailoverProxy:
    """A TCP load balancer: each new connection goes to the first backend that accepts it."""

    def __init__(self, backends: list[tuple[str, int]]) -> None:
        self.backends = backends
        self.server: asyncio.Server | None = None
        self.connections: list[int] = []  # backend index of each connection

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for index, (host, port) in enumerate(self.backends):
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            except OSError:
                continue
            self.connections.append(index)
            break
        else:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def host_port(base_url: str) -> tuple[str, int]:
    host, port = base_url.removeprefix("http://").split(":")
    return host, int(port)


async def test_the_answer_resumes_on_another_api_process_when_its_own_is_killed(
    browser: Browser, make_deployment: Callable[[], Deployment], shots: Shots
) -> None:
    """The page and its stream go through a load balancer to API 1, which is SIGKILLed
    mid-answer; EventSource reconnects through the balancer to API 2 with Last-Event-ID,
    and the answer continues with no gap and no repetition."""
    dep = make_deployment()
    first, second = dep.api(), dep.api()
    dep.worker()
    await asyncio.to_thread(dep.start)
    proxy = FailoverProxy([host_port(first.base_url), host_port(second.base_url)])
    origin = await proxy.start()
    try:
        page = await browser.new_page()
        await page.goto(origin + "/")
        question = prompt("failover", tokens=120, tps=25)
        await page.fill("#message", question.text)
        await page.keyboard.press("Enter")
        await page.wait_for_function(
            "(document.querySelector('.msg.bot')?.dataset.raw || '').length > 20",
            timeout=ANSWER_TIMEOUT_MS,
        )
        assert set(proxy.connections) == {0}
        first.signal(signal.SIGKILL)
        await first.wait_exit(timeout=10)
        await page.wait_for_selector(".msg.bot .notes .reconnecting", timeout=10_000)
        await shots.take(page, "reconnecting")
        await wait_answers(page, 1)

        assert await raw(page) == question.expected
        assert await page.get_attribute(".msg.bot", "data-resumed") == "1"
        assert await page.locator(".msg.bot .notes .resumed").text_content() == (
            "Reconnected: the answer resumed where it stopped."
        )
        assert 1 in proxy.connections  # the rest came from API 2
        await shots.take(page, "resumed")
    finally:
        await proxy.close()
