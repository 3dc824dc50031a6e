"""The chart's autoscaling loop without a cluster: KEDA's rabbitmq scaler and the HPA it feeds.

``Trigger`` is read from the rendered chart: the ScaledObject's rabbitmq trigger, and the host
its TriggerAuthentication takes from the chart's Secret. ``queue_length`` asks the management
API exactly as KEDA's scaler does with ``protocol: http`` and ``mode: QueueLength`` (the URL it
builds, and the queue's ``messages``: ready plus unacknowledged). ``Autoscaler`` turns that
metric into replicas as the HPA does for an ``AverageValue`` external metric: the ratio to the
target with the HPA's 10% tolerance, ``ceil(metric / value)``, the min/max bounds, the
stabilization windows and the rate policies of the ScaledObject's ``behavior``.
"""

from __future__ import annotations

import base64
import math
import posixpath
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus, urlsplit

import httpx

HPA_TOLERANCE = 0.1  # kube-controller-manager's --horizontal-pod-autoscaler-tolerance default

Manifest = dict[str, Any]


def _one(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, rendered {len(found)}"
    return found[0]


@dataclass(frozen=True)
class Trigger:
    host: str
    queue_name: str
    vhost_name: str
    protocol: str
    mode: str
    value: float
    activation_value: float
    min_replicas: int
    max_replicas: int
    polling_interval: int
    cooldown_period: int
    behavior: dict[str, Any]
    use_regex: bool = False
    operation: str = "sum"
    page_size: int = 100

    @classmethod
    def from_manifests(cls, objects: list[Manifest], scaled_object: str | None = None) -> Trigger:
        """The trigger of the one ScaledObject, or of the one named ``scaled_object``."""
        scaled = _one(objects, "ScaledObject", scaled_object)
        spec = scaled["spec"]
        (trigger,) = [t for t in spec["triggers"] if t["type"] == "rabbitmq"]
        meta = trigger["metadata"]
        auth = _one(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        (ref,) = [r for r in auth["spec"]["secretTargetRef"] if r["parameter"] == "host"]
        secret = _one(objects, "Secret", ref["name"])
        if ref["key"] in secret.get("stringData", {}):
            host = secret["stringData"][ref["key"]]
        else:
            host = base64.b64decode(secret["data"][ref["key"]]).decode()
        return cls(
            host=host,
            queue_name=meta["queueName"],
            vhost_name=meta.get("vhostName", ""),
            protocol=meta.get("protocol", "auto"),
            mode=meta.get("mode", ""),
            value=float(meta["value"]),
            activation_value=float(meta.get("activationValue", "0")),
            min_replicas=int(spec.get("minReplicaCount", 0)),
            max_replicas=int(spec.get("maxReplicaCount", 100)),
            polling_interval=int(spec.get("pollingInterval", 30)),
            cooldown_period=int(spec.get("cooldownPeriod", 300)),
            behavior=spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {}),
            use_regex=meta.get("useRegex", "false") == "true",
            operation=meta.get("operation", "sum"),
            page_size=int(meta.get("pageSize", "100")),
        )

    def queue_url(self) -> str:
        """The URL KEDA's scaler GETs (``getQueueInfoViaHTTP``, non-regex queue name)."""
        parts = urlsplit(self.host)
        segments = parts.path.split("/")
        vhost = "/" + segments[-1]
        inner = "/".join(s for s in segments[:-1] if s)  # Go's path.Join drops empty parts
        subpath = "/" + posixpath.normpath(inner) if inner else ""
        if self.vhost_name:
            vhost = "/" + quote_plus(self.vhost_name)
        if vhost in ("", "/", "//"):
            vhost = "/%2F"
        base = f"{parts.scheme}://{parts.netloc}{subpath}"
        if self.use_regex:  # the scaler's regex form: one page of every queue the pattern matches
            return (
                f"{base}/api/queues{vhost}?page=1&use_regex=true&pagination=false"
                f"&name={quote_plus(self.queue_name)}&page_size={self.page_size}"
            )
        return f"{base}/api/queues{vhost}/{quote_plus(self.queue_name)}"


@dataclass(frozen=True)
class QueueReading:
    messages: int
    """What KEDA uses: ``messages``, ready plus unacknowledged."""
    ready: int
    unacknowledged: int


async def queue_length(trigger: Trigger, client: httpx.AsyncClient) -> QueueReading:
    """One reading of the queue, as the scaler makes it (credentials from the host's userinfo)."""
    assert trigger.protocol == "http" and trigger.mode == "QueueLength", trigger
    parts = urlsplit(trigger.host)
    auth = (parts.username or "", parts.password or "") if parts.username else None
    url = trigger.queue_url()
    bare = url.replace(f"{parts.username}:{parts.password}@", "") if auth else url
    response = await client.get(bare, auth=auth)
    assert response.status_code == 200, f"GET {bare}: {response.status_code} {response.text}"
    info = response.json()
    if trigger.use_regex:
        # The scaler composes the matched queues with its ``operation`` (sum, max, avg).
        queues = info["items"] if isinstance(info, dict) else info
        assert queues, f"no queue matches {trigger.queue_name!r}"
        combine = {"sum": sum, "max": max, "avg": lambda values: sum(values) / len(values)}[trigger.operation]
        return QueueReading(*(
            int(combine([int(queue.get(key, 0)) for queue in queues]))
            for key in ("messages", "messages_ready", "messages_unacknowledged")
        ))
    return QueueReading(
        messages=int(info.get("messages", 0)),
        ready=int(info.get("messages_ready", 0)),
        unacknowledged=int(info.get("messages_unacknowledged", 0)),
    )


@dataclass
class Autoscaler:
    """The HPA's replica calculation for one external metric with an ``AverageValue`` target."""

    trigger: Trigger
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    scale_events: list[tuple[float, int]] = field(default_factory=list)  # (time, +added / -removed)
    active_at: float = float("-inf")  # the last reading above the activation value

    def raw_replicas(self, metric: float, current: int) -> int:
        """``ceil(metric / value)`` unless within the tolerance of the current count; bounded."""
        target = self.trigger.value
        if current > 0 and abs(metric / (target * current) - 1) <= HPA_TOLERANCE:
            wanted = current
        else:
            wanted = math.ceil(metric / target)
        return min(max(wanted, self.trigger.min_replicas, 1), self.trigger.max_replicas)

    def desired(self, metric: float, current: int, now: float) -> int:
        """The replicas for ``metric``: KEDA's activation to and from zero (with
        ``minReplicaCount: 0``), else the HPA's calculation."""
        if self.trigger.min_replicas == 0:
            if metric > self.trigger.activation_value:
                self.active_at = now
            if current == 0:
                return 1 if metric > self.trigger.activation_value else 0
            if now - self.active_at >= self.trigger.cooldown_period:
                return 0
        return self._hpa(metric, current, now)

    def _hpa(self, metric: float, current: int, now: float) -> int:
        raw = self.raw_replicas(metric, current)
        up = self.trigger.behavior.get("scaleUp", {})
        down = self.trigger.behavior.get("scaleDown", {})
        up_window = up.get("stabilizationWindowSeconds", 0)
        down_window = down.get("stabilizationWindowSeconds", 300)
        self.recommendations.append((now, raw))
        keep = max(up_window, down_window)
        self.recommendations = [(t, r) for t, r in self.recommendations if now - t <= keep]
        up_rec = min(r for t, r in self.recommendations if now - t <= up_window)
        down_rec = max(r for t, r in self.recommendations if now - t <= down_window)
        wanted = current
        if wanted < up_rec:
            wanted = up_rec
        if wanted > down_rec:
            wanted = down_rec
        if wanted > current:
            wanted = min(wanted, self._limit(up, current, now, up=True), self.trigger.max_replicas)
        elif wanted < current:
            wanted = max(wanted, self._limit(down, current, now, up=False), self.trigger.min_replicas)
        return wanted

    def record(self, now: float, change: int) -> None:
        if change:
            self.scale_events.append((now, change))

    def _limit(self, rules: dict[str, Any], current: int, now: float, *, up: bool) -> int:
        proposals = []
        for policy in rules.get("policies", []):
            period = policy["periodSeconds"]
            added = sum(c for t, c in self.scale_events if c > 0 and now - t < period)
            removed = -sum(c for t, c in self.scale_events if c < 0 and now - t < period)
            if up:
                start = current - added + removed
                if policy["type"] == "Pods":
                    proposals.append(start + policy["value"])
                else:
                    proposals.append(math.ceil(start * (1 + policy["value"] / 100)))
            else:
                start = current + removed - added
                if policy["type"] == "Pods":
                    proposals.append(start - policy["value"])
                else:
                    proposals.append(int(start * (1 - policy["value"] / 100)))
        if not proposals:
            return self.trigger.max_replicas if up else self.trigger.min_replicas
        select = rules.get("selectPolicy", "Max")
        if select == "Disabled":
            return current
        # Scaling up, Max allows the most pods; scaling down, Max allows the most change (fewest).
        if up:
            return max(proposals) if select == "Max" else min(proposals)
        return min(proposals) if select == "Max" else max(proposals)
