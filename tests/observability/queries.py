"""Every PromQL expression the dashboards and the rule files hold, ready to send to Prometheus.

Dashboards use Grafana variables (``$queue``, ``$__rate_interval``...); :func:`substitute`
replaces them with concrete values, as Grafana does before it queries Prometheus. A panel that
can only show data inside Kubernetes carries ``"llmstream_requires": "cluster"`` (and says
"Requires kube-state-metrics" in its description): its expressions must parse, not return data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "llm-stream"
DASHBOARD_DIR = CHART / "dashboards"
RULES_DIR = CHART / "rules"
DOCS = ROOT / "docs" / "observability.md"
RULE_TESTS = Path(__file__).with_name("rules.test.yaml")

REQUIRES_KEY = "llmstream_requires"
REQUIRES_CLUSTER = "cluster"
CLUSTER_NOTE = "requires kube-state-metrics"

# Grafana's own variables, with the values Grafana would use for a short time range and a
# 1 s scrape interval ($__rate_interval is at least four scrape intervals; 1m leaves room).
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "__range_s": "300",
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


@dataclass(frozen=True, slots=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    cluster: bool

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel!r} / {self.ref_id}"


@dataclass(frozen=True, slots=True)
class Rule:
    file: str
    group: str
    body: dict

    @property
    def name(self) -> str:
        return self.body.get("alert") or self.body["record"]

    @property
    def is_alert(self) -> bool:
        return "alert" in self.body

    def __str__(self) -> str:
        return f"{self.file} / {self.group} / {self.name}"


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load_dashboard(path: Path) -> dict:
    return json.loads(path.read_text("utf-8"))


def iter_panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def is_cluster_panel(panel: dict) -> bool:
    return panel.get(REQUIRES_KEY) == REQUIRES_CLUSTER


def panel_queries(path: Path) -> list[PanelQuery]:
    dashboard = load_dashboard(path)
    return [
        PanelQuery(
            path.name,
            panel.get("title", ""),
            target.get("refId", "?"),
            target["expr"],
            is_cluster_panel(panel),
        )
        for panel in iter_panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def variable_values(dashboard: dict, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """What each template variable stands for: its default, ``All`` as its ``allValue``."""
    values = dict(GRAFANA_BUILTINS)
    for variable in dashboard.get("templating", {}).get("list", []):
        current = variable.get("current", {}).get("value")
        if isinstance(current, list):
            current = current[0] if current else None
        if current == "$__all":
            current = variable.get("allValue") or ".*"
        if current is None and variable.get("type") == "textbox":
            current = variable.get("query")
        if current is not None:
            values[variable["name"]] = str(current)
    values.update(overrides or {})
    return values


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace ``$name``, ``${name}`` and ``[[name]]``; an unknown variable is an error."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise KeyError(f"variable ${name} has no value (used in {expr!r})")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def variables_used(expr: str) -> set[str]:
    return {next(g for g in match.groups() if g) for match in _VARIABLE.finditer(expr)}


def label_values_query(definition: str) -> tuple[str, str] | None:
    """``label_values(selector, label)`` as (PromQL that lists the values, label)."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", definition)
    if match is None:
        return None
    return f"count by ({match[2]}) ({match[1]})", match[2]


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yaml"))


def load_rules() -> list[Rule]:
    rules = []
    for path in rule_files():
        for group in yaml.safe_load(path.read_text("utf-8"))["groups"]:
            rules.extend(Rule(path.name, group["name"], body) for body in group["rules"])
    return rules


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def doc_anchors() -> set[str]:
    return {
        github_anchor(line.lstrip("#"))
        for line in DOCS.read_text("utf-8").splitlines()
        if line.startswith("#")
    }
