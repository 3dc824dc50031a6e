"""Answers that are more than text: tool calls, structured outputs, reasoning, log probabilities.

Deterministic like the text answers, so a test can compute every byte a client must end up
with (``tool_call_id``, ``arguments_of``, ``instance_of``):

- **Tool calls.** With ``tools`` given and the conversation ending with a user turn, the mock
  calls tools when the prompt says ``[[mock:tool=NAME]]`` (several: ``NAME,OTHER``, or ``*`` for
  every tool), or when ``tool_choice`` is ``required`` (the first tool) or names a function.
  ``tool_choice: none`` calls nothing; ``parallel_tool_calls: false`` keeps the first call.
  The arguments are a valid instance of the function's ``parameters`` schema, streamed in
  pieces of ``ARGUMENT_PIECE`` characters (cut mid-value), with ``finish_reason: tool_calls``.
- **After a tool result.** A conversation ending with ``tool`` turns is answered with text,
  computed on the prompt ``"tool results: " + their contents joined by " | "``.
- **Structured outputs.** ``response_format`` ``json_schema``: the content is a valid instance
  of the schema; ``json_object``: ``{"answer": <the text answer>}``.
- **Reasoning.** ``[[mock:reasoning=N]]``: N reasoning tokens (``reasoning_content``) first.
- **Log probabilities.** ``logprobs: true``: every content delta carries its entry, with
  ``top_logprobs`` alternatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any

import orjson

from llm_stream_mockllm.answer import answer_tokens

ARGUMENT_PIECE = 7  # characters of argument text per streamed delta
JSON_PIECE = 9  # characters of a structured answer per streamed delta
MAX_DEPTH = 6  # how deep a generated instance goes into a schema


@dataclass(frozen=True, slots=True)
class Call:
    index: int
    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Plan:
    """What the mock answers, as OpenAI's deltas (``delta``, ``logprobs``) and as a message."""

    deltas: list[tuple[dict[str, Any], dict[str, Any] | None]] = field(default_factory=list)
    finish: str = "stop"
    content: str | None = None
    reasoning: str = ""
    calls: list[Call] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)

    def message(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": "assistant", "content": self.content, "refusal": None}
        if self.calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.calls
            ]
        if self.reasoning:
            out["reasoning_content"] = self.reasoning
        return out


def tool_call_id(prompt: str, name: str, index: int) -> str:
    digest = blake2b(f"{prompt}\x00{name}\x00{index}".encode(), digest_size=12).hexdigest()
    return f"call_{digest}"


def arguments_of(parameters: Any, name: str) -> str:
    """The arguments the mock sends for a function: an instance of its parameters schema."""
    return orjson.dumps(instance_of(parameters if isinstance(parameters, dict) else {}, name)).decode()


def instance_of(schema: Any, name: str = "value", defs: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A deterministic value valid against the common JSON Schema keywords (what SDKs and
    pydantic generate: objects, arrays, enums, consts, anyOf, ``$ref`` into ``$defs``)."""
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return {} if depth == 0 else None
    defs = defs if defs is not None else {**schema.get("$defs", {}), **schema.get("definitions", {})}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.rsplit("/", 1)[-1] in defs:
        return instance_of(defs[ref.rsplit("/", 1)[-1]], name, defs, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            chosen = next((o for o in options if isinstance(o, dict) and o.get("type") != "null"), options[0])
            return instance_of(chosen, name, defs, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and isinstance(schema.get("properties"), dict)):
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        return {key: instance_of(sub, key, defs, depth + 1) for key, sub in properties.items()}
    if kind == "array":
        least = schema.get("minItems")
        count = least if isinstance(least, int) and 0 < least <= 3 else 1
        return [instance_of(schema.get("items"), name, defs, depth + 1) for _ in range(count)]
    if kind == "integer":
        least = schema.get("minimum")
        return int(least) if isinstance(least, int | float) else 42
    if kind == "number":
        least = schema.get("minimum")
        return float(least) if isinstance(least, int | float) else 1.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "string" or kind is None:
        text = f"{name} value"
        least = schema.get("minLength")
        if isinstance(least, int) and len(text) < least:
            text += "x" * (least - len(text))
        most = schema.get("maxLength")
        return text[:most] if isinstance(most, int) and most >= 0 else text
    return None


def pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def tool_prompt(messages: list[Any]) -> str | None:
    """The prompt of an answer to tool results: None unless the conversation ends with them."""
    results = []
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "tool":
            break
        content = message.get("content")
        results.append(content if isinstance(content, str) else orjson.dumps(content).decode())
    if not results:
        return None
    return "tool results: " + " | ".join(reversed(results))


def plan(
    *,
    prompt: str,
    tokens: list[str],
    data: dict[str, Any],
    wanted_tools: str | None,
    reasoning: int,
) -> Plan | None:
    """The typed answer to a request, or None when it is plain text (the fast path)."""
    tools = [
        t for t in data.get("tools") or () if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    choice = data.get("tool_choice")
    messages = data.get("messages") or []
    ends_with_user = bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "user"
    calls = (
        _calls(prompt, tools, choice, wanted_tools, data.get("parallel_tool_calls")) if ends_with_user else []
    )
    response_format = data.get("response_format") if isinstance(data.get("response_format"), dict) else {}
    structured = response_format.get("type") in ("json_object", "json_schema")
    logprobs = data.get("logprobs") is True
    if not (calls or structured or reasoning or logprobs):
        return None
    out = Plan()
    for token in answer_tokens("reasoning: " + prompt, reasoning):
        out.deltas.append(({"reasoning_content": token}, None))
        out.reasoning += token
    if calls:
        out.calls = calls
        out.finish = "tool_calls"
        out.content = None
        for call in calls:
            arguments = pieces(call.arguments, ARGUMENT_PIECE)
            out.deltas.append(
                (
                    {
                        "tool_calls": [
                            {
                                "index": call.index,
                                "id": call.id,
                                "type": "function",
                                "function": {"name": call.name, "arguments": ""},
                            }
                        ]
                    },
                    None,
                )
            )
            for piece in arguments:
                out.deltas.append(
                    ({"tool_calls": [{"index": call.index, "function": {"arguments": piece}}]}, None)
                )
        return out
    if response_format.get("type") == "json_schema":
        spec = (
            response_format.get("json_schema") if isinstance(response_format.get("json_schema"), dict) else {}
        )
        content_pieces = pieces(orjson.dumps(instance_of(spec.get("schema") or {})).decode(), JSON_PIECE)
    elif structured:
        content_pieces = pieces(orjson.dumps({"answer": "".join(tokens)}).decode(), JSON_PIECE)
    else:
        content_pieces = tokens
    top = data.get("top_logprobs") if isinstance(data.get("top_logprobs"), int) else 0
    out.content = "".join(content_pieces)
    for index, piece in enumerate(content_pieces):
        entry = _logprob(piece, index, top) if logprobs else None
        if entry is not None:
            out.logprobs.append(entry)
        out.deltas.append(({"content": piece}, {"content": [entry], "refusal": None} if entry else None))
    return out


def _calls(
    prompt: str, tools: list[dict[str, Any]], choice: Any, wanted: str | None, parallel: Any
) -> list[Call]:
    if not tools or choice == "none":
        return []
    by_name = {t["function"].get("name"): t["function"] for t in tools}
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        names = [name] if isinstance(name, str) else []
    elif wanted is not None:
        names = list(by_name) if wanted == "*" else [n.strip() for n in wanted.split(",") if n.strip()]
    elif choice == "required":
        names = [tools[0]["function"].get("name")]
    else:
        return []
    if parallel is False:
        names = names[:1]
    return [
        Call(
            index,
            tool_call_id(prompt, str(name), index),
            str(name),
            arguments_of((by_name.get(name) or {}).get("parameters"), str(name)),
        )
        for index, name in enumerate(names)
    ]


def _logprob(token: str, index: int, top: int) -> dict[str, Any]:
    value = -round(0.01 * (index % 10 + 1), 4)
    entry = {"token": token, "logprob": value, "bytes": list(token.encode())}
    alternatives = [{"token": token, "logprob": value, "bytes": list(token.encode())}]
    alternatives += [
        {"token": f"alt{k}", "logprob": value - k, "bytes": list(f"alt{k}".encode())} for k in range(1, top)
    ]
    return {**entry, "top_logprobs": alternatives[:top]}
