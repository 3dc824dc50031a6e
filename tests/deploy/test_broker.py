"""The broker modes of the chart (rabbitmq.mode): embedded (one node in the release), operator
(a RabbitmqCluster of the RabbitMQ Cluster Operator) and external (a URL or an existing
Secret); the values that predate the modes; the replication settings the services read; and
the combinations refused with the chart's message. ci/operator-broker-values.yaml and
ci/managed-broker-values.yaml are rendered here and, with every ci file, validated by
test_validation (the RabbitmqCluster against the operator's CRD) and checked against the code
by test_contract."""

from __future__ import annotations

import base64
from urllib.parse import urlsplit

import pytest

from .manifests import (
    CHART,
    NAMESPACE,
    RELEASE,
    Manifest,
    component,
    config_map_for,
    container,
    find,
    helm_template,
    one,
    render_ci,
    run,
    secret_ref,
    tool,
    validation_errors,
)

pytestmark = pytest.mark.deploy

OPERATOR_VALUES = CHART / "ci" / "operator-broker-values.yaml"
MANAGED_VALUES = CHART / "ci" / "managed-broker-values.yaml"
OPERATOR = ("--set", "rabbitmq.mode=operator", "--set", "llm.apiKey=k")
EMBEDDED = (
    "--set",
    "rabbitmq.mode=embedded",
    "--set",
    "rabbitmq.internal.auth.password=pw",
    "--set",
    "mockllm.enabled=true",
)
EXTERNAL = ("--set", "rabbitmq.url=amqp://u:p@rabbitmq.example.com:5672/", "--set", "llm.apiKey=k")
CLUSTER = f"{RELEASE}-llm-stream-rabbitmq"
CLUSTER_HOST = f"{CLUSTER}.{NAMESPACE}.svc.cluster.local"
REPLICATION_ENV = ("QUEUE_REPLICAS", "STREAM_REPLICAS", "QUEUE_LEADER_LOCATOR")


def env_entries(workload: Manifest) -> list[dict]:
    return container(workload).get("env", [])


def embedded_objects(objects: tuple[Manifest, ...]) -> list[Manifest]:
    """What the embedded broker consists of: its StatefulSet, Services and ConfigMap."""
    return [
        o
        for o in objects
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "rabbitmq"
        and o["kind"] in ("StatefulSet", "Service", "ConfigMap")
    ]


def chart_secret(objects: tuple[Manifest, ...]) -> dict[str, str]:
    found = [o for o in find(objects, "Secret") if o["metadata"]["name"] == f"{RELEASE}-llm-stream"]
    if not found:
        return {}
    return {k: base64.b64decode(v).decode() for k, v in found[0].get("data", {}).items()}


def notes(*args: str) -> str:
    result = run(
        [tool("helm"), "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *args]
    )
    return result.stdout.split("NOTES:", 1)[1]


# --- operator: the RabbitmqCluster ----------------------------------------------------------


def test_operator_mode_renders_a_rabbitmq_cluster_that_validates_against_the_crd() -> None:
    objects = helm_template(*OPERATOR)
    cluster = one(objects, "RabbitmqCluster")
    assert cluster["apiVersion"] == "rabbitmq.com/v1beta1"
    assert cluster["metadata"]["name"] == CLUSTER
    assert not validation_errors(cluster)
    spec = cluster["spec"]
    assert spec["replicas"] == 3
    assert {"rabbitmq_management", "rabbitmq_prometheus"} <= set(spec["rabbitmq"]["additionalPlugins"])
    config = dict(
        (k.strip(), v.strip())
        for k, _, v in (line.partition("=") for line in spec["rabbitmq"]["additionalConfig"].splitlines())
        if v
    )
    assert config["cluster_partition_handling"] == "pause_minority"
    assert spec["resources"]["requests"] and spec["resources"]["limits"]
    assert spec["persistence"] == {"storage": "10Gi"}
    # One node per Kubernetes node, selected by the label the operator gives its pods.
    (term,) = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": CLUSTER}},
    }


def test_operator_values_reach_the_cluster() -> None:
    spec = one(render_ci(OPERATOR_VALUES), "RabbitmqCluster")["spec"]
    assert spec["persistence"] == {"storage": "20Gi", "storageClassName": "fast-ssd"}
    lines = spec["rabbitmq"]["additionalConfig"].splitlines()
    assert lines[0] == "cluster_partition_handling = pause_minority"
    assert "log.console.level = info" in lines, "extra lines are appended to the chart's"
    assert spec["tolerations"][0]["key"] == "dedicated"
    pod = spec["override"]["statefulSet"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"node-role.example.com/broker": "true"}


@pytest.mark.parametrize(
    "args,expected",
    [
        (
            ("--set", "rabbitmq.operator.podAntiAffinity=soft"),
            "preferredDuringSchedulingIgnoredDuringExecution",
        ),
        (("--set", "rabbitmq.operator.podAntiAffinity=none"), None),
        (("--set-json", 'rabbitmq.operator.affinity={"nodeAffinity": {}}'), "nodeAffinity"),
    ],
    ids=["soft", "none", "own affinity"],
)
def test_operator_spread_over_nodes_is_a_choice(args: tuple[str, ...], expected: str | None) -> None:
    spec = one(helm_template(*OPERATOR, *args), "RabbitmqCluster")["spec"]
    if expected is None:
        assert "affinity" not in spec
    elif expected == "nodeAffinity":
        assert spec["affinity"] == {"nodeAffinity": {}}
    else:
        assert expected in spec["affinity"]["podAntiAffinity"]
    assert not validation_errors(one(helm_template(*OPERATOR, *args), "RabbitmqCluster"))


def test_the_default_cluster_name_fits_the_operators_names() -> None:
    """The operator names its StatefulSet `<name>-server`: a long release name is cut to fit."""
    objects = helm_template(*OPERATOR, "--set", "fullnameOverride=" + "f" * 60)
    name = one(objects, "RabbitmqCluster")["metadata"]["name"]
    assert len(name) <= 45 and name.endswith("-rabbitmq")
    assert (
        secret_ref(component(objects, "Deployment", "worker"), "RABBITMQ_USERNAME")[0]
        == f"{name}-default-user"
    )


def test_operator_replicas_and_name_are_values() -> None:
    objects = helm_template(
        *OPERATOR, "--set", "rabbitmq.operator.replicas=5", "--set", "rabbitmq.operator.name=broker"
    )
    cluster = one(objects, "RabbitmqCluster")
    assert (cluster["metadata"]["name"], cluster["spec"]["replicas"]) == ("broker", 5)
    worker = component(objects, "Deployment", "worker")
    assert secret_ref(worker, "RABBITMQ_PASSWORD") == ("broker-default-user", "password")
    assert f"@broker.{NAMESPACE}.svc.cluster.local:5672/" in env_value(worker, "RABBIT_MQ")


def env_value(workload: Manifest, name: str) -> str:
    (entry,) = [e for e in env_entries(workload) if e["name"] == name]
    return entry["value"]


# --- operator: what the services and KEDA read -----------------------------------------------


@pytest.mark.parametrize("deployment", ["api", "worker"])
def test_operator_mode_services_read_the_operators_secret(deployment: str) -> None:
    objects = render_ci(OPERATOR_VALUES)
    workload = component(objects, "Deployment", deployment)
    names = [e["name"] for e in env_entries(workload)]
    secret = f"{CLUSTER}-default-user"
    assert secret_ref(workload, "RABBITMQ_USERNAME") == (secret, "username")
    assert secret_ref(workload, "RABBITMQ_PASSWORD") == (secret, "password")
    # Kubernetes expands $(VAR) only with variables defined before the entry.
    assert names.index("RABBITMQ_USERNAME") < names.index("RABBIT_MQ")
    assert names.index("RABBITMQ_PASSWORD") < names.index("RABBITMQ_MANAGEMENT_URL")
    assert env_value(workload, "RABBIT_MQ") == (
        f"amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@{CLUSTER_HOST}:5672/"
    )
    assert env_value(workload, "RABBITMQ_MANAGEMENT_URL") == (
        f"http://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@{CLUSTER_HOST}:15672"
    )
    # No broker credential of the chart's own: the chart's Secret has none, and holds no URL.
    assert not {"RABBIT_MQ", "RABBITMQ_MANAGEMENT_URL", "RABBITMQ_PASSWORD"} & set(chart_secret(objects))


@pytest.mark.parametrize("protocol,port,scheme", [("http", 15672, "http"), ("amqp", 5672, "amqp")])
def test_operator_mode_keda_asks_the_clusters_service(protocol: str, port: int, scheme: str) -> None:
    objects = helm_template(*OPERATOR, "--set", f"worker.keda.protocol={protocol}")
    (trigger,) = one(objects, "ScaledObject")["spec"]["triggers"]
    host = urlsplit(trigger["metadata"]["host"])
    assert (host.scheme, host.hostname, host.port) == (scheme, CLUSTER_HOST, port)
    assert trigger["metadata"]["vhostName"] == "/"
    auth = one(objects, "TriggerAuthentication")
    assert auth["metadata"]["name"] == trigger["authenticationRef"]["name"]
    assert auth["spec"]["secretTargetRef"] == [
        {"parameter": "username", "name": f"{CLUSTER}-default-user", "key": "username"},
        {"parameter": "password", "name": f"{CLUSTER}-default-user", "key": "password"},
    ]
    service_of_cluster = one(objects, "RabbitmqCluster")["metadata"]["name"]
    assert host.hostname.split(".")[0] == service_of_cluster


def test_operator_mode_policies_and_monitor_select_the_operators_pods() -> None:
    objects = render_ci(OPERATOR_VALUES)
    operator_pods = {"app.kubernetes.io/name": CLUSTER, "app.kubernetes.io/component": "rabbitmq"}
    policies = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"]
        for p in find(objects, "NetworkPolicy")
    }
    # The chart restricts its own pods' egress; the operator's pods are the operator's to police.
    assert set(policies) == {"api", "worker"}
    for name in ("api", "worker"):
        (broker,) = [r for r in policies[name]["egress"] if {p["port"] for p in r["ports"]} == {5672, 15672}]
        assert broker["to"] == [{"podSelector": {"matchLabels": operator_pods}}]
    monitor = one(objects, "PodMonitor", "rabbitmq")
    assert monitor["spec"]["selector"]["matchLabels"] == operator_pods
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} == {"prometheus"}


# --- no embedded broker unless asked for --------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [OPERATOR_VALUES, MANAGED_VALUES, CHART / "ci" / "external-broker-values.yaml"],
    ids=lambda p: p.name,
)
def test_operator_and_external_modes_render_no_embedded_broker(source) -> None:
    objects = render_ci(source)
    assert not find(objects, "StatefulSet")
    assert not embedded_objects(objects)
    assert "default-user.conf" not in chart_secret(objects)
    if source != OPERATOR_VALUES:
        assert not find(objects, "RabbitmqCluster")


def test_embedded_and_external_modes_render_no_rabbitmq_cluster() -> None:
    for objects in (helm_template(*EMBEDDED), helm_template(*EXTERNAL), render_ci(MANAGED_VALUES)):
        assert not find(objects, "RabbitmqCluster")
    assert find(helm_template(*EMBEDDED), "StatefulSet", "rabbitmq")


# --- the keys that predate the modes -------------------------------------------------------------


def _without_checksums(objects: tuple[Manifest, ...]) -> list[Manifest]:
    """The objects, with the pod annotations that hash the values (which differ by `mode`)."""
    out = []
    for o in objects:
        o = {**o}
        if o["kind"] in ("Deployment", "StatefulSet"):
            template = o["spec"]["template"]
            annotations = {
                k: v for k, v in template["metadata"].get("annotations", {}).items() if k != "checksum/secret"
            }
            o["spec"] = {
                **o["spec"],
                "template": {**template, "metadata": {**template["metadata"], "annotations": annotations}},
            }
        out.append(o)
    return out


@pytest.mark.parametrize(
    "old,new",
    [
        (
            (
                "--set",
                "rabbitmq.internal.enabled=true",
                "--set",
                "rabbitmq.internal.auth.password=pw",
                "--set",
                "mockllm.enabled=true",
            ),
            EMBEDDED,
        ),
        (EXTERNAL, ("--set", "rabbitmq.mode=external", *EXTERNAL)),
        (
            ("--set", "rabbitmq.existingSecret.name=broker", "--set", "llm.apiKey=k"),
            (
                "--set",
                "rabbitmq.mode=external",
                "--set",
                "rabbitmq.existingSecret.name=broker",
                "--set",
                "llm.apiKey=k",
            ),
        ),
    ],
    ids=["internal.enabled is embedded", "url is external", "existingSecret is external"],
)
def test_the_older_keys_mean_the_same_as_a_mode(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    assert _without_checksums(helm_template(*old)) == _without_checksums(helm_template(*new))


def test_embedded_mode_is_the_dev_values_broker() -> None:
    objects = render_ci(CHART.parent / "dev-values.yaml")
    assert find(objects, "StatefulSet", "rabbitmq")[0]["spec"]["replicas"] == 1
    worker = component(objects, "Deployment", "worker")
    assert secret_ref(worker, "RABBIT_MQ") == (f"{RELEASE}-llm-stream", "RABBIT_MQ")
    assert (
        urlsplit(chart_secret(objects)["RABBIT_MQ"]).hostname
        == f"{RELEASE}-llm-stream-rabbitmq.{NAMESPACE}.svc.cluster.local"
    )


# --- external: a managed broker ------------------------------------------------------------------


def test_managed_broker_from_an_existing_secret() -> None:
    objects = render_ci(MANAGED_VALUES)
    for name in ("api", "worker"):
        workload = component(objects, "Deployment", name)
        assert secret_ref(workload, "RABBIT_MQ") == ("managed-rabbitmq", "amqp-url")
        assert secret_ref(workload, "RABBITMQ_MANAGEMENT_URL") == ("managed-rabbitmq", "management-url")
    (trigger,) = one(objects, "ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["vhostName"] == "llm" and "host" not in trigger["metadata"]
    assert one(objects, "TriggerAuthentication")["spec"]["secretTargetRef"] == [
        {"parameter": "host", "name": "managed-rabbitmq", "key": "management-url"}
    ]


def test_a_list_of_node_urls_is_one_broker() -> None:
    nodes = "amqp://u:p@rmq-0.example.com:5672/llm,amqp://u:p@rmq-1.example.com:5672/llm"
    objects = helm_template(
        "--set",
        f"rabbitmq.url={nodes.replace(',', chr(92) + ',')}",
        "--set",
        "llm.apiKey=k",
        "--set",
        "networkPolicy.enabled=true",
    )
    secret = chart_secret(objects)
    assert secret["RABBIT_MQ"] == nodes, "the services get every node"
    # KEDA reads one management URL: the first node's, unless rabbitmq.managementUrl says otherwise.
    assert secret["RABBITMQ_MANAGEMENT_URL"] == "http://u:p@rmq-0.example.com:15672"
    (trigger,) = one(objects, "ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["vhostName"] == "llm"
    worker_policy = one(objects, "NetworkPolicy", "worker")["spec"]
    assert {5672, 15672} <= {p["port"] for r in worker_policy["egress"] for p in r.get("ports", [])}


# --- replication settings ---------------------------------------------------------------------


def test_replication_defaults_reach_api_and_workers() -> None:
    for objects in (helm_template(*EXTERNAL), helm_template(*EMBEDDED), helm_template(*OPERATOR)):
        for name in ("api", "worker"):
            data = config_map_for(objects, component(objects, "Deployment", name))
            assert {k: data[k] for k in REPLICATION_ENV} == {
                "QUEUE_REPLICAS": "3",
                "STREAM_REPLICAS": "3",
                "QUEUE_LEADER_LOCATOR": "balanced",
            }
            assert "AMQP_HEARTBEAT_S" not in data, "null: the services' default"


def test_replication_values_reach_api_and_workers() -> None:
    objects = render_ci(MANAGED_VALUES)
    for name in ("api", "worker"):
        data = config_map_for(objects, component(objects, "Deployment", name))
        assert (data["QUEUE_REPLICAS"], data["STREAM_REPLICAS"]) == ("5", "3")
        assert (data["QUEUE_LEADER_LOCATOR"], data["AMQP_HEARTBEAT_S"]) == ("client-local", "20")


# --- NOTES -------------------------------------------------------------------------------------


def test_notes_say_the_embedded_broker_is_one_node_and_how_to_switch() -> None:
    text = notes(*EMBEDDED)
    assert "ONE RabbitMQ node" in text and "NOT FOR" in text and "PRODUCTION" in text
    assert "rabbitmq.mode=operator" in text and "rabbitmq.mode=external" in text
    assert "ONE RabbitMQ node" not in notes(*OPERATOR)


def test_notes_of_the_operator_mode_name_the_cluster_and_its_secret() -> None:
    text = notes(*OPERATOR)
    assert f"get rabbitmqcluster {CLUSTER}" in text and f"{CLUSTER}-default-user" in text
    assert "WARNING: one node" in notes(*OPERATOR, "--set", "rabbitmq.operator.replicas=1")


# --- refused ----------------------------------------------------------------------------------

SCHEMA = "values don't meet the specifications of the schema"

REFUSED = {
    "unknown mode": (("--set", "rabbitmq.mode=cluster", "--set", "llm.apiKey=k"), SCHEMA),
    "operator replicas 0": ((*OPERATOR, "--set", "rabbitmq.operator.replicas=0"), SCHEMA),
    "operator replicas even": (
        (*OPERATOR, "--set", "rabbitmq.operator.replicas=4"),
        "rabbitmq.operator.replicas is 4; use an odd number",
    ),
    "operator replicas 2": ((*OPERATOR, "--set", "rabbitmq.operator.replicas=2"), "use an odd number"),
    "operator and a url": (
        (*OPERATOR, "--set", "rabbitmq.url=amqp://u:p@h/"),
        "rabbitmq.mode=operator connects to the RabbitmqCluster of the release",
    ),
    "operator and internal.enabled": (
        (*OPERATOR, "--set", "rabbitmq.internal.enabled=true"),
        "rabbitmq.mode=operator connects to the RabbitmqCluster",
    ),
    "operator and another vhost": ((*OPERATOR, "--set", "rabbitmq.vhost=llm"), "the default vhost, /"),
    "operator name too long": (
        (*OPERATOR, "--set", "rabbitmq.operator.name=" + "b" * 46),
        SCHEMA,
    ),
    "unknown anti-affinity": ((*OPERATOR, "--set", "rabbitmq.operator.podAntiAffinity=always"), SCHEMA),
    "embedded and a url": (
        ("--set", "rabbitmq.mode=embedded", *EXTERNAL),
        "rabbitmq.mode=embedded runs the broker in the release",
    ),
    "external without a url": (
        ("--set", "rabbitmq.mode=external", "--set", "llm.apiKey=k"),
        "rabbitmq.mode=external needs the broker's URL",
    ),
    "external and internal.enabled": (
        ("--set", "rabbitmq.mode=external", "--set", "rabbitmq.internal.enabled=true", *EXTERNAL),
        "rabbitmq.mode=external uses a broker outside the release",
    ),
    "external with url and secret": (
        ("--set", "rabbitmq.mode=external", "--set", "rabbitmq.existingSecret.name=s", *EXTERNAL),
        "rabbitmq.url or rabbitmq.existingSecret.name, not both",
    ),
    "node urls on two vhosts": (
        ("--set", "rabbitmq.url=amqp://u:p@a/x\\,amqp://u:p@b/y", "--set", "llm.apiKey=k"),
        "name different vhosts",
    ),
    "node urls and KEDA over amqp": (
        (
            "--set",
            "rabbitmq.url=amqp://u:p@a/\\,amqp://u:p@b/",
            "--set",
            "llm.apiKey=k",
            "--set",
            "worker.keda.protocol=amqp",
        ),
        "KEDA's amqp protocol reads one URL",
    ),
    "a node url not amqp": (
        ("--set", "rabbitmq.url=amqp://u:p@a/\\,http://u:p@b/", "--set", "llm.apiKey=k"),
        SCHEMA,
    ),
    "queue replicas 0": ((*EXTERNAL, "--set", "rabbitmq.topology.queueReplicas=0"), SCHEMA),
    "stream replicas 0": ((*EXTERNAL, "--set", "rabbitmq.topology.streamReplicas=0"), SCHEMA),
    "queue replicas not an integer": ((*EXTERNAL, "--set", "rabbitmq.topology.queueReplicas=2.5"), SCHEMA),
    "unknown leader locator": ((*EXTERNAL, "--set", "rabbitmq.topology.queueLeaderLocator=random"), SCHEMA),
    "negative heartbeat": ((*EXTERNAL, "--set", "rabbitmq.topology.heartbeatSeconds=-1"), SCHEMA),
}


@pytest.mark.parametrize("args,message", REFUSED.values(), ids=REFUSED.keys())
def test_broker_values_that_cannot_work_are_refused(args: tuple[str, ...], message: str) -> None:
    result = run([tool("helm"), "template", RELEASE, str(CHART), *args], check=False)
    assert result.returncode != 0, f"rendered although impossible:\n{result.stdout[:2000]}"
    assert message in result.stderr, result.stderr
