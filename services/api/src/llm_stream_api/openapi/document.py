"""The OpenAPI document, completed with what this process enforces.

The ``/v1`` routes are in it too, with what they honour (``protocol``) and OpenAI's error
object. Some limits are settings (``MAX_MESSAGE_CHARS``, ``MAX_MESSAGES``, ``LLM_MAX_TOKENS``,
``MODELS_ALLOWED``), and ``Last-Event-ID`` is checked by the stream route itself (so a bad one
gets its own 400, not a generic 422). The document states both, so that a client generated
from it, or schemathesis, sees the rules the API applies.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from llm_stream_api.dialects import Dialect, RouteTable
from llm_stream_api.keys import is_open
from llm_stream_api.openapi.responses import RETRY_AFTER_HEADER, native_error, openai_error
from llm_stream_api.settings import APISettings

# What the stream route accepts: empty (no resume), or a whole number, blanks around it.
LAST_EVENT_ID_PATTERN = r"^\s*([0-9]+\s*)?$"


def install(app: FastAPI, settings: APISettings, routes: RouteTable) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            complete(generate(), settings, routes.paths(Dialect.OPENAI))
        return app.openapi_schema or {}



    app.openapi = openapi  # type: ignore[method-assign]


def complete(document: dict[str, Any], settings: APISettings, openai_paths: set[str]) -> None:
    if settings.api_keys.get_secret_value() or settings.api_keys_file is not None:
        _require_keys(document, settings, openai_paths)
    for path, item in document.get("paths", {}).items():
        if path in openai_paths:
            for operation in item.values():
                # FastAPI's own 422: the OpenAI dialect answers a validation error with a 400.
                operation.get("responses", {}).pop("422", None)
    for operation in _operations(document):
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        properties = body.get("schema", {}).get("properties", {})
        _limit_properties(properties, settings)
        for parameter in operation.get("parameters", []):
            if parameter.get("in") == "header" and parameter.get("name", "").lower() == "last-event-id":
                parameter["schema"] = {"type": "string", "pattern": LAST_EVENT_ID_PATTERN}
                parameter["description"] = "Resume after this event id (a whole number)."


KEY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API key (API_KEYS)."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The same key."},
}
WWW_AUTHENTICATE = {
    "WWW-Authenticate": {"description": "The Bearer challenge.", "schema": {"type": "string"}}
}
UNAUTHORIZED = "`unauthorized`: no API key, or one this deployment does not know."
RATE_LIMITED = "`rate_limited`: past one of the key's limits (KEY_*_PER_MINUTE, KEY_MAX_SESSIONS)."
STREAM_NOT_FOUND = (
    "`not_found`: the session belongs to another key, or nobody queued it within STREAM_WAIT_TIMEOUT_S."
)


def _require_keys(document: dict[str, Any], settings: APISettings, openai_paths: set[str]) -> None:
    """With API keys on: every operation but the open ones needs a key, and may answer 401
    (429 with per-key limits); a stream of another key's session is a 404."""
    document.setdefault("components", {}).setdefault("securitySchemes", {}).update(KEY_SCHEMES)
    limited = settings.key_requests_per_minute or settings.key_max_sessions or settings.key_tokens_per_minute
    probes_open = settings.api_keys_open_probes
    for path, item in document.get("paths", {}).items():
        error = openai_error if path in openai_paths else native_error
        for method, operation in item.items():
            open_route = is_open(method.upper(), path, probes_open=probes_open)
            if not isinstance(operation, dict) or open_route:
                continue
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            responses = operation.setdefault("responses", {})
            responses.setdefault("401", error(UNAUTHORIZED, headers=WWW_AUTHENTICATE))
            if limited:
                responses.setdefault("429", error(RATE_LIMITED, headers=RETRY_AFTER_HEADER))
            if path == "/stream/{session_id}":
                responses.setdefault("404", error(STREAM_NOT_FOUND))


# The token caps of the dialects (native, Chat Completions, Responses): at most LLM_MAX_TOKENS.
TOKEN_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _limit_properties(properties: dict[str, Any], settings: APISettings) -> None:
    if message := _typed(properties.get("message"), "string"):
        message["maxLength"] = settings.max_message_chars
    if messages := _typed(properties.get("messages"), "array"):
        messages["maxItems"] = settings.max_messages
    ceiling = settings.llm_max_tokens
    for name in TOKEN_CAPS:
        if (cap := _typed(properties.get(name), "integer")) and ceiling:
            cap["maximum"] = min(cap.get("maximum", ceiling), ceiling)
    if choices := _typed(properties.get("n"), "integer"):
        choices["maximum"] = settings.max_choices
    if (model := _typed(properties.get("model"), "string")) and settings.allowed_models:
        model["enum"] = settings.allowed_models


def _typed(schema: Any, kind: str) -> dict[str, Any] | None:
    """The part of a property's schema for values of type ``kind``: a limit on it leaves null
    (where the property allows it) as it was."""
    if not isinstance(schema, dict):
        return None
    if schema.get("type") == kind:
        return schema
    branches = [b for b in schema.get("anyOf", []) if isinstance(b, dict) and b.get("type") == kind]
    return branches[0] if len(branches) == 1 else None


def _operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        operation
        for item in document.get("paths", {}).values()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete") and isinstance(operation, dict)
    ]
