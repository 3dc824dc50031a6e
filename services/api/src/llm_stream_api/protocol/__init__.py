"""What travels over HTTP, as pure shapes and translators: one module per dialect, and the
errors every dialect answers with. Nothing here knows the broker, the hub or FastAPI's app.

``native`` (the proof of concept's bodies), ``task`` (a request in no dialect), ``errors``
(the one hierarchy), and the OpenAI dialects ``chat_completions`` and ``responses`` on
``openai_base``.
"""
