"""Reading a worker's Prometheus ``/metrics`` page."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

IN_PROGRESS = "llmstream_worker_tasks_in_progress"
TASKS = "llmstream_worker_tasks_total"
UPSTREAM_ERRORS = "llmstream_worker_upstream_errors_total"


class Samples:
    """One scrape: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self._values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self._values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 for a labelled series that has not appeared yet."""
        return self._values.get((name, frozenset(labels.items())), 0.0)

    def tasks(self, outcome: str) -> float:
        return self.value(TASKS, outcome=outcome)


async def scrape(client: httpx.AsyncClient, metrics_url: str) -> Samples:
    response = await client.get(metrics_url)
    response.raise_for_status()
    return Samples(response.text)


async def wait_for_metric(
    client: httpx.AsyncClient,
    metrics_url: str,
    condition: Callable[[Samples], bool],
    *,
    timeout: float,
    what: str,
) -> Samples:
    """Scrape every 0.1 s until ``condition`` holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        samples = await scrape(client, metrics_url)
        if condition(samples):
            return samples
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:g}s")
        await asyncio.sleep(0.1)
