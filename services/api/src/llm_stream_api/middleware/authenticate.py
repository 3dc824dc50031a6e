"""Every request but the open ones carries a known API key (``keys``), within its rate."""

from __future__ import annotations

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from llm_stream_api import metrics
from llm_stream_api.dialects import RouteTable
from llm_stream_api.keys import SCOPE_KEY, KeyRing, is_open, presented_key
from llm_stream_api.protocol.errors import APIError, Unauthorized
from llm_stream_api.quota.key_limits import KeyLimits


class Authenticate:
    """A plain ASGI middleware: streaming routes keep seeing client disconnects.

    A refusal is written by ``dialects``, in the dialect of the route the request was meant
    for (native JSON, or OpenAI's error object). A request with a valid key also passes the
    key's requests-per-minute limit (``quota.key_limits``) here.
    """

    def __init__(
        self, app: ASGIApp, keys: KeyRing, *, probes_open: bool, limits: KeyLimits, routes: RouteTable,
    ) -> None:
        self.app = app
        self.routes = routes
        self.keys = keys
        self.probes_open = probes_open
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["method"], scope["path"], probes_open=self.probes_open):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        presented = presented_key(headers)
        key_id = self.keys.identify(presented) if presented else None
        try:
            if key_id is None:
                metrics.AUTH_FAILURES.labels("missing" if presented is None else "invalid").inc()
                raise Unauthorized(missing=presented is None)
            self.limits.request(key_id)
        except APIError as exc:
            await self.routes.render(scope, exc)(scope, receive, send)
            return
        metrics.KEY_REQUESTS.labels(key_id).inc()
        scope[SCOPE_KEY] = key_id
        structlog.contextvars.bind_contextvars(key=key_id)
        await self.app(scope, receive, send)

