"""Request and response bodies, one module per dialect, kept apart from serving.

``native`` bodies live in ``llm_stream_api.models``; ``chat_completions`` and ``responses``
are the OpenAI dialects, built on ``openai_base``.
"""
