"""What the manifests promise the code: the queue KEDA watches is the one the workers consume,
env names are real settings, probes hit real routes, pods are hardened, grace periods outlast a
generation. Checked on every chart combination and every kustomize overlay."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

import aiormq
import httpx
import pytest
import yaml
from llm_stream_api.settings import APISettings
from llm_stream_mockllm.settings import Settings as MockSettings
from llm_stream_worker.settings import WorkerSettings
from mqcommon.topology import Topology
from pydantic_settings import BaseSettings

from .manifests import (
    CHART,
    CI_VALUES,
    OVERLAYS,
    REPO,
    Manifest,
    component,
    config_map_for,
    container,
    env_names,
    find,
    helm_template,
    kustomize,
    one,
    render_ci,
    secret_ref,
)

pytestmark = pytest.mark.deploy

EXTERNAL = ("--set", "rabbitmq.url=amqp://u:p@rabbitmq.example.com:5672/", "--set", "llm.apiKey=k")

# Every rendering the contract is checked on: the CI values, the skaffold values, the overlays.
VARIANTS: dict[str, Path] = {
    **{f"helm:{p.name}": p for p in CI_VALUES},
    "helm:dev-values.yaml": REPO / "deploy/helm/dev-values.yaml",
    **{f"kustomize:{p.name}": p for p in OVERLAYS},
}


def objects_of(variant: str) -> tuple[Manifest, ...]:
    source = VARIANTS[variant]
    return render_ci(source) if variant.startswith("helm:") else kustomize(source)


def settings_env(settings: type[BaseSettings]) -> set[str]:
    """The environment variable names a pydantic-settings class reads."""
    names = set()
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add(name.upper())
        else:
            choices = getattr(alias, "choices", [alias])
            names |= {str(c).upper() for c in choices}
    return names


def secret_data(objects: Iterable[Manifest], name: str) -> dict[str, str] | None:
    for o in objects:
        if o["kind"] == "Secret" and o["metadata"]["name"] == name:
            data = {k: base64.b64decode(v).decode() for k, v in o.get("data", {}).items()}
            return data | o.get("stringData", {})
    return None


def config_map_data(objects: Iterable[Manifest], name: str) -> dict[str, str] | None:
    for o in objects:
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name:
            return o.get("data", {})
    return None


def expand(value: str, defined: dict[str, str]) -> str:
    """Kubernetes' expansion of `$(VAR)` in an env value: a variable defined before it is
    replaced, any other reference is left as it is (and `$$` is a literal `$`)."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return defined.get(match.group(1), match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", one, value)


def expansion_helpers(workload: Manifest) -> set[str]:
    """Env variables of the container that only feed `$(VAR)` references of later entries
    (the operator mode's RABBITMQ_USERNAME and RABBITMQ_PASSWORD): no setting reads them."""
    entries = container(workload).get("env", [])
    helpers = set()
    for i, e in enumerate(entries):
        later = [x.get("value", "") for x in entries[i + 1 :]]
        if any(f"$({e['name']})" in value for value in later):
            helpers.add(e["name"])
    return helpers


def pod_env(objects: tuple[Manifest, ...], workload: Manifest) -> dict[str, str]:
    """The environment a pod of the workload gets: its ConfigMaps, then its env entries with
    their ConfigMap and Secret references resolved (where the chart holds the data) and their
    `$(VAR)` references expanded as the kubelet does."""
    env = dict(config_map_for(objects, workload))
    for e in container(workload).get("env", []):
        source = e.get("valueFrom", {})
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
        elif "secretKeyRef" in source:
            data = secret_data(objects, source["secretKeyRef"]["name"]) or {}
            if source["secretKeyRef"]["key"] in data:
                env[e["name"]] = data[source["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in source:
            data = config_map_data(objects, source["configMapKeyRef"]["name"])
            assert data is not None, f"{e['name']}: no ConfigMap {source['configMapKeyRef']['name']}"
            env[e["name"]] = data[source["configMapKeyRef"]["key"]]
    return env


def worker_settings(
    objects: tuple[Manifest, ...], monkeypatch: pytest.MonkeyPatch, worker: Manifest | None = None
) -> WorkerSettings:
    """WorkerSettings as a worker pod would read them from its ConfigMap and Secrets."""
    worker = worker or component(objects, "Deployment", "worker")
    for name in settings_env(WorkerSettings):
        monkeypatch.delenv(name, raising=False)
    for name, value in pod_env(objects, worker).items():
        monkeypatch.setenv(name, value)
    return WorkerSettings()


def workers(objects: Iterable[Manifest]) -> list[Manifest]:
    """Every worker Deployment (one per pool)."""
    return [
        d
        for d in find(objects, "Deployment")
        if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
    ]


LANES = ("priority", "default", "flex")


def pool_queues(task_queue: str, dead_letter_queue: str, env: dict[str, str]) -> tuple[list[str], list[str]]:
    """(the task queues the worker consumes, other queue names of the release), by the names
    of docs/adr/0006: pool `default` has TASK_QUEUE, pool `large` `<TASK_QUEUE>.large`, and a
    lane other than `default` adds `.<lane>`; a pool's dead letters are `<base>.dead`
    (DEAD_LETTER_QUEUE for pool `default`); with TASK_SHARDS, each lane's queue `<q>` is also
    `<q>.s1`, ... (docs/adr/0007)."""
    shards = int(env.get("TASK_SHARDS", "1"))

    def sharded(queues: list[str]) -> list[str]:
        return [f"{q}{f'.s{i}' if i else ''}" for q in queues for i in range(shards)]

    if "LLM_POOLS" not in env:
        return sharded([task_queue]), [dead_letter_queue, f"{task_queue}.s{shards}", f"{task_queue}.log"]
    pools = json.loads(env["LLM_POOLS"])["pools"]

    def base(pool: str) -> str:
        return task_queue if pool == "default" else f"{task_queue}.{pool}"

    def queues(pool: dict) -> list[str]:
        lanes = pool.get("lanes", ["default"])
        return [base(pool["name"]) if lane == "default" else f"{base(pool['name'])}.{lane}" for lane in lanes]

    (mine,) = [p for p in pools if p["name"] == env["LLM_POOL"]]
    others = [q for p in pools if p is not mine for q in queues(p)]
    others += [f"{base(p['name'])}.{lane}" for p in pools for lane in LANES if lane != "default"]
    others += [dead_letter_queue if p["name"] == "default" else f"{base(p['name'])}.dead" for p in pools]
    others += [f"{q}.{suffix}" for q in queues(mine) for suffix in ("log", "intake", "dead", f"s{shards}")]
    others = sharded(others) if shards > 1 else others
    return sharded(queues(mine)), sorted(set(others) - set(sharded(queues(mine))))


def amqp_vhost(url: str) -> str:
    """The vhost the workers' AMQP client connects to for this URL."""

    async def vhost() -> str:
        return aiormq.Connection(url).vhost

    return asyncio.run(vhost())


# --- KEDA watches what the workers consume ---------------------------------------------------

# Renderings with a ScaledObject (test_keda_variants_are_all_listed keeps this list honest),
# plus extra chart settings.
KEDA_VARIANTS: dict[str, tuple[str, ...]] = {
    "helm:external-broker-values.yaml": (),
    "helm:inchart-broker-values.yaml": (),
    "helm:monitoring-values.yaml": (),
    "helm:ingress-values.yaml": (),
    "helm:existing-secret-values.yaml": (),
    "kustomize:prod": (),
    "helm:custom queue and vhost": (
        "--set",
        "rabbitmq.url=amqp://svc:pw@rabbitmq.example.com/tenant-a",
        "--set",
        "llm.apiKey=k",
        "--set",
        "config.taskQueue=tenant-a.tasks",
        "--set",
        "worker.concurrency=12",
    ),
    "helm:default vhost spelt %2F": (
        "--set",
        "rabbitmq.url=amqps://svc:pw@rabbitmq.example.com/%2F",
        "--set",
        "llm.apiKey=k",
    ),
    "helm:amqp protocol": (*EXTERNAL, "--set", "worker.keda.protocol=amqp"),
    "helm:pools-values.yaml": (),
    "helm:operator-broker-values.yaml": (),
    "helm:managed-broker-values.yaml": (),
    "helm:operator, amqp protocol": (
        "--set",
        "rabbitmq.mode=operator",
        "--set",
        "llm.apiKey=k",
        "--set",
        "worker.keda.protocol=amqp",
    ),
    "helm:operator with pools": (
        "--set",
        "rabbitmq.mode=operator",
        "--set",
        "llm.apiKey=k",
        "--set-json",
        "pools=" + json.dumps([{"name": "default", "models": ["m1"], "lanes": ["default", "flex"]}]),
    ),
    "helm:pool default with lanes, a pool with one": (
        *EXTERNAL,
        "--set-json",
        "pools="
        + json.dumps([
            {"name": "default", "models": ["m1"], "lanes": ["default", "priority"]},
            {"name": "solo", "models": ["m2"], "concurrency": 8},
        ]),
    ),
    "helm:three shards": (*EXTERNAL, "--set", "rabbitmq.topology.taskShards=3"),
    "helm:pools over three shards": (
        *EXTERNAL,
        "--set", "rabbitmq.topology.taskShards=3",
        "--set-json",
        "pools="
        + json.dumps([
            {"name": "default", "models": ["m1"], "lanes": ["default", "flex"]},
            {"name": "solo", "models": ["m2"]},
        ]),
    ),
}


def test_keda_variants_are_all_listed() -> None:
    with_keda = {v for v in VARIANTS if find(objects_of(v), "ScaledObject")}
    assert with_keda == {v for v, extra in KEDA_VARIANTS.items() if not extra}


def ci_values(variant: str) -> dict:
    source = VARIANTS.get(variant)
    if variant.startswith("helm:") and isinstance(source, Path):
        return yaml.safe_load(source.read_text()) or {}
    return {}


@pytest.mark.parametrize("variant", KEDA_VARIANTS)
def test_scaled_object_watches_the_queue_the_workers_consume(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = KEDA_VARIANTS[variant]
    objects = helm_template(*extra) if extra else objects_of(variant)
    scaled_objects = find(objects, "ScaledObject")
    assert len(scaled_objects) == len(workers(objects)), "one ScaledObject per worker Deployment"
    for scaled in scaled_objects:
        (worker,) = [
            w for w in workers(objects) if w["metadata"]["name"] == scaled["spec"]["scaleTargetRef"]["name"]
        ]
        check_trigger(variant, objects, scaled, worker, monkeypatch)


def check_trigger(
    variant: str,
    objects: tuple[Manifest, ...],
    scaled: Manifest,
    worker: Manifest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    settings = worker_settings(objects, monkeypatch, worker)
    env = pod_env(objects, worker)

    assert trigger["type"] == "rabbitmq" and meta["mode"] == "QueueLength"
    # The queues: the very names the worker consumes (every lane of its pool), and no other.
    consumed, others = pool_queues(
        Topology.from_settings(settings).task_queue.name, settings.dead_letter_queue, env
    )
    if meta.get("useRegex") == "true":
        # Several lanes: one trigger over all of them, ready + unacknowledged summed (http).
        assert meta["operation"] == "sum" and meta["protocol"] == "http", meta
        pattern = re.compile(meta["queueName"])
        assert [q for q in consumed if pattern.search(q)] == consumed, (meta["queueName"], consumed)
        assert not [q for q in others if pattern.search(q)], (meta["queueName"], others)
    else:
        assert "operation" not in meta
        assert [meta["queueName"]] == consumed
    # Tasks per replica: what one worker runs at once (its prefetch), unless set explicitly.
    values = ci_values(variant)
    pool = {p["name"]: p for p in values.get("pools", [])}.get(env.get("LLM_POOL"), {})
    explicit = pool.get("scaling", {}).get("tasksPerReplica")
    if explicit is None and "concurrency" not in pool:
        explicit = values.get("worker", {}).get("keda", {}).get("tasksPerReplica")
    assert float(meta["value"]) == (explicit or settings.worker_concurrency)
    # http by default: unacknowledged (in-generation) tasks count, so busy workers stay.
    assert meta["protocol"] == ("amqp" if "amqp protocol" in variant else "http")

    # Credentials: KEDA reads the same Secret key the workers read.
    auth = one(objects, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    if find(objects, "RabbitmqCluster"):
        check_operator_trigger(objects, meta, refs, worker, env)
        return
    env_for_host = "RABBIT_MQ" if meta["protocol"] == "amqp" else "RABBITMQ_MANAGEMENT_URL"
    assert refs["host"] == secret_ref(worker, env_for_host)
    api = component(objects, "Deployment", "api")
    assert secret_ref(api, "RABBIT_MQ") == secret_ref(worker, "RABBIT_MQ")

    # The vhost: the one the workers' AMQP client connects to.
    secret = secret_data(objects, secret_ref(worker, "RABBIT_MQ")[0])
    if secret is not None:
        url = secret[secret_ref(worker, "RABBIT_MQ")[1]]
        management = secret[secret_ref(worker, "RABBITMQ_MANAGEMENT_URL")[1]]
        assert url == settings.rabbit_mq
        assert meta["vhostName"] == amqp_vhost(url)
        # Same user, password and host for the management API as for AMQP.
        amqp, http = urlsplit(url), urlsplit(management)
        assert (http.username, http.password, http.hostname) == (amqp.username, amqp.password, amqp.hostname)
        assert http.scheme == ("https" if amqp.scheme == "amqps" else "http")
    elif "vhostName" in refs:
        # kustomize prod: the vhost comes from the same Secret as the URLs.
        assert refs["vhostName"][0] == refs["host"][0]
    else:
        # An existing Secret the chart cannot read: the vhost is the one stated in the values.
        assert meta["vhostName"] == ci_values(variant)["rabbitmq"]["vhost"]


def operator_secret(
    cluster: Manifest, username: str = "default_user_x-Y_z", password: str = "p4_ss-w0rd"
) -> Manifest:
    """The Secret the RabbitMQ Cluster Operator creates for a cluster's default user (its keys,
    as internal/resource/default_user_secret.go writes them)."""
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    data = {
        "username": username,
        "password": password,
        "host": f"{name}.{namespace}.svc",
        "port": "5672",
        "provider": "rabbitmq",
        "type": "rabbitmq",
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{name}-default-user", "namespace": namespace},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def check_operator_trigger(
    objects: tuple[Manifest, ...],
    meta: dict[str, str],
    refs: dict[str, tuple[str, str]],
    worker: Manifest,
    env: dict[str, str],
) -> None:
    """Operator mode: KEDA asks the cluster's Service with the operator's default user, as the
    workers do; with the operator's Secret in place, the workers' URLs reach the same Service
    with those credentials, on the vhost KEDA watches."""
    cluster = one(objects, "RabbitmqCluster")
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    secret = f"{name}-default-user"
    assert refs == {"username": (secret, "username"), "password": (secret, "password")}
    assert secret_ref(worker, "RABBITMQ_USERNAME") == refs["username"]
    assert secret_ref(worker, "RABBITMQ_PASSWORD") == refs["password"]
    host = urlsplit(meta["host"])
    assert host.hostname == f"{name}.{namespace}.svc.cluster.local"
    assert not host.username and not host.password, "the credentials come from the Secret"
    if meta["protocol"] == "amqp":
        assert (host.scheme, host.port) == ("amqp", 5672)
    else:
        assert (host.scheme, host.port) == ("http", 15672)
    # Unresolved until the operator has made its Secret: the pods wait for it.
    assert "$(RABBITMQ_USERNAME)" in env["RABBIT_MQ"]

    resolved = pod_env((*objects, operator_secret(cluster)), worker)
    amqp, http = urlsplit(resolved["RABBIT_MQ"]), urlsplit(resolved["RABBITMQ_MANAGEMENT_URL"])
    assert (amqp.username, amqp.password) == ("default_user_x-Y_z", "p4_ss-w0rd")
    assert (http.username, http.password) == (amqp.username, amqp.password)
    assert amqp.hostname == http.hostname == host.hostname
    assert (amqp.scheme, amqp.port, http.scheme, http.port) == ("amqp", 5672, "http", 15672)
    assert meta["vhostName"] == amqp_vhost(resolved["RABBIT_MQ"]) == "/"


def test_scale_down_is_slow_and_scale_to_zero_allowed() -> None:
    for variant in KEDA_VARIANTS:
        if not KEDA_VARIANTS[variant]:
            for scaled in find(objects_of(variant), "ScaledObject"):
                spec = scaled["spec"]
                down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
                assert down["stabilizationWindowSeconds"] >= 300, variant
                assert all(p["periodSeconds"] >= 60 for p in down["policies"]), variant
                assert spec["cooldownPeriod"] >= 60, variant
    demo = one(render_ci(CHART / "ci/inchart-broker-values.yaml"), "ScaledObject")["spec"]
    assert demo["minReplicaCount"] == 0 and demo["triggers"][0]["metadata"]["activationValue"] == "1"


# --- env names are the services' settings -----------------------------------------------------


def mock_env_names() -> set[str]:
    source = (REPO / "services/mockllm/src/llm_stream_mockllm/settings.py").read_text()
    return set(re.findall(r'"(MOCK_[A-Z_]+)"', source))


@pytest.mark.parametrize("variant", VARIANTS)
def test_env_names_match_the_services_settings(variant: str) -> None:
    objects = objects_of(variant)
    expected = {
        "api": settings_env(APISettings),
        "worker": settings_env(WorkerSettings),
        "mockllm": mock_env_names(),
    }
    for name, known in expected.items():
        workloads = [
            d
            for d in find(objects, "Deployment")
            if d["metadata"]["name"].endswith(name)
            or d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == name
        ]
        if name != "mockllm":
            assert workloads, f"{variant}: no {name} Deployment"
        for workload in workloads:
            unknown = env_names(workload, objects) - known - expansion_helpers(workload)
            assert not unknown, f"{variant}: {name} gets env vars no setting reads: {unknown}"


def _same(rendered: str, default: object) -> bool:
    if isinstance(default, bool):
        return rendered == str(default).lower()
    if isinstance(default, int | float):
        return float(rendered) == float(default)
    return rendered == ("" if default is None else str(default))


def test_chart_defaults_are_the_services_defaults() -> None:
    """A rendered setting equals the code's default unless the chart means otherwise."""
    deliberate = {"SHUTDOWN_GRACE_S"}  # = LLM_TIMEOUT_S, so a scaled-down worker finishes
    objects = helm_template(*EXTERNAL)
    for name, settings in (("api", APISettings), ("worker", WorkerSettings)):
        data = config_map_for(objects, component(objects, "Deployment", name))
        fields = {f.upper(): info for f, info in settings.model_fields.items()}
        for key, value in data.items():
            if key in deliberate:
                continue
            assert _same(value, fields[key].default), (
                f"{name}: chart renders {key}={value!r}, the code defaults to {fields[key].default!r}"
            )


def test_values_comments_state_the_services_defaults() -> None:
    """`ENV_NAME: ... (null: N)` in a values.yaml comment is the code's default for ENV_NAME."""
    blocks = re.findall(r"(?:^[ \t]*#.*\n)+", (CHART / "values.yaml").read_text(), flags=re.M)
    stated = []
    for block in blocks:
        env, default = re.search(r"# -- ([A-Z_]+):", block), re.search(r"\(null: ([0-9.]+)\)", block)
        if env and default:
            stated.append((env.group(1), default.group(1)))
    assert len(stated) >= 8
    fields = {
        f.upper(): info.default
        for cls in (APISettings, WorkerSettings)
        for f, info in cls.model_fields.items()
    }
    mock = MockSettings.from_env({})
    fields |= {f"MOCK_{f.name.upper()}": getattr(mock, f.name) for f in dataclasses.fields(mock)}
    for env, default in stated:
        assert float(default) == float(fields[env]), f"values.yaml says {env} defaults to {default}"


# --- probes hit real routes ----------------------------------------------------------------


async def test_api_probe_paths_are_routes_of_the_api() -> None:
    """The paths the probes call exist in the API (the app answers something but 404)."""
    from llm_stream_api.app import create_app

    # No lifespan: no broker connection. A route that exists answers (even 500), never 404.
    transport = httpx.ASGITransport(app=create_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/no-such-route")).status_code == 404
        for variant in VARIANTS:
            api = container(component(objects_of(variant), "Deployment", "api"))
            assert api["livenessProbe"]["httpGet"]["path"] == "/health", variant
            assert api["readinessProbe"]["httpGet"]["path"] == "/health/full", variant
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                path = api[probe]["httpGet"]["path"]
                assert (await client.get(path)).status_code != 404, f"{variant}: {probe} {path}"


# --- hardened pods ---------------------------------------------------------------------------


def pod_specs(objects: Iterable[Manifest]) -> list[tuple[str, dict]]:
    specs = []
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet"):
            specs.append((o["metadata"]["name"], o["spec"]["template"]["spec"]))
        elif o["kind"] == "Pod":
            specs.append((o["metadata"]["name"], o["spec"]))
    return specs


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_are_hardened(variant: str) -> None:
    for name, spec in pod_specs(objects_of(variant)):
        pod_sc = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, name
        assert pod_sc.get("runAsNonRoot") is True, name
        assert pod_sc.get("runAsUser", 0) != 0, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert not sc["capabilities"].get("add"), name
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", name
            assert "/tmp" in {m["mountPath"] for m in c.get("volumeMounts", [])}, name
            assert c["resources"]["requests"] and c["resources"]["limits"], name


def test_images_run_as_the_uid_the_manifests_expect() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.findall(r"^USER (.*)$", dockerfile, flags=re.M) == ["10001:10001"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == 10001


# --- grace periods outlast a generation ----------------------------------------------------------


def _seconds(data: dict[str, str], key: str, settings: type[BaseSettings]) -> float:
    return float(data.get(key, settings.model_fields[key.lower()].default))


@pytest.mark.parametrize("variant", [*VARIANTS, "helm:long generations"])
def test_grace_periods_outlast_the_longest_generation(variant: str) -> None:
    if variant == "helm:long generations":
        objects = helm_template(
            *EXTERNAL, "--set", "llm.timeoutSeconds=900", "--set", "worker.shutdownGraceSeconds=60"
        )
    else:
        objects = objects_of(variant)

    for worker in workers(objects) or [component(objects, "Deployment", "worker")]:
        wdata = pod_env(objects, worker)
        wspec = worker["spec"]["template"]["spec"]
        llm_timeout = _seconds(wdata, "LLM_TIMEOUT_S", WorkerSettings)
        drain = max(llm_timeout, _seconds(wdata, "SHUTDOWN_GRACE_S", WorkerSettings))
        pre_stop = container(worker)["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert wspec["terminationGracePeriodSeconds"] > pre_stop + drain, variant
        assert _seconds(wdata, "SHUTDOWN_GRACE_S", WorkerSettings) >= min(llm_timeout, 60), variant

    api = component(objects, "Deployment", "api")
    adata = config_map_for(objects, api)
    aspec = api["spec"]["template"]["spec"]
    pre_stop = container(api)["lifecycle"]["preStop"]["sleep"]["seconds"]
    # Longer than the preStop plus the longest answer an open stream may still be carrying
    # (and so longer than uvicorn's own graceful shutdown of the streams).
    assert aspec["terminationGracePeriodSeconds"] > pre_stop + _seconds(
        adata, "LLM_TIMEOUT_S", APISettings
    ), variant
    assert (
        aspec["terminationGracePeriodSeconds"] > pre_stop + _seconds(adata, "SSE_PING_S", APISettings) + 5
    ), variant


# --- the in-cluster broker and its clients agree -----------------------------------------------


def _broker_user(conf: str) -> tuple[str, str]:
    values = dict(
        (k.strip(), v.strip()) for k, _, v in (line.partition("=") for line in conf.splitlines()) if v
    )
    return values["default_user"], values["default_pass"]


@pytest.mark.parametrize(
    "variant", ["helm:inchart-broker-values.yaml", "helm:monitoring-values.yaml", "kustomize:dev"]
)
def test_in_cluster_broker_creates_the_user_the_clients_use(variant: str) -> None:
    objects = objects_of(variant)
    broker = one(objects, "StatefulSet", "rabbitmq")
    sources = broker["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]
    config_name = next(s["configMap"]["name"] for s in sources if "configMap" in s)
    secret_source = next(s["secret"] for s in sources if "secret" in s)
    plugins = one(objects, "ConfigMap", config_name)["data"]["enabled_plugins"]
    assert "rabbitmq_management" in plugins and "rabbitmq_prometheus" in plugins
    conf = secret_data(objects, secret_source["name"])[secret_source["items"][0]["key"]]
    user = _broker_user(conf)

    worker = component(objects, "Deployment", "worker")
    for env in ("RABBIT_MQ", "RABBITMQ_MANAGEMENT_URL"):
        name, key = secret_ref(worker, env)
        url = urlsplit(secret_data(objects, name)[key])
        assert (url.username, url.password) == user, f"{env} uses other credentials"
        (service,) = [
            o for o in find(objects, "Service") if o["metadata"]["name"] == url.hostname.split(".")[0]
        ]
        assert service["spec"]["selector"] == broker["spec"]["selector"]["matchLabels"]
