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
