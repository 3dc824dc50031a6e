"""Every rendered object validates strictly: Kubernetes schemas for core kinds, CRD schemas for
KEDA and Prometheus Operator kinds; skaffold.yaml against the skaffold schema."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from .manifests import (
    CHART,
    CI_VALUES,
    KUBERNETES_VERSIONS,
    OVERLAYS,
    REPO,
    crd_validators,
    find,
    kustomize,
    render_ci,
    skaffold_schema,
    validation_errors,
)

pytestmark = pytest.mark.deploy


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_chart_objects_validate(values: Path) -> None:
    objects = render_ci(values)
    errors = [error for obj in objects for error in validation_errors(obj)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_objects_validate(overlay: Path) -> None:
    objects = kustomize(overlay)
    errors = [error for obj in objects for error in validation_errors(obj)]
    assert not errors, "\n".join(errors)


def test_skaffold_dev_values_validate() -> None:
    objects = render_ci(REPO / "deploy/helm/dev-values.yaml")
    errors = [error for obj in objects for error in validation_errors(obj)]
    assert not errors, "\n".join(errors)


def test_overlays_dev_and_prod_exist() -> None:
    assert {p.name for p in OVERLAYS} >= {"dev", "prod"}
    assert find(kustomize(REPO / "deploy/k8s/overlays/prod"), "ScaledObject")
    assert find(kustomize(REPO / "deploy/k8s/overlays/dev"), "StatefulSet", "rabbitmq")


def test_every_custom_resource_kind_rendered_has_a_schema() -> None:
    def custom(api_version: str) -> bool:
        group = api_version.rpartition("/")[0]
        return "." in group and not group.endswith(".k8s.io")

    kinds = {
        (o["apiVersion"], o["kind"])
        for values in CI_VALUES
        for o in render_ci(values)
        if custom(o["apiVersion"])
    }
    assert kinds <= set(crd_validators())
    assert {k for _, k in kinds} == {
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "RabbitmqCluster",
    }


def test_validation_rejects_unknown_and_mistyped_fields() -> None:
    """The validators are strict: a misspelt field or a wrong type is an error."""
    objects = render_ci(CI_VALUES[0])
    deployment = copy.deepcopy(find(objects, "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    assert any("livenessprobe" in e for e in validation_errors(deployment))

    scaled = copy.deepcopy(find(objects, "ScaledObject")[0])
    scaled["spec"]["triggers"][0]["metadata"]["value"] = 64  # KEDA wants strings
    assert validation_errors(scaled)
    scaled = copy.deepcopy(find(objects, "ScaledObject")[0])
    scaled["spec"]["maxReplicas"] = 3  # the field is maxReplicaCount
    assert any("maxReplicas" in e for e in validation_errors(scaled))

    (rendered,) = find(render_ci(CHART / "ci" / "operator-broker-values.yaml"), "RabbitmqCluster")
    assert not validation_errors(rendered)
    cluster = copy.deepcopy(rendered)
    cluster["spec"]["rabbitmq"]["additionalPlugin"] = ["rabbitmq_shovel"]  # additionalPlugins
    assert any("additionalPlugin" in e for e in validation_errors(cluster))
    cluster = copy.deepcopy(rendered)
    cluster["spec"]["replicas"] = "3"
    assert validation_errors(cluster)
    assert len(KUBERNETES_VERSIONS) == 2


def _apply_patches(config: dict, patches: list[dict]) -> dict:
    """The JSON-patch subset skaffold profiles use here (add/replace/remove)."""
    config = copy.deepcopy(config)
    for patch in patches:
        *parents, last = patch["path"].strip("/").split("/")
        node = config
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if patch["op"] == "add" and isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), patch["value"])
        elif patch["op"] in ("add", "replace"):
            node[int(last) if isinstance(node, list) else last] = patch["value"]
        elif patch["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
        else:
            raise AssertionError(f"unsupported patch {patch}")
    return config


def test_skaffold_config_validates_with_each_profile() -> None:
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    validator = jsonschema.Draft7Validator(skaffold_schema())
    assert config["apiVersion"] == "skaffold/v4beta14"
    variants = {"default": config}
    for profile in config.get("profiles", []):
        merged = _apply_patches(config, profile.get("patches", []))
        for section in ("build", "manifests", "deploy"):
            if section in profile:
                merged[section] = profile[section]
        merged.pop("profiles")
        variants[profile["name"]] = merged
    for name, variant in variants.items():
        errors = [
            f"{name}: {'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(variant)
        ]
        best = [str(jsonschema.exceptions.best_match(validator.iter_errors(variant)))] if errors else []
        assert not errors, "\n".join(errors + best)


def test_skaffold_builds_two_images_from_the_root_and_deploys_the_chart() -> None:
    config = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    assert set(artifacts) == {"llm-stream-api", "llm-stream-worker"}
    for name, artifact in artifacts.items():
        assert artifact.get("context", ".") == "."
        assert (REPO / artifact["docker"]["dockerfile"]).is_file()
        assert artifact["docker"]["target"] == name.removeprefix("llm-stream-")
    (release,) = config["deploy"]["helm"]["releases"]
    assert (REPO / release["chartPath"] / "Chart.yaml").is_file()
    for path in release["valuesFiles"]:
        assert (REPO / path).is_file()
    templates = release["setValueTemplates"]
    for part in ("api", "worker"):
        suffix = f"llm_stream_{part}"
        assert templates[f"{part}.image.repository"] == f"{{{{.IMAGE_REPO_NO_DOMAIN_{suffix}}}}}"
        assert suffix in templates[f"{part}.image.tag"]
    (profile,) = [p for p in config["profiles"] if p["name"] == "kustomize"]
    for path in profile["manifests"]["kustomize"]["paths"]:
        assert (REPO / path / "kustomization.yaml").is_file()
    for patch in profile.get("patches", []):
        assert (REPO / patch["value"]["docker"]["dockerfile"]).is_file()
