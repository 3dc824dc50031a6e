"""The live feed: what it applies, and what it drops without stopping."""

from __future__ import annotations

import aio_pika
import orjson
from llm_stream_api import metrics
from llm_stream_api.broker.live import LiveFeed
from llm_stream_api.sessions.hub import SessionHub
from mqcommon.schemas import Frame, encode_frames
from mqcommon.topology import ExchangeSpec


def feed() -> tuple[SessionHub, LiveFeed]:
    hub = SessionHub(ttl_s=60, max_sessions=100, max_bytes=10_000)
    return hub, LiveFeed(hub, ExchangeSpec("x.live", aio_pika.ExchangeType.DIRECT), "replica-1")


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or None) or 0.0


def test_frames_of_held_sessions_are_applied_and_others_counted() -> None:
    hub, live = feed()
    hub.accept("held", 1.0, None)
    before = sample("llmstream_unknown_session_frames_total")
    live.receive(encode_frames("w", [Frame("held", 0, "hi").to_wire(), Frame("elsewhere", 0, "x").to_wire()]))
    assert hub.get("held").text == "hi" and hub.get("elsewhere") is None
    assert sample("llmstream_unknown_session_frames_total") == before + 1


def test_garbage_foreign_and_old_messages_are_counted_and_never_raise() -> None:
    hub, live = feed()
    hub.accept("held", 1.0, None)
    cases = {
        "malformed": [b"\\x00\\xffnot json", b"[]", orjson.dumps({"v": 3, "frames": 7})],
        "version": [orjson.dumps({"v": 1, "producer": "old", "events": [{"session_id": "held"}]}),
                    orjson.dumps({"v": 2, "producer": "w",
                                  "frames": [{"sid": "held", "off": 0, "text": "x"}]}),
                    orjson.dumps({"hello": "world"})],
        "frame": [orjson.dumps({"v": 3, "producer": "w", "frames": [{"sid": 1}, "x"]}),
                  orjson.dumps({"v": 3, "producer": "w", "frames": [
                      {"sid": "held", "off": 0, "text": "ab", "kinds": [["reasoning", 5]]}]})],
    }
    for reason, bodies in cases.items():
        before = sample("llmstream_malformed_messages_total", source="live", reason=reason)
        for body in bodies:
            live.receive(body)
        after = sample("llmstream_malformed_messages_total", source="live", reason=reason)
        assert after > before, reason
    live.receive(encode_frames("w", [Frame("held", 0, "still fine").to_wire()]))
    assert hub.get("held").text == "still fine"
