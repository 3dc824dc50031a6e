from __future__ import annotations

import orjson
from llm_stream_worker.presence import PresenceTracker


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_session_is_abandoned_only_after_the_timeout_without_announcements() -> None:
    clock = Clock()
    tracker = PresenceTracker(10, clock=clock)
    started = clock()
    clock.now = 9
    assert not tracker.is_abandoned("s", started)
    tracker.observe(orjson.dumps({"sessions": ["s"]}))
    clock.now = 18
    assert not tracker.is_abandoned("s", started)
    clock.now = 19.5
    assert tracker.is_abandoned("s", started)
    assert tracker.is_abandoned("other", started)


def test_garbage_announcements_are_ignored_and_old_entries_pruned() -> None:
    clock = Clock()
    tracker = PresenceTracker(1, clock=clock)
    tracker.observe(b"not json")
    tracker.observe(orjson.dumps({"sessions": ["a", 5]}))
    clock.now = 3
    tracker.prune()
    assert tracker._last_seen == {}
