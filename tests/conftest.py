"""Fixtures shared by every suite under tests/: the RabbitMQ broker of the run.

Which broker is chosen by ``TEST_BROKER`` (see ``support/brokers.py``): by default a private
node that this run starts and stops, never the machine's own broker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from support.brokers import Broker, BrokerUnavailable, broker_for_run, selected_kind

_started: list[str] = []


def pytest_report_header() -> str:
    try:
        return f"broker: TEST_BROKER={selected_kind()}"
    except BrokerUnavailable as exc:
        return f"broker: {exc}"


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[Broker]:
    """The broker of the run: started once, stopped (and its files removed) at the end."""
    began = time.monotonic()
    try:
        context = broker_for_run()
        broker = context.__enter__()
    except BrokerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    _started.append(f"{broker.description}, ready in {time.monotonic() - began:.1f} s")
    try:
        yield broker
    finally:
        context.__exit__(None, None, None)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _started:
        terminalreporter.write_line(f"broker: {line}")


# The files that take longest, longest first. A parallel run (`--dist loadfile`) hands files
# to its workers in collection order, so a long file collected last would run alone at the end
# while the other workers wait; started first, it runs beside the many short ones.
LONG_FIRST = (
    "tests/containers/test_images_run.py",
    "tests/chaos/test_chaos.py",
    "tests/integration/test_scale_out.py",
    "tests/integration/test_openapi.py",
    "tests/integration/test_cancel.py",
    "tests/integration/test_admission.py",
    "tests/integration/test_autoscaling.py",
    "tests/integration/test_replica_cost.py",
    "tests/integration/test_chat_page.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: index for index, path in enumerate(LONG_FIRST)}
    # sorted() is stable: every other file keeps its place, and a file's tests their order.
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
