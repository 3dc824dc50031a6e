"""The alert and recording rules: valid for Prometheus, unit-tested with promtool, and every
alert documented with a runbook."""

from __future__ import annotations

import re

import pytest
import yaml

from .queries import RULE_TESTS, Rule, doc_anchors, load_rules, rule_files
from .tools import promtool

pytestmark = pytest.mark.observability

REQUIRED_ALERTS = {
    "LLMStreamBacklogWithoutConsumers",  # backlog growing with no consumers
    "LLMStreamQueueWaitHigh",  # queue wait above the SLO
    "LLMStreamTimeToFirstTokenHigh",  # TTFT p99 above the SLO
    "LLMStreamTaskErrorRatioHigh",  # error ratio (tasks)
    "LLMStreamHTTPErrorRatioHigh",  # error ratio (API)
    "LLMStreamDeadLetterQueueNotEmpty",  # dead-letter queue not empty
    "LLMStreamBrokerUnreachable",  # broker unreachable
}
ALERTS = [rule for rule in load_rules() if rule.is_alert]


def test_promtool_check_rules() -> None:
    files = rule_files()
    assert files, "no rule files in the chart's rules/ folder"
    code, output = promtool("check", "rules", *map(str, files))
    assert code == 0, output


def test_promtool_unit_tests_of_the_alerts() -> None:
    code, output = promtool("test", "rules", str(RULE_TESTS))
    assert code == 0, output


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text("utf-8"))["tests"]
    tested = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert {rule.name for rule in ALERTS} <= tested


def test_the_required_alerts_exist() -> None:
    assert REQUIRED_ALERTS <= {rule.name for rule in ALERTS}


@pytest.mark.parametrize("rule", ALERTS, ids=str)
def test_alert_is_actionable(rule: Rule) -> None:
    annotations = rule.body.get("annotations", {})
    assert annotations.get("summary"), "summary annotation"
    assert annotations.get("description"), "description annotation"
    assert rule.body.get("labels", {}).get("severity") in {"critical", "warning"}
    assert rule.body.get("for"), "a 'for' duration, so that one bad scrape does not page"
    runbook = annotations.get("runbook", "")
    path, _, anchor = runbook.partition("#")
    assert path == "docs/observability.md" and anchor == rule.name.lower(), runbook
    assert anchor in doc_anchors(), f"docs/observability.md has no '### {rule.name}' runbook"


# Series that carry a model pool (docs/adr/0006): the workers' (the PodMonitor copies the pod's
# pool label) and the API's queue gauges (the pool of each queue).
POOLED = re.compile(
    r"\b(llmstream_worker_\w+|llmstream_queue_messages_\w+|llmstream_queue_consumers|llmstream_dead_letter_messages)\b"
)
GROUPINGS = re.compile(r"\b(by|on)\s*\(([^)]*)\)")


def groupings(expr: str) -> list[tuple[str, set[str]]]:
    return [
        (kind, {label.strip() for label in labels.split(",") if label.strip()})
        for kind, labels in GROUPINGS.findall(expr)
    ]


@pytest.mark.parametrize("rule", [r for r in ALERTS if POOLED.search(r.body["expr"])], ids=str)
def test_alerts_over_workers_or_queues_keep_the_pool(rule: Rule) -> None:
    """Each pool alerts on its own: every aggregation and every match keeps `pool`, so that a
    saturated or failing pool is not averaged away by an idle one."""
    found = groupings(rule.body["expr"])
    assert found, f"{rule.name}: no aggregation"
    for kind, labels in found:
        assert "pool" in labels, f"{rule.name}: {kind} ({', '.join(sorted(labels))}) drops the pool"
    assert any("pool" in case.get("exp_labels", {}) for case in _expected_alerts(rule.name)), (
        f"{rule.name}: rules.test.yaml has no case where it fires for one pool"
    )


def _expected_alerts(name: str) -> list[dict]:
    tests = yaml.safe_load(RULE_TESTS.read_text("utf-8"))["tests"]
    return [
        alert
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case["alertname"] == name
        for alert in case.get("exp_alerts") or []
    ]


@pytest.mark.parametrize("rule", [r for r in load_rules() if not r.is_alert], ids=str)
def test_recording_rules_are_named_after_their_labels(rule: Rule) -> None:
    """`level:metric:operation`: the level lists the labels the rule keeps (namespace_pool...)."""
    level = rule.name.split(":")[0]
    outer = groupings(rule.body["expr"])[0][1]
    assert set(level.split("_")) == outer, f"{rule.name} keeps {sorted(outer)}"


def test_there_is_a_per_pool_recording_of_backlog_and_utilisation() -> None:
    names = {rule.name for rule in load_rules() if not rule.is_alert}
    assert {
        "namespace_pool:llmstream_queue_messages_ready:sum",
        "namespace_pool:llmstream_worker_utilisation:ratio",
    } <= names
