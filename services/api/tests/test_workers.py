"""The API's registry of worker heartbeats: per queue, expiry, goodbye."""

from __future__ import annotations

from llm_stream_api.broker.heartbeats import WorkerRegistry
from mqcommon.heartbeat import PROBE, WorkerHeartbeat, decode


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def beat(worker: str = "w1", queue: str = "q", **fields) -> WorkerHeartbeat:
    values = {"llm_key": True, "llm_base_url": False, "concurrency": 4, "running": 1, "interval_s": 2.0}
    return WorkerHeartbeat(worker=worker, queue=queue, **{**values, **fields})


def test_counts_only_workers_of_its_own_queue() -> None:
    registry = WorkerRegistry("q", clock=Clock())
    registry.observe(beat("w1"))
    registry.observe(beat("w2", queue="other"))
    summary = registry.summary()
    assert (summary.count, summary.llm_configured, summary.concurrency, summary.running) == (1, True, 4, 1)


def test_llm_configured_when_any_worker_has_a_key_or_a_base_url() -> None:
    registry = WorkerRegistry("q", clock=Clock())
    registry.observe(beat("w1", llm_key=False))
    assert not registry.summary().llm_configured
    registry.observe(beat("w2", llm_key=False, llm_base_url=True))
    assert registry.summary().llm_configured


def test_a_silent_worker_expires_after_three_of_its_intervals() -> None:
    clock = Clock()
    registry = WorkerRegistry("q", clock=clock)
    registry.observe(beat("w1", interval_s=2.0))
    clock.now += 6.0
    assert registry.summary().count == 1
    clock.now += 0.1
    assert registry.summary().count == 0


def test_the_latest_heartbeat_wins_and_stopping_forgets_at_once() -> None:
    registry = WorkerRegistry("q", clock=Clock())
    registry.observe(beat("w1", running=1))
    registry.observe(beat("w1", running=3))
    assert registry.summary().running == 3
    registry.observe(beat("w1", state="stopping"))
    assert registry.summary().count == 0


def test_decode_accepts_heartbeats_and_probes_and_ignores_the_rest() -> None:
    sent = beat()
    assert decode(sent.encode()) == sent
    assert decode(PROBE) == "probe"
    for junk in (b"", b"[]", b"not json", b'{"type": "heartbeat"}', b'{"type": "other"}'):
        assert decode(junk) is None
