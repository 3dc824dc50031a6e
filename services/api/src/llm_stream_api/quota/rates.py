"""How fast something happens: events per second over a sliding window.

The rate is the intervals between the events of the last ``window`` seconds over the time
since the first of them, so a flow that began a moment ago is not taken for a slow one, and one
that stopped slows down as time passes. One event alone measures no interval, hence no rate:
a fresh stack that has seen one task leave does not promise one a second. Admission control
and queue positions measure their drain rates so.
"""

from __future__ import annotations

from collections import deque

MIN_SPAN_S = 1.0


class RateMeter:
    def __init__(self, window_s: float) -> None:
        self._window = window_s
        self._times: deque[float] = deque()

    def record(self, at: float) -> None:
        self._times.append(at)

    def rate(self, now: float) -> float:
        """Events per second; 0 (not measured) with fewer than two events in the window."""
        while self._times and self._times[0] < now - self._window:
            self._times.popleft()
        if len(self._times) < 2:
            return 0.0
        return (len(self._times) - 1) / max(now - self._times[0], MIN_SPAN_S)
