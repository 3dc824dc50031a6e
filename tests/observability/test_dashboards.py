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
