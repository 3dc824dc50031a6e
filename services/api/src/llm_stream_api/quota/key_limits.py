"""Per-key limits: requests per minute, sessions at once, answer tokens per minute.

Each is off at 0 (the default) and counted by this API process alone, over a sliding window
of the last 60 s (a log of times, so the window is exact and ``Retry-After`` says when it
frees). Past one, the request is refused with 429 (``RateLimited``) and ``Retry-After``:

- requests per minute (``KEY_REQUESTS_PER_MINUTE``): every request with the key, checked
  before the route runs; refused ones do not count. Retry-After: when the oldest request of
  the window leaves it.
- sessions at once (``KEY_MAX_SESSIONS``): answers this process queued for the key that have
  not ended, checked before a new one is queued. Retry-After: when the first of them should
  end, from the key's measured answer durations (a moving average), and at least the time
  between two ends at the measured pace (duration / sessions running).
- answer tokens per minute (``KEY_TOKENS_PER_MINUTE``): tokens of the answers that ended in
  the window, checked before a new session is queued (an answer may overshoot: its length is
  known only at its end). Tokens are the LLM's ``completion_tokens`` when the task asked for
  usage, else an estimate of one token per 4 characters. Retry-After: when enough of them
  leave the window to go under the limit.

Across replicas each one counts what it serves: with N replicas behind a balancer without
affinity, a key gets up to N times each limit (docs/security.md).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm_stream_api import metrics
from llm_stream_api.protocol.errors import RateLimited
from llm_stream_api.sessions.hub import SessionHub

WINDOW_S = 60.0
CHARS_PER_TOKEN = 4
DURATION_WEIGHT = 0.3  # of the newest answer in the moving average of durations
RETRY_AFTER_MAX_S = 300


def answer_tokens(usage: dict[str, Any] | None, text: str) -> int:
    """The answer's tokens: the LLM's count when known, else about 4 characters each."""
    if usage and isinstance(tokens := usage.get("completion_tokens"), int):
        return tokens
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _refusal(key_id: str, limit: str, message: str, retry_after_s: float) -> RateLimited:
    metrics.KEY_REJECTED.labels(key_id, limit).inc()
    return RateLimited(limit, message, max(1, min(RETRY_AFTER_MAX_S, math.ceil(retry_after_s))))


@dataclass(slots=True)
class _Key:
    requests: deque[float] = field(default_factory=deque)
    running: dict[str, float] = field(default_factory=dict)  # session id -> when it was queued
    tokens: deque[tuple[float, int]] = field(default_factory=deque)  # (when it ended, tokens)
    token_total: int = 0
    duration_s: float | None = None  # moving average of this key's answer durations


class KeyLimits:
    def __init__(
        self, *, requests_per_minute: int, max_sessions: int, tokens_per_minute: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.requests_per_minute = requests_per_minute
        self.max_sessions = max_sessions
        self.tokens_per_minute = tokens_per_minute
        self._clock = clock
        self._keys: dict[str, _Key] = {}

    def _key(self, key_id: str) -> _Key:
        found = self._keys.get(key_id)
        if found is None:
            found = self._keys[key_id] = _Key()
        return found

    # -- before a request ------------------------------------------------------------------

    def request(self, key_id: str) -> None:
        """Count one request of ``key_id``; raises ``RateLimited`` past its per-minute limit."""
        if not self.requests_per_minute:
            return
        now = self._clock()
        times = self._key(key_id).requests
        while times and times[0] <= now - WINDOW_S:
            times.popleft()
        if len(times) >= self.requests_per_minute:
            frees_at = times[len(times) - self.requests_per_minute] + WINDOW_S
            raise _refusal(
                key_id, "requests_per_minute",
                f"more than KEY_REQUESTS_PER_MINUTE ({self.requests_per_minute}) requests in a minute",
                frees_at - now,
            )
        times.append(now)

    # -- before a session ------------------------------------------------------------------

    def admit(self, key_id: str, hub: SessionHub) -> None:
        """Raise ``RateLimited`` if ``key_id`` may not start a session now."""
        if not self.counts_sessions:
            return
        key = self._key(key_id)
        now = self._clock()
        self._settle(key, hub, now)
        if self.max_sessions and len(key.running) >= self.max_sessions:
            raise _refusal(
                key_id, "sessions",
                f"{len(key.running)} answers under way, KEY_MAX_SESSIONS is {self.max_sessions}",
                self._next_end(key, now),
            )
        if self.tokens_per_minute and key.token_total >= self.tokens_per_minute:
            raise _refusal(
                key_id, "tokens_per_minute",
                f"{key.token_total} answer tokens in the last minute, KEY_TOKENS_PER_MINUTE is "
                f"{self.tokens_per_minute}",
                self._under_limit_at(key) - now,
            )

    @property
    def counts_sessions(self) -> bool:
        """Sessions are followed to their end (for KEY_MAX_SESSIONS, KEY_TOKENS_PER_MINUTE)."""
        return bool(self.max_sessions or self.tokens_per_minute)

    def started(self, key_id: str, session_id: str) -> None:
        """A session of ``key_id`` was queued by this process."""
        metrics.KEY_SESSIONS.labels(key_id).inc()
        if self.counts_sessions:
            self._key(key_id).running[session_id] = self._clock()

    # -- internals -------------------------------------------------------------------------

    def _settle(self, key: _Key, hub: SessionHub, now: float) -> None:
        """Release the sessions that ended (or that this process forgot); count their tokens."""
        for session_id, queued_at in list(key.running.items()):
            session = hub.get(session_id)
            if session is not None and not session.ended:
                continue
            del key.running[session_id]
            if session is None:
                continue
            # The hub touches a session on every frame: its end is its last touch.
            ended_at = min(session.touched, now)
            duration = max(0.0, ended_at - queued_at)
            key.duration_s = duration if key.duration_s is None else (
                DURATION_WEIGHT * duration + (1 - DURATION_WEIGHT) * key.duration_s
            )
            if tokens := answer_tokens(session.usage, session.text):
                key.tokens.append((ended_at, tokens))
                key.token_total += tokens
        while key.tokens and key.tokens[0][0] <= now - WINDOW_S:
            key.token_total -= key.tokens.popleft()[1]

    def _next_end(self, key: _Key, now: float) -> float:
        """Seconds until one of the key's answers should end."""
        ages = [now - queued_at for queued_at in key.running.values()]
        # Nothing measured yet: an answer takes at least as long as the oldest has run.
        duration = key.duration_s if key.duration_s is not None else max(ages)
        soonest = min(duration - age for age in ages)
        return max(soonest, duration / len(ages))

    def _under_limit_at(self, key: _Key) -> float:
        """When the tokens in the window fall under the limit (entries are oldest first)."""
        total = key.token_total
        for ended_at, tokens in key.tokens:
            total -= tokens
            if total < self.tokens_per_minute:
                return ended_at + WINDOW_S
        return self._clock() + WINDOW_S
