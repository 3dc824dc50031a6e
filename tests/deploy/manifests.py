"""Render the chart and the kustomize overlays with the real tools, and validate what they render.

Everything here works offline: helm and kubectl come from PATH or ``<repo>/.tools/bin``
(``make tools``), core kinds are validated by ``kubernetes-validate`` and custom resources by the
CRD schemas copied into ``deploy/schemas/``. A missing tool is a test failure, never a skip.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "llm-stream"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
OVERLAYS = sorted(p.parent for p in (REPO / "deploy" / "k8s" / "overlays").glob("*/kustomization.yaml"))
SCHEMAS = REPO / "deploy" / "schemas"
TOOLS_BIN = REPO / ".tools" / "bin"

# The chart's minimum (Chart.yaml kubeVersion) and the newest minor kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
RELEASE = "demo"
NAMESPACE = "llm"

Manifest = dict[str, Any]


def tool(name: str) -> str:
    """Path of helm or kubectl: on PATH, else in <repo>/.tools/bin; fails the test if absent."""
    found = shutil.which(name) or shutil.which(name, path=str(TOOLS_BIN))
    if not found:
        pytest.fail(f"{name} not found on PATH or in {TOOLS_BIN}: run `make tools`", pytrace=False)
    return found


def run(args: Sequence[str], *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"`{' '.join(args)}` exited {result.returncode}:\n{result.stderr}{result.stdout}",
            pytrace=False,
        )
    return result


def load_all(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@functools.cache
def helm_template(*extra: str, chart: Path = CHART) -> tuple[Manifest, ...]:
    """`helm template` of the chart (with test hooks) as a tuple of objects; cached per args."""
    result = run([tool("helm"), "template", RELEASE, str(chart), "--namespace", NAMESPACE, *extra])
    return tuple(load_all(result.stdout))


def render_ci(values_file: Path) -> tuple[Manifest, ...]:
    return helm_template("-f", str(values_file))


@functools.cache
def kustomize(overlay: Path) -> tuple[Manifest, ...]:
    result = run([tool("kubectl"), "kustomize", str(overlay)])
    return tuple(load_all(result.stdout))


def find(objects: Iterable[Manifest], kind: str, name_contains: str = "") -> list[Manifest]:
    return [o for o in objects if o["kind"] == kind and name_contains in o["metadata"]["name"]]


def one(objects: Iterable[Manifest], kind: str, name_contains: str = "") -> Manifest:
    found = find(objects, kind, name_contains)
    assert len(found) == 1, f"expected one {kind} named *{name_contains}*, got {len(found)}"
    return found[0]


def component(objects: Iterable[Manifest], kind: str, name: str) -> Manifest:
    """The object of a kind whose component label (or name suffix) is `name`."""
    for o in objects:
        if o["kind"] != kind:
            continue
        labels = o["metadata"].get("labels", {})
        if labels.get("app.kubernetes.io/component") == name or o["metadata"]["name"].endswith(f"-{name}"):
            return o
    raise AssertionError(f"no {kind} for component {name}")


def container(workload: Manifest) -> Manifest:
    spec = workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]
    (main,) = spec["containers"]
    return main


def config_map_for(objects: Iterable[Manifest], workload: Manifest) -> dict[str, str]:
    """The data of the ConfigMap a workload's container loads with envFrom."""
    objects = list(objects)
    data: dict[str, str] = {}
    for source in container(workload).get("envFrom", []):
        name = source["configMapRef"]["name"]
        (cm,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name]
        data.update(cm["data"])
    return data


def env_names(workload: Manifest, objects: Iterable[Manifest]) -> set[str]:
    """Every environment variable name the workload's container gets."""
    names = set(config_map_for(objects, workload))
    names |= {e["name"] for e in container(workload).get("env", [])}
    return names


def secret_ref(workload: Manifest, env_name: str) -> tuple[str, str]:
    for e in container(workload).get("env", []):
        if e["name"] == env_name:
            ref = e["valueFrom"]["secretKeyRef"]
            return ref["name"], ref["key"]
    raise AssertionError(f"{workload['metadata']['name']} has no secret env {env_name}")


# --- validation ---------------------------------------------------------------------------


def _closed(schema: Any) -> Any:
    """Close every object schema that lists properties, as strict field validation does."""
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> validator, from the CRDs in deploy/schemas/crds."""
    validators = {}
    for path in sorted((SCHEMAS / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _closed(version["schema"]["openAPIV3Schema"])
            # metadata is checked by Kubernetes itself, not by the CRD: keep it open.
            schema["properties"]["metadata"] = {"type": "object"}
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def validation_errors(obj: Manifest) -> list[str]:
    """Why an object would be refused: strict Kubernetes schemas, or its CRD's schema."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    name = f"{key[1]}/{obj.get('metadata', {}).get('name')}"
    crd = crd_validators().get(key)
    if crd is not None:
        return [f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in crd.iter_errors(obj)]
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{name} (Kubernetes {version}): {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{name}: {e.message} (and no CRD schema in {SCHEMAS / 'crds'})")
    return errors


def skaffold_schema() -> dict[str, Any]:
    return json.loads((SCHEMAS / "skaffold-v4beta14.json").read_text())
