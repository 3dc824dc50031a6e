"""Fixtures of the container tests: the images (built or reused), the broker, the chart.

The images are built once per run by scripts/images.py, which skips a build whose inputs are
unchanged. The broker is the run's broker (the ``rabbitmq`` fixture of tests/conftest.py when
it exists), else ``RABBITMQ_URL``, else the machine's broker at
amqp://guest:guest@127.0.0.1:5672/. Every stack gets its own queue and exchange names, so it
shares a broker with nothing.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from .runtime import IMAGES_PY, SERVICES, image_name, podman, topology_names

DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672/"
_figures: list[str] = []


@dataclass(frozen=True)
class BrokerURLs:
    amqp_url: str
    management_url: str | None


@pytest.fixture(scope="session")
def images() -> dict[str, int]:
    """Build (or reuse) the three images; their sizes in bytes."""
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(IMAGES_PY), "build"], capture_output=True, text=True, check=False, timeout=1800
    )
    if result.returncode != 0:
        pytest.fail(f"building the images failed:\n{result.stderr[-6000:]}{result.stdout}", pytrace=False)
    took = time.monotonic() - began
    sizes = {}
    for service in SERVICES:
        out = podman("image", "inspect", "--format", "{{.Size}}", image_name(service)).stdout
        sizes[service] = int(out.strip())
    _figures.append(
        f"images ready in {took:.0f} s: "
        + ", ".join(f"{image_name(s)} {sizes[s] / 1e6:.0f} MB" for s in SERVICES)
    )
    return sizes


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> BrokerURLs:
    try:
        run_broker = request.getfixturevalue("rabbitmq")
    except pytest.FixtureLookupError:
        url = os.environ.get("RABBITMQ_URL") or os.environ.get("RABBIT_MQ") or DEFAULT_BROKER
        return BrokerURLs(url, os.environ.get("RABBITMQ_MANAGEMENT_URL"))
    return BrokerURLs(run_broker.amqp_url, run_broker.management_url)


def delete_topology(amqp_url: str, prefix: str, pools_json: str = "") -> None:
    """Remove what a stack declared under its prefix, with the lines of its model pools when it
    has any (each name as a queue and as an exchange; a name it never declared is fine)."""
    import aio_pika

    names = topology_names(prefix, pools_json)

    async def run() -> None:
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            for name in names:
                for delete in ("queue_delete", "exchange_delete"):
                    channel = await connection.channel()  # a failed delete closes its channel
                    try:
                        await getattr(channel, delete)(name)
                    except aio_pika.exceptions.AMQPError:
                        pass

    asyncio.run(asyncio.wait_for(run(), 60))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _figures:
        terminalreporter.write_line(f"containers: {line}")
