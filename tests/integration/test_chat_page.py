"""The chat page, in a real browser: type a message, watch the answer stream in.

Headless Chromium (Debian's package, driven by Playwright) against the real API and worker.
"""

from __future__ import annotations

import shutil

import pytest
from playwright.async_api import async_playwright

from .support.deployment import Deployment, prompt

pytestmark = pytest.mark.integration

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def api(module_deployment: Deployment) -> str:
    module_deployment.api()
    module_deployment.worker()
    return module_deployment.start().apis[0].base_url


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Chromium is not installed: apt-get install chromium")
    return path


@pytest.mark.parametrize("path", ["/", "/chat.html"])
async def test_the_chat_page_streams_the_answer_to_a_typed_message(api: str, path: str) -> None:
    question = prompt("page", tokens=20, tps=100)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(api + path)
            await page.fill("#message", question.text)
            await page.click("#send")
            await page.wait_for_function(
                "document.getElementById('status').textContent === 'done'", timeout=20_000
            )
            assert await page.text_content(".you") == f"You: {question.text}"
            assert await page.text_content(".bot") == question.expected
            assert await page.query_selector(".err") is None
            assert await page.is_enabled("#send")
        finally:
            await browser.close()
