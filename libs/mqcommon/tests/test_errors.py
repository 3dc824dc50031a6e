from __future__ import annotations

import httpx2 as httpx
import openai
import pytest
from mqcommon.errors import PoisonUpstreamError, RetryableUpstreamError, map_upstream

REQUEST = httpx.Request("POST", "http://llm/v1/chat/completions")


def status_error(status: int) -> openai.APIStatusError:
    response = httpx.Response(status, request=REQUEST, json={"error": {"message": "x"}})
    return openai.APIStatusError("x", response=response, body=None)


@pytest.mark.parametrize(("status", "kind"), [
    (429, RetryableUpstreamError), (500, RetryableUpstreamError), (503, RetryableUpstreamError),
    (400, PoisonUpstreamError), (401, PoisonUpstreamError), (404, PoisonUpstreamError),
])
def test_http_status_decides_retryable(status: int, kind: type) -> None:
    mapped = map_upstream(status_error(status))
    assert isinstance(mapped, kind)
    assert mapped.error_class == f"http_{status}"
    assert mapped.retryable is (kind is RetryableUpstreamError)


def test_connection_problems_are_retryable() -> None:
    for exc in (openai.APIConnectionError(request=REQUEST), openai.APITimeoutError(REQUEST),
                TimeoutError(), ConnectionResetError()):
        assert map_upstream(exc).retryable


def test_unknown_failures_are_not_retried() -> None:
    mapped = map_upstream(ValueError("weird"))
    assert not mapped.retryable and mapped.error_class == "ValueError"
