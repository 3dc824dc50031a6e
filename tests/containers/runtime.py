"""Run the chart's containers under podman, the way a kubelet would run them.

Everything a container gets is read from the rendered chart (``helm template``), never copied
by hand: image command (the image's own entry point), env (``env`` values, ``secretKeyRef``
and ``configMapKeyRef`` resolved against the rendered Secrets and ConfigMaps, ``envFrom``),
the securityContext (uid/gid, read-only root filesystem, dropped capabilities, no privilege
escalation, the runtime's default seccomp profile), ``emptyDir`` volumes as size-limited tmpfs,
resource limits, the termination grace period, and readiness through the container's own
probes.

Networking is the host's (``--network host``): the containers listen on the ports the chart
gives them (rendered with free ports), and each rendered Service name resolves to 127.0.0.1 in
/etc/hosts, which is what a ClusterIP Service with a same-numbered port gives a pod.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_SH = REPO / "scripts" / "containers.sh"
IMAGES_PY = REPO / "scripts" / "images.py"
SERVICES = ("api", "worker", "mockllm")

Manifest = dict[str, Any]


def image_name(service: str) -> str:
    return f"localhost/llm-stream-{service}:dev"


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """podman with the project's configuration (scripts/containers.sh podman ...)."""
    result = subprocess.run(
        [str(CONTAINERS_SH), "podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"`podman {' '.join(args)}` exited {result.returncode}:\n{result.stderr}{result.stdout}",
            pytrace=False,
        )
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- the rendered chart ------------------------------------------------------------------------

# The broker names the chart sets through its `config` values.
CHART_NAME_VALUES = {
    "TASK_QUEUE": "config.taskQueue",
    "EVENTS_STREAM": "config.eventsStream",
    "PRESENCE_EXCHANGE": "config.presenceExchange",
    "DEAD_LETTER_EXCHANGE": "config.deadLetterExchange",
    "DEAD_LETTER_QUEUE": "config.deadLetterQueue",
}


def broker_names(prefix: str) -> dict[str, str]:
    """Every queue, stream and exchange name the services take from the environment
    (BrokerSettings), under `prefix`: a stack shares its broker with nothing."""
    from mqcommon.settings import BrokerSettings

    names = {}
    for field_name, info in BrokerSettings.model_fields.items():
        if isinstance(info.default, str) and info.default.startswith("llm."):
            names[field_name.upper()] = prefix + info.default.removeprefix("llm")
    assert CHART_NAME_VALUES.keys() <= names.keys(), names
    return names


def topology_names(prefix: str, pools_json: str = "") -> list[str]:
    """Every queue and exchange name a stack under `prefix` may declare, as the services derive
    them (mqcommon.topology, mqcommon.pools): `broker_names` and what follows from the task queue
    (intake, queue log, positions, watermarks, keeper lock, dead-letter notices), and with model
    pools (LLM_POOLS) the same for each line, `<task queue>.<pool>[.<lane>]`, with its pool's
    dead letters `<task queue>.<pool>.dead` and their notices."""
    import dataclasses

    from mqcommon.pools import PoolMap
    from mqcommon.settings import BrokerSettings
    from mqcommon.topology import Topology

    names = broker_names(prefix)
    found = set(names.values())
    for pools_value in {"", pools_json}:
        settings = BrokerSettings(**{k.lower(): v for k, v in names.items()}, llm_pools=pools_value)
        pools = PoolMap.from_settings(settings)
        for line in pools.lines():
            topology = Topology.from_settings(pools.line_settings(settings, line))
            for f in dataclasses.fields(topology):
                value = getattr(topology, f.name)
                for each in value if isinstance(value, tuple) else (value,):  # shards: a tuple
                    if each is not None:  # no shard exchange with one shard
                        found.add(each if isinstance(each, str) else each.name)
    return sorted(found)


def isolation_values(prefix: str) -> list[str]:
    """`--set` values giving a release the names of `broker_names`: the chart's `config` values,
    and `extraEnv` of the API and the worker for names the chart does not set."""
    values = []
    extra = 0
    for env, name in broker_names(prefix).items():
        if env in CHART_NAME_VALUES:
            values.append(f"{CHART_NAME_VALUES[env]}={name}")
            continue
        for component in ("api", "worker"):
            values += [
                f"{component}.extraEnv[{extra}].name={env}",
                f"{component}.extraEnv[{extra}].value={name}",
            ]
        extra += 1
    return values


def find_one(objects: Iterable[Manifest], kind: str, name: str) -> Manifest:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def workload(objects: Iterable[Manifest], component: str) -> Manifest:
    for o in objects:
        if (
            o["kind"] == "Deployment"
            and o["metadata"]["labels"].get("app.kubernetes.io/component") == component
        ):
            return o
    raise AssertionError(f"no Deployment for component {component}")


def secret_data(secret: Manifest) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return data | dict(secret.get("stringData") or {})


def resolve_env(objects: list[Manifest], c: Manifest) -> dict[str, str]:
    """The environment a kubelet gives the container: envFrom first, then env (env wins)."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env |= find_one(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
        else:
            env |= secret_data(find_one(objects, "Secret", source["secretRef"]["name"]))
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]
        if "secretKeyRef" in ref:
            key = ref["secretKeyRef"]
            env[item["name"]] = secret_data(find_one(objects, "Secret", key["name"]))[key["key"]]
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[item["name"]] = find_one(objects, "ConfigMap", key["name"])["data"][key["key"]]
        else:
            raise AssertionError(f"env {item['name']}: {ref} is not emulated")
    return env


def service_names(objects: Iterable[Manifest]) -> list[str]:
    return [o["metadata"]["name"] for o in objects if o["kind"] == "Service"]


def quantity_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([KMG]i?)?", str(quantity))
    assert match, f"quantity {quantity}"
    return int(match.group(1)) * units.get(match.group(2) or "", 1)


def cpus(quantity: str) -> str:
    q = str(quantity)
    return str(int(q[:-1]) / 1000) if q.endswith("m") else q


def run_args(objects: list[Manifest], deployment: Manifest, name: str) -> list[str]:
    """`podman run` arguments for the Deployment's (single) container, as the chart specifies it."""
    spec = deployment["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    pod_sc = spec.get("securityContext", {})
    sc = pod_sc | c.get("securityContext", {})
    args = ["--name", name, "--network", "host", "--pull", "never"]
    for service in service_names(objects):
        args += ["--add-host", f"{service}:127.0.0.1"]
    # securityContext
    uid, gid = sc.get("runAsUser"), sc.get("runAsGroup", sc.get("runAsUser"))
    assert uid, "the chart must name a uid"
    args += ["--user", f"{uid}:{gid}"]
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    for cap in sc.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    for cap in sc.get("capabilities", {}).get("add", []):
        args += ["--cap-add", cap]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    seccomp = sc.get("seccompProfile", {}).get("type")
    assert seccomp in (None, "RuntimeDefault"), f"seccomp {seccomp} is not emulated"  # podman's default
    if "fsGroup" in pod_sc:
        args += ["--group-add", str(pod_sc["fsGroup"])]
    # volumes: emptyDir only (what the chart's pods use), as a size-limited tmpfs
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in c.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        assert "emptyDir" in volume, f"volume {mount['name']}: only emptyDir is emulated"
        size = volume["emptyDir"].get("sizeLimit")
        tmpfs = f"type=tmpfs,destination={mount['mountPath']},tmpfs-mode=1777"
        args += ["--mount", tmpfs + (f",tmpfs-size={quantity_bytes(size)}" if size else "")]
    # resources.limits
    limits = c.get("resources", {}).get("limits", {})
    if "memory" in limits:
        args += ["--memory", str(quantity_bytes(limits["memory"]))]
    if "cpu" in limits:
        args += ["--cpus", cpus(limits["cpu"])]
    # shutdown: SIGTERM, then SIGKILL after the grace period
    args += ["--stop-signal", "SIGTERM", "--stop-timeout", str(spec.get("terminationGracePeriodSeconds", 30))]
    for key, value in resolve_env(objects, c).items():
        args += ["--env", f"{key}={value}"]
    args.append(image_name(deployment["metadata"]["labels"]["app.kubernetes.io/component"]))
    args += c.get("command", []) + c.get("args", [])
    return args


# --- containers ------------------------------------------------------------------------------------


@dataclass
class Container:
    name: str
    spec: Manifest
    """The container spec from the chart (ports and probes)."""
    started: list[str] = field(default_factory=list)

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return (result.stdout + result.stderr)[-6000:]

    def state(self) -> dict[str, Any]:
        out = podman("inspect", "--format", "{{json .State}}", self.name).stdout
        return json.loads(out)

    def exec(self, *command: str) -> subprocess.CompletedProcess:
        return podman("exec", self.name, *command, check=False)

    def port(self, name_or_number: str | int) -> int:
        if isinstance(name_or_number, int):
            return name_or_number
        for p in self.spec.get("ports", []):
            if p.get("name") == name_or_number:
                return int(p["containerPort"])
        raise AssertionError(f"{self.name}: no port {name_or_number}")

    def probe(self, kind: str) -> bool:
        """One run of the container's probe, as the kubelet runs it."""
        probe = self.spec[kind]
        timeout = probe.get("timeoutSeconds", 1)
        if "httpGet" in probe:
            get = probe["httpGet"]
            url = f"http://127.0.0.1:{self.port(get['port'])}{get.get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    return 200 <= response.status < 400
            except (urllib.error.URLError, OSError):
                return False
        if "tcpSocket" in probe:
            with socket.socket() as s:
                s.settimeout(timeout)
                return s.connect_ex(("127.0.0.1", self.port(probe["tcpSocket"]["port"]))) == 0
        raise AssertionError(f"{self.name}: {kind} {probe} is not emulated")

    def wait_ready(self, seconds: float = 60) -> float:
        """Poll the readiness probe until it passes; the seconds it took."""
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            if not self.state().get("Running"):
                pytest.fail(f"{self.name} exited before it was ready:\n{self.logs()}", pytrace=False)
            if self.probe("readinessProbe"):
                return time.monotonic() - began
            time.sleep(0.25)
        pytest.fail(f"{self.name} not ready within {seconds} s:\n{self.logs()}", pytrace=False)

    def stop(self, seconds: float | None = None) -> dict[str, Any]:
        """SIGTERM to PID 1 and wait (SIGKILL after the grace period); the final state."""
        args = ["stop"] + (["--time", str(int(seconds))] if seconds is not None else []) + [self.name]
        podman(*args, timeout=(seconds or 300) + 30)
        return self.state()

    def remove(self) -> None:
        podman("rm", "--force", "--time", "0", self.name, check=False)


def start(objects: list[Manifest], component: str, name: str) -> Container:
    deployment = workload(objects, component)
    (spec,) = deployment["spec"]["template"]["spec"]["containers"]
    podman("run", "--detach", *run_args(objects, deployment, name))
    return Container(name, spec)


# --- SSE ---------------------------------------------------------------------------------------------


def read_stream(base_url: str, session_id: str, seconds: float = 60) -> list[dict[str, Any]]:
    """GET /stream/{id} until the done or error event; the events' data, in order."""
    import httpx

    events: list[dict[str, Any]] = []
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(seconds), trust_env=False) as client:
        with client.stream("GET", f"/stream/{session_id}") as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("text/event-stream")
            began = time.monotonic()
            for line in response.iter_lines():
                if time.monotonic() - began > seconds:
                    raise AssertionError(f"stream {session_id} not finished within {seconds} s: {events}")
                if line.startswith("data:"):
                    event = json.loads(line[5:].strip())
                    events.append(event)
                    if event.get("type") in ("done", "error"):
                        return events
    raise AssertionError(f"stream {session_id} closed without a final event: {events}")


def answer_of(events: list[dict[str, Any]]) -> str:
    assert events and events[-1] == {"type": "done"}, events[-3:]
    return "".join(e["chunk"] for e in events if "chunk" in e)
