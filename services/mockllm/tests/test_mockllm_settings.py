from __future__ import annotations

import pytest
from llm_stream_mockllm.settings import Settings, SettingsError


def test_defaults() -> None:
    assert Settings.from_env({}) == Settings(
        host="127.0.0.1", port=8008, ttft_ms=200, tokens=50, tps=50, api_key=None, log_level="info"
    )


def test_from_env() -> None:
    env = {
        "MOCK_HOST": "0.0.0.0",
        "MOCK_PORT": "9000",
        "MOCK_TTFT_MS": "12.5",
        "MOCK_TOKENS": "7",
        "MOCK_TPS": "100",
        "MOCK_API_KEY": "k",
        "MOCK_LOG_LEVEL": "WARNING",
    }
    assert Settings.from_env(env) == Settings("0.0.0.0", 9000, 12.5, 7, 100, "k", "warning")


@pytest.mark.parametrize(
    "env",
    [
        {"MOCK_PORT": "x"},
        {"MOCK_PORT": "70000"},
        {"MOCK_TOKENS": "1.5"},
        {"MOCK_TPS": "0"},
        {"MOCK_TTFT_MS": "-1"},
        {"MOCK_LOG_LEVEL": "loud"},
    ],
)
def test_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(env)
