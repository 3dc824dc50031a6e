"""How fast something happens: events per second over a sliding window.

The rate is the events of the last ``window`` seconds over the time since the first of them,
so a flow that began a moment ago is not taken for a slow one, and one that stopped slows
down as time passes. Admission control and queue positions measure their drain rates so.
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
        """Events per second; 0 when none happened in the window."""
        while self._times and self._times[0] < now - self._window:
            self._times.popleft()
        if not self._times:
            return 0.0
        return len(self._times) / max(now - self._times[0], MIN_SPAN_S)
