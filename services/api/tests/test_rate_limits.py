"""Per-key limits: sliding windows, and a Retry-After that says when they free."""

from __future__ import annotations

import pytest
from llm_stream_api.protocol.errors import RateLimited
from llm_stream_api.quota.key_limits import KeyLimits, answer_tokens
from llm_stream_api.sessions.hub import SessionHub
from mqcommon.schemas import End, Frame


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limits(clock: Clock, **limits: int) -> KeyLimits:
    given = {"requests_per_minute": 0, "max_sessions": 0, "tokens_per_minute": 0, **limits}
    return KeyLimits(**given, clock=clock)


def _hub(clock: Clock) -> SessionHub:
    return SessionHub(ttl_s=600, max_sessions=1000, max_bytes=100_000, clock=clock)


def _run(hub: SessionHub, limits: KeyLimits, key: str, sid: str) -> None:
    limits.admit(key, hub)
    hub.accept(sid, 0.0, None, owner=key)
    limits.started(key, sid)


def _finish(hub: SessionHub, sid: str, text: str, usage: dict | None = None) -> None:
    hub.apply(Frame(sid, 0, text, started=True, end=End("done", len(text), usage=usage)))


def test_requests_per_minute_slide_and_say_when_the_oldest_leaves() -> None:
    clock = Clock()
    limits = _limits(clock, requests_per_minute=3)
    for _ in range(3):
        limits.request("a")
        clock.now += 10
    with pytest.raises(RateLimited) as refused:
        limits.request("a")
    # The first request (t=1000) leaves the window at 1060; it is now 1030.
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "30"
    limits.request("b")  # another key has its own window
    clock.now = 1060.5
    limits.request("a")


def test_refused_requests_do_not_count() -> None:
    clock = Clock()
    limits = _limits(clock, requests_per_minute=1)
    limits.request("a")
    for _ in range(5):
        with pytest.raises(RateLimited):
            limits.request("a")
    clock.now += 60.1
    limits.request("a")


def test_sessions_at_once_free_when_an_answer_ends() -> None:
    clock = Clock()
    hub, limits = _hub(clock), _limits(clock, max_sessions=2)
    _run(hub, limits, "a", "s1")
    clock.now += 4
    _run(hub, limits, "a", "s2")
    with pytest.raises(RateLimited) as refused:
        limits.admit("a", hub)
    assert refused.value.extra["limit"] == "sessions"
    # Nothing measured yet: s1 has run 4 s, so it is taken to need at least 4 s; at 2 running,
    # one ends every 2 s at that pace.
    assert refused.value.headers["Retry-After"] == "2"
    clock.now += 6
    _finish(hub, "s1", "done text")  # took 10 s
    _run(hub, limits, "a", "s3")
    with pytest.raises(RateLimited) as again:
        limits.admit("a", hub)
    # s2 has run 6 s of the 10 s measured (4 s to go), but at 2 running one ends every 5 s.
    assert again.value.headers["Retry-After"] == "5"


def test_tokens_per_minute_use_usage_or_an_estimate() -> None:
    assert answer_tokens({"completion_tokens": 7}, "x" * 100) == 7
    assert answer_tokens(None, "x" * 9) == 3
    clock = Clock()
    hub, limits = _hub(clock), _limits(clock, tokens_per_minute=10)
    _run(hub, limits, "a", "s1")
    _finish(hub, "s1", "x" * 24)  # 6 tokens, ended at 1000
    clock.now += 20
    _run(hub, limits, "a", "s2")
    _finish(hub, "s2", "ignored", usage={"completion_tokens": 5})  # 11 in all, ended at 1020
    clock.now += 5
    with pytest.raises(RateLimited) as refused:
        limits.admit("a", hub)
    assert refused.value.extra["limit"] == "tokens_per_minute"
    # Dropping s1's 6 tokens (it leaves the window at 1060) goes under 10; it is 1025.
    assert refused.value.headers["Retry-After"] == "35"
    clock.now = 1060.5
    limits.admit("a", hub)


def test_off_by_default() -> None:
    clock = Clock()
    hub, limits = _hub(clock), _limits(clock)
    for n in range(100):
        limits.request("a")
        _run(hub, limits, "a", f"s{n}")
