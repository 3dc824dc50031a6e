"""The alert and recording rules: valid for Prometheus, unit-tested with promtool, and every
alert documented with a runbook."""

from __future__ import annotations

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
