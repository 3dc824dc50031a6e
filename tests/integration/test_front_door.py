"""The proof of concept's contract at the front door: ``/health/full`` learns from the workers'
heartbeats whether an LLM is configured, ``/test`` answers plain text, CORS headers.

Processes of the module: ``api`` and one ``worker`` (with the mock's base URL and a key) that
heartbeats every 0.5 s. Other tests start their own deployments, with or without workers;
every deployment shares the broker and the workers exchange, so these tests also show that an
API counts only the workers of its own task queue.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import httpx
import pytest

from .support.deployment import Deployment
from .support.processes import free_port

pytestmark = pytest.mark.integration

HEARTBEAT_INTERVAL_S = 0.5


@pytest.fixture(scope="module")
def stack(module_deployment: Deployment) -> Deployment:
    module_deployment.api(STATS_CACHE_S="0")
    module_deployment.worker(HEARTBEAT_INTERVAL_S=str(HEARTBEAT_INTERVAL_S), WORKER_CONCURRENCY="7")
    return module_deployment.start()


@pytest.fixture(scope="module")
def api(stack: Deployment) -> str:
    return stack.apis[0].base_url


async def wait_for_json(
    client: httpx.AsyncClient, url: str, condition: Callable[[dict], bool], *, timeout: float
) -> dict:
    """GET ``url`` every 0.1 s until ``condition(body)``; fail with the last body otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        body = (await client.get(url)).json()
        if condition(body):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{url}: condition not met within {timeout:g}s; last body {body}")
        await asyncio.sleep(0.1)


# -- /health/full and /stats ----------------------------------------------------------------


async def test_health_full_says_configured_when_a_worker_has_an_llm(
    client: httpx.AsyncClient, api: str
) -> None:
    body = await wait_for_json(client, f"{api}/health/full", lambda b: b["workers"] == 1, timeout=5)
    assert body == {
        "status": "ok", "rabbitmq": "connected", "openai": "configured", "llm": "via_workers",
        "workers": 1, "sessions": body["sessions"], "pools": body["pools"],
    }
    # Without LLM_POOLS: one pool, serving any model, on the deployment's task queue.
    (name, pool), = body["pools"].items()
    assert (name, pool["models"], pool["lanes"], pool["workers"]) == ("default", [], ["default"], 1)


async def test_stats_count_the_workers_and_their_capacity(client: httpx.AsyncClient, api: str) -> None:
    body = await wait_for_json(client, f"{api}/stats", lambda b: b["workers"] == 1, timeout=5)
    assert body["worker_concurrency"] == 7
    assert body["generations_running"] == 0
    assert body["consumers"] == 1


async def test_an_api_that_starts_after_the_worker_knows_it_at_once(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment]
) -> None:
    """The worker's first heartbeat went out before the API existed, and the next one is a
    minute away: the API's probe on connecting is what makes the worker answer now."""
    dep = make_deployment()
    dep.worker(HEARTBEAT_INTERVAL_S="60")
    dep.start()
    dep.api()
    api = dep.start().apis[0].base_url
    body = await wait_for_json(client, f"{api}/health/full", lambda b: b["workers"] == 1, timeout=3)
    assert body["openai"] == "configured"


async def test_without_workers_the_llm_is_missing(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment]
) -> None:
    """Another deployment's worker heartbeats on the same exchange: it must not count."""
    lonely = make_deployment()
    lonely.api()
    api = lonely.start().apis[0].base_url
    await asyncio.sleep(3 * HEARTBEAT_INTERVAL_S)
    body = (await client.get(f"{api}/health/full")).json()
    assert body["openai"] == "missing"
    assert body["workers"] == 0
    assert body["llm"] == "via_workers"
    assert (await client.get(f"{api}/stats")).json()["workers"] == 0


async def test_a_worker_without_key_or_base_url_leaves_the_llm_missing(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment]
) -> None:
    keyless = make_deployment()
    keyless.api()
    keyless.worker(OPENAI_API_KEY="", OPENAI_BASE_URL="", HEARTBEAT_INTERVAL_S="0.5")
    api = keyless.start().apis[0].base_url
    body = await wait_for_json(client, f"{api}/health/full", lambda b: b["workers"] == 1, timeout=5)
    assert body["openai"] == "missing"


async def test_a_stopped_worker_is_forgotten_at_once_and_a_killed_one_after_a_few_intervals(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment]
) -> None:
    dep = make_deployment()
    dep.api()
    dep.worker(HEARTBEAT_INTERVAL_S=str(HEARTBEAT_INTERVAL_S))
    dep.worker(HEARTBEAT_INTERVAL_S=str(HEARTBEAT_INTERVAL_S))
    api = dep.start().apis[0].base_url
    url = f"{api}/health/full"
    await wait_for_json(client, url, lambda b: b["workers"] == 2, timeout=5)

    stopped, killed = dep.workers
    stopped.signal(signal.SIGTERM)
    await stopped.wait_exit(timeout=10)
    # Its goodbye arrives before its heartbeat would have expired (3 intervals).
    started = time.monotonic()
    body = await wait_for_json(client, url, lambda b: b["workers"] == 1, timeout=5)
    assert body["openai"] == "configured"

    killed.signal(signal.SIGKILL)
    await killed.wait_exit(timeout=10)
    started = time.monotonic()
    body = await wait_for_json(client, url, lambda b: b["workers"] == 0, timeout=10)
    waited = time.monotonic() - started
    assert body["openai"] == "missing"
    assert waited < 3 * HEARTBEAT_INTERVAL_S + 2, waited


async def test_direct_mode_decides_from_the_api_settings(
    client: httpx.AsyncClient, stack: Deployment
) -> None:
    configured = stack.api(CHAT_DIRECT_LLM="true")
    missing = stack.api(CHAT_DIRECT_LLM="true", OPENAI_API_KEY="", OPENAI_BASE_URL="")
    stack.start()
    try:
        body = (await client.get(f"{configured.base_url}/health/full")).json()
        assert (body["openai"], body["llm"]) == ("configured", "direct")
        body = (await client.get(f"{missing.base_url}/health/full")).json()
        assert (body["openai"], body["llm"]) == ("missing", "direct")
    finally:
        for service in (configured, missing):
            service.stop()
            stack.apis.remove(service)


# -- /test ----------------------------------------------------------------------------------


async def test_test_answers_ok_and_the_reply_as_plain_text(client: httpx.AsyncClient, api: str) -> None:
    response = await client.get(f"{api}/test")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text.startswith("OK: Echo-"), response.text


async def test_test_answers_json_when_asked(client: httpx.AsyncClient, api: str) -> None:
    response = await client.get(f"{api}/test", headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["status"] == "ok"
    assert "gpt-4o-mini" in body["models"]


async def test_test_answers_error_and_why_when_the_llm_is_unreachable(
    client: httpx.AsyncClient, stack: Deployment
) -> None:
    unreachable = stack.api(OPENAI_BASE_URL=f"http://127.0.0.1:{free_port()}/v1", LLM_MAX_RETRIES="0")
    stack.start()
    try:
        response = await client.get(f"{unreachable.base_url}/test")
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text.startswith("ERROR: "), response.text
        assert len(response.text) > len("ERROR: ")
        response = await client.get(
            f"{unreachable.base_url}/test", headers={"Accept": "application/json"}
        )
        assert response.status_code == 503
        assert response.json()["error"] == "llm_unreachable"
    finally:
        unreachable.stop()
        stack.apis.remove(unreachable)
