"""Model pools behind one API: routing by model, isolation, unknown models, service tiers.

Two pools, each with its own workers and its own mock upstream (docs/adr/0006). The SDK talks
to the API; which upstream answered is read from each mock's own record of its requests.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from .support.deployment import Deployment, mock_llm, prompt
from .support.processes import Service
from .support.waits import until

ALPHA, BETA = "alpha-1", "beta-1"


def pools_json(alpha_url: str, beta_url: str) -> str:
    return json.dumps({"pools": [
        {"name": "alpha", "default": True, "models": [ALPHA], "aliases": {"a": ALPHA},
         "base_url": f"{alpha_url}/v1", "lanes": ["priority", "default", "flex"]},
        {"name": "beta", "models": [BETA], "base_url": f"{beta_url}/v1"},
    ]})


@pytest.fixture(scope="module")
def beta_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    service = mock_llm(tmp_path_factory.mktemp("beta-mock")).start().wait_ready()
    try:
        yield service.base_url
    finally:
        service.stop()


def start_pools(
    stack: Deployment, mock_url: str, beta_mock: str, workers: dict[str, dict[str, str]], **api_env: str,
) -> tuple[Deployment, str]:
    """One API and a worker per entry of ``workers`` (its pool and extra env), started."""
    pools = pools_json(mock_url, beta_mock)
    stack.names = stack.names.with_pools(pools)
    api = stack.api(LLM_POOLS=pools, **api_env).base_url
    for pool, env in workers.items():
        stack.worker(LLM_POOLS=pools, LLM_POOL=pool, **env)
    stack.start()
    return stack, api


def started_sessions(worker: Service) -> list[str]:
    """The session ids of a worker's generations, in the order it started them."""
    lines = worker.log_path.read_text("utf-8", errors="replace").splitlines()
    return [found.group(1) for line in lines if "generation started" in line
            and (found := re.search(r"session_id=([\w-]+)", line))]


async def models_seen(client: httpx.AsyncClient, mock: str) -> dict[str, str]:
    """The model each prompt was asked for, by the mock at ``mock``."""
    report = (await client.get(f"{mock}/debug/streams")).json()
    return {p["prompt"]: p["model"] for p in report["parameters"]}


@pytest.mark.broker
async def test_each_model_is_answered_by_its_pools_workers_and_upstream_and_others_are_refused(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment], mock_url: str, beta_mock: str,
) -> None:
    _, api = start_pools(make_deployment(), mock_url, beta_mock, {"alpha": {}, "beta": {}})
    async with openai.AsyncOpenAI(base_url=f"{api}/v1", api_key="unused", max_retries=0) as sdk:
        await _route_and_refuse(client, sdk, api, mock_url, beta_mock)


async def _route_and_refuse(
    client: httpx.AsyncClient, sdk: openai.AsyncOpenAI, api: str, mock_url: str, beta_mock: str,
) -> None:
    to_alpha, to_beta, unnamed = prompt("alpha"), prompt("beta"), prompt("no model")
    by_alias = await sdk.chat.completions.create(
        model="a", messages=[{"role": "user", "content": to_alpha.text}]
    )
    streamed = await sdk.chat.completions.create(
        model=BETA, messages=[{"role": "user", "content": to_beta.text}], stream=True
    )
    beta_text = "".join([chunk.choices[0].delta.content or "" async for chunk in streamed if chunk.choices])
    native = await client.post(f"{api}/chat", json={"message": unnamed.text})

    assert by_alias.choices[0].message.content == to_alpha.expected
    assert beta_text == to_beta.expected
    assert native.status_code == 200 and native.text == unnamed.expected
    alpha_saw, beta_saw = await models_seen(client, mock_url), await models_seen(client, beta_mock)
    # Each upstream got its own pool's requests, by the real model id (not the alias).
    assert alpha_saw[to_alpha.text] == ALPHA and alpha_saw[unnamed.text] == ALPHA
    assert beta_saw[to_beta.text] == BETA
    assert to_beta.text not in alpha_saw and to_alpha.text not in beta_saw

    listed = [model.id async for model in sdk.models.list()]
    assert listed == [ALPHA, "a", BETA]
    with pytest.raises(openai.NotFoundError) as refused:
        await sdk.chat.completions.create(model="gamma", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "model_not_found" and refused.value.param == "model"
    assert "alpha-1, a, beta-1" in refused.value.message
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.create(model="gamma", input="hi")
    native_refused = await client.post(f"{api}/chat/async", json={"message": "hi", "model": "gamma"})
    assert native_refused.status_code == 404
    assert native_refused.json()["error"] == "model_not_found"

    health: dict[str, dict[str, object]] = {}

    async def upstreams_answered() -> bool:
        health.update((await client.get(f"{api}/health/full")).json()["pools"])
        return all(pool["upstream"] == "ok" for pool in health.values())

    await until(upstreams_answered, what="each pool's upstream reported as answering", timeout=15)
    assert {name: (pool["workers"], pool["upstream"]) for name, pool in health.items()} == {
        "alpha": (1, "ok"), "beta": (1, "ok"),
    }
    assert health["alpha"]["lanes"] == ["priority", "default", "flex"]


async def _ttft(client: httpx.AsyncClient, api: str, model: str) -> float:
    """Seconds from the POST of a streamed completion to its first content."""
    ask = prompt("ttft", tokens=4)
    began = time.perf_counter()
    body = {"model": model, "messages": [{"role": "user", "content": ask.text}], "stream": True}
    first = None
    async with client.stream("POST", f"{api}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if first is None and '"content":"' in line:
                first = time.perf_counter() - began
    assert first is not None, "no content arrived"
    return first


@pytest.mark.broker
async def test_a_backlog_on_one_pool_does_not_delay_another(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment], mock_url: str, beta_mock: str,
) -> None:
    _, api = start_pools(
        make_deployment(), mock_url, beta_mock, {"alpha": {"WORKER_CONCURRENCY": "2"}, "beta": {}}
    )
    alone = [await _ttft(client, api, BETA) for _ in range(10)]

    # 200 answers of 10 s each on alpha's two slots: 1,000 s of backlog, which stands however
    # slowly a busy machine takes the POSTs and the measurements.
    slow = [prompt(f"backlog {i}", tokens=20, tps=2).text for i in range(200)]
    posted = await asyncio.gather(*(
        client.post(f"{api}/chat/async", json={"message": text, "model": ALPHA}) for text in slow
    ))
    assert all(response.status_code == 200 for response in posted)
    behind = [await _ttft(client, api, BETA) for _ in range(10)]
    stats = (await client.get(f"{api}/stats")).json()

    print(  # the measured isolation, for the record
        f"beta TTFT alone p50 {statistics.median(alone) * 1000:.0f} ms max {max(alone) * 1000:.0f} ms; "
        f"with 200 tasks on alpha p50 {statistics.median(behind) * 1000:.0f} ms max "
        f"{max(behind) * 1000:.0f} ms; alpha still waiting: {stats['pending_tasks']}"
    )
    assert stats["queue"].endswith(".alpha") and stats["pending_tasks"] >= 150  # alpha's backlog stands
    # Behind alpha's line, a beta answer would wait minutes; beside it, it starts at once.
    assert max(behind) < 10, behind


@pytest.mark.broker
async def test_a_priority_request_waits_for_one_free_slot_and_flex_keeps_its_minimum_share(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment], mock_url: str, beta_mock: str,
) -> None:
    stack, api = start_pools(
        make_deployment(), mock_url, beta_mock,
        {"alpha": {"WORKER_CONCURRENCY": "2", "LANE_MIN_SHARE": "0.25"}},
        KEY_SERVICE_TIERS='{"*": {"default": "default"}}',
    )
    (worker,) = stack.workers

    async def queue(label: str, tier: str, count: int, **directives: float) -> list[str]:
        answers = await asyncio.gather(*(
            client.post(
                f"{api}/chat/async",
                json={"message": prompt(f"{label} {i}", tokens=6, **directives).text, "service_tier": tier},
            ) for i in range(count)
        ))
        assert all(answer.status_code == 200 for answer in answers), answers[0].text
        return [answer.json()["session_id"] for answer in answers]

    # A saturating flex backlog: both slots busy, 18 more waiting.
    flex = await queue("flex", "flex", 20, tps=6)
    await _until(lambda: len(started_sessions(worker)) >= 2)
    [urgent] = await queue("priority", "priority", 1)
    await _until(lambda: urgent in started_sessions(worker), timeout=30)
    order = started_sessions(worker)
    # It waited for one slot to free: no flex task started between its POST and its start.
    assert order.index(urgent) == 2, order

    # Now a saturating priority backlog: flex still gets one start in four.
    priority = await queue("more priority", "priority", 24, tps=20)
    await _until(lambda: all(sid in started_sessions(worker) for sid in priority), timeout=90)
    order = started_sessions(worker)
    window = order[order.index(priority[0]):order.index(priority[-1]) + 1]
    flex_in_window = [sid for sid in window if sid in flex]
    assert len(flex_in_window) >= len(window) // 4 - 1, (len(window), len(flex_in_window))

    refused = await client.post(
        f"{api}/v1/chat/completions",
        json={"model": ALPHA, "messages": [{"role": "user", "content": "hi"}], "service_tier": "scale"},
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "service_tier"


async def _until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout:g} s"
        await asyncio.sleep(0.05)


@pytest.mark.broker
async def test_a_tier_the_key_may_not_use_is_refused_with_403(
    client: httpx.AsyncClient, make_deployment: Callable[[], Deployment], mock_url: str, beta_mock: str,
) -> None:
    _, api = start_pools(
        make_deployment(), mock_url, beta_mock, {"alpha": {}},
        API_KEYS="batch:batch-key-0123456789,team:team-key-0123456789",
        KEY_SERVICE_TIERS='{"batch": {"default": "flex", "allowed": ["flex"]}}', API_KEYS_OPEN_PROBES="true",
    )
    batch_sdk = openai.AsyncOpenAI(base_url=f"{api}/v1", api_key="batch-key-0123456789", max_retries=0)
    async with batch_sdk as batch:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await batch.chat.completions.create(
                model=ALPHA, messages=[{"role": "user", "content": "hi"}], service_tier="priority"
            )
    assert refused.value.code == "service_tier_not_allowed" and "allowed: flex" in refused.value.message
    native = await client.post(
        f"{api}/chat", headers={"X-API-Key": "batch-key-0123456789"},
        json={"message": "hi", "service_tier": "priority"},
    )
    assert native.status_code == 403 and native.json()["error"] == "service_tier_not_allowed"
    ask = prompt("team priority")
    answer = await client.post(
        f"{api}/chat", headers={"X-API-Key": "team-key-0123456789"},
        json={"message": ask.text, "service_tier": "priority"},
    )
    assert answer.status_code == 200 and answer.text == ask.expected
