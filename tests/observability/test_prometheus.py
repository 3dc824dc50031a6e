"""End to end: a real Prometheus scrapes the running API, two workers and the broker's
prometheus plugin while real traffic goes through the stack; then every dashboard query and
every rule is evaluated through Prometheus's HTTP API.

Every expression must parse. Every dashboard expression, except on panels marked as needing
cluster metrics, must return at least one finite value: a panel that shows nothing fails.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from support.brokers import Broker

from .queries import (
    RULES_DIR,
    PanelQuery,
    Rule,
    dashboard_files,
    label_values_query,
    load_dashboard,
    load_rules,
    panel_queries,
    substitute,
    variable_values,
)
from .stack import (
    Processes,
    Topology,
    free_port,
    http_client,
    wait_http_ok,
    wait_until,
)
from .tools import check_metrics, require_tool

pytestmark = pytest.mark.observability

WORKERS = 2
SSE_PER_WAVE = 16
SYNC_PER_WAVE = 4
# Per wave, besides the answers above: one task the LLM fails with a retryable 500 (with one
# delivery allowed it is dead-lettered), one it refuses with a 400 (failed), and two requests
# the API refuses (422 validation, 400 invalid_json).
TASKS_PER_WAVE = SSE_PER_WAVE + SYNC_PER_WAVE + 2
WAVES = 2

PANEL_QUERIES = [query for path in dashboard_files() for query in panel_queries(path)]
RULES = load_rules()


@dataclass
class Observed:
    """The stack after the traffic, and the Prometheus that watched it.

    ``at`` is the instant at which Prometheus had scraped every target successfully after the
    last wave: queries are evaluated there, so a scrape that times out later on a busy machine
    (which marks that target's series stale) cannot empty a panel.
    """

    prometheus: str
    api: str
    workers: list[str]
    topology: Topology
    at: float | None = None

    def query(self, expr: str, *, now: bool = False) -> list[dict]:
        """Evaluate ``expr`` at ``at`` (or now); fail on any error (a parse error is a 400)."""
        params = {"query": expr}
        if self.at is not None and not now:
            params["time"] = f"{self.at:.3f}"
        with http_client() as client:
            response = client.get(f"{self.prometheus}/api/v1/query", params=params)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (
            f"{expr}\n-> {response.status_code} {body.get('errorType')}: {body.get('error')}"
        )
        assert body["data"]["resultType"] in ("vector", "scalar"), body["data"]["resultType"]
        result = body["data"]["result"]
        return result if body["data"]["resultType"] == "vector" else [{"metric": {}, "value": result}]

    def dashboard_values(self, path_name: str, **overrides: str) -> dict[str, str]:
        dashboard = load_dashboard(next(p for p in dashboard_files() if p.name == path_name))
        return variable_values(dashboard, {"queue": self.topology.task_queue, **overrides})


def prometheus_config(api: str, workers: list[str], broker_target: str) -> dict:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_DIR / "*.yaml")],
        "scrape_configs": [
            # The API reads the management API while it serves /metrics: give it (and the
            # broker) two seconds.
            {
                "job_name": "llm-stream-api",
                "scrape_interval": "2s",
                "scrape_timeout": "2s",
                "static_configs": [{"targets": [api]}],
            },
            # As the chart's PodMonitor does: the pod's pool as the `pool` label (one pool,
            # `default`, as without LLM_POOLS).
            {
                "job_name": "llm-stream-worker",
                "static_configs": [{"targets": workers, "labels": {"pool": "default"}}],
            },
            # As the chart's PodMonitor does: per-queue gauges from the detailed endpoint.
            {
                "job_name": "rabbitmq-queues",
                "scrape_interval": "2s",
                "scrape_timeout": "2s",
                "metrics_path": "/metrics/detailed",
                "params": {"family": ["queue_coarse_metrics", "queue_consumer_count"]},
                "static_configs": [{"targets": [broker_target]}],
            },
        ],
    }


def settled(wave: int, last: bool) -> str:
    """PromQL that returns a sample only once Prometheus has the whole of ``wave``; after the
    last wave also the dead-lettered tasks (the management API lags by up to 10 s) and a
    successful last scrape of every target."""
    conditions = [
        f'sum(llmstream_worker_tasks_total{{outcome!="retried"}}) == {wave * TASKS_PER_WAVE}',
        f"sum(llmstream_rejected_requests_total) == {wave * 2}",
        f'sum(llmstream_stream_ends_total{{how=~"done|error"}}) == {wave * TASKS_PER_WAVE}',
    ]
    if last:
        conditions += [
            f"max(llmstream_dead_letter_messages) == {wave}",
            f"count(up == 1) == {WORKERS + 2}",
        ]
    return "vector(1)" + "".join(f" and on () ({c})" for c in conditions)


async def drive_wave(api: str, wave: int) -> None:
    """One burst of real traffic: SSE and plain-text answers, LLM failures, refused requests."""
    async with httpx.AsyncClient(base_url=api, trust_env=False, timeout=30) as client:

        async def sse(message: str, expect: str) -> None:
            queued = await client.post("/chat/async", json={"message": message})
            assert queued.status_code == 200, queued.text
            async with client.stream("GET", queued.json()["stream_url"]) as stream:
                async for line in stream.aiter_lines():
                    if line.startswith("data: ") and '"type"' in line:
                        kind = json.loads(line[6:])["type"]
                        if kind == "queued":  # its position while it waits, not an end
                            continue
                        assert kind == expect, line
                        return
            pytest.fail(f"stream of {message!r} ended without a final event")

        async def plain(message: str) -> None:
            response = await client.post("/chat", json={"message": message})
            assert response.status_code == 200 and "[error]" not in response.text, response.text

        async def refused(content: bytes, status: int) -> None:
            response = await client.post(
                "/chat/async", content=content, headers={"content-type": "application/json"}
            )
            assert response.status_code == status, response.text

        await asyncio.gather(
            *(sse(f"wave {wave} question {i}", "done") for i in range(SSE_PER_WAVE)),
            *(plain(f"wave {wave} plain question {i}") for i in range(SYNC_PER_WAVE)),
            sse(f"wave {wave} [[mock:fail=500]]", "error"),
            sse(f"wave {wave} [[mock:fail=400]]", "error"),
            refused(b'{"message": ""}', 422),
            refused(b"{not json", 400),
        )


@pytest.fixture(scope="module")
def observed(
    processes: Processes, rabbitmq: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Observed]:
    prometheus_bin = require_tool("prometheus")
    if rabbitmq.prometheus_target is None or rabbitmq.management_url is None:
        pytest.fail(f"{rabbitmq.description}: the management and prometheus plugins are needed")
    topology = Topology.new()
    broker = {
        **topology.env, "RABBIT_MQ": rabbitmq.amqp_url, "LOG_LEVEL": "WARNING", "TASK_MAX_DELIVERIES": "1"
    }
    mock_port, api_port, prom_port = free_port(), free_port(), free_port()
    worker_ports = [free_port() for _ in range(WORKERS)]
    processes.service(
        "mockllm",
        "llm-stream-mockllm",
        {
            "MOCK_HOST": "127.0.0.1",
            "MOCK_PORT": str(mock_port),
            "MOCK_TTFT_MS": "30",
            "MOCK_TOKENS": "12",
            "MOCK_TPS": "400",
            "MOCK_LOG_LEVEL": "warning",
        },
    )
    for i, port in enumerate(worker_ports):
        processes.service(
            f"worker-{i}",
            "llm-stream-worker",
            {
                **broker,
                "OPENAI_BASE_URL": f"http://127.0.0.1:{mock_port}/v1",
                "OPENAI_API_KEY": "test",
                "LLM_MAX_RETRIES": "0",
                "METRICS_PORT": str(port),
                "METRICS_HOST": "127.0.0.1",
                "WORKER_CONCURRENCY": "4",  # 8 slots for 22 tasks a wave: the queue fills up
            },
        )
    processes.service(
        "api",
        "llm-stream-api",
        {
            **broker,
            "PORT": str(api_port),
            "HOST": "127.0.0.1",
            "UVICORN_WORKERS": "1",
            "RABBITMQ_MANAGEMENT_URL": rabbitmq.management_url,
        },
    )
    workdir = tmp_path_factory.mktemp("prometheus")
    config = workdir / "prometheus.yml"
    api_target = f"127.0.0.1:{api_port}"
    worker_targets = [f"127.0.0.1:{port}" for port in worker_ports]
    scrape = prometheus_config(api_target, worker_targets, rabbitmq.prometheus_target)
    config.write_text(yaml.safe_dump(scrape))
    processes.start(
        "prometheus",
        [
            prometheus_bin,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        {},
    )
    prom = f"http://127.0.0.1:{prom_port}"
    try:
        wait_http_ok(f"http://127.0.0.1:{mock_port}/health", processes)
        wait_http_ok(f"http://{api_target}/health/full", processes, timeout=60)
        for target in worker_targets:
            wait_http_ok(f"http://{target}/health", processes, timeout=60)
        wait_http_ok(f"{prom}/-/ready", processes)
        with http_client() as client:

            def all_targets_up() -> bool:
                targets = client.get(f"{prom}/api/v1/targets").json()["data"]["activeTargets"]
                return len(targets) == WORKERS + 2 and all(t["health"] == "up" for t in targets)

            wait_until("every scrape target up", all_targets_up, 30, processes)
            stack = Observed(prom, f"http://{api_target}", [f"http://{t}" for t in worker_targets], topology)

            for wave in range(1, WAVES + 1):
                asyncio.run(drive_wave(stack.api, wave))
                # Counters born in this wave get a first sample before the next wave moves
                # them, so that every rate over the test's window has something to show.
                last = wave == WAVES
                condition = settled(wave, last)

                def seen(condition: str = condition) -> bool:
                    result = stack.query(condition, now=True)
                    if result:
                        stack.at = float(result[0]["value"][0])
                    return bool(result)

                wait_until(f"Prometheus to see wave {wave}:\n{condition}", seen, 45, processes)
            yield stack
    finally:
        processes.stop_all()
        asyncio.run(topology.delete(rabbitmq.amqp_url))


# -- the exposition ---------------------------------------------------------------------


def test_promtool_accepts_the_api_metrics(observed: Observed) -> None:
    with http_client() as client:
        response = client.get(f"{observed.api}/metrics")
    assert response.status_code == 200
    check_metrics(response.content, "the API's /metrics")


def test_promtool_accepts_the_worker_metrics(observed: Observed) -> None:
    with http_client() as client:
        response = client.get(f"{observed.workers[0]}/metrics")
    assert response.status_code == 200
    check_metrics(response.content, "a worker's /metrics")


# -- dashboards -------------------------------------------------------------------------


@pytest.mark.parametrize("query", PANEL_QUERIES, ids=str)
def test_dashboard_query_shows_data(observed: Observed, query: PanelQuery) -> None:
    expr = substitute(query.expr, observed.dashboard_values(query.dashboard))
    result = observed.query(expr)
    if query.cluster:
        return  # needs kube-state-metrics: parsing is all this test can ask
    values = [float(sample["value"][1]) for sample in result]
    assert values, f"{query}: no data for\n{expr}"
    assert any(math.isfinite(v) for v in values), f"{query}: only {values} for\n{expr}"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_variables_resolve(observed: Observed, path: Path) -> None:
    dashboard = load_dashboard(path)
    values = observed.dashboard_values(path.name)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        listing = label_values_query(variable["definition"])
        assert listing is not None, f"{variable['name']}: {variable['definition']}"
        expr, label = listing
        found = {sample["metric"].get(label) for sample in observed.query(substitute(expr, values))}
        if variable["name"] == "queue":
            assert observed.topology.task_queue in found, found
        if variable["name"] == "pool":
            # Without LLM_POOLS the API reports its queues as the pool `default`.
            assert found == {"default"}, found


POOL_QUERIES = [query for query in PANEL_QUERIES if "$pool" in query.expr and not query.cluster]


@pytest.mark.parametrize("query", POOL_QUERIES, ids=str)
def test_dashboard_query_shows_the_chosen_pool(observed: Observed, query: PanelQuery) -> None:
    """With one pool chosen (as Grafana formats a multi-value variable), the panel shows it:
    the workers' and the API's series agree on the pool's name."""
    values = observed.dashboard_values(query.dashboard, pool="(default)")
    expr = substitute(query.expr, values)
    found = [float(sample["value"][1]) for sample in observed.query(expr)]
    assert any(math.isfinite(v) for v in found), f"{query}: no data for pool default in\n{expr}"
    other = substitute(query.expr, observed.dashboard_values(query.dashboard, pool="(no-such-pool)"))
    assert not [s for s in observed.query(other) if s["metric"].get("pool")], f"{query}: shows another pool"


# -- rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES, ids=str)
def test_rule_expression_evaluates(observed: Observed, rule: Rule) -> None:
    observed.query(rule.body["expr"])


def test_prometheus_evaluates_every_rule_without_error(observed: Observed) -> None:
    names = {rule.name for rule in RULES}
    with http_client() as client:

        def evaluated() -> list[dict]:
            groups = client.get(f"{observed.prometheus}/api/v1/rules").json()["data"]["groups"]
            return [rule for group in groups for rule in group["rules"]]

        deadline = time.monotonic() + 10
        while any(r["lastEvaluation"].startswith("0001") for r in evaluated()):
            assert time.monotonic() < deadline, "rules were never evaluated"
            time.sleep(0.5)
        loaded = evaluated()
    assert {rule["name"] for rule in loaded} == names
    for rule in loaded:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"


HEALTHY_HERE = (
    "LLMStreamBacklogWithoutConsumers",
    "LLMStreamBrokerUnreachable",
    "LLMStreamQueueStatsUnavailable",
    "LLMStreamTimeToFirstTokenHigh",
    "LLMStreamQueueWaitHigh",
    "LLMStreamHTTPErrorRatioHigh",
    "LLMStreamWorkersSaturated",
)


def test_alert_conditions_match_what_happened(observed: Observed) -> None:
    """Tasks were dead-lettered; nothing else is wrong with this stack. (Whether the task error
    ratio crosses 5% depends on when the error counters were first scraped, so it is not
    asserted here; rules.test.yaml covers it.)"""
    alerts = {rule.name: rule.body["expr"] for rule in RULES if rule.is_alert}
    assert observed.query(alerts["LLMStreamDeadLetterQueueNotEmpty"])
    for name in HEALTHY_HERE:
        assert observed.query(alerts[name]) == [], name


def test_prometheus_raises_the_dead_letter_alert(observed: Observed) -> None:
    """The rule manager itself, not only the expression, turns the condition into an alert."""
    expr = 'max_over_time(ALERTS{alertname="LLMStreamDeadLetterQueueNotEmpty"}[2m])'
    deadline = time.monotonic() + 20
    while not observed.query(expr, now=True):
        assert time.monotonic() < deadline, "LLMStreamDeadLetterQueueNotEmpty was never pending"
        time.sleep(0.5)
