"""Where requests enter: one module per resource, each a router in one dialect.

Native (``NativeRoute``): ``chat`` (``/chat``, ``/chat/async``, ``/stream/{id}``), ``sessions``
(cancel), ``ops`` (health, stats, LLM check, metrics, the page). OpenAI (``OpenAIRoute``,
under ``/v1``): ``openai_chat``, ``openai_responses``, ``openai_models``.
"""

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""What every streamed answer sends: no caching, and no buffering by a proxy (nginx)."""
