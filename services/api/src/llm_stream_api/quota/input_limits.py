"""Input limits: what one request may ask of the LLM, checked the same way in every dialect.

The limits are settings: MAX_MESSAGES, MAX_TOTAL_CHARS, LLM_MAX_TOKENS as the ceiling of
``max_tokens`` (a request asking for none gets the ceiling from the workers) and the optional
MODELS_ALLOWED. A request over one is refused before it is queued (``LimitExceeded``: 422 on
the native routes, OpenAI's 400 on ``/v1``), and the refusal names the field as the client
spelled it, which differs between dialects (``input``, ``max_output_tokens``...).
"""

from __future__ import annotations

from llm_stream_api.protocol.errors import LimitExceeded
from llm_stream_api.protocol.task import NATIVE, FieldNames, TaskRequest
from llm_stream_api.settings import APISettings


def check(
    wanted: TaskRequest, settings: APISettings, names: FieldNames = NATIVE, *, appended: int = 0
) -> None:
    """Raise ``LimitExceeded`` for the first limit ``wanted`` is over.

    ``appended``: turns added after the ``messages`` the client sent (the native ``message``,
    bounded by ``MAX_MESSAGE_CHARS`` on its own). The bounds are those of ``messages`` as sent,
    as the OpenAPI document declares them.
    """
    turns = wanted.messages or ()
    if appended:
        turns = turns[:-appended]
    # A native request with ``message`` alone is one turn.
    where = names.messages if turns else "message"
    count = len(turns) or 1
    if count > settings.max_messages:
        raise LimitExceeded(
            where, f"{count} messages, more than MAX_MESSAGES ({settings.max_messages})"
        )
    total = sum(len(turn.text) for turn in turns) if turns else len(wanted.message or "")
    if total > settings.max_total_chars:
        raise LimitExceeded(
            where, f"{total} characters in all, more than MAX_TOTAL_CHARS ({settings.max_total_chars})"
        )
    check_tokens(wanted.max_tokens, settings, names.max_tokens)
    if wanted.n is not None and wanted.n > settings.max_choices:
        raise LimitExceeded("n", f"{wanted.n} choices, more than MAX_CHOICES ({settings.max_choices})")
    allowed = settings.allowed_models
    if allowed and wanted.model is not None and wanted.model not in allowed:
        raise LimitExceeded(
            names.model, f"model {wanted.model!r} is not allowed here (MODELS_ALLOWED: {', '.join(allowed)})",
            code="model_not_allowed",
        )


def check_tokens(wanted: int | None, settings: APISettings, param: str) -> None:
    """``LLM_MAX_TOKENS`` is the ceiling of a token cap a request asks for."""
    ceiling = settings.llm_max_tokens
    if ceiling and wanted and wanted > ceiling:
        raise LimitExceeded(
            param, f"{wanted} is over this deployment's ceiling of {ceiling} tokens (LLM_MAX_TOKENS)"
        )
