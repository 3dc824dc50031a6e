"""Plain ASGI middleware, one per file: streaming routes keep seeing client disconnects."""
