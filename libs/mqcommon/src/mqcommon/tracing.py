"""W3C trace context: one trace id follows a request from the API through the worker and back."""

from __future__ import annotations

import re
import secrets

TRACEPARENT_HEADER = "traceparent"
_TRACEPARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def new_traceparent(trace_id: str | None = None) -> str:
    return f"00-{trace_id or secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def trace_id_of(traceparent: str | None) -> str | None:
    if not traceparent:
        return None
    match = _TRACEPARENT_RE.match(traceparent.strip().lower())
    if not match or match.group(1) == "0" * 32:
        return None
    return match.group(1)


def child_of(traceparent: str | None) -> str:
    """A traceparent continuing the caller's trace (or a fresh one if it is missing/invalid)."""
    return new_traceparent(trace_id_of(traceparent))
