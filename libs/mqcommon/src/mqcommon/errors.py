"""The llm-stream error hierarchy, and the one place foreign exceptions are mapped into it.

    LLMStreamError
    ├── BrokerUnavailable          the broker is down or did not confirm in time (retryable)
    │   └── PublishRefused         the broker refused a publish (nack: a full queue)
    ├── InvalidMessage             a payload that can never be processed (poison)
    └── UpstreamError              the LLM failed
        ├── RetryableUpstreamError connection drop, timeout, 429, 5xx: another attempt may work
        └── PoisonUpstreamError    4xx other than 429: the request itself is refused

Whether a failure is worth another delivery is decided here, once, by ``retryable``.
"""

from __future__ import annotations

import asyncio
from typing import Any


class LLMStreamError(Exception):
    retryable: bool = False


class BrokerUnavailable(LLMStreamError):
    retryable = True


class PublishRefused(BrokerUnavailable):
    """The broker is up and said no: a queue at its ``x-max-length`` with ``reject-publish``."""


class InvalidMessage(LLMStreamError):
    retryable = False


class UpstreamError(LLMStreamError):
    status_code: int | None = None
    param: str | None = None  # the request field the LLM named in its error, if it did

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code

    @property
    def error_class(self) -> str:
        """A low-cardinality label for metrics."""
        if self.status_code is not None:
            return f"http_{self.status_code}"
        return type(self.__cause__).__name__ if self.__cause__ else type(self).__name__


class RetryableUpstreamError(UpstreamError):
    retryable = True


class PoisonUpstreamError(UpstreamError):
    retryable = False


def map_upstream(exc: BaseException) -> UpstreamError:
    """Map an exception raised while talking to the LLM into the hierarchy."""
    import openai  # imported lazily: the lib itself does not need the SDK

    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        cls = RetryableUpstreamError if status == 429 or status >= 500 else PoisonUpstreamError
        mapped: UpstreamError = cls(_describe(exc), status_code=status)
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error")
        detail: dict[str, Any] = error if isinstance(error, dict) else body
        param = detail.get("param")
        if isinstance(param, str):
            mapped.param = param
    elif isinstance(exc, openai.APIConnectionError | TimeoutError | asyncio.TimeoutError):
        mapped = RetryableUpstreamError(_describe(exc))
    elif isinstance(exc, openai.APIError):
        # Errors reported inside an otherwise successful stream (e.g. an "error" chunk).
        mapped = RetryableUpstreamError(_describe(exc))
    elif isinstance(exc, ConnectionError | OSError) or _is_transport_error(exc):
        mapped = RetryableUpstreamError(_describe(exc))
    else:
        mapped = PoisonUpstreamError(_describe(exc))
    mapped.__cause__ = exc
    return mapped


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _is_transport_error(exc: BaseException) -> bool:
    """HTTP client errors (httpx2, aiohttp) that escaped the SDK while a body was read."""
    import aiohttp
    import httpx2

    return isinstance(exc, httpx2.HTTPError | aiohttp.ClientError)
