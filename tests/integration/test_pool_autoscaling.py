"""Two pools, each scaled by its own ScaledObject: one always on, one from zero.

The chart is rendered with two pools (``pools``): the processes get the ``LLM_POOLS`` the
chart's ConfigMap holds, and each pool's rendered trigger is read as KEDA's rabbitmq scaler
reads it (the multi-lane pool by regex over its lane queues, summed). The test plays each
pool's Deployment controller with real worker processes (``support/keda.py``).

1. A burst on ``alpha`` scales alpha out; ``beta`` stays at zero.
2. A request for ``beta``'s model waits at position 1 "for a worker to start", until the loop
   activates beta from zero; it is answered whole.
3. Idle past its cooldown, beta goes back to zero; the next request's ETA now includes the
   measured start of beta's worker.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import pytest
from deploy.manifests import helm_template
from support.brokers import Broker

from .support.deployment import Deployment, prompt
from .support.keda import Autoscaler, Trigger, queue_length
from .support.processes import Service
from .support.sse import assert_complete, read_stream

POLL_S = 1
COOLDOWN_S = 4
ALPHA_MAX = 3


class PoolController:
    """One pool's Deployment controller: hold the replicas its autoscaler asks for."""

    def __init__(self, stack: Deployment, trigger: Trigger, pool: str, pools_json: str) -> None:
        self.stack, self.trigger, self.pool, self.pools_json = stack, trigger, pool, pools_json
        self.autoscaler = Autoscaler(trigger)
        self.running: list[Service] = []
        self.replicas_seen: list[int] = []
        self.started = time.monotonic()
        self.failure: AssertionError | None = None

    async def tick(self, http: httpx.AsyncClient) -> None:
        reading = await queue_length(self.trigger, http)
        now = time.monotonic() - self.started
        desired = self.autoscaler.desired(reading.messages, len(self.running), now)
        change = desired - len(self.running)
        for _ in range(change):
            worker = self.stack.worker(LLM_POOLS=self.pools_json, LLM_POOL=self.pool, WORKER_CONCURRENCY="2")
            self.running.append(worker.start())
        for _ in range(-change):
            self.running.pop().terminate()
        self.autoscaler.record(now, change)
        self.replicas_seen.append(len(self.running))

    async def run(self, http: httpx.AsyncClient, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick(http)
            except httpx.HTTPError:
                pass  # KEDA keeps the count until the next reading
            except AssertionError as exc:  # a reading the scaler could not make: the test fails
                self.failure = exc
                raise
            try:
                await asyncio.wait_for(stop.wait(), self.trigger.polling_interval)
            except TimeoutError:
                pass


def render(broker: Broker, stack: Deployment, mock_url: str) -> tuple[dict[str, Trigger], str]:
    alpha_scaling = {
        "minReplicas": 1, "maxReplicas": ALPHA_MAX, "tasksPerReplica": 2, "pollingInterval": POLL_S,
    }
    beta_scaling = {
        "minReplicas": 0, "maxReplicas": 2, "activationValue": 0, "cooldownPeriod": COOLDOWN_S,
        "pollingInterval": POLL_S,
    }
    pools = [
        {"name": "alpha", "default": True, "models": ["alpha-1"], "lanes": ["priority", "default", "flex"],
         "scaling": alpha_scaling},
        {"name": "beta", "models": ["beta-1"], "scaling": beta_scaling},
    ]
    assert broker.management_url
    objects = list(helm_template(
        "--set", f"rabbitmq.url={broker.amqp_url}",
        "--set", f"rabbitmq.managementUrl={broker.management_url}",
        "--set", f"config.taskQueue={stack.names.task_queue}",
        "--set", f"llm.baseUrl={mock_url}/v1",
        "--set", "llm.apiKey=test",
        "--set-json", f"pools={json.dumps(pools)}",
    ))
    scaled = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ScaledObject"}
    triggers = {
        pool: Trigger.from_manifests(objects, next(name for name in scaled if name.endswith(f"-{pool}")))
        for pool in ("alpha", "beta")
    }
    (config,) = [o for o in objects if o["kind"] == "ConfigMap" and "pools.json" in o.get("data", {})]
    return triggers, config["data"]["pools.json"]


@pytest.mark.broker
async def test_each_pool_scales_on_its_own_backlog_and_one_from_zero(
    make_deployment: Callable[[], Deployment], broker: Broker, mock_url: str,
) -> None:
    stack = make_deployment()
    triggers, pools_json = render(broker, stack, mock_url)
    stack.names = stack.names.with_pools(pools_json)
    assert triggers["alpha"].use_regex and triggers["alpha"].operation == "sum"
    assert (triggers["beta"].min_replicas, triggers["beta"].use_regex) == (0, False)
    api = stack.api(LLM_POOLS=pools_json).base_url
    stack.start()  # the API declares every pool's queues before the scalers read them
    controllers = {
        pool: PoolController(stack, trigger, pool, pools_json) for pool, trigger in triggers.items()
    }
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0), limits=limits, trust_env=False) as http:
        loops = [asyncio.create_task(c.run(http, stop)) for c in controllers.values()]
        try:
            await _scenario(http, api, controllers)
        finally:
            stop.set()
            await asyncio.gather(*loops, return_exceptions=True)


async def _scenario(http: httpx.AsyncClient, api: str, controllers: dict[str, PoolController]) -> None:
    alpha, beta = controllers["alpha"], controllers["beta"]

    async def _until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            for controller in controllers.values():
                if controller.failure is not None:
                    raise controller.failure
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not within {timeout:g} s")
            await asyncio.sleep(0.1)

    await _until(lambda: len(alpha.running) == 1, "alpha at its minimum of one worker")
    for service in alpha.running:
        await service.wait_ready_async(60)

    async def answer(model: str, label: str, **directives: float) -> tuple[list[dict[str, object]], float]:
        ask = prompt(label, **directives)
        posted = time.monotonic()
        queued = await http.post(f"{api}/chat/async", json={"message": ask.text, "model": model})
        assert queued.status_code == 200, queued.text
        news: list[dict[str, object]] = []
        transcript = await read_stream(
            http, f"{api}{queued.json()['stream_url']}", timeout=120,
            on_item=lambda item: news.append(item.data) if getattr(item, "kind", None) == "queued" else None,
        )
        assert_complete(transcript, ask.expected)
        return news, time.monotonic() - posted

    # 1. alpha's burst scales alpha out, and only alpha.
    # Answers of 8 s: longer than the management API's statistics interval (5 s), which is what
    # the scaler reads.
    burst = [asyncio.create_task(answer("alpha-1", f"burst {i}", tokens=80, tps=10)) for i in range(12)]
    await _until(lambda: len(alpha.running) > 1, "alpha scaled out under its burst", timeout=60)
    assert beta.running == [] and set(beta.replicas_seen) == {0}

    # 2. beta from zero: the request waits for a worker to start.
    news, took = await answer("beta-1", "from zero")
    assert news and news[0]["position"] == 1 and news[0]["waiting_for"] == "worker_start", news
    first_start = took
    await asyncio.gather(*burst)

    # 3. back to zero after the cooldown; the next wait's ETA includes the measured start.
    await _until(lambda: beta.running == [], "beta back to zero after its cooldown", timeout=COOLDOWN_S + 30)
    health = (await http.get(f"{api}/health/full")).json()["pools"]["beta"]
    assert health["worker_start_s"] is not None, health
    news, took = await answer("beta-1", "from zero again")
    assert news[0]["waiting_for"] == "worker_start" and news[0]["eta_s"] is not None, news
    assert float(news[0]["eta_s"]) > 0  # type: ignore[arg-type]
    print(
        f"beta from zero: answered in {first_start:.2f} s, then {took:.2f} s "
        f"(ETA told while waiting: {news[0]['eta_s']} s); "
        f"alpha replicas seen {sorted(set(alpha.replicas_seen))}"
    )

