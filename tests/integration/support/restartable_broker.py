"""A private RabbitMQ node of one test that the test can restart (broker down, then up again).

``restart`` is what an operator's restart does to clients: ``rabbitmqctl stop_app`` stops the
broker application (every connection is closed, the AMQP listener goes away, exclusive and
transient queues are gone), ``start_app`` brings it back on the same port with its durable
queues and streams. The Erlang VM stays up, so the node keeps its name, ports and data.

The node is the test's own (``tests/support/rabbitmq_node.py``), never the run's broker, so
restarting it disturbs no other test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from support.brokers import Broker
from support.rabbitmq_node import NodeError, RabbitMQNode

CTL_TIMEOUT_S = 240.0  # the CLI boots an Erlang VM of its own: slow on a busy machine
CTL_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmqctl",)


def _ctl_program() -> str:
    for candidate in CTL_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("rabbitmqctl")
    if found is None:
        raise NodeError("rabbitmqctl is not installed (apt-get install -y rabbitmq-server)")
    return found


class RestartableNode:
    def __init__(self) -> None:
        self.node = RabbitMQNode()
        self.broker: Broker | None = None

    def start(self) -> Broker:
        self.broker = self.node.start()
        return self.broker

    def _ctl(self, command: str) -> None:
        assert self.node.dir is not None, "the node is not running"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(Path(self.node.dir) / "home"),  # the node's Erlang cookie
            ERL_EPMD_PORT=str(self.node.epmd_port),
            RABBITMQ_CONF_ENV_FILE=str(Path(self.node.dir) / "rabbitmq-env.conf"),
        )
        done = subprocess.run(
            [_ctl_program(), "-n", self.node.nodename, command],
            env=env, capture_output=True, text=True, timeout=CTL_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise NodeError(
                f"rabbitmqctl {command} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )

    def stop_app(self) -> None:
        """The broker goes away: connections closed, nothing listens on its AMQP port."""
        self._ctl("stop_app")

    def start_app(self) -> None:
        """The broker is back, with its durable queues and streams."""
        self._ctl("start_app")

    def stop(self) -> None:
        self.node.stop()
