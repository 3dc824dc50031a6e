"""``llm-stream-mockllm``: serve the mock LLM (settings from ``MOCK_*`` environment variables)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

import uvicorn

from llm_stream_mockllm.embed import uvicorn_config
from llm_stream_mockllm.settings import Settings, SettingsError

_EPILOG = """\
environment:
  MOCK_HOST       interface (default 127.0.0.1)
  MOCK_PORT       port (default 8008)
  MOCK_TTFT_MS    milliseconds before the first token (default 200)
  MOCK_TOKENS     answer length in tokens (default 50)
  MOCK_TPS        tokens per second (default 50)
  MOCK_API_KEY    if set, require "Authorization: Bearer <key>"
  MOCK_LOG_LEVEL  critical|error|warning|info|debug|trace (default info)

prompt directives: [[mock:tokens=N]] [[mock:ttft_ms=N]] [[mock:tps=N]] [[mock:fail=STATUS]]
  [[mock:fail_times=K]] [[mock:retry_after_ms=N]] [[mock:fail_after=K]]
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="llm-stream-mockllm",
        description="Deterministic OpenAI-compatible mock LLM (POST /v1/chat/completions).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="overrides MOCK_HOST")
    parser.add_argument("--port", type=int, help="overrides MOCK_PORT")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        overrides = {key: value for key, value in vars(args).items() if value is not None}
        settings = dataclasses.replace(settings, **overrides)
    except SettingsError as exc:
        parser.exit(2, f"llm-stream-mockllm: {exc}\n")
    uvicorn.Server(uvicorn_config(settings)).run()


if __name__ == "__main__":
    sys.exit(main())
