"""The charts are drawn from a results dict alone, and each is a valid PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from PIL import Image

import charts

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def scenario(
    mode: str, c: int, rate: float, p50: float, cpu: dict[str, float] | None = None
) -> dict[str, Any]:
    return {
        "name": f"{mode} C={c}", "mode": mode, "concurrency": c, "throughput_rps": rate,
        "ttft_ms": {"p50": p50, "p99": p50 * 1.5}, "cpu_ms_per_token": {"api": 0.2, "worker": 0.2},
        "cpu_ms_per_answer": cpu or {}, "correct": 10, "requests": 10, "errors": 0, "wrong": 0,
    }


def results() -> dict[str, Any]:
    replica = {"role": "served", "cpu_ms_per_served_token": 0.22}
    return {
        "config": {"mock": {"ttft_ms": 200.0, "tokens": 50, "tps": 50.0}},
        "scenarios": [
            scenario(m, c, 40.0 * c / 50, 200 + c) for m in ("direct", "async", "sync") for c in (50, 200)
        ],
        "cost": {
            "concurrency": 50,
            "points": [
                {"tokens": t, "cpu_ms_per_answer": {"api": 7 + t / 20, "worker": 7 + t / 10, "broker": 5.0}}
                for t in (10, 50, 500)
            ],
            "model": {"api": {"a_ms": 7.0, "b_us": 50.0}, "worker": {"a_ms": 7.0, "b_us": 100.0}},
        },
        "scale_out": {"scenarios": [
            {
                "replicas": r, "cpu_ms_per_token": {"worker": 0.2, "broker": 0.1},
                "per_replica": {"api_cpu_ms_per_token": 0.24, "replicas": [replica] * r + [{"role": "idle"}]},
            }
            for r in (1, 2, 4)
        ]},
    }


def peers() -> dict[str, Any]:
    return {
        "kind": "peers",
        "machine": {"cores": 2, "cpu_model": "test CPU", "litellm": "0.0", "rabbitmq": "3.10"},
        "scenarios": [
            scenario("direct", 50, 40.0, 200.0),
            scenario("litellm", 50, 20.0, 900.0, {"proxy": 110.0}),
            scenario("openai", 50, 39.0, 215.0, {"api": 12.0, "worker": 13.0, "broker": 6.0, "proxy": 25.0}),
            scenario("async", 50, 39.0, 212.0, {"api": 12.0, "worker": 13.0, "broker": 6.0, "proxy": 25.0}),
        ],
    }


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()


def test_every_chart_of_a_run_is_a_png(tmp_path: Path) -> None:
    written = charts.render(results(), tmp_path, peers=peers(), dpi=40)
    assert [p.name for p in written] == ["throughput.png", "ttft.png", "cost.png", "scaleout.png"]
    for path in written:
        assert_png(path)
    assert charts.render({"scenarios": []}, tmp_path / "empty") == []


def test_peers_chart_and_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "quick.json").write_bytes(orjson.dumps({"scenarios": results()["scenarios"]}))
    (tmp_path / "peers.json").write_bytes(orjson.dumps(peers()))
    assert charts.main([str(tmp_path / "peers.json")]) == 0
    assert charts.main([str(tmp_path / "quick.json")]) == 0
    names = {p.name for p in tmp_path.glob("*.png")}
    assert names == {"peers.png", "quick-throughput.png", "quick-ttft.png"}
    for path in tmp_path.glob("*.png"):
        assert_png(path)


def test_a_later_file_adds_its_scenarios_and_parts() -> None:
    merged = charts.load_all([results(), {"scenarios": [scenario("direct", 50, 1.0, 1.0)], "cost": None}])
    assert len(merged["scenarios"]) == 6
    assert next(s for s in merged["scenarios"] if s["name"] == "direct C=50")["throughput_rps"] == 1.0
    assert merged["cost"] is not None
