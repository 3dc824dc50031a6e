"""Typed parts of an answer, on one line of positions.

An answer is text and more: reasoning, tool calls (an id, a name and argument text each),
log probabilities. Every part is text-like, so the answer stays one string of characters,
and each character belongs to one part: ``Kinds`` records which, as runs. A position is a
number of characters of that one string, whatever the part, so everything that works by
position (merging frames from any worker, replays, ``Last-Event-ID`` resume, history) works
for every part unchanged. An answer of plain text is one run of ``CONTENT``, and travels as
plain text: a frame or transcript carries ``kinds`` only when it holds another part
(docs/adr/0005-typed-parts-on-one-line-of-positions.md).

Part keys:

    content               the answer's text (``delta.content``)
    reasoning             reasoning text (``delta.reasoning_content``)
    refusal               a refusal (``delta.refusal``)
    tool.<i>.id           tool call i's id
    tool.<i>.name         tool call i's function name
    tool.<i>.args         tool call i's argument text (JSON, streamed in pieces)
    logprobs              one JSON object per line: OpenAI's ``logprobs.content`` entries
    choice.<n>.<key>      any of those, of choice n >= 1 when a request asked for several (``n``)
    choice.<n>.finish     choice n's finish reason (choice 0's is in the end, ``End.finish``)

Each key may appear in several runs (content, then a tool call, then content again); runs of
the same key next to each other are one run. Keys this version does not know are kept and
passed along, so an older reader loses nothing it could not show anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

CONTENT = "content"
REASONING = "reasoning"
REFUSAL = "refusal"
LOGPROBS = "logprobs"
TOOL = "tool"
TOOL_FIELDS = ("id", "name", "args")
CHOICE = "choice"
FINISH = "finish"

Part = tuple[str, str]  # (key, text)
Run = tuple[str, int]  # (key, count of characters)


def tool_key(index: int, field: str) -> str:
    return f"{TOOL}.{index}.{field}"


def tool_of(key: str) -> tuple[int, str] | None:
    """``(index, field)`` of a tool-call key, else None."""
    if not key.startswith("tool."):
        return None
    _, _, rest = key.partition(".")
    index, _, field = rest.partition(".")
    if not index.isdigit() or field not in TOOL_FIELDS:
        return None
    return int(index), field


def choice_key(choice: int, key: str) -> str:
    """``key`` of choice ``choice``: choice 0's keys are the plain ones."""
    return key if choice == 0 else f"{CHOICE}.{choice}.{key}"


def choice_of(key: str) -> tuple[int, str]:
    """``(choice, key within it)`` of a part key."""
    if not key.startswith("choice."):
        return 0, key
    _, _, rest = key.partition(".")
    index, _, inner = rest.partition(".")
    if not index.isdigit() or not inner:
        return 0, key
    return int(index), inner


def valid_key(key: Any) -> bool:
    return isinstance(key, str) and 0 < len(key) <= 64


class Kinds:
    """Which part each character of an answer belongs to: runs of ``[key, end]``.

    ``end`` is the position where the run stops. Appending to the last run is one comparison
    and an integer update, so plain text costs what it cost before there were parts.
    """

    __slots__ = ("runs",)

    def __init__(self, runs: list[list[Any]] | None = None) -> None:
        self.runs: list[list[Any]] = runs if runs is not None else []

    @property
    def length(self) -> int:
        return self.runs[-1][1] if self.runs else 0

    def add(self, key: str, count: int) -> None:
        if count <= 0:
            return
        if self.runs and self.runs[-1][0] == key:
            self.runs[-1][1] += count
        else:
            self.runs.append([key, self.length + count])

    def parts(self, text: str, start: int, stop: int | None = None) -> list[Part]:
        """``text[start:stop]`` (``text`` is the whole answer) cut into its parts."""
        stop = len(text) if stop is None else stop
        out: list[Part] = []
        begin = 0
        for key, end in self.runs:
            lo, hi = max(begin, start), min(end, stop)
            if lo < hi:
                out.append((key, text[lo:hi]))
            if end >= stop:
                break
            begin = end
        return out

    def agrees(self, offset: int, runs: Sequence[Run]) -> bool:
        """Do ``runs`` (``[key, count]``, from ``offset``) have the keys held here, as far as
        both go?"""
        held = self.length
        position = offset
        for key, count in runs:
            end = position + count
            cursor = position
            while cursor < min(end, held):
                run_key, run_end = self._run_at(cursor)
                if run_key != key:
                    return False
                cursor = run_end
            if end >= held:
                return True
            position = end
        return True

    def _run_at(self, position: int) -> tuple[str, int]:
        for key, end in self.runs:
            if position < end:
                return key, end
        raise IndexError(position)

    def extend(self, runs: Iterable[Run], skip: int) -> None:
        """Add ``runs`` past their first ``skip`` characters (already held)."""
        for key, count in runs:
            if skip >= count:
                skip -= count
                continue
            self.add(key, count - skip)
            skip = 0

    def window(self, start: int, stop: int | None = None) -> list[Run]:
        """The runs of positions ``start`` to ``stop`` as ``[key, count]``."""
        stop = self.length if stop is None else stop
        out: list[Run] = []
        begin = 0
        for key, end in self.runs:
            lo, hi = max(begin, start), min(end, stop)
            if lo < hi:
                out.append((key, hi - lo))
            if end >= stop:
                break
            begin = end
        return out


def runs_to_wire(runs: Sequence[Run]) -> list[list[Any]] | None:
    """None when the runs are plain text (nothing to send), else ``[[key, count], ...]``."""
    if not runs or (len(runs) == 1 and runs[0][0] == CONTENT):
        return None
    return [[key, count] for key, count in runs]


def runs_from_wire(raw: Any, length: int) -> list[Run] | None:
    """The runs of a frame or transcript of ``length`` characters; None if malformed.

    No runs on the wire means plain text."""
    if raw is None:
        return [(CONTENT, length)] if length else []
    if not isinstance(raw, list):
        return None
    out: list[Run] = []
    total = 0
    for entry in raw:
        if not (
            isinstance(entry, list)
            and len(entry) == 2
            and valid_key(entry[0])
            and isinstance(entry[1], int)
            and not isinstance(entry[1], bool)
            and entry[1] >= 0
        ):
            return None
        if entry[1]:
            out.append((entry[0], entry[1]))
            total += entry[1]
    return out if total == length else None


def of_key(parts: Iterable[Part], key: str) -> str:
    return "".join(text for k, text in parts if k == key)
