"""The OpenAI SDK client the API itself uses: direct mode (``CHAT_DIRECT_LLM``) and ``/test``."""

from __future__ import annotations

from typing import Any

from llm_stream_api.settings import APISettings


class LLMClients:
    """The OpenAI SDK client of direct mode and ``/test``, made on first use: the SDK costs
    a second of start-up."""

    def __init__(self, settings: APISettings) -> None:
        self._settings = settings
        self._client: Any = None

    def __call__(self) -> Any:
        if self._client is None:
            from mqcommon.llm import make_client

            self._client = make_client(self._settings)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
