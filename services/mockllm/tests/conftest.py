from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from llm_stream_mockllm.embed import serve_in_background
from llm_stream_mockllm.settings import Settings
from openai import AsyncOpenAI

# Fast enough for a quick suite; test_mockllm_server.py relies on the 12 tokens.
FAST = Settings(port=0, ttft_ms=10, tokens=12, tps=2000)


@pytest.fixture
async def mock_url() -> AsyncIterator[str]:
    async with serve_in_background(FAST) as url:
        yield url


@pytest.fixture
async def client(mock_url: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{mock_url}/v1", api_key="mock", max_retries=0) as client:
        yield client
