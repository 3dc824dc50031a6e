"""Live frames: one coalesced frame per session per flush, routed to the replicas that asked."""

from __future__ import annotations

import asyncio

from llm_stream_worker.outbox import Outbox
from mqcommon.schemas import decode_frames


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


class Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list]] = []

    async def __call__(self, replica: str, body: bytes) -> None:
        frames, skipped = decode_frames(body)
        assert skipped == 0
        self.sent.append((replica, frames))

    def to(self, replica: str) -> list:
        return [frame for r, frames in self.sent if r == replica for frame in frames]


def outbox(wire: Wire, clock: Clock | None = None, **kw) -> Outbox:
    options = {"flush_interval_s": 0.02, "flush_max_bytes": 100_000, "route_ttl_s": 60, "keep_ended_s": 15}
    return Outbox(wire, producer="w", clock=clock or Clock(), **{**options, **kw})


async def settle(box: Outbox) -> None:
    await asyncio.sleep(0.05)
    await box.drain()


async def test_tokens_between_flushes_leave_as_one_frame_and_the_first_leaves_at_once() -> None:
    wire = Wire()
    box = outbox(wire, flush_interval_s=10)  # only urgent flushes happen in this test
    out = box.open("s", attempt=1, trace_id="t", reply_to="A")
    await asyncio.sleep(0)
    box.write(out, "He")
    await asyncio.sleep(0)
    for token in ("l", "l", "o"):
        box.write(out, token)
    box.close(out, "done")
    await settle(box)
    frames = wire.to("A")
    assert [(f.offset, f.text) for f in frames] == [(0, ""), (0, "He"), (2, "llo")]
    assert frames[0].started and frames[0].trace_id == "t"
    assert frames[-1].end.kind == "done" and frames[-1].end.length == 5


async def test_many_sessions_to_one_replica_share_one_message_per_flush() -> None:
    wire = Wire()
    box = outbox(wire)
    outs = [box.open(f"s{i}", attempt=1, trace_id=None, reply_to="A") for i in range(20)]
    await settle(box)
    wire.sent.clear()
    for out in outs:
        box.write(out, "more text")
    await settle(box)
    assert len(wire.sent) == 1 and len(wire.sent[0][1]) == 20


async def test_a_replica_that_asks_late_gets_a_replay_then_the_same_frames() -> None:
    wire = Wire()
    box = outbox(wire)
    out = box.open("s", attempt=1, trace_id=None, reply_to="A")
    box.write(out, "Hello")
    await settle(box)
    box.interest("B", "s", replay=True)
    box.write(out, " world")
    box.close(out, "done")
    await settle(box)
    b = wire.to("B")
    assert [(f.offset, f.text) for f in b] == [(0, "Hello"), (5, " world")]
    assert b[0].started and b[-1].end.kind == "done"
    assert "".join(f.text for f in wire.to("A")) == "Hello world"


async def test_interest_in_a_queued_session_routes_it_when_it_starts() -> None:
    wire = Wire()
    box = outbox(wire)
    box.interest("B", "later", replay=False)
    out = box.open("later", attempt=1, trace_id=None, reply_to="A")
    box.write(out, "x")
    await settle(box)
    assert wire.to("B") and wire.to("A")


async def test_a_replica_still_listing_a_finished_session_gets_its_end() -> None:
    wire = Wire()
    box = outbox(wire)
    out = box.open("s", attempt=1, trace_id=None, reply_to="A")
    box.write(out, "all")
    box.close(out, "done")
    await settle(box)
    box.interest("A", "s", replay=False)
    await settle(box)
    last = wire.to("A")[-1]
    assert (last.offset, last.text, last.end.kind) == (0, "all", "done")


async def test_a_discarded_attempt_keeps_its_routes_for_the_next_one() -> None:
    wire = Wire()
    box = outbox(wire)
    first = box.open("s", attempt=1, trace_id=None, reply_to="A")
    box.interest("B", "s", replay=False)
    box.discard(first)
    second = box.open("s", attempt=2, trace_id=None, reply_to="A")
    assert set(second.routes) == {"A", "B"}


async def test_routes_nobody_renews_expire_and_finished_sessions_are_forgotten() -> None:
    wire, clock = Wire(), Clock()
    box = outbox(wire, clock, route_ttl_s=10, keep_ended_s=5)
    out = box.open("s", attempt=1, trace_id=None, reply_to="A")
    await settle(box)
    clock.now += 11
    wire.sent.clear()
    box.write(out, "late")
    await settle(box)
    assert wire.sent == []
    box.close(out, "done")
    clock.now += 6
    box.prune()
    assert "s" not in box.sessions
