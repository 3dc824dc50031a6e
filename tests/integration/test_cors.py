"""CORS: the old chat page, opened from disk or served from another origin, talks to the API.

The page under test is written like the proof of concept's ``chat.html``: it calls the API by
absolute URL, posts JSON (so the browser sends a preflight), reads the ``X-Session-ID``
response header and streams the answer with ``EventSource`` and with ``fetch``. It runs in
headless Chromium, served by a real ``python -m http.server`` on another port (another
origin) and opened as a ``file://`` page (origin ``null``). A page from an origin the API does
not allow must be blocked by the browser, and credentials need explicit origins.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Browser, async_playwright

from .support.deployment import Deployment, prompt
from .support.pages import CHROMIUM_ARGS, chromium
from .support.processes import free_port

pytestmark = pytest.mark.integration

OLD_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>old chat</title></head>
<body><script>
async function runChat(api, message, credentials) {
  const init = {method: "POST", headers: {"Content-Type": "application/json"},
                body: JSON.stringify({message}), credentials: credentials || "same-origin"};
  const health = await (await fetch(api + "/health/full")).json();
  const queued = await fetch(api + "/chat/async", init);
  const sessionId = queued.headers.get("X-Session-ID");
  const body = await queued.json();
  const streamed = await new Promise((resolve, reject) => {
    const source = new EventSource(api + body.stream_url);
    let text = "";
    source.onmessage = (event) => {
      const data = JSON.parse(event.data);
      if (data.chunk !== undefined) text += data.chunk;
      if (data.type === "done") { source.close(); resolve(text); }
      if (data.type === "error") { source.close(); reject(new Error(data.error)); }
    };
    source.onerror = () => { source.close(); reject(new Error("EventSource failed")); };
  });
  const direct = await fetch(api + "/chat", init);
  const directSession = direct.headers.get("X-Session-ID");
  const directText = await direct.text();
  return {openai: health.openai, sessionId, bodySession: body.session_id, streamed,
          directSession, directText, origin: location.origin};
}
async function tryFetch(api) {
  try {
    const r = await fetch(api + "/chat/async", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify({message: "hi"})});
    return "status " + r.status;
  } catch (err) { return "blocked: " + err.name; }
}
</script></body></html>
"""


@pytest.fixture(scope="module")
def page_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("old-page")
    (directory / "chat.html").write_text(OLD_PAGE, "utf-8")
    return directory


@pytest.fixture(scope="module")
def page_origin(page_dir: Path) -> Iterator[str]:
    """``python -m http.server`` on another port, as the old README tells users to run."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=page_dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    origin = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{origin}/chat.html", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield origin
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def stack(module_deployment: Deployment, page_origin: str) -> Deployment:
    module_deployment.api()  # default: any origin, no credentials
    module_deployment.api(CORS_ALLOW_ORIGINS="http://127.0.0.1:1")  # not the page's origin
    module_deployment.api(CORS_ALLOW_ORIGINS=f"{page_origin}, null", CORS_ALLOW_CREDENTIALS="true")
    module_deployment.worker()
    return module_deployment.start()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def run_old_page(browser: Browser, url: str, api: str, credentials: str | None = None) -> dict:
    page = await browser.new_page()
    await page.goto(url)
    question = prompt("cors", tokens=10)
    result = await page.evaluate(
        "([api, message, credentials]) => runChat(api, message, credentials)",
        [api, question.text, credentials],
    )
    assert result["streamed"] == question.expected
    assert result["directText"] == question.expected
    return result


async def test_a_page_from_another_origin_chats_and_reads_the_session_header(
    browser: Browser, stack: Deployment, page_origin: str
) -> None:
    result = await run_old_page(browser, f"{page_origin}/chat.html", stack.apis[0].base_url)
    assert result["origin"] == page_origin
    assert result["openai"] == "configured"
    assert result["sessionId"] and result["sessionId"] == result["bodySession"]
    assert result["directSession"]


async def test_a_page_opened_from_disk_chats_too(
    browser: Browser, stack: Deployment, page_dir: Path
) -> None:
    result = await run_old_page(browser, (page_dir / "chat.html").as_uri(), stack.apis[0].base_url)
    assert result["origin"] == "file://"  # Chromium sends "Origin: null" from such pages
    assert result["sessionId"] == result["bodySession"]


async def test_a_page_from_an_origin_not_allowed_is_blocked_by_the_browser(
    browser: Browser, stack: Deployment, page_origin: str
) -> None:
    page = await browser.new_page()
    await page.goto(f"{page_origin}/chat.html")
    assert await page.evaluate("(api) => tryFetch(api)", stack.apis[1].base_url) == "blocked: TypeError"
    # The same page may call the permissive API: the refusal is the policy, not the page.
    assert await page.evaluate("(api) => tryFetch(api)", stack.apis[0].base_url) == "status 200"


async def test_explicit_origins_allow_credentialed_requests(
    browser: Browser, stack: Deployment, page_origin: str, page_dir: Path
) -> None:
    api = stack.apis[2].base_url
    await run_old_page(browser, f"{page_origin}/chat.html", api, credentials="include")
    await run_old_page(browser, (page_dir / "chat.html").as_uri(), api, credentials="include")


async def test_preflight_and_exposed_headers(stack: Deployment, page_origin: str) -> None:
    api = stack.apis[0].base_url
    async with httpx.AsyncClient(timeout=10) as client:
        preflight = await client.options(
            f"{api}/chat/async",
            headers={"Origin": page_origin, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type, last-event-id"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "*"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "content-type" in preflight.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in preflight.headers

        queued = await client.post(
            f"{api}/chat/async", json={"message": prompt("cors-h").text}, headers={"Origin": page_origin}
        )
        assert queued.headers["access-control-allow-origin"] == "*"
        exposed = {h.strip().lower() for h in queued.headers["access-control-expose-headers"].split(",")}
        assert {"x-session-id", "x-trace-id"} <= exposed

        strict = stack.apis[2].base_url
        allowed = await client.get(f"{strict}/health", headers={"Origin": page_origin})
        assert allowed.headers["access-control-allow-origin"] == page_origin
        assert allowed.headers["access-control-allow-credentials"] == "true"
        other = await client.get(f"{strict}/health", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        refused = await client.options(
            f"{strict}/chat",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert refused.status_code == 400


def test_credentials_with_any_origin_refuse_to_start(stack: Deployment) -> None:
    service = stack.api(CORS_ALLOW_CREDENTIALS="true")  # origins left at '*'
    try:
        service.start()
        assert service.proc is not None
        code = service.proc.wait(30)
        assert code != 0
        assert "CORS_ALLOW_CREDENTIALS needs explicit CORS_ALLOW_ORIGINS" in service.tail(200)
    finally:
        service.stop()
        stack.apis.remove(service)
