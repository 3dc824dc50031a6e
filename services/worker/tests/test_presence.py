from __future__ import annotations

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
    tracker.observe(["s"])
    clock.now = 18
    assert not tracker.is_abandoned("s", started)
    clock.now = 19.5
    assert tracker.is_abandoned("s", started)
    assert tracker.is_abandoned("other", started)


def test_old_entries_are_pruned() -> None:
    clock = Clock()
    tracker = PresenceTracker(1, clock=clock)
    tracker.observe(["a"])
    clock.now = 3
    tracker.prune()
    assert tracker._last_seen == {}
