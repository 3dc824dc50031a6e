"""Mock LLM settings, read from the environment.

| variable          | default     | meaning                                                   |
|-------------------|-------------|-----------------------------------------------------------|
| ``MOCK_HOST``     | 127.0.0.1   | interface to listen on                                    |
| ``MOCK_PORT``     | 8008        | port to listen on (0: any free port)                      |
| ``MOCK_TTFT_MS``  | 200         | delay before the first answer token, in milliseconds      |
| ``MOCK_TOKENS``   | 50          | answer length in tokens                                   |
| ``MOCK_TPS``      | 50          | tokens per second after the first one                     |
| ``MOCK_API_KEY``  | (unset)     | when set, ``Authorization: Bearer <key>`` is required      |
| ``MOCK_LOG_LEVEL``| info        | uvicorn log level; ``debug`` also turns the access log on |

The service has only two dependencies (uvicorn, orjson), so this is a plain dataclass rather
than a pydantic-settings class; it refuses wrong values at start-up all the same.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class SettingsError(ValueError):
    """An environment variable holds a value the mock cannot run with."""


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8008
    ttft_ms: float = 200.0
    tokens: int = 50
    tps: float = 50.0
    api_key: str | None = None
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"MOCK_PORT must be between 0 and 65535, got {self.port}")
        if self.ttft_ms < 0:
            raise SettingsError(f"MOCK_TTFT_MS must be >= 0, got {self.ttft_ms}")
        if self.tokens < 0:
            raise SettingsError(f"MOCK_TOKENS must be >= 0, got {self.tokens}")
        if self.tps <= 0:
            raise SettingsError(f"MOCK_TPS must be > 0, got {self.tps}")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"MOCK_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            host=env.get("MOCK_HOST", "127.0.0.1"),
            port=int(_number(env, "MOCK_PORT", 8008, integer=True)),
            ttft_ms=_number(env, "MOCK_TTFT_MS", 200.0),
            tokens=int(_number(env, "MOCK_TOKENS", 50, integer=True)),
            tps=_number(env, "MOCK_TPS", 50.0),
            api_key=env.get("MOCK_API_KEY") or None,
            log_level=env.get("MOCK_LOG_LEVEL", "info").strip().lower(),
        )


def _number(env: Mapping[str, str], name: str, default: float, *, integer: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise SettingsError(f"{name} must be {kind}, got {raw!r}") from None
