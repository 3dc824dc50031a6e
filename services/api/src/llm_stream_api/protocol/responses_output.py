"""The output items of a Responses answer, and their stream events, numbered from positions.

An answer's parts (mqcommon.parts) become output items in the order they come: a stretch of
reasoning is a ``reasoning`` item, text a ``message``, a refusal a ``message`` holding a
refusal, and each tool call a ``function_call``. Every event's ``sequence_number`` follows
from positions and the item's index ``k`` alone, so every replica numbers every event alike
and ``starting_after=N`` resumes anywhere:

    2 + s + 5k       response.output_item.added     (s: the item's first position)
    3 + s + 5k       response.content_part.added    (not for a function call)
    3 + p + 5k       a delta ending at position p
    4 + e + 5k       the item's text (or arguments) done   (e: the item's last position)
    5 + e + 5k       response.content_part.done     (not for a function call)
    6 + e + 5k       response.output_item.done
    7 + L + 5(K-1)   response.completed | .failed | .incomplete   (K items, L positions)

Numbers may skip (characters of a tool call's id and name, or of log probabilities, have
no event), never repeat. An answer of plain text is one message item (k = 0), numbered as
this API always numbered it. An answer with no part at all still gets one empty message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from mqcommon.parts import CONTENT, REASONING, REFUSAL, Part, of_key, tool_key, tool_of

FIRST_DELTA = 3  # the sequence number before the first delta of the first item
ITEM_EVENTS = 5  # sequence numbers each item takes besides its positions

MESSAGE, REFUSAL_MESSAGE, REASONING_ITEM, FUNCTION_CALL = "message", "refusal", "reasoning", "function_call"
ItemKind = tuple[str, int]  # (kind, tool-call index; -1 for the others)


def item_kind(key: str) -> ItemKind | None:
    """The item a part belongs to; None for a part that extends the item it follows (log
    probabilities, an unknown key)."""
    if key == CONTENT:
        return MESSAGE, -1
    if key == REASONING:
        return REASONING_ITEM, -1
    if key == REFUSAL:
        return REFUSAL_MESSAGE, -1
    if (tool := tool_of(key)) is not None:
        return FUNCTION_CALL, tool[0]
    return None


@dataclass(slots=True)
class Item:
    kind: str
    call: int  # the tool call's index, for a function call
    index: int  # output_index
    start: int
    end: int

    @property
    def shift(self) -> int:
        return ITEM_EVENTS * self.index


def layout(parts: Iterable[tuple[str, int]]) -> list[Item]:
    """The items of an answer whose parts are ``(key, count)`` runs."""
    items: list[Item] = []
    position = 0
    for key, count in parts:
        if count <= 0:
            continue
        kind = item_kind(key)
        if kind is not None and not (items and (items[-1].kind, items[-1].call) == kind):
            items.append(Item(kind[0], kind[1], len(items), position, position))
        position += count
        if items:
            items[-1].end = position
    return items


def final_number(items: list[Item], length: int) -> int:
    return FIRST_DELTA + length + ITEM_EVENTS * (max(len(items), 1) - 1) + 4


def item_id(kind: str, response_id: str, index: int) -> str:
    prefix = {REASONING_ITEM: "rs", FUNCTION_CALL: "fc"}.get(kind, "msg")
    return f"{prefix}_{response_id}" if index == 0 else f"{prefix}_{response_id}_{index}"


def _part(kind: str, text: str) -> dict[str, Any]:
    if kind == REFUSAL_MESSAGE:
        return {"type": "refusal", "refusal": text}
    if kind == REASONING_ITEM:
        return {"type": "reasoning_text", "text": text}
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def output_item(response_id: str, item: Item, parts: list[Part], status: str) -> dict[str, Any]:
    """The item as a response's ``output`` holds it; ``parts`` are its own."""
    identity = item_id(item.kind, response_id, item.index)
    if item.kind == FUNCTION_CALL:
        return {
            "type": "function_call", "id": identity,
            "call_id": of_key(parts, tool_key(item.call, "id")),
            "name": of_key(parts, tool_key(item.call, "name")),
            "arguments": of_key(parts, tool_key(item.call, "args")), "status": status,
        }
    if item.kind == REASONING_ITEM:
        return {"type": "reasoning", "id": identity, "summary": [], "status": status,
                "content": [_part(item.kind, of_key(parts, REASONING))]}
    key = REFUSAL if item.kind == REFUSAL_MESSAGE else CONTENT
    return {"type": "message", "id": identity, "status": status, "role": "assistant",
            "content": [_part(item.kind, of_key(parts, key))]}


def output(response_id: str, parts: list[Part] | None, text: str, status: str) -> list[dict[str, Any]]:
    """Every output item of an answer (its ``parts``; None: all ``text``)."""
    if parts is None:
        parts = [(CONTENT, text)] if text else []
    items = layout((key, len(value)) for key, value in parts) or [Item(MESSAGE, -1, 0, 0, 0)]
    out, position, cursor = [], 0, 0
    for item in items:
        own: list[Part] = []
        while cursor < len(parts) and position < item.end:
            own.append(parts[cursor])
            position += len(parts[cursor][1])
            cursor += 1
        out.append(output_item(response_id, item, own, status))
    return out


def event(kind: str, sequence_number: int, **fields: Any) -> bytes:
    body = {"type": kind, "sequence_number": sequence_number, **fields}
    return b"event: %s\ndata: %s\n\n" % (kind.encode(), orjson.dumps(body))


_DELTA = {
    MESSAGE: "response.output_text.delta", REFUSAL_MESSAGE: "response.refusal.delta",
    REASONING_ITEM: "response.reasoning_text.delta", FUNCTION_CALL: "response.function_call_arguments.delta",
}
_DONE = {
    MESSAGE: ("response.output_text.done", "text"), REFUSAL_MESSAGE: ("response.refusal.done", "refusal"),
    REASONING_ITEM: ("response.reasoning_text.done", "text"),
    FUNCTION_CALL: ("response.function_call_arguments.done", "arguments"),
}


def _delta_key(item: Item) -> str:
    if item.kind == FUNCTION_CALL:
        return tool_key(item.call, "args")
    return {MESSAGE: CONTENT, REFUSAL_MESSAGE: REFUSAL, REASONING_ITEM: REASONING}[item.kind]


class OutputEvents:
    """The events of an answer's items, from its pieces, with sequence numbers above ``after``.

    ``held(start, stop)`` gives the answer's parts between two positions (the session holds
    every part it was sent): an item's done events carry its whole text, and a function
    call's first event its id and name, also when the stream resumed in the middle of it.
    """

    def __init__(
        self, response_id: str, after: int, held: Callable[[int, int], list[Part]], known: list[Item]
    ) -> None:
        self.response_id = response_id
        self.after = after
        self.held = held
        self.items: list[Item] = []
        self.current: Item | None = None
        self.announced = False  # the current item's opening events are out (or filtered by ``after``)
        self.withheld = False  # a function call's arguments wait for its id and name
        # Where to follow from: at or before the first position with an event above ``after``
        # (a delta is cut to what comes after it), as far as this replica knows the answer.
        self.start = 0
        for item in known:  # items wholly before ``after`` are skipped; the first other resumes
            if item.index < len(known) - 1 and 6 + item.end + item.shift <= after:
                continue
            self.items, self.current = known[: item.index + 1], item
            self.start = min(max(item.start, after - FIRST_DELTA - item.shift), item.end)
            break

    def _announce_at(self, item: Item) -> int:
        return 2 + item.start + item.shift

    def _emit(self, out: list[bytes], number: int, kind: str, **fields: Any) -> None:
        if number > self.after:
            out.append(event(kind, number, **fields))

    def feed(self, parts: list[Part], position: int) -> bytes:
        """The events of ``parts``, which end at ``position``."""
        out: list[bytes] = []
        begin = position - sum(len(text) for _, text in parts)
        for key, text in parts:
            end = begin + len(text)
            kind = item_kind(key)
            if kind is not None:
                item = self.current
                if item is None or (item.kind, item.call) != kind:
                    if item is not None:
                        self._close(out, item, "completed")
                    item = self.current = Item(kind[0], kind[1], len(self.items), begin, begin)
                    self.items.append(item)
                    self.announced = self.withheld = False
                item.end = end
                if item.kind != FUNCTION_CALL and not self.announced:
                    self._announce(out, item)
                if key == _delta_key(item) and text:
                    self._delta(out, item, text, begin, end)
            elif self.current is not None:
                self.current.end = end
            begin = end
        return b"".join(out)

    def _delta(self, out: list[bytes], item: Item, text: str, begin: int, end: int) -> None:
        number = FIRST_DELTA + end + item.shift
        if item.kind == FUNCTION_CALL and not self.announced:
            own = self.held(item.start, end)
            if not (of_key(own, tool_key(item.call, "id")) and of_key(own, tool_key(item.call, "name"))):
                self.withheld = True  # its first event names the call: wait for the id and name
                return
            self._announce(out, item)
            if self.withheld:  # the arguments so far, in one delta
                self._emit(out, number, _DELTA[item.kind], **self._where(item),
                           delta=of_key(own, tool_key(item.call, "args")))
                return
        cut = self.after - FIRST_DELTA - item.shift - begin  # characters the client has
        self._emit(out, number, _DELTA[item.kind], **self._where(item),
                   delta=text[cut:] if cut > 0 else text, **self._extra(item))

    def _where(self, item: Item) -> dict[str, Any]:
        fields: dict[str, Any] = {"item_id": item_id(item.kind, self.response_id, item.index),
                                  "output_index": item.index}
        if item.kind != FUNCTION_CALL:
            fields["content_index"] = 0
        return fields

    @staticmethod
    def _extra(item: Item) -> dict[str, Any]:
        return {"logprobs": []} if item.kind == MESSAGE else {}

    def _announce(self, out: list[bytes], item: Item) -> None:
        self.announced = True
        number = self._announce_at(item)
        shown = output_item(self.response_id, item, self.held(item.start, item.end), "in_progress")
        if item.kind == FUNCTION_CALL:
            shown["arguments"] = ""
        else:
            shown["content"] = []
        self._emit(out, number, "response.output_item.added", output_index=item.index, item=shown)
        if item.kind != FUNCTION_CALL:
            self._emit(out, number + 1, "response.content_part.added", **self._where(item),
                       part=_part(item.kind, ""))

    def _close(self, out: list[bytes], item: Item, status: str) -> None:
        if not self.announced:
            self._announce(out, item)
        done = output_item(self.response_id, item, self.held(item.start, item.end), status)
        base = FIRST_DELTA + item.end + item.shift
        kind, field = _DONE[item.kind]
        if item.kind == FUNCTION_CALL:
            self._emit(out, base + 1, kind, **self._where(item),
                       name=done["name"], arguments=done["arguments"])
        else:
            part = done["content"][0]
            self._emit(out, base + 1, kind, **self._where(item), **{field: part[field]}, **self._extra(item))
            self._emit(out, base + 2, "response.content_part.done", **self._where(item), part=part)
        self._emit(out, base + 3, "response.output_item.done", output_index=item.index, item=done)

    def finish(self, response: dict[str, Any], length: int) -> bytes:
        """The last item's done events and the final event (``response``, as it ended)."""
        out: list[bytes] = []
        if self.current is None:  # no part at all: one empty message, as a client expects
            self.current = Item(MESSAGE, -1, 0, length, length)
            self.items.append(self.current)
            self.announced = False
        item_status = "completed" if response["status"] == "completed" else "incomplete"
        self.current.end = max(self.current.end, length)
        self._close(out, self.current, item_status)
        final = {"completed": "response.completed", "failed": "response.failed"}.get(
            response["status"], "response.incomplete"
        )
        self._emit(out, final_number(self.items, length), final, response=response)
        return b"".join(out)

    def error_number(self, position: int) -> int:
        return FIRST_DELTA + position + (self.current.shift if self.current else 0)
