"""Reading a request body with a size limit, for every route that takes JSON.

The body is read whatever its ``Content-Type`` (the old clients omit it), and refused as soon as
it is larger than ``MAX_BODY_BYTES``, before it is all in memory.
"""

from __future__ import annotations

from fastapi import Request

from llm_stream_api.errors import BodyTooLarge


async def read_limited(request: Request, max_bytes: int) -> bytes:
    """The raw body; raises ``BodyTooLarge`` past ``max_bytes``."""
    length = request.headers.get("content-length")
    if length and length.isascii() and length.isdigit() and int(length) > max_bytes:
        raise BodyTooLarge(max_bytes)
    raw = b""
    async for part in request.stream():
        raw += part
        if len(raw) > max_bytes:
            raise BodyTooLarge(max_bytes)
    return raw
