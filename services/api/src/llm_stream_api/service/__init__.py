"""The use cases: the session service (``sessions``), following a session (``follow``) and the
native stream bodies (``streams``). Built once in the lifespan; routes call it."""
