"""Model pools in the chart (docs/adr/0006): a worker Deployment, PDB and ScaledObject per pool,
LLM_POOLS from one ConfigMap, each pool's upstream and Secret, its scheduling; and the values
that cannot work refused with the chart's message. ci/pools-values.yaml is rendered here and,
with every ci file, validated by test_validation and checked against the code by test_contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from .manifests import (
    CHART,
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
)

pytestmark = pytest.mark.deploy

POOLS_VALUES = CHART / "ci" / "pools-values.yaml"
POOL_LABEL = "llm-stream.io/pool"
EXTERNAL = ("--set", "rabbitmq.url=amqp://u:p@rabbitmq.example.com:5672/", "--set", "llm.apiKey=k")
PREFIX = f"{RELEASE}-llm-stream"


def values() -> dict:
    return yaml.safe_load(POOLS_VALUES.read_text())


def objects() -> tuple[Manifest, ...]:
    return render_ci(POOLS_VALUES)


def workers(rendered: tuple[Manifest, ...]) -> dict[str, Manifest]:
    """Worker Deployments by pool."""
    found = {}
    for d in find(rendered, "Deployment"):
        labels = d["metadata"]["labels"]
        if labels.get("app.kubernetes.io/component") == "worker":
            found[labels[POOL_LABEL]] = d
    return found


def env(workload: Manifest) -> dict[str, dict]:
    return {e["name"]: e for e in container(workload).get("env", [])}


def pools_json(rendered: tuple[Manifest, ...], workload: Manifest) -> dict:
    """LLM_POOLS as the workload reads it, from the ConfigMap key its env names."""
    ref = env(workload)["LLM_POOLS"]["valueFrom"]["configMapKeyRef"]
    (cm,) = [o for o in find(rendered, "ConfigMap") if o["metadata"]["name"] == ref["name"]]
    return json.loads(cm["data"][ref["key"]])


# --- one set of worker objects per pool ------------------------------------------------------


def test_each_pool_has_its_deployment_pdb_and_selector() -> None:
    rendered = objects()
    by_pool = workers(rendered)
    assert set(by_pool) == {"small", "large"}
    for pool, deployment in by_pool.items():
        name = f"{PREFIX}-worker-{pool}"
        assert deployment["metadata"]["name"] == name
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector[POOL_LABEL] == pool and selector["app.kubernetes.io/component"] == "worker"
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()
        (pdb,) = [p for p in find(rendered, "PodDisruptionBudget") if p["metadata"]["name"] == name]
        assert pdb["spec"]["selector"]["matchLabels"] == selector
        assert "replicas" not in deployment["spec"], "KEDA's HPA owns the replica count"
    assert f"{PREFIX}-worker" not in {d["metadata"]["name"] for d in find(rendered, "Deployment")}
    assert len(find(rendered, "PodDisruptionBudget", "-worker-")) == 2


def test_each_pool_scales_on_its_own_lane_queues() -> None:
    rendered = objects()
    scaled = {s["metadata"]["labels"][POOL_LABEL]: s for s in find(rendered, "ScaledObject")}
    assert set(scaled) == {"small", "large"}
    auth = one(rendered, "TriggerAuthentication")
    expected = {
        "small": (r"^llm\.tasks\.small(\.(priority|flex))?$", 1, 8, "32", "0"),
        "large": (r"^llm\.tasks\.large(\.(flex))?$", 0, 4, "12", "1"),
    }
    for pool, (queue, least, most, per_replica, activation) in expected.items():
        spec = scaled[pool]["spec"]
        assert spec["scaleTargetRef"]["name"] == workers(rendered)[pool]["metadata"]["name"]
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (least, most)
        (trigger,) = spec["triggers"]
        meta = trigger["metadata"]
        assert meta["queueName"] == queue
        assert meta["useRegex"] == "true" and meta["operation"] == "sum"
        assert meta["protocol"] == "http" and meta["mode"] == "QueueLength"
        assert (meta["value"], meta["activationValue"]) == (per_replica, activation)
        # One TriggerAuthentication for every pool: they all read the same broker.
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    large = scaled["large"]["spec"]
    assert (large["cooldownPeriod"], large["pollingInterval"]) == (600, 10)
    assert scaled["small"]["spec"]["cooldownPeriod"] == 300, "unset: worker.keda.cooldownPeriod"


def test_a_single_lane_pool_keeps_a_plain_queue_name() -> None:
    rendered = helm_template(
        *EXTERNAL,
        "--set-json",
        'pools=[{"name": "default", "models": ["m1"]}, {"name": "large", "models": ["m2"]}]',
    )
    queues = {
        s["metadata"]["labels"][POOL_LABEL]: s["spec"]["triggers"][0]["metadata"]
        for s in find(rendered, "ScaledObject")
    }
    assert queues["default"]["queueName"] == "llm.tasks"
    assert queues["large"]["queueName"] == "llm.tasks.large"
    assert not {"useRegex", "operation"} & (queues["default"].keys() | queues["large"].keys())


# --- environment, configuration and secrets --------------------------------------------------


def test_workers_get_their_pool_and_every_pool() -> None:
    rendered = objects()
    by_pool = workers(rendered)
    expected_models = {"small": "llama-3.1-8b", "large": "llama-3.1-70b"}
    expected_urls = {
        "small": "http://vllm-small.llm.svc:8000/v1",
        "large": "http://vllm-large.llm.svc:8000/v1",
    }
    expected_concurrency = {"small": "32", "large": "16"}
    for pool, deployment in by_pool.items():
        e = env(deployment)
        assert e["LLM_POOL"]["value"] == pool
        assert e["LLM_MODEL"]["value"] == expected_models[pool]
        assert e["OPENAI_BASE_URL"]["value"] == expected_urls[pool]
        assert e["WORKER_CONCURRENCY"]["value"] == expected_concurrency[pool]
        assert pools_json(rendered, deployment) == pools_json(rendered, by_pool["small"])
        # Per pool in the Deployment, never in the shared worker ConfigMap.
        shared = config_map_for(rendered, deployment)
        per_pool = {"LLM_POOL", "LLM_POOLS", "LLM_MODEL", "WORKER_CONCURRENCY", "OPENAI_BASE_URL"}
        assert not per_pool & set(shared)
    api = component(rendered, "Deployment", "api")
    assert pools_json(rendered, api) == pools_json(rendered, by_pool["small"])
    assert "LLM_POOL" not in env(api)
    # Requests naming no model go to the default pool: the API's LLM_MODEL is its first model.
    assert config_map_for(rendered, api)["LLM_MODEL"] == "llama-3.1-8b"


def test_llm_pools_is_the_contract_of_docs_adr_0006() -> None:
    rendered = objects()
    data = pools_json(rendered, workers(rendered)["small"])
    assert data == {
        "pools": [
            {
                "name": "small",
                "default": True,
                "models": ["llama-3.1-8b"],
                "aliases": {"fast": "llama-3.1-8b"},
                "lanes": ["priority", "default", "flex"],
                "base_url": "http://vllm-small.llm.svc:8000/v1",
                "concurrency": 32,
            },
            {
                "name": "large",
                "default": False,
                "models": ["llama-3.1-70b", "llama-3.3-70b"],
                "aliases": {"smart": "llama-3.3-70b"},
                "lanes": ["default", "flex"],
                "base_url": "http://vllm-large.llm.svc:8000/v1",
                "concurrency": 16,
            },
        ]
    }
    # Only those fields: nothing about secrets, not even which Secret holds a key.
    (cm,) = [o for o in find(rendered, "ConfigMap") if "pools.json" in o.get("data", {})]
    assert cm["metadata"]["name"] == f"{PREFIX}-pools"


def test_each_pool_reads_its_own_api_key_secret() -> None:
    rendered = objects()
    by_pool = workers(rendered)
    assert secret_ref(by_pool["large"], "OPENAI_API_KEY") == ("vllm-large", "api-key")
    # A pool without its own Secret uses the llm.* one.
    assert secret_ref(by_pool["small"], "OPENAI_API_KEY") == ("llm-stream-openai", "OPENAI_API_KEY")
    assert "OPENAI_API_KEY" not in env(component(rendered, "Deployment", "api"))


def test_scheduling_fields_pass_through_and_default_to_the_workers() -> None:
    rendered = objects()
    pool_values = {p["name"]: p for p in values()["pools"]}
    chart_defaults = yaml.safe_load((CHART / "values.yaml").read_text())["worker"]
    large = workers(rendered)["large"]
    spec = large["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == pool_values["large"]["nodeSelector"]
    assert spec["tolerations"] == pool_values["large"]["tolerations"]
    assert spec["affinity"] == pool_values["large"]["affinity"]
    assert container(large)["resources"] == pool_values["large"]["resources"]
    assert env(large)["LLM_MAX_RETRIES"]["value"] == "4"

    small = workers(rendered)["small"]
    spec = small["spec"]["template"]["spec"]
    assert not {"nodeSelector", "tolerations", "affinity"} & set(spec)
    assert container(small)["resources"] == chart_defaults["resources"]
    assert "LLM_MAX_RETRIES" not in env(small)
    # worker.topologySpreadConstraints apply to every pool, each spreading its own pods.
    for deployment in workers(rendered).values():
        (constraint,) = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert constraint["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_network_policy_lets_workers_reach_every_pools_upstream() -> None:
    rendered = helm_template(
        "-f", str(POOLS_VALUES), "--set", "pools[1].upstream.baseUrl=https://vllm-large.example.com:9443/v1"
    )
    (policy,) = [p for p in find(rendered, "NetworkPolicy") if p["metadata"]["name"] == f"{PREFIX}-worker"]
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}
    assert {8000, 9443} <= ports
    assert policy["spec"]["podSelector"]["matchLabels"].get(POOL_LABEL) is None, "every pool's workers"


def test_pod_monitor_carries_the_pool_label_onto_worker_metrics() -> None:
    (monitor,) = [m for m in find(objects(), "PodMonitor") if m["metadata"]["name"] == f"{PREFIX}-worker"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (relabeling, *_) = endpoint["relabelings"]
    assert relabeling == {
        "sourceLabels": ["__meta_kubernetes_pod_label_llm_stream_io_pool"],
        "targetLabel": "pool",
    }
    # The chart's own, then the user's.
    user = helm_template(
        *EXTERNAL,
        "--set",
        "monitoring.podMonitor.enabled=true",
        "--set",
        "monitoring.podMonitor.relabelings[0].action=labeldrop",
        "--set",
        "monitoring.podMonitor.relabelings[0].regex=pod",
    )
    (endpoint,) = one(user, "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert [r.get("targetLabel", r.get("action")) for r in endpoint["relabelings"]] == ["pool", "labeldrop"]


def test_without_pools_the_workers_keep_their_names_and_selectors() -> None:
    """Existing releases upgrade in place: a Deployment's selector cannot change."""
    rendered = helm_template(*EXTERNAL)
    worker = component(rendered, "Deployment", "worker")
    assert worker["metadata"]["name"] == f"{PREFIX}-worker"
    assert POOL_LABEL not in worker["spec"]["selector"]["matchLabels"]
    assert worker["spec"]["template"]["metadata"]["labels"][POOL_LABEL] == "default"
    assert one(rendered, "ScaledObject")["spec"]["triggers"][0]["metadata"]["queueName"] == "llm.tasks"
    assert POOL_LABEL not in one(rendered, "PodDisruptionBudget", "worker")["spec"]["selector"]["matchLabels"]
    assert not [cm for cm in find(rendered, "ConfigMap") if cm["metadata"]["name"].endswith("-pools")]
    for deployment in find(rendered, "Deployment"):
        assert not {"LLM_POOL", "LLM_POOLS"} & set(env(deployment))
    assert config_map_for(rendered, worker)["WORKER_CONCURRENCY"] == "64"


# --- values that cannot work -------------------------------------------------------------------

POOLS = "-f", str(POOLS_VALUES)

REFUSED = {
    "a model in two pools": (
        [*POOLS, "--set", "pools[1].models[0]=llama-3.1-8b"],
        'model "llama-3.1-8b" is claimed by pools "small" and "large"',
    ),
    "an alias in two pools": (
        [*POOLS, "--set", "pools[1].aliases.fast=llama-3.1-70b"],
        'model "fast" is claimed by pools "small" and "large"',
    ),
    "an alias naming another pool's model": (
        [*POOLS, "--set", "pools[1].aliases.smart=llama-3.1-8b"],
        'alias "smart" of pool "large" names "llama-3.1-8b", a model of pool "small"',
    ),
    "an alias naming no model": (
        [*POOLS, "--set", "pools[1].aliases.smart=nope"],
        'alias "smart" of pool "large" names "nope", which is not one of its models',
    ),
    "two pools of one name": (
        [*POOLS, "--set", "pools[1].name=small"],
        'two pools are named "small" (pools[0] and pools[1])',
    ),
    "two default pools": (
        [*POOLS, "--set", "pools[1].default=true"],
        "more than one pool has default: true (small, large)",
    ),
    "a reserved pool name (schema)": ([*POOLS, "--set", "pools[1].name=flex"], "at '/pools/1/name'"),
    "a reserved pool name": (
        [*POOLS, "--skip-schema-validation", "--set", "pools[1].name=dead"],
        'pools[1]: pool name "dead" is reserved',
    ),
    "a pool name that is no DNS label": (
        [*POOLS, "--set", "pools[1].name=Large"],
        "at '/pools/1/name'",
    ),
    "a pool name that is no DNS label (template)": (
        [*POOLS, "--skip-schema-validation", "--set", "pools[1].name=gpu_large"],
        'pool name "gpu_large" is not a lower-case DNS label',
    ),
    "lanes without default": (
        [*POOLS, "--skip-schema-validation", "--set", "pools[1].lanes={flex}"],
        'pool "large": lanes [flex] must include default',
    ),
    "lanes without default (schema)": ([*POOLS, "--set", "pools[1].lanes={flex}"], "at '/pools/1/lanes"),
    "an unknown lane": ([*POOLS, "--set", "pools[1].lanes={default,turbo}"], "at '/pools/1/lanes/1'"),
    "an unknown pool field": ([*POOLS, "--set", "pools[1].replicas=2"], "replicas"),
    "a pool's min replicas above its max": (
        [*POOLS, "--set", "pools[1].scaling.minReplicas=9"],
        "pools[1] (large): minReplicas (9) is above maxReplicas (4)",
    ),
    "idle replicas not below a pool's min": (
        [*POOLS, "--set", "worker.keda.idleReplicaCount=0"],
        "pools[1] (large) has 0",
    ),
    "lanes counted over amqp": (
        [*POOLS, "--set", "worker.keda.protocol=amqp"],
        "pools[0] (small) has several lanes, and KEDA matches several queues only through the "
        "management API",
    ),
}


@pytest.mark.parametrize("args,message", REFUSED.values(), ids=REFUSED.keys())
def test_impossible_pools_fail_with_the_charts_message(args: list[str], message: str) -> None:
    result = run([tool("helm"), "template", RELEASE, str(CHART), *args], check=False)
    assert result.returncode != 0, f"rendered although impossible:\n{result.stdout[:2000]}"
    assert message in result.stderr, result.stderr


def test_a_pool_without_an_llm_fails(tmp_path: Path) -> None:
    """api.openai.com needs a key: a pool with neither its own URL nor a key, and none in llm.*."""
    broken = values()
    broken["llm"] = {}
    broken["pools"][0]["upstream"] = {"baseUrl": "http://vllm-small:8000/v1"}
    del broken["pools"][1]["upstream"]
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = run([tool("helm"), "template", RELEASE, str(CHART), "-f", str(path)], check=False)
    assert result.returncode != 0
    assert 'pool "large" has no LLM' in result.stderr, result.stderr
    # Every pool with its own URL: nothing in llm.* is needed.
    broken["pools"][1]["upstream"] = {"baseUrl": "http://vllm-large:8000/v1"}
    path.write_text(yaml.safe_dump(broken))
    run([tool("helm"), "template", RELEASE, str(CHART), "-f", str(path)])
