"""The broker a test run talks to, as the suites see it: addresses, version, management API.

Apart from ``brokers`` (which chooses and starts one) so that each kind of broker can return
one without importing its chooser.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx


class BrokerUnavailable(RuntimeError):
    """No broker for the run; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Broker:
    description: str
    """What it is, for messages: version and kind."""
    amqp_url: str
    management_url: str | None
    """``http://user:password@host:port`` of the management API, if it has one."""
    prometheus_target: str | None
    """``host:port`` of the prometheus plugin, if enabled."""
    version: str | None = None

    @property
    def major(self) -> int | None:
        return int(self.version.split(".", 1)[0]) if self.version else None

    def management(self, **kwargs: object) -> httpx.AsyncClient:
        """An async client for the management API (base URL and credentials set)."""
        if self.management_url is None:
            raise BrokerUnavailable(f"{self.description} has no management API")
        url = httpx.URL(self.management_url)
        base = str(url.copy_with(username=None, password=None))
        auth = (url.username, url.password)
        return httpx.AsyncClient(base_url=base, auth=auth, trust_env=False, **kwargs)  # type: ignore[arg-type]
