"""Every error the API answers, as one hierarchy of plain exceptions.

An error says what went wrong (status, code, message, the parameter at fault, headers such as
``Retry-After``); how it is written is the route's dialect (``dialects``): the native body
``{"error": code, "message": ..., ...}`` or OpenAI's ``{"error": {"message", "type", "param",
"code"}}``. Routes, services and protocol translators raise these and never build a response.

    APIError                 any refusal: status, code, message, param, headers
    ├── SessionConflict      409  a session id already in use
    ├── BodyTooLarge         413  a body over MAX_BODY_BYTES
    ├── Unauthorized         401  no key, or an unknown one
    ├── RateLimited          429  past one of the key's limits
    ├── LimitExceeded        422  over an input limit (400 in the OpenAI dialect)
    ├── Overloaded           503  past a bound of admission control
    ├── Forbidden            403  the key may not use what it asked for (a service tier)
    ├── NotFound             404  no such session, response or model
    └── OpenAIError          an error only the OpenAI routes raise, typed as OpenAI types it
        └── Unsupported      400  a parameter that cannot be honoured
"""

from __future__ import annotations

from typing import Any

RETRY_AFTER_S = 5  # the Retry-After of a lost broker: about one reconnect attempt


class APIError(Exception):
    """A refusal. ``extra`` fields go into the native body only; ``error_type`` is the OpenAI
    dialect's ``type`` when the status alone does not say it."""

    def __init__(
        self, status: int, code: str | None, message: str, *, param: str | None = None,
        error_type: str | None = None, headers: dict[str, str] | None = None, **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
        self.error_type = error_type
        self.headers = headers or {}
        self.extra = extra


class SessionConflict(APIError):
    def __init__(self, session_id: str) -> None:
        super().__init__(409, "conflict", f"session_id {session_id!r} is already in use")


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, "too_large", f"request body is larger than {limit} bytes")


class Unauthorized(APIError):
    """No API key, or one nobody issued (``keys``). The key itself is never quoted."""

    def __init__(self, *, missing: bool) -> None:
        if missing:
            message = "an API key is required: send Authorization: Bearer <key> or X-API-Key: <key>"
            challenge = 'Bearer realm="llm-stream"'
        else:
            message = "the API key is not valid"
            challenge = 'Bearer realm="llm-stream", error="invalid_token"'
        super().__init__(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


class RateLimited(APIError):
    """Past one of the key's limits (``quota.key_limits``); ``Retry-After`` says when it frees."""

    def __init__(self, limit: str, message: str, retry_after_s: int) -> None:
        super().__init__(
            429, "rate_limited", message, headers={"Retry-After": str(retry_after_s)}, limit=limit
        )


class LimitExceeded(APIError):
    """A request over an input limit (``quota.input_limits``); ``param`` names the field."""

    def __init__(self, param: str, message: str, *, code: str = "limit_exceeded") -> None:
        super().__init__(422, code, f"{param}: {message}", param=param)


class Overloaded(APIError):
    """Past a bound of admission control: the queue is full, or this process serves its most
    streams. ``retry_after_s`` comes from the backlog and the measured drain rate."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(503, "overloaded", message, headers={"Retry-After": str(retry_after_s)})


class NotFound(APIError):
    def __init__(self, message: str, *, param: str | None = None, code: str = "not_found") -> None:
        super().__init__(404, code, message, param=param)


class ModelNotFound(NotFound):
    """A model no pool serves (docs/adr/0006); the body lists those that are."""

    def __init__(self, model: str, served: list[str], *, param: str = "model") -> None:
        listed = ", ".join(served[:20]) + (", ..." if len(served) > 20 else "")
        super().__init__(
            f"The model {model!r} does not exist here: this deployment serves {listed}", param=param,
            code="model_not_found",
        )


class Forbidden(APIError):
    def __init__(self, message: str, *, param: str | None = None, code: str = "forbidden") -> None:
        super().__init__(403, code, message, param=param)


class BrokerDown(APIError):
    """The broker is down or did not confirm in time: retry after about one reconnect."""

    def __init__(self, why: str) -> None:
        super().__init__(
            503, "broker_unavailable", f"the message broker is unavailable: {why}",
            error_type="server_error", headers={"Retry-After": str(RETRY_AFTER_S)},
        )


class OpenAIError(APIError):
    """An error of the OpenAI dialect's own making, in its argument order."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None,
        type: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, code, message, param=param, error_type=type, headers=headers)


class Unsupported(OpenAIError):
    def __init__(self, param: str, why: str) -> None:
        super().__init__(400, f"{param}: {why}", param=param, code="unsupported_parameter")
