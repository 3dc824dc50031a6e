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
    cpus,
    free_port,
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


@pytest.fixture(scope="module")
def played(
    images: dict[str, int], broker: BrokerURLs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Played]:
    release = unique("kp")
    prefix = release
    ports = {"mockllm": free_port(), "api": free_port(), "worker": free_port()}
    common = [
        f"rabbitmq.url={broker.amqp_url}",
        f"config.taskQueue={prefix}.tasks",
        f"config.eventsStream={prefix}.events",
        f"config.presenceExchange={prefix}.presence",
        f"config.deadLetterExchange={prefix}.dlx",
        f"config.deadLetterQueue={prefix}.tasks.dead",
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
    objects = helm_render(release, [*common, f"llm.baseUrl=http://127.0.0.1:{ports['mockllm']}/v1"])
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
        yield Played(objects, containers, f"http://127.0.0.1:{ports['api']}")
    finally:
        podman("kube", "down", str(play_file), check=False, timeout=180)
        podman("secret", "rm", secret_name, check=False)
        data = next(o["data"] for o in objects if o["kind"] == "ConfigMap" and "TASK_QUEUE" in o["data"])
        delete_topology(
            broker.amqp_url,
            [data["TASK_QUEUE"], data["EVENTS_STREAM"], data["DEAD_LETTER_QUEUE"]],
            [data["PRESENCE_EXCHANGE"], data["DEAD_LETTER_EXCHANGE"]],
        )


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
