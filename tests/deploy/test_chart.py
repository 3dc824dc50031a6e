"""The Helm chart: lint, render every CI combination, refuse the impossible ones, document values."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from .manifests import (
    CHART,
    CI_VALUES,
    NAMESPACE,
    RELEASE,
    component,
    container,
    find,
    helm_template,
    one,
    render_ci,
    run,
    tool,
)

pytestmark = pytest.mark.deploy

EXTERNAL = ["--set", "rabbitmq.url=amqp://u:p@rabbitmq.example.com:5672/", "--set", "llm.apiKey=k"]


def test_ci_values_cover_the_main_combinations() -> None:
    names = {p.name for p in CI_VALUES}
    assert {
        "external-broker-values.yaml",
        "keda-off-values.yaml",
        "inchart-broker-values.yaml",
        "monitoring-values.yaml",
        "ingress-values.yaml",
        "existing-secret-values.yaml",
        "pools-values.yaml",
        "operator-broker-values.yaml",
        "managed-broker-values.yaml",
    } <= names


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_lint_strict(values: Path) -> None:
    result = run([tool("helm"), "lint", "--strict", str(CHART), "-f", str(values)])
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_template_and_notes_render(values: Path) -> None:
    objects = render_ci(values)
    assert find(objects, "Deployment", "-api") and find(objects, "Deployment", "-worker")
    # NOTES.txt is rendered only by install/upgrade; a client-side dry run renders it offline.
    result = run(
        [
            tool("helm"),
            "install",
            RELEASE,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--dry-run=client",
            "-f",
            str(values),
        ]
    )
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "/chat" in notes and "/stream/" in notes and "/health/full" in notes


IMPOSSIBLE = {
    "no broker": ([], "no broker"),
    "two brokers": (["--set", "rabbitmq.internal.enabled=true", *EXTERNAL], "choose one broker"),
    "broker url not amqp": (
        ["--set", "rabbitmq.url=http://rabbitmq:15672", "--set", "llm.apiKey=k"],
        "values don't meet the specifications of the schema",
    ),
    "vhost other than the url's": (
        [*EXTERNAL, "--set", "rabbitmq.vhost=other"],
        "differs from the vhost of rabbitmq.url",
    ),
    "no LLM": (["--set", "rabbitmq.url=amqp://u:p@h/"], "no LLM"),
    "key twice": (
        [*EXTERNAL, "--set", "llm.existingSecret.name=openai"],
        "set llm.apiKey or llm.existingSecret.name, not both",
    ),
    "mock and a base url": (
        [*EXTERNAL, "--set", "mockllm.enabled=true", "--set", "llm.baseUrl=http://vllm:8000/v1"],
        "leave llm.baseUrl empty",
    ),
    "keda min above max": (
        [*EXTERNAL, "--set", "worker.keda.minReplicas=5", "--set", "worker.keda.maxReplicas=2"],
        "worker.keda.minReplicas (5) is above worker.keda.maxReplicas (2)",
    ),
    "idle replicas not below min": (
        [*EXTERNAL, "--set", "worker.keda.idleReplicaCount=1"],
        "idleReplicaCount must be below worker.keda.minReplicas",
    ),
    "worker grace shorter than a generation": (
        [*EXTERNAL, "--set", "worker.terminationGracePeriodSeconds=60"],
        "worker.terminationGracePeriodSeconds (60) must exceed",
    ),
    "api grace shorter than the drain": (
        [*EXTERNAL, "--set", "api.terminationGracePeriodSeconds=30"],
        "api.terminationGracePeriodSeconds (30) must exceed",
    ),
    "ingress without hosts": (
        [*EXTERNAL, "--set", "api.ingress.enabled=true"],
        "api.ingress.enabled needs at least one",
    ),
    "api hpa min above max": (
        [
            *EXTERNAL,
            "--set",
            "api.autoscaling.enabled=true",
            "--set",
            "api.autoscaling.minReplicas=9",
            "--set",
            "api.autoscaling.maxReplicas=3",
        ],
        "api.autoscaling.minReplicas (9) is above",
    ),
    "password that breaks the URL": (
        [
            "--set",
            "rabbitmq.internal.enabled=true",
            "--set",
            "mockllm.enabled=true",
            "--set",
            "rabbitmq.internal.auth.password=p@ss/word",
        ],
        "may hold only letters, digits",
    ),
    "unknown key (closed schema)": (
        [*EXTERNAL, "--set", "worker.kedaa.enabled=false"],
        "kedaa",
    ),
    "unknown KEDA protocol": ([*EXTERNAL, "--set", "worker.keda.protocol=amqps"], "protocol"),
}


@pytest.mark.parametrize("args,message", IMPOSSIBLE.values(), ids=IMPOSSIBLE.keys())
def test_impossible_combinations_fail_with_the_charts_message(args: list[str], message: str) -> None:
    result = run([tool("helm"), "template", RELEASE, str(CHART), *args], check=False)
    assert result.returncode != 0, f"rendered although impossible:\n{result.stdout[:2000]}"
    assert message in result.stderr, result.stderr


# --- values.yaml and values.schema.json -----------------------------------------------------


def _leaf_paths(values: dict, schema: dict, prefix: str = "") -> list[str]:
    """Dotted paths of values.yaml keys that are leaves of the schema (open maps included)."""
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        node = schema["properties"][key]
        if isinstance(value, dict) and "properties" in node:
            paths += _leaf_paths(value, node, f"{path}.")
        else:
            paths.append(path)
    return paths


def _documented_paths(text: str) -> set[str]:
    """Dotted paths of keys preceded by a `# --` comment (helm-docs style)."""
    documented, stack, pending = set(), [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = True
            continue
        if stripped.startswith("#"):
            continue
        match = re.match(r"^(\s*)([A-Za-z0-9_]+):", line)
        if not match:
            pending = False
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match.group(2)))
        if pending:
            documented.add(".".join(k for _, k in stack))
        pending = False
    return documented


def test_every_value_is_documented_and_in_the_schema() -> None:
    text = (CHART / "values.yaml").read_text()
    schema = json.loads((CHART / "values.schema.json").read_text())
    leaves = _leaf_paths(yaml.safe_load(text), schema)  # KeyError: a key missing from the schema
    undocumented = sorted(set(leaves) - _documented_paths(text))
    assert not undocumented, f"values.yaml keys without a `# --` comment: {undocumented}"


def test_schema_objects_are_closed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_with_properties = []

    def walk(node: dict, path: str) -> None:
        if "properties" in node:
            if node.get("additionalProperties") is not False:
                open_with_properties.append(path)
            for key, child in node["properties"].items():
                walk(child, f"{path}.{key}" if path else key)

    walk(schema, "")
    assert not open_with_properties


# --- what the defaults render ----------------------------------------------------------------


def test_keda_on_by_default_and_replicas_left_to_it() -> None:
    objects = helm_template(*EXTERNAL)
    worker = component(objects, "Deployment", "worker")
    assert "replicas" not in worker["spec"], "the HPA KEDA creates owns the replica count"
    scaled = one(objects, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert "autoscaling.keda.sh/paused-replicas" not in scaled["metadata"].get("annotations", {})


def test_keda_off_honours_replicas() -> None:
    objects = helm_template(*EXTERNAL, "--set", "worker.keda.enabled=false", "--set", "worker.replicaCount=7")
    assert not find(objects, "ScaledObject") and not find(objects, "TriggerAuthentication")
    assert component(objects, "Deployment", "worker")["spec"]["replicas"] == 7


def test_paused_replicas_pin_the_workers_through_the_keda_annotation() -> None:
    objects = helm_template(*EXTERNAL, "--set", "worker.keda.pausedReplicas=3")
    annotations = one(objects, "ScaledObject")["metadata"]["annotations"]
    assert annotations["autoscaling.keda.sh/paused-replicas"] == "3"


def test_api_hpa_replaces_fixed_replicas() -> None:
    objects = helm_template(*EXTERNAL, "--set", "api.autoscaling.enabled=true")
    hpa = one(objects, "HorizontalPodAutoscaler")
    api = component(objects, "Deployment", "api")
    assert "replicas" not in api["spec"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == api["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_ingress_is_sse_safe() -> None:
    objects = render_ci(CHART / "ci" / "ingress-values.yaml")
    annotations = one(objects, "Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert annotations["nginx.org/proxy-buffering"] == "false"


def test_secrets_never_reach_configmaps_or_plain_env() -> None:
    for values in CI_VALUES:
        objects = render_ci(values)
        for cm in find(objects, "ConfigMap"):
            for key in ("RABBIT_MQ", "RABBITMQ_URL", "RABBITMQ_MANAGEMENT_URL", "OPENAI_API_KEY"):
                assert key not in cm.get("data", {}), f"{values.name}: {key} in a ConfigMap"
        for kind in ("Deployment", "StatefulSet"):
            for workload in find(objects, kind):
                from_secrets: set[str] = set()
                for e in container(workload).get("env", []):
                    if "secretKeyRef" in e.get("valueFrom", {}):
                        from_secrets.add(e["name"])
                    if e["name"] in ("RABBIT_MQ", "RABBITMQ_MANAGEMENT_URL", "OPENAI_API_KEY"):
                        if "valueFrom" in e:
                            continue
                        # A URL assembled by $(VAR) expansion: its credentials are variables
                        # from a Secret, listed before it (Kubernetes expands only those).
                        url = urlsplit(e["value"])
                        assert url.username and url.password, f"{values.name}: {e['name']} in plain text"
                        for part in (url.username, url.password):
                            match = re.fullmatch(r"\$\(([A-Z_]+)\)", part)
                            assert match and match.group(1) in from_secrets, (
                                f"{values.name}: {e['name']} given in plain text"
                            )


def test_api_gets_the_llm_key_only_in_direct_mode() -> None:
    api = component(helm_template(*EXTERNAL), "Deployment", "api")
    assert "OPENAI_API_KEY" not in {e["name"] for e in container(api)["env"]}
    direct = component(render_ci(CHART / "ci" / "ingress-values.yaml"), "Deployment", "api")
    assert ("openai", "api-key") in {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container(direct)["env"]
        if e["name"] == "OPENAI_API_KEY"
    }


def test_dashboards_and_rules_come_from_the_charts_files() -> None:
    objects = render_ci(CHART / "ci" / "monitoring-values.yaml")
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert files, "the chart ships Grafana dashboards in dashboards/"
    maps = [cm for cm in find(objects, "ConfigMap") if "grafana_dashboard" in cm["metadata"]["labels"]]
    assert len(maps) == len(files)
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, body),) = cm["data"].items()
        assert json.loads(body) == json.loads((CHART / "dashboards" / name).read_text())

    groups = []
    for path in sorted((CHART / "rules").glob("*.yaml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    assert groups, "the chart ships Prometheus rules in rules/"
    assert one(objects, "PrometheusRule")["spec"]["groups"] == groups
    assert one(objects, "ServiceMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert {m["metadata"]["name"] for m in find(objects, "PodMonitor")} == {
        f"{RELEASE}-llm-stream-worker",
        f"{RELEASE}-llm-stream-rabbitmq",
    }


def test_monitoring_objects_are_off_by_default() -> None:
    objects = helm_template(*EXTERNAL)
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy", "Ingress"):
        assert not find(objects, kind), f"{kind} rendered although not enabled"
    assert not [cm for cm in find(objects, "ConfigMap") if "dashboard" in cm["metadata"]["name"]]


def test_helm_test_pod_calls_readiness() -> None:
    objects = helm_template(*EXTERNAL)
    pod = one(objects, "Pod", "test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    service = component(objects, "Service", "api")
    url = container(pod)["command"][-1]
    assert url == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/health/full"


def test_network_policies_cover_api_worker_broker_and_llm() -> None:
    objects = render_ci(CHART / "ci" / "inchart-broker-values.yaml")
    policies = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"]
        for p in find(objects, "NetworkPolicy")
    }
    assert set(policies) == {"api", "worker", "rabbitmq", "mockllm"}

    def egress_ports(spec: dict) -> set[int]:
        return {p["port"] for rule in spec["egress"] for p in rule.get("ports", [])}

    assert {5672, 15672} <= egress_ports(policies["api"])
    assert {5672, 15672, 8008} <= egress_ports(policies["worker"])
    assert 8008 not in egress_ports(policies["api"]), "the API calls the LLM only in direct mode"
    keda = [
        r
        for r in policies["rabbitmq"]["ingress"]
        if any("namespaceSelector" in peer for peer in r.get("from", []))
    ]
    assert keda and keda[0]["ports"] == [{"port": "management", "protocol": "TCP"}]


def test_a_missing_tool_fails_the_tests(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from . import manifests

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(manifests, "TOOLS_BIN", tmp_path / "absent")
    with pytest.raises(pytest.fail.Exception, match="helm not found"):
        manifests.tool("helm")


def test_api_keys_come_from_an_existing_secret_of_hashes() -> None:
    assert "API_KEYS_FILE" not in one(helm_template(*EXTERNAL), "ConfigMap", "api")["data"]
    objects = render_ci(CHART / "ci" / "existing-secret-values.yaml")
    api = component(objects, "Deployment", "api")
    config = one(objects, "ConfigMap", "api")["data"]
    assert config["API_KEYS_FILE"] == "/etc/llm-stream/api-keys/api-keys"
    assert config["KEY_REQUESTS_PER_MINUTE"] == "600" and config["KEY_MAX_SESSIONS"] == "8"
    (volume,) = [v for v in api["spec"]["template"]["spec"]["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"] == {
        "secretName": "llm-stream-api-keys", "items": [{"key": "api-keys", "path": "api-keys"}]
    }
    (mount,) = [m for m in container(api)["volumeMounts"] if m["name"] == "api-keys"]
    assert mount == {"name": "api-keys", "mountPath": "/etc/llm-stream/api-keys", "readOnly": True}
    # The probes and the helm test stay open: they call /health and /health/full.
    assert container(api)["readinessProbe"]["httpGet"]["path"] == "/health/full"
    assert config["API_KEYS_OPEN_PROBES"] == "true"
