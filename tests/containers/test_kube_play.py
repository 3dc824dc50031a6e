"""The chart's own pods under a real runtime: `podman kube play` of the rendered Deployments.

podman reads the rendered ConfigMaps and Deployments itself: securityContext, envFrom
ConfigMap, env from the Secret (created as a podman secret from the rendered Secret's data),
resource limits and the emptyDir volume. Where podman 4.3 cannot express what the chart says, the
play file is translated, each time for a stated reason (see `playable`), and docs/deploy.md
lists it:

- no Services (and no cluster DNS): the pods use the host's network, so the API and the worker
  are rendered with `llm.baseUrl` at the mock pod's address instead of the mock's Service;
- containerPorts would be published on the host, which podman refuses with host networking:
  they are dropped and the probes' named ports replaced by their numbers;
- podman turns an emptyDir into a named volume shared by every pod that names it: each pod's
  gets a name of its own;
- podman runs a liveness probe as `curl` inside the container (the images have none, and no
  systemd timer runs it here) and ignores readiness and startup probes: the test runs the
  chart's probes from outside, as a kubelet does.
"""

from __future__ import annotations

import copy
import json
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


def playable(objects: list[Manifest], components: set[str]) -> list[Manifest]:
    """The chosen Deployments and the ConfigMaps they read, translated where podman cannot
    follow (above)."""
    chosen = [
        o
        for o in objects
        if o["kind"] == "Deployment" and o["metadata"]["labels"]["app.kubernetes.io/component"] in components
    ]
    referenced = {
        source["configMapRef"]["name"]
        for o in chosen
        for c in o["spec"]["template"]["spec"]["containers"]
        for source in c.get("envFrom", [])
        if "configMapRef" in source
    }
    out = [
        copy.deepcopy(o) for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] in referenced
    ]
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
            for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
                for handler in ("httpGet", "tcpSocket"):
                    probe = c.get(kind, {}).get(handler)
                    if probe and isinstance(probe["port"], str):
                        probe["port"] = ports[probe["port"]]
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


@pytest.fixture(scope="module")
def played(
    images: dict[str, int], broker: BrokerURLs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Played]:
    release = unique("kp")
    prefix = release
    ports = {"mockllm": free_port(), "api": free_port(), "worker": free_port()}
    common = [
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
        common.append(f"rabbitmq.managementUrl={broker.management_url}")
    # The release as configured for an OpenAI-compatible endpoint at the mock pod's address.
    values = [*common, f"llm.baseUrl=http://127.0.0.1:{ports['mockllm']}/v1"]
    objects = helm_render(release, values)
    # The mock's own Deployment, from the demo configuration that enables it.
    mock_objects = helm_render(release, [*common, "mockllm.enabled=true"])

    play_file = tmp_path_factory.mktemp("kube") / "play.yaml"
    play_file.write_text(
        yaml.safe_dump_all(playable(mock_objects, {"mockllm"}) + playable(objects, {"api", "worker"}))
    )
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    secret_file = play_file.with_name("secret.json")
    secret_file.write_text(json.dumps(secret["data"]))  # podman's secretKeyRef: a JSON map, base64 values
    secret_name = secret["metadata"]["name"]
    podman("secret", "create", secret_name, str(secret_file))
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
        yield Played(objects, containers, f"http://127.0.0.1:{ports['api']}", values)
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
