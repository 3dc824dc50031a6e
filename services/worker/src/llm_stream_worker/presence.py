"""Which sessions still have a reader somewhere.

Every API process periodically announces, on a fanout exchange, the sessions it is streaming
to a client. A generation whose session nobody has announced for ``abandon_timeout`` is
abandoned and cancelled, so a client that left stops costing the workers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable


class PresenceTracker:
    def __init__(self, abandon_timeout_s: float, *, clock=time.monotonic) -> None:
        self._timeout = abandon_timeout_s
        self._clock = clock
        self._last_seen: dict[str, float] = {}

    def observe(self, served: Iterable[str]) -> None:
        """Record an announcement of the sessions a replica is serving."""
        now = self._clock()
        for session_id in served:
            self._last_seen[session_id] = now

    def is_abandoned(self, session_id: str, started_at: float) -> bool:
        """True when nobody has watched the session since ``started_at`` (a clock reading)."""
        seen = max(started_at, self._last_seen.get(session_id, started_at))
        return self._clock() - seen > self._timeout

    def forget(self, session_id: str) -> None:
        self._last_seen.pop(session_id, None)

    def prune(self) -> None:
        horizon = self._clock() - 2 * self._timeout
        stale = [sid for sid, seen in self._last_seen.items() if seen < horizon]
        for sid in stale:
            del self._last_seen[sid]

    def now(self) -> float:
        return self._clock()
