"""Fixtures of the integration tests: the broker, the mock LLM, isolated deployments.

The broker is the run's (``tests/conftest.py``): a private RabbitMQ node by default, a
RabbitMQ 4 container with ``TEST_BROKER=container``, the broker at ``RABBITMQ_URL`` when it is
set; a broker that cannot be had fails every test with instructions. The mock LLM is
shared by the whole run (its answers depend only on the prompt, and every test uses prompts
of its own). Deployments (uuid-named queues and exchanges plus API and worker processes) are
module-scoped where tests can share them, per test where a test kills processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from support.brokers import Broker

from .support.deployment import Deployment, deployment, mock_llm
from .support.processes import LIVE


@pytest.fixture(scope="session")
def broker(rabbitmq: Broker) -> Broker:
    """The run's broker: AMQP, management API, version."""
    return rabbitmq


@pytest.fixture(scope="session")
def broker_url(rabbitmq: Broker) -> str:
    return rabbitmq.amqp_url


@pytest.fixture(scope="session")
def mock_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    service = mock_llm(tmp_path_factory.mktemp("mockllm"))
    try:
        service.start().wait_ready()
        yield service.base_url
    finally:
        service.stop()


@pytest.fixture
def make_deployment(
    broker: Broker, mock_url: str, tmp_path: Path
) -> Iterator[Callable[[], Deployment]]:
    """Deployments of one test, closed when it ends."""
    opened: list[Deployment] = []

    def make() -> Deployment:
        created = Deployment(
            broker.amqp_url, mock_url, tmp_path / f"deployment-{len(opened) + 1}", broker.management_url
        )
        opened.append(created)
        return created

    yield make
    errors = []
    for created in reversed(opened):
        try:
            created.close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def module_deployment(
    broker: Broker,
    mock_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Deployment]:
    """An empty deployment shared by a module; the module adds and starts its processes."""
    log_dir = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    with deployment(broker.amqp_url, mock_url, log_dir, broker.management_url) as created:
        yield created


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    if report.failed:
        for service in LIVE:
            state = "running" if not service.exited() else f"exited {service.proc.returncode}"
            report.sections.append(
                (f"log tail of {service.name} ({state}, {service.log_path})", service.tail())
            )
    return report


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for one test: generous pool, bounded timeouts."""
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0), limits=limits) as http:
        yield http
