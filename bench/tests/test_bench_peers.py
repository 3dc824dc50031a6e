"""The peers comparison's figures: CPU per answer of each proxy and LiteLLM's over this system's."""

from __future__ import annotations

from typing import Any

import peers


def scenario(mode: str, cpu_s: dict[str, float], correct: int = 100) -> dict[str, Any]:
    s = {
        "name": f"{mode} C=50", "mode": mode, "concurrency": 50, "requests": 100, "correct": correct,
        "errors": 0, "wrong": 0, "throughput_rps": 40.0, "ttft_ms": {"p50": 210.0, "p99": 230.0},
        "cpu_s": cpu_s,
    }
    s["cpu_ms_per_answer"] = peers.per_answer(s, mode)
    return s


def test_cpu_per_answer_and_the_ratio() -> None:
    litellm = scenario("litellm", {"litellm": 10.0, "broker": 0.2, "mock": 1.0})
    openai = scenario("openai", {"api": 1.0, "worker": 1.5, "broker": 0.5, "mock": 1.0})
    assert litellm["cpu_ms_per_answer"] == {"litellm": 100.0, "proxy": 100.0}  # the idle broker is not its
    assert openai["cpu_ms_per_answer"] == {"api": 10.0, "worker": 15.0, "broker": 5.0, "proxy": 25.0}
    assert scenario("direct", {"mock": 1.0})["cpu_ms_per_answer"] == {}
    assert scenario("async", {"api": 1.0, "worker": 1.0}, correct=0)["cpu_ms_per_answer"]["api"] is None

    [row] = peers.ratios([scenario("direct", {}), litellm, openai])
    assert row["mode"] == "openai" and row["ratio"] == 4.0 and row["ratio_with_broker"] == 3.33
    text = peers.markdown({
        "started_at": "now", "machine": {
            "cores": 2, "cpu_model": "test", "ram_gib": 1, "os": "Linux", "python": "3.11",
            "litellm_python": "3.11", "litellm": peers.LITELLM_VERSION, "rabbitmq": "3.10",
        },
        "config": {"mock": {"ttft_ms": 200.0, "tokens": 50, "tps": 50.0}, "stack": "s", "command": "c",
                   "litellm": {"workers": 1}},
        "scenarios": [litellm, openai], "ratios": [row], "notes": [],
    })
    assert "**4.00x**" in text and "| LiteLLM proxy | 50 |" in text


def test_litellm_is_configured_on_the_mock_and_offline() -> None:
    config = peers.litellm_config("http://127.0.0.1:9")
    [model] = config["model_list"]
    assert model["model_name"] == peers.MODEL
    assert model["litellm_params"]["api_base"] == "http://127.0.0.1:9/v1"
    assert "database_url" not in config["general_settings"]
    assert peers.LITELLM_ENV["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
