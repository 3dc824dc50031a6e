"""The chart's own pods under a real runtime: `podman kube play` of the rendered Deployments.

podman reads the rendered ConfigMaps and Deployments itself: securityContext, envFrom
ConfigMap, env from a ConfigMap key (configMapKeyRef) and from the Secret (created as a podman
secret from the rendered Secret's data), resource limits and the emptyDir volume. A second
release with two model pools plays its API and one worker Deployment per pool against the same
mock pod. Where podman 4.3 cannot express what the chart says, the play file is translated, each
time for a stated reason (see `playable`), and docs/deploy.md lists it:

- no Services (and no cluster DNS): the pods use the host's network, so the API and the worker
  are rendered with `llm.baseUrl` at the mock pod's address instead of the mock's Service;
- containerPorts would be published on the host, which podman refuses with host networking:
  they are dropped and the probes' named ports replaced by their numbers;
- on the host's network the pods share one set of ports, where each pod of a cluster has an IP of
  its own: a pod whose containerPort an earlier pod of the same play file listens on (the worker
  of a second pool) gets a free port instead, set through the env variable that holds the number
  (for a ConfigMap's variable, in a copy of the ConfigMap for that pod: podman 4.3 lets envFrom
  win over env) and followed by its probes;
- podman turns an emptyDir into a named volume shared by every pod that names it: each pod's
  gets a name of its own;
- podman runs a liveness probe as `curl` inside the container (the images have none, and no
  systemd timer runs it here) and ignores readiness and startup probes: the test runs the
  chart's probes from outside, as a kubelet does.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from deploy.manifests import load_all, run, tool
from llm_stream_mockllm.answer import expected_answer

from .conftest import BrokerURLs, delete_topology
from .runtime import (
    Container,
    answer_of,
    broker_names,
    cpus,
    find_one,
    free_port,
    isolation_values,
    podman,
    quantity_bytes,
    read_stream,
    resolve_env,
    unique,
)

pytestmark = pytest.mark.containers

Manifest = dict[str, Any]


def helm_render(release: str, values: list[str]) -> list[Manifest]:
    args = [
        tool("helm"),
        "template",
        release,
        str(Path(__file__).resolve().parents[2] / "deploy/helm/llm-stream"),
    ]
    for value in values:
        args += ["--set", value]
    return load_all(run(args).stdout)


def configmaps_read(deployment: Manifest) -> set[str]:
    """The ConfigMaps the Deployment's containers read: envFrom, and env from a key."""
    names = set()
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        names |= {s["configMapRef"]["name"] for s in c.get("envFrom", []) if "configMapRef" in s}
        names |= {
            item["valueFrom"]["configMapKeyRef"]["name"]
            for item in c.get("env", [])
            if "configMapKeyRef" in item.get("valueFrom", {})
        }
    return names


def move_port(objects: list[Manifest], pod: str, c: Manifest, number: int) -> tuple[int, list[Manifest]]:
    """Give the container a free port instead of `number`, through the one env variable that
    holds the number; the new port, and the ConfigMaps the container now reads besides the
    rendered ones. A variable from a ConfigMap (envFrom) is changed in a copy of that ConfigMap
    for this pod alone: an `env` entry would not override it, since podman 4.3 lets envFrom win
    over env where a kubelet does the reverse."""
    carriers = [k for k, v in resolve_env(objects, c).items() if v == str(number)]
    assert len(carriers) == 1, f"{c['name']}: port {number} is set by {carriers or 'no env variable'}"
    (name,) = carriers
    port = free_port()
    for item in c.get("env", []):
        if item["name"] == name and "value" in item:
            item["value"] = str(port)
            return port, []
    for source in c.get("envFrom", []):
        ref = source.get("configMapRef")
        data = find_one(objects, "ConfigMap", ref["name"])["data"] if ref else {}
        if data.get(name) == str(number):
            configmap = copy.deepcopy(find_one(objects, "ConfigMap", ref["name"]))
            configmap["metadata"]["name"] = ref["name"] = f"{pod}-{ref['name']}"
            configmap["data"][name] = str(port)
            return port, [configmap]
    raise AssertionError(f"{c['name']}: {name} comes from neither a value nor a ConfigMap")


def playable(objects: list[Manifest], components: set[str]) -> list[Manifest]:
    """The chosen Deployments (every one of a component: with pools, a worker Deployment each)
    and the ConfigMaps they read, translated where podman cannot follow (above)."""
    chosen = [
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["labels"]["app.kubernetes.io/component"] in components
    ]
    referenced = set().union(*map(configmaps_read, chosen))
    out = [
        copy.deepcopy(o) for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] in referenced
    ]
    taken: set[int] = set()
    for o in chosen:
        d = copy.deepcopy(o)
        d["spec"]["replicas"] = 1
        spec = d["spec"]["template"]["spec"]
        spec["hostNetwork"] = True
        for volume in spec.get("volumes", []):
            if "emptyDir" in volume:
                old, volume["name"] = volume["name"], f"{d['metadata']['name']}-{volume['name']}"
                for c in spec["containers"]:
                    for mount in c.get("volumeMounts", []):
                        if mount["name"] == old:
                            mount["name"] = volume["name"]
        for c in spec["containers"]:
            ports = {p["name"]: p["containerPort"] for p in c.pop("ports", [])}
            moved = {}
            for number in ports.values():
                if number in taken:
                    moved[number], configmaps = move_port(objects, d["metadata"]["name"], c, number)
                    out += configmaps
                taken.add(moved.get(number, number))
            for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
                for handler in ("httpGet", "tcpSocket"):
                    probe = c.get(kind, {}).get(handler)
                    if probe:
                        number = ports[probe["port"]] if isinstance(probe["port"], str) else probe["port"]
                        probe["port"] = moved.get(number, number)
        out.append(d)
    return out


@dataclass
class Played:
    objects: list[Manifest]
    """The chart as rendered (before translation)."""
    containers: dict[str, Container]
    base_url: str
    values: list[str]
    """The --set values the release was rendered with."""
    llm_url: str
    """The mock pod's OpenAI-compatible base URL."""


def chart_values(broker: BrokerURLs, prefix: str, ports: dict[str, int]) -> list[str]:
    """What every release of the module is rendered with: the run's broker, broker names of its
    own under `prefix`, no KEDA, the given ports, the local images."""
    values = [
        f"rabbitmq.url={broker.amqp_url}",
        *isolation_values(prefix),
        "worker.keda.enabled=false",
        f"api.port={ports['api']}",
        f"worker.metricsPort={ports['worker']}",
        f"mockllm.port={ports['mockllm']}",
        *(
            f"{s}.image.{k}={v}"
            for s in ("api", "worker", "mockllm")
            for k, v in (("registry", "localhost"), ("repository", f"llm-stream-{s}"), ("tag", "dev"))
        ),
    ]
    if broker.management_url:
        values.append(f"rabbitmq.managementUrl={broker.management_url}")
    return values


def create_secret(objects: list[Manifest], directory: Path) -> str:
    """The rendered Secret as a podman secret (what podman's secretKeyRef reads: a JSON map of
    base64 values); its name."""
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    secret_file = directory / "secret.json"
    secret_file.write_text(json.dumps(secret["data"]))
    name = str(secret["metadata"]["name"])
    podman("secret", "create", name, str(secret_file))
    return name


@pytest.fixture(scope="module")
def played(
    images: dict[str, int], broker: BrokerURLs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Played]:
    release = unique("kp")
    prefix = release
    ports = {"mockllm": free_port(), "api": free_port(), "worker": free_port()}
    common = chart_values(broker, prefix, ports)
    # The release as configured for an OpenAI-compatible endpoint at the mock pod's address.
    llm_url = f"http://127.0.0.1:{ports['mockllm']}/v1"
    values = [*common, f"llm.baseUrl={llm_url}"]
    objects = helm_render(release, values)
    # The mock's own Deployment, from the demo configuration that enables it.
    mock_objects = helm_render(release, [*common, "mockllm.enabled=true"])

    play_file = tmp_path_factory.mktemp("kube") / "play.yaml"
    play_file.write_text(
        yaml.safe_dump_all(playable(mock_objects, {"mockllm"}) + playable(objects, {"api", "worker"}))
    )
    secret_name = create_secret(objects, play_file.parent)
    try:
        podman("kube", "play", str(play_file), timeout=180)
        containers = {}
        for component, source in (("mockllm", mock_objects), ("worker", objects), ("api", objects)):
            (deployment,) = [
                o
                for o in source
                if o["kind"] == "Deployment"
                and o["metadata"]["labels"]["app.kubernetes.io/component"] == component
            ]
            (spec,) = deployment["spec"]["template"]["spec"]["containers"]
            name = f"{deployment['metadata']['name']}-pod-0-{spec['name']}"
            containers[component] = Container(name, spec)
        for component in ("mockllm", "worker", "api"):
            containers[component].wait_ready(90)
        yield Played(objects, containers, f"http://127.0.0.1:{ports['api']}", values, llm_url)
    finally:
        podman("kube", "down", str(play_file), check=False, timeout=180)
        podman("secret", "rm", secret_name, check=False)
        delete_topology(broker.amqp_url, prefix)


def test_played_pods_become_ready_and_stream_an_answer(played: Played) -> None:
    message = "Hello from the chart's pods"
    response = httpx.post(
        f"{played.base_url}/chat/async", json={"message": message}, timeout=30, trust_env=False
    )
    assert response.status_code == 200, response.text
    events = read_stream(played.base_url, response.json()["session_id"])
    assert answer_of(events) == expected_answer(message, 50)
    # Liveness as the chart defines it, run from outside like the kubelet.
    for component in ("api", "worker", "mockllm"):
        assert played.containers[component].probe("livenessProbe"), component


@pytest.mark.parametrize("component", ["api", "worker"])
def test_podman_applied_the_pod_spec(played: Played, component: str) -> None:
    c = played.containers[component]
    # env: every variable the chart gives the container (ConfigMap and Secret), as rendered.
    (deployment,) = [
        o
        for o in played.objects
        if o["kind"] == "Deployment" and o["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    expected_env = resolve_env(played.objects, c.spec)
    env = dict(line.split("=", 1) for line in c.exec("env").stdout.splitlines() if "=" in line)
    assert {k: env.get(k) for k in expected_env} == expected_env
    assert "RABBIT_MQ" in expected_env  # from the Secret, through podman's secret store
    release = played.objects[0]["metadata"]["labels"]["app.kubernetes.io/instance"]
    assert {k: env.get(k) for k in broker_names(release)} == broker_names(release)  # names of its own
    # securityContext: uid/gid, no capabilities, no privilege escalation, seccomp, read-only root.
    status = c.exec("cat", "/proc/self/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    sc = deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert fields["Uid"].split()[0] == str(sc["runAsUser"]) and fields["Gid"].split()[0] == str(
        sc["runAsGroup"]
    )
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0
    assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2"
    denied = c.exec("sh", "-c", "echo x > /app/x")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    # The emptyDir at /tmp is writable; PID 1 is the entry point.
    assert c.exec("sh", "-c", "echo x > /tmp/x && cat /tmp/x").stdout.strip() == "x"
    assert f"llm-stream-{component}" in c.exec("cat", "/proc/1/cmdline").stdout
    # resources.limits
    host = json.loads(podman("inspect", "--format", "{{json .HostConfig}}", c.name).stdout)
    limits = c.spec["resources"]["limits"]
    assert host["Memory"] == quantity_bytes(limits["memory"])
    assert host["NanoCpus"] == int(float(cpus(limits["cpu"])) * 1e9)


# --- what podman cannot run, proven against the running pods -----------------------------------


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_of(objects: list[Manifest], component: str) -> Manifest:
    (deployment,) = [
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    return deployment["spec"]["template"]


def tcp_connections(container: Container) -> list[Any]:
    """TCP sockets of the container's processes, seen from the host (shared network)."""
    import psutil

    pid = int(podman("inspect", "--format", "{{.State.Pid}}", container.name).stdout)
    processes = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return [conn for p in processes for conn in p.net_connections(kind="tcp")]


def container_port(pod: Manifest, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (c,) = pod["spec"]["containers"]
    (number,) = [p["containerPort"] for p in c["ports"] if p["name"] == port]
    return number


def test_the_api_service_selects_the_api_pod_and_targets_the_port_it_serves(played: Played) -> None:
    """No Services under podman: check that the rendered Service would route to the running pod
    (selector on its labels, targetPort = the port its process listens on), then run the chart's
    `helm test` pod with the Service address replaced by that endpoint, as kube-proxy would."""
    (service,) = [
        o
        for o in played.objects
        if o["kind"] == "Service" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "api"
    ]
    pod = pod_of(played.objects, "api")
    assert labels_match(service["spec"]["selector"], pod["metadata"]["labels"])
    for other in ("worker",):
        assert not labels_match(
            service["spec"]["selector"], pod_of(played.objects, other)["metadata"]["labels"]
        )
    (port,) = service["spec"]["ports"]
    target = container_port(pod, port["targetPort"])
    listening = {c.laddr.port for c in tcp_connections(played.containers["api"]) if c.status == "LISTEN"}
    assert target in listening, (target, listening)

    # The helm test pod, under podman, against the endpoint the Service resolves to.
    (test_pod,) = [o for o in played.objects if o["kind"] == "Pod"]
    test_pod = copy.deepcopy(test_pod)
    test_pod["metadata"]["name"] = f"{test_pod['metadata']['name']}-{unique('run')}"
    test_pod["spec"]["hostNetwork"] = True
    (c,) = test_pod["spec"]["containers"]
    service_url = f"http://{service['metadata']['name']}:{port['port']}/"
    assert c["command"][-1].startswith(service_url)
    c["command"][-1] = c["command"][-1].replace(service_url, f"http://127.0.0.1:{target}/")
    for volume in test_pod["spec"].get("volumes", []):
        old, volume["name"] = volume["name"], f"{test_pod['metadata']['name']}-{volume['name']}"
        for mount in c.get("volumeMounts", []):
            if mount["name"] == old:
                mount["name"] = volume["name"]
    path = (
        Path(podman("info", "--format", "{{.Store.RunRoot}}").stdout.strip())
        / f"{test_pod['metadata']['name']}.yaml"
    )
    path.write_text(yaml.safe_dump(test_pod))
    try:
        podman("kube", "play", str(path), timeout=120)
        name = f"{test_pod['metadata']['name']}-{c['name']}"
        podman("wait", name, timeout=60)
        state = json.loads(podman("inspect", "--format", "{{json .State}}", name).stdout)
        logs = podman("logs", name, check=False).stdout
        assert state["ExitCode"] == 0, logs
        assert '"status":"ok"' in logs.replace(" ", ""), logs
    finally:
        podman("kube", "down", str(path), check=False, timeout=120)
        path.unlink(missing_ok=True)


def test_network_policies_allow_every_connection_the_running_pods_made(
    played: Played, broker: BrokerURLs
) -> None:
    """No NetworkPolicy under podman: render the same release with `networkPolicy.enabled`,
    then check every TCP connection the API and worker pods actually hold after streaming an
    answer, against the policy that selects the pod: outbound to an allowed port, inbound only to
    an allowed port. Enforced, the policies would let this traffic through."""
    release = played.objects[0]["metadata"]["labels"]["app.kubernetes.io/instance"]
    values = [*played.values, "networkPolicy.enabled=true"]
    policies = [o for o in helm_render(release, values) if o["kind"] == "NetworkPolicy"]
    message = "through the network policies"
    response = httpx.post(
        f"{played.base_url}/chat/async", json={"message": message}, timeout=30, trust_env=False
    )
    assert answer_of(read_stream(played.base_url, response.json()["session_id"])) == expected_answer(
        message, 50
    )

    for component in ("api", "worker"):
        pod = pod_of(played.objects, component)
        (policy,) = [
            p
            for p in policies
            if labels_match(p["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"])
        ]
        egress = {
            container_port(pod, p["port"]) for rule in policy["spec"]["egress"] for p in rule.get("ports", [])
        }
        ingress = {
            container_port(pod, p["port"])
            for rule in policy["spec"]["ingress"]
            for p in rule.get("ports", [])
        }
        connections = [c for c in tcp_connections(played.containers[component]) if c.raddr]
        listening = {
            c.laddr.port for c in tcp_connections(played.containers[component]) if c.status == "LISTEN"
        }
        assert connections, f"{component}: no connection observed"
        for conn in connections:
            if conn.laddr.port in listening:
                assert conn.laddr.port in ingress, (
                    f"{component}: inbound to {conn.laddr.port}, allowed {ingress}"
                )
            else:
                assert conn.raddr.port in egress, (
                    f"{component}: outbound to {conn.raddr.port}, allowed {egress}"
                )


# --- two model pools: a worker Deployment per pool --------------------------------------------

POOLS = {"alpha": "alpha-1", "beta": "beta-1"}
"""Each pool and its model; alpha is the default pool, with three lanes."""
POOL_VALUES = [
    "pools[0].name=alpha",
    "pools[0].default=true",
    "pools[0].models[0]=alpha-1",
    "pools[0].lanes={priority,default,flex}",
    "pools[1].name=beta",
    "pools[1].models[0]=beta-1",
]


@dataclass
class PoolsPlayed:
    objects: list[Manifest]
    """The chart as rendered (before translation)."""
    play: list[Manifest]
    """What was played: the translated Deployments and the ConfigMaps they read."""
    api: Container
    workers: dict[str, Container]
    """Each pool's worker pod, by pool."""
    base_url: str
    pools_json: str
    """LLM_POOLS as rendered into the pools ConfigMap."""


def pod_container(deployment: Manifest) -> Container:
    """The container of the pod `podman kube play` made of the (translated) Deployment: its
    probes have the port numbers the pod listens on."""
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return Container(f"{deployment['metadata']['name']}-pod-0-{c['name']}", c)


@pytest.fixture(scope="module")
def pools_played(
    played: Played, broker: BrokerURLs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PoolsPlayed]:
    """A release with two model pools, its API and each pool's worker Deployment played as pods
    (the pool workers on one metrics port in the chart, so the second is moved), against the mock
    pod of `played`, which is not started twice."""
    release = unique("kpp")
    ports = {"api": free_port(), "worker": free_port(), "mockllm": free_port()}
    values = [*chart_values(broker, release, ports), f"llm.baseUrl={played.llm_url}", *POOL_VALUES]
    objects = helm_render(release, values)
    (pools_map,) = [
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-pools")
    ]
    pools_json = pools_map["data"]["pools.json"]
    play = playable(objects, {"api", "worker"})
    play_file = tmp_path_factory.mktemp("kube-pools") / "play.yaml"
    play_file.write_text(yaml.safe_dump_all(play))
    secret_name = create_secret(objects, play_file.parent)
    try:
        podman("kube", "play", str(play_file), timeout=180)
        deployments = [o for o in play if o["kind"] == "Deployment"]
        workers = {
            d["metadata"]["labels"]["llm-stream.io/pool"]: pod_container(d)
            for d in deployments
            if d["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
        }
        (api,) = [
            pod_container(d)
            for d in deployments
            if d["metadata"]["labels"]["app.kubernetes.io/component"] == "api"
        ]
        assert workers.keys() == POOLS.keys(), workers
        for container in [*workers.values(), api]:
            container.wait_ready(90)
        yield PoolsPlayed(objects, play, api, workers, f"http://127.0.0.1:{ports['api']}", pools_json)
    finally:
        podman("kube", "down", str(play_file), check=False, timeout=180)
        podman("secret", "rm", secret_name, check=False)
        delete_topology(broker.amqp_url, release, pools_json)


def container_env(container: Container) -> dict[str, str]:
    """The environment of the container's PID 1 (a value may span lines, as LLM_POOLS does)."""
    raw = container.exec("cat", "/proc/1/environ").stdout
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def pools_health(base_url: str, seconds: float = 30) -> dict[str, dict[str, Any]]:
    """/health/full's pools once every pool counts a worker (heartbeats arrive every few
    seconds), or as they are after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        response = httpx.get(f"{base_url}/health/full", timeout=5, trust_env=False)
        assert response.status_code == 200, response.text
        pools: dict[str, dict[str, Any]] = response.json()["pools"]
        if all(pool["workers"] for pool in pools.values()) or time.monotonic() > deadline:
            return pools
        time.sleep(0.5)


def test_each_pools_worker_pod_is_ready_with_its_pool_and_the_api_counts_one_worker_each(
    pools_played: PoolsPlayed,
) -> None:
    # Every variable a kubelet would give each pod of the play file, as podman gave it; among
    # them LLM_POOLS from the pools ConfigMap (configMapKeyRef).
    secrets = [o for o in pools_played.objects if o["kind"] == "Secret"]
    for c in [pools_played.api, *pools_played.workers.values()]:
        expected = resolve_env([*pools_played.play, *secrets], c.spec)
        env = container_env(c)
        assert {k: env.get(k) for k in expected} == expected, c.name
        assert json.loads(env["LLM_POOLS"]) == json.loads(pools_played.pools_json), c.name
    for pool, worker in pools_played.workers.items():
        env = container_env(worker)
        assert (env["LLM_POOL"], env["LLM_MODEL"]) == (pool, POOLS[pool])
        assert worker.probe("livenessProbe"), pool
    metrics_ports = {env["METRICS_PORT"] for env in map(container_env, pools_played.workers.values())}
    assert len(metrics_ports) == 2, metrics_ports  # the second pool's worker was moved off the first's

    pools = pools_health(pools_played.base_url)
    assert {name: (pool["workers"], pool["models"]) for name, pool in pools.items()} == {
        "alpha": (1, ["alpha-1"]),
        "beta": (1, ["beta-1"]),
    }
    assert pools["alpha"]["lanes"] == ["priority", "default", "flex"]
    assert pools["beta"]["lanes"] == ["default"]


def completed_tasks(worker: Container) -> float:
    port = worker.port(worker.spec["livenessProbe"]["httpGet"]["port"])
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
    found = re.search(r'^llmstream_worker_tasks_total\{outcome="completed"\} (\S+)$', metrics, re.M)
    assert found, metrics[-2000:]
    return float(found.group(1))


def test_each_model_is_answered_by_its_pools_worker_pod_and_an_unknown_one_is_refused(
    pools_played: PoolsPlayed, played: Played
) -> None:
    base_url = pools_played.base_url
    messages = {pool: f"for pool {pool} {unique('m')}" for pool in POOLS}
    sessions = {}
    for pool, model in POOLS.items():
        response = httpx.post(
            f"{base_url}/chat/async",
            json={"message": messages[pool], "model": model},
            timeout=30,
            trust_env=False,
        )
        assert response.status_code == 200, response.text
        sessions[pool] = response.json()["session_id"]
    for pool, session_id in sessions.items():
        assert answer_of(read_stream(base_url, session_id)) == expected_answer(messages[pool], 50), pool

    # Which pod served which: each worker's log names its own pool's session only, and each
    # counts one completed task.
    for pool, worker in pools_played.workers.items():
        result = podman("logs", worker.name)
        logs = result.stdout + result.stderr
        for other, session_id in sessions.items():
            assert (session_id in logs) == (other == pool), (pool, other, logs[-3000:])
        assert completed_tasks(worker) == 1, pool
    # The shared mock was asked for each pool's model.
    mock_url = played.llm_url.removesuffix("/v1")
    seen = httpx.get(f"{mock_url}/debug/streams", timeout=5, trust_env=False).json()["parameters"]
    models = {p["prompt"]: p["model"] for p in seen}
    assert {pool: models.get(messages[pool]) for pool in POOLS} == POOLS

    refused = httpx.post(
        f"{base_url}/chat/async", json={"message": "hi", "model": "gamma-1"}, timeout=30, trust_env=False
    )
    assert refused.status_code == 404, refused.text
    assert refused.json()["error"] == "model_not_found"
