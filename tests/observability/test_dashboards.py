"""The Grafana dashboards as files: importable on their own, one Prometheus data source variable,
portable queries, cluster-only panels marked, and the overview shows what operators need."""

from __future__ import annotations

import re

import pytest

from .queries import (
    CLUSTER_NOTE,
    GRAFANA_BUILTINS,
    REQUIRES_KEY,
    dashboard_files,
    is_cluster_panel,
    iter_panels,
    load_dashboard,
    panel_queries,
    substitute,
    variable_values,
    variables_used,
)

pytestmark = pytest.mark.observability

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
FILES = dashboard_files()
IDS = [path.name for path in FILES]


def test_the_chart_ships_the_overview_and_the_detail_view() -> None:
    assert IDS == ["llm-stream-overview.json", "llm-stream-workers.json"]
    uids = [load_dashboard(path)["uid"] for path in FILES]
    assert len(set(uids)) == len(uids), uids


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_datasource_is_a_template_variable(path) -> None:
    dashboard = load_dashboard(path)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    # Importable anywhere: no __inputs to fill in, no data source uid of some other Grafana.
    assert "__inputs" not in dashboard
    for panel in iter_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_panels_are_laid_out_and_described(path) -> None:
    dashboard = load_dashboard(path)
    panels = list(iter_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel.get("description"), f"{panel['title']}: say what the panel shows"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_queries_use_variables_not_fixed_values(path) -> None:
    dashboard = load_dashboard(path)
    defined = {v["name"] for v in dashboard["templating"]["list"]} | set(GRAFANA_BUILTINS)
    for query in panel_queries(path):
        assert variables_used(query.expr) <= defined, query
        # Rate windows follow the scrape interval and the zoom level.
        for window in re.findall(r"\[([^\]]*)\]", query.expr):
            assert window == "$__rate_interval", f"{query}: window [{window}]"
        # No queue name is baked in: every queue matcher is the $queue variable.
        for matcher in re.findall(r'\bqueue\s*(=~|!=|!~|=)\s*"([^"]*)"', query.expr):
            assert matcher == ("=", "$queue"), f"{query}: queue matcher {matcher}"
        assert "llm.tasks" not in query.expr, query
        # The query still makes sense once Grafana has substituted everything.
        assert "$" not in substitute(query.expr, variable_values(dashboard)), query


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_cluster_panels_are_marked(path) -> None:
    """A panel that needs kube-state-metrics says so, to people and to the tests."""
    for panel in iter_panels(load_dashboard(path)):
        if panel["type"] == "row":
            continue
        uses_cluster_metrics = any(re.search(r"\bkube_\w+", target["expr"]) for target in panel["targets"])
        assert uses_cluster_metrics == is_cluster_panel(panel), (
            f"{panel['title']}: panels using kube_* metrics, and only those, carry "
            f'"{REQUIRES_KEY}": "cluster"'
        )
        assert uses_cluster_metrics == (CLUSTER_NOTE in panel["description"].lower()), panel["title"]


def test_overview_answers_the_operators_questions() -> None:
    overview = load_dashboard(FILES[0])
    exprs = " ".join(q.expr for q in panel_queries(FILES[0]))
    for needed in (
        "llmstream_http_requests_total",  # request rate
        "llmstream_queue_messages_ready",  # queue depth
        "llmstream_queue_consumers",  # consumers
        "llmstream_worker_concurrency_limit",  # workers
        "llmstream_worker_tokens_total",  # throughput
        "llmstream_worker_tasks_total",  # failed tasks
        "llmstream_worker_upstream_errors_total",  # LLM errors
        "llmstream_rejected_requests_total",  # refused requests
        "llmstream_dead_letter_messages",  # dead-letter queue
    ):
        assert needed in exprs, needed
    ttft = "sum by (le) (rate(llmstream_client_ttft_seconds_bucket"
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}, {ttft}" in exprs
    titles = {panel.get("title") for panel in iter_panels(overview)}
    assert {"Time to first token (client)", "Throughput", "Errors /s", "Task queue depth"} <= titles


# --- model pools (docs/adr/0006) ------------------------------------------------------------

# Series that carry a pool: the workers' (the chart's PodMonitor copies the pod's
# llm-stream.io/pool label) and the API's queue gauges (the pool of each queue).
POOLED_SELECTOR = re.compile(
    r"\b(llmstream_worker_\w+|llmstream_queue_messages_\w+|llmstream_queue_consumers|llmstream_dead_letter_messages)"
    r"(\{[^}]*\})?"
)


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_pool_is_a_template_variable(path) -> None:
    variables = load_dashboard(path)["templating"]["list"]
    names = [v["name"] for v in variables]
    assert names.index("pool") == names.index("namespace") + 1, names
    pool = variables[names.index("pool")]
    assert pool["type"] == "query" and pool["datasource"] == DATASOURCE
    # All pools by default, and All also matches series that have no pool label.
    assert pool["includeAll"] and pool["multi"] and pool["allValue"] == ".*"
    assert pool["current"]["value"] in ("$__all", ["$__all"])
    # The queue gauges list every pool, one whose workers are scaled to zero too.
    match = re.fullmatch(r"label_values\((llmstream_queue_messages_ready)\{.*\}, pool\)", pool["definition"])
    assert match, pool["definition"]
    assert pool["query"]["query"] == pool["definition"]
    queue = variables[names.index("queue")]
    assert 'pool=~"$pool"' in queue["definition"], "the queues of the chosen pools"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_every_pooled_series_is_filtered_by_pool(path) -> None:
    for query in panel_queries(path):
        for name, matchers in POOLED_SELECTOR.findall(query.expr):
            assert 'pool=~"$pool"' in matchers, f"{query}: {name}{matchers}"


def test_overview_has_per_pool_panels() -> None:
    """Queue depth, workers, time to first token, tokens and errors per pool, and the replicas
    of each pool's Deployment (kube-state-metrics)."""
    exprs = [q.expr for q in panel_queries(FILES[0])]

    def per_pool(metric: str) -> bool:
        return any(metric in e and re.search(r"\bby \((?:[\w, ]*, )?pool\b", e) for e in exprs)

    for metric in (
        "llmstream_queue_messages_ready",
        "llmstream_worker_concurrency_limit",
        "llmstream_worker_upstream_ttft_seconds_bucket",
        "llmstream_worker_queue_wait_seconds_bucket",
        "llmstream_worker_tokens_total",
        "llmstream_worker_tasks_total",
        "llmstream_worker_upstream_errors_total",
    ):
        assert per_pool(metric), metric
    replicas = [e for e in exprs if "kube_deployment_status_replicas_available" in e and "$pool" in e]
    assert replicas, "no replicas panel selects the pools' Deployments"
    titles = {panel.get("title") for panel in iter_panels(load_dashboard(FILES[0]))}
    assert {"Pools", "Tasks waiting by pool", "Worker replicas by pool", "Errors /s by pool"} <= titles


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_worker_deployment_regex_covers_the_pools_deployments(path) -> None:
    variables = {v["name"]: v for v in load_dashboard(path)["templating"]["list"]}
    pattern = re.compile(variables["worker_deployment"]["query"])
    for name in ("demo-llm-stream-worker", "demo-llm-stream-worker-small", "demo-llm-stream-worker-large"):
        assert pattern.fullmatch(name), name
    assert not pattern.fullmatch("demo-llm-stream-api")
    # The per-pool replicas panels: <release>-worker-<pool> (and <release>-worker, pool default).
    for query in panel_queries(path):
        for regex in re.findall(r'deployment=~"([^"]*\$pool[^"]*)"', query.expr):
            chosen = re.compile(substitute(regex, {"pool": "(small)"}))
            assert chosen.fullmatch("demo-llm-stream-worker-small"), regex
            assert not chosen.fullmatch("demo-llm-stream-worker-large"), regex
            assert re.compile(substitute(regex, {"pool": ".*"})).fullmatch("demo-llm-stream-worker"), regex
