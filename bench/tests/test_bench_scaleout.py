"""The pure parts of the scale-out benchmark: balancer configuration, per-replica accounting,
the restart window, targets and report."""

from __future__ import annotations

import re
import subprocess

import pytest

import report
import scaleout
from loadgen import Result

SERVERS = [("api0", 41001), ("api1", 41002), ("api2", 41003)]


def _result(post_by: str, stream_by: str, *, correct: bool = True, ttft: float = 0.2, **kw: object) -> Result:
    return Result(
        ok=kw.pop("ok", True),
        correct=correct,
        ttft=ttft,
        total=kw.pop("total", 1.2),
        post=0.003,
        post_by=post_by,
        stream_by=stream_by,
        sent=kw.pop("sent", 0.0),
        **kw,
    )


# -- haproxy -------------------------------------------------------------------------------


def test_haproxy_config_balances_every_request_round_robin_without_affinity() -> None:
    config = scaleout.haproxy_config(40000, SERVERS)
    assert "    bind 127.0.0.1:40000" in config
    assert "balance roundrobin" in config
    assert "option http-server-close" in config  # each request on a kept-alive client connection balanced
    for word in ("cookie", "stick", "hash", "source", "prefer-last-server"):
        assert word not in config
    assert "http-response set-header X-Served-By %s" in config
    for name, port in SERVERS:
        assert re.search(rf"^    server {name} 127\.0\.0\.1:{port} check .*$", config, re.M)


def test_haproxy_config_keeps_sse_streams_open_and_checks_readiness() -> None:
    config = scaleout.haproxy_config(40000, SERVERS, check_interval_ms=250, maxconn=1234)
    for side in ("client", "server"):
        seconds = int(re.search(rf"timeout {side} (\d+)s", config).group(1))
        assert seconds >= 60, f"an SSE stream outlives a {seconds}s {side} timeout"
    assert "option httpchk GET /health/full" in config
    assert "inter 250ms" in config
    assert "maxconn 1234" in config
    assert "option redispatch" in config


def test_haproxy_accepts_the_generated_config(tmp_path) -> None:
    haproxy = scaleout.find_haproxy()
    if haproxy is None:
        pytest.fail("HAProxy is not installed: run scripts/ensure-test-tools.sh (make test does)")
    path = tmp_path / "haproxy.cfg"
    path.write_text(scaleout.haproxy_config(40000, SERVERS))
    checked = subprocess.run([haproxy, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_crossed_routes_read_every_stream_on_the_next_replica() -> None:
    route = scaleout.crossed(["api0", "api1", "api2"])
    pairs = [route() for _ in range(4)]
    assert [(post[scaleout.ROUTE_HEADER], read[scaleout.ROUTE_HEADER]) for post, read in pairs] == [
        ("api0", "api1"), ("api1", "api2"), ("api2", "api0"), ("api0", "api1"),
    ]
    config = scaleout.haproxy_config(40000, SERVERS)
    for name, _ in SERVERS:
        assert f"use-server {name} if {{ req.hdr({scaleout.ROUTE_HEADER}) -m str {name} }}" in config


# -- per replica ---------------------------------------------------------------------------


def test_per_replica_counts_the_tokens_of_the_streams_each_replica_sent() -> None:
    results = [
        _result("api0", "api1"),
        _result("api1", "api1"),
        _result("api1", "api0"),
        _result("api0", "api1", correct=False),  # a wrong answer delivers no counted token
        Result(error="timeout"),
    ]
    cpu = {"api0": 0.5, "api1": 1.0, "idle": 0.002}
    out = scaleout.per_replica(results, 50, cpu, ["api0", "api1"], ["idle"])
    rows = {row["name"]: row for row in out["replicas"]}
    assert out["tokens"] == 150
    assert rows["api0"] == {
        "name": "api0",
        "role": "served",
        "posts": 2,
        "streams": 1,
        "tokens": 50,
        "cpu_s": 0.5,
        "cpu_ms_per_served_token": 10.0,
    }
    assert rows["api1"]["streams"] == 2 and rows["api1"]["tokens"] == 100
    assert rows["api1"]["cpu_ms_per_served_token"] == 10.0
    # The idle replica's CPU over every token the stack delivered, in µs.
    assert rows["idle"]["role"] == "idle"
    assert rows["idle"]["cpu_us_per_unserved_token"] == pytest.approx(0.002 * 1e6 / 150, abs=1e-3)
    assert out["api_cpu_s"] == 1.502
    assert out["api_cpu_ms_per_token"] == pytest.approx(1.502 * 1000 / 150, abs=1e-4)
    assert out["unattributed_streams"] == 0


def test_per_replica_without_tokens_and_without_a_header() -> None:
    out = scaleout.per_replica([_result("", "", correct=False)], 50, {"api0": 0.1}, ["api0"], [])
    assert out["tokens"] == 0
    assert out["api_cpu_ms_per_token"] is None
    assert out["replicas"][0]["cpu_ms_per_served_token"] is None
    direct = scaleout.per_replica([Result(ok=True, correct=True, ttft=0.2)], 10, {}, ["api0"], ["idle"])
    assert direct["unattributed_streams"] == 1  # no X-Served-By: not a balancer's answer


def test_ttft_by_path_splits_streams_read_where_the_post_was_accepted() -> None:
    results = [
        _result("api0", "api0", ttft=0.2),
        _result("api0", "api1", ttft=0.9),
        _result("api1", "api0", ttft=1.1),
    ]
    paths = scaleout.ttft_by_path(results)
    assert paths["same_replica"]["requests"] == 1
    assert paths["same_replica"]["ttft_ms"]["max"] == 200.0
    assert paths["other_replica"]["requests"] == 2
    assert paths["other_replica"]["ttft_ms"]["max"] == 1100.0


# -- restart window ------------------------------------------------------------------------


def test_restart_window_compares_sessions_after_the_restart_with_the_steady_state() -> None:
    steady = [_result("api0", "api1", ttft=0.2 + i / 1000, sent=float(i) / 10, total=1.0) for i in range(50)]
    cut = _result("api1", "api1", ok=False, correct=False, ttft=None, total=None, sent=9.5)
    after = [
        _result("api1", "api0", ttft=0.21, sent=20.5),
        _result("api0", "api1", ttft=0.9, sent=21.0),  # slow, and served by the restarted replica
        _result("api0", "api0", ttft=0.3, sent=22.0),
    ]
    late = _result("api1", "api1", ttft=5.0, sent=30.0)  # outside the window
    out = scaleout.restart_window(
        [*steady, cut, *after, late], killed_at=10.0, ready_at=20.0, window_s=3.0, replica="api1"
    )
    assert out["steady_requests"] == 50
    assert out["steady_ttft_ms"]["p99"] == pytest.approx(248.51, abs=0.01)
    assert out["after_requests"] == 3
    assert out["after_above_steady_p99"] == 2
    assert out["touching_requests"] == 2
    assert out["touching_above_steady_p99"] == 1
    assert out["in_flight_at_kill"] == 1 and out["broken_by_kill"] == 1


# -- targets and report --------------------------------------------------------------------


def _scenario(replicas: int, api_ms: float, idle_us: float) -> dict:
    served = [f"api{i}" for i in range(replicas)]
    return {
        "name": f"scale-out R={replicas}",
        "replicas": replicas,
        "mode": "async",
        "concurrency": 50,
        "requests": 500,
        "completed": 500,
        "correct": 500,
        "errors": 0,
        "error_kinds": {},
        "wrong": 0,
        "throughput_rps": 38.0,
        "ttft_ms": {"p50": 205.0, "p99": 230.0, "max": 240.0},
        "total_ms": {"p50": 1190.0, "p99": 1200.0, "max": 1210.0},
        "cpu_ms_per_token": {
            "api": api_ms,
            "worker": 0.03,
            "api+worker": api_ms + 0.03,
            "broker": 0.02,
            "balancer": 0.01,
        },
        "vs_direct": {
            "throughput_ratio": 0.99,
            "ttft_overhead_ms": {"p50": 5.0, "p99": 20.0},
            "total_overhead_ms": {"p50": 5.0, "p99": 10.0},
        },
        "background_cores": 0.1,
        "per_replica": {
            "replicas": [
                *(
                    {
                        "name": n,
                        "role": "served",
                        "posts": 10,
                        "streams": 10,
                        "tokens": 500,
                        "cpu_s": 0.1,
                        "cpu_ms_per_served_token": api_ms,
                    }
                    for n in served
                ),
                {
                    "name": "idle",
                    "role": "idle",
                    "posts": 0,
                    "streams": 0,
                    "tokens": 0,
                    "cpu_s": 0.0,
                    "cpu_us_per_unserved_token": idle_us,
                },
            ],
            "tokens": 25000,
            "unattributed_streams": 0,
            "api_cpu_s": 1.0,
            "api_cpu_ms_per_token": api_ms,
        },
        "ttft_by_path": scaleout.ttft_by_path([_result("api0", "api0")]),
        "start_to_ready_s": [1.2] * (replicas + 1),
    }


PART = {
    "scenarios": [_scenario(1, 0.04, 0.0), _scenario(2, 0.042, 0.4), _scenario(4, 0.05, 2.0)],
    "rss": {
        "answers": 500,
        "tokens_per_answer": 1000,
        "correct": 500,
        "errors": 0,
        "wall_s": 4.0,
        "sessions_held": 520,
        "rss_before_mb": 90.0,
        "rss_after_mb": 100.0,
        "rss_growth_mb": 10.0,
        "kb_per_answer": 20.48,
        "text_kb_per_answer": 6.3,
    },
    "restart": {
        "replicas": 4,
        "history": {"sessions": 23000, "records": 46000, "seconds_of_load": 600, "publish_s": 8.0},
        "replica": "api3",
        "requests": 900,
        "errors": 12,
        "wrong": 0,
        "error_kinds": {"x": 12},
        "kill_after_s": 8,
        "ready_s": 1.8,
        "scale_out_ttft_p99_ms": 230.0,
        **scaleout.restart_window([], killed_at=1.0, ready_at=2.0, window_s=3.0, replica="api3"),
    },
}


def test_scale_out_targets() -> None:
    targets = {(t.scenario, t.what): t for t in report.scale_out_targets(PART)}
    idle = "idle replica CPU µs per token it does not serve"
    assert targets[("scale-out R=2", idle)].met
    assert not targets[("scale-out R=4", idle)].met
    ratio = targets[("scale-out R=4 vs R=1", "total API CPU per token ratio")]
    assert ratio.value == 1.25 and not ratio.met
    assert targets[("scale-out R=1", "API+worker CPU ms per token")].met
    assert targets[("buffered answers", "RSS KB per buffered 1,000-token answer")].met
    assert targets[("restart R=4", "restart to /health/full 200 (s)")].met
    # No session in the window: nothing measured, so not met.
    assert not targets[("restart R=4", "sessions after the restart with TTFT above steady p99")].met
    assert report.scale_out_targets(None) == []


def test_markdown_has_the_scale_out_sections() -> None:
    result = {
        "run_id": "x",
        "started_at": "now",
        "duration_s": 1.0,
        "machine": {
            "cores": 2,
            "cpu_model": "cpu",
            "ram_gib": 1.0,
            "python": "3.11",
            "os": "Linux",
            "rabbitmq": "3.10.8",
            "load_average": [0.1, 0.1, 0.1],
        },
        "config": {
            "command": "bench",
            "commit": "abc",
            "mock": {"ttft_ms": 200, "tokens": 50, "tps": 50},
            "stack": "s",
        },
        "scenarios": [],
        "burst": None,
        "scale_out": PART,
        "targets": [t.as_dict() for t in report.scale_out_targets(PART)],
        "notes": [],
        "aborted": None,
    }
    text = report.markdown(result)
    for heading in ("## Scale-out", "## Buffered answers", "## Restart with history", "## Targets"):
        assert heading in text
    assert "| 4 | idle | 0 | 0 | 0 | 0.000 | - | 2.00 |" in text
    assert "restart R=4: 12 x `x`" in text


def test_precise_cpu_reading_agrees_with_the_tick_based_one() -> None:
    import os

    import psutil

    import stack

    precise = stack._schedstat_seconds(os.getpid())
    if precise is None:
        pytest.skip("no /proc/PID/task/*/schedstat here")
    times = psutil.Process().cpu_times()
    assert abs(precise - (times.user + times.system)) < 0.5


def test_metric_deltas_from_two_expositions() -> None:
    before = scaleout.parse_metrics(
        "# HELP llmstream_history_lookup_duration_seconds x\n"
        "llmstream_history_lookup_duration_seconds_count 2.0\n"
        "llmstream_history_lookup_duration_seconds_sum 0.5\n"
        'llmstream_history_failures_total{kind="lookup"} 1.0\n'
        'llmstream_history_failures_total{kind="marker"} 7.0\n'
        "llmstream_events_received_total 10\n"
    )
    after = dict(before)
    after["llmstream_history_lookup_duration_seconds_count"] = 6.0
    after["llmstream_history_lookup_duration_seconds_sum"] = 2.5
    after["llmstream_events_received_total"] = 110.0
    out = scaleout.metric_deltas(before, after)
    assert out["lookups"] == 4 and out["lookup_mean_ms"] == 500.0
    assert out["lookup_failures"] == 0 and out["frames"] == 100 and out["unknown_frames"] == 0
    assert scaleout.metric_deltas(None, after) is None
