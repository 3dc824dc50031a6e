"""Per-request behaviour injected through the prompt text.

A directive is ``[[mock:NAME=VALUE]]`` anywhere in the last user message. Because the prompt
travels unchanged through the API, the broker and the worker, a test can steer the mock from
the very start of the pipeline. The answer is computed on the prompt as given, directives
included, so :func:`llm_stream_mockllm.answer.expected_answer` stays valid.

| directive                   | effect                                                        |
|-----------------------------|---------------------------------------------------------------|
| ``[[mock:tokens=N]]``       | answer with N tokens (still capped by ``max_tokens``)          |
| ``[[mock:ttft_ms=N]]``      | wait N ms before the first token                              |
| ``[[mock:tps=N]]``          | emit N tokens per second                                      |
| ``[[mock:fail=STATUS]]``    | answer HTTP STATUS (400-599) with an OpenAI error body        |
| ``[[mock:fail_times=K]]``   | with ``fail``: only the first K requests with this exact      |
|                             | prompt fail (counted per mock process), later ones succeed    |
| ``[[mock:retry_after_ms=N]]``| with ``fail``: add ``retry-after-ms: N`` to the error         |
| ``[[mock:fail_after=K]]``   | send K tokens, then close the connection mid-response         |
| ``[[mock:tool=NAME]]``      | call the tool NAME (``A,B``: both; ``*``: every tool); see     |
|                             | ``typed``                                                     |
| ``[[mock:reasoning=N]]``    | send N reasoning tokens before the answer                     |

An unknown name or a malformed value is refused with a 400, so that a typo in a test shows up
as a clear error instead of a silently ignored directive.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_DIRECTIVE = re.compile(r"\[\[mock:([A-Za-z_]+)=([^\]]*)\]\]")
_MARKER = "[[mock:"


class DirectiveError(ValueError):
    """A ``[[mock:...]]`` directive that cannot be honoured."""


@dataclass(frozen=True, slots=True)
class Directives:
    tokens: int | None = None
    ttft_ms: float | None = None
    tps: float | None = None
    fail: int | None = None
    fail_times: int | None = None
    retry_after_ms: int | None = None
    fail_after: int | None = None
    tool: str | None = None
    reasoning: int | None = None


NONE = Directives()


def parse_directives(prompt: str) -> Directives:
    """Read every directive of ``prompt``; the last occurrence of a name wins."""
    if _MARKER not in prompt:
        return NONE
    values: dict[str, float | int | str] = {}
    for name, raw in _DIRECTIVE.findall(prompt):
        values[name] = _value(name, raw)
    if "fail" in values and not 400 <= values["fail"] <= 599:
        raise DirectiveError(f"[[mock:fail={values['fail']}]]: the status must be 400-599")
    if "tps" in values and values["tps"] <= 0:
        raise DirectiveError("[[mock:tps=...]]: must be > 0")
    return Directives(**values)  # type: ignore[arg-type]


_INTEGER = frozenset({"tokens", "fail", "fail_times", "retry_after_ms", "fail_after", "reasoning"})
_DECIMAL = frozenset({"ttft_ms", "tps"})
_TEXT = frozenset({"tool"})


def _value(name: str, raw: str) -> float | int | str:
    if name in _TEXT:
        if not raw.strip():
            raise DirectiveError(f"[[mock:{name}=]]: name a tool (or *)")
        return raw.strip()
    if name not in _INTEGER and name not in _DECIMAL:
        known = ", ".join(sorted(_INTEGER | _DECIMAL | _TEXT))
        raise DirectiveError(f"unknown directive [[mock:{name}=...]] (known: {known})")
    try:
        value: float | int = int(raw) if name in _INTEGER else float(raw)
    except ValueError:
        raise DirectiveError(f"[[mock:{name}={raw}]]: not a number") from None
    if not math.isfinite(value) or value < 0:
        raise DirectiveError(f"[[mock:{name}={raw}]]: must be a finite number >= 0")
    return value
