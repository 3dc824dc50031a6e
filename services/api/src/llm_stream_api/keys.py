"""API keys: who a request comes from, checked on every route but the open ones
(``middleware.authenticate``).

Off unless ``API_KEYS`` or ``API_KEYS_FILE`` names keys; then every request needs one, as
``Authorization: Bearer <key>`` (what the OpenAI SDKs send) or ``X-API-Key: <key>`` (which wins
when both are there). Open without a key: ``/health`` (liveness), the chat page (``/``,
``/chat.html``, ``/static/...``: no data in them, and it is where a key is typed) and CORS
preflights. ``/health/full`` and ``/metrics`` need a key too, unless ``API_KEYS_OPEN_PROBES``:
the Helm chart sets it, since a kubelet's readiness probe, ``helm test`` and a ServiceMonitor
send no credentials (neither route holds client data; the metrics show key ids, never keys).

A key is never stored or logged: only its SHA-256 is kept, and a presented key is hashed and
compared with every known hash in constant time (``hmac.compare_digest``, no early exit).
What identifies a key in sessions, metrics and logs is its *key id*: the name given to it
(``name:key`` in ``API_KEYS``, ``name:sha256hex`` in the file), or ``key-`` and 8 hex digits of
its hash for a key given without a name.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import HTTPConnection

KEY_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_KEY_ID = re.compile(KEY_ID_PATTERN)
_HASH_LINE = re.compile(rf"({KEY_ID_PATTERN}):([0-9a-fA-F]{{64}})")
MIN_KEY_CHARS = 8
SCOPE_KEY = "llm_stream.key_id"  # where the request's key id travels in the ASGI scope
OPEN_PATHS = frozenset(("/health", "/", "/chat.html"))
PROBE_PATHS = frozenset(("/health/full", "/metrics"))
OPEN_PREFIXES = ("/static/",)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The known keys, as (key id, SHA-256 of the key) pairs."""

    entries: tuple[tuple[str, bytes], ...]

    def __repr__(self) -> str:  # ids only: even a hash narrows the search for a weak key
        return f"KeyRing({self.ids})"

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    @property
    def ids(self) -> list[str]:
        return [key_id for key_id, _ in self.entries]

    @classmethod
    def load(cls, keys: str, keys_file: Path | None) -> KeyRing:
        """From ``API_KEYS`` and ``API_KEYS_FILE``; raises ``ValueError`` (never quoting a key)."""
        entries = list(_parse_keys(keys))
        if keys_file is not None:
            entries += _parse_file(keys_file)
        seen_ids: set[str] = set()
        seen_hashes: set[bytes] = set()
        for key_id, digest in entries:
            if key_id in seen_ids:
                raise ValueError(f"API key id {key_id!r} is given twice")
            if digest in seen_hashes:
                raise ValueError(f"API key {key_id!r} is the same key as another one")
            seen_ids.add(key_id)
            seen_hashes.add(digest)
        return cls(tuple(entries))

    def identify(self, presented: str) -> str | None:
        """The key id of ``presented``, or None. Every hash is compared, whatever matches."""
        digest = hash_key(presented)
        found = None
        for key_id, known in self.entries:
            if hmac.compare_digest(digest, known):
                found = key_id
        return found


def key_id_of(key: str) -> str:
    """The id of a key given without a name: not the key, and stable across replicas."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:8]


def _parse_keys(raw: str) -> Iterable[tuple[str, bytes]]:
    for number, item in enumerate((part.strip() for part in raw.split(",")), start=1):
        if not item:
            continue
        name, sep, rest = item.partition(":")
        if sep and _KEY_ID.fullmatch(name) and rest:
            key_id, key = name, rest
        else:
            key_id, key = key_id_of(item), item
        if len(key) < MIN_KEY_CHARS or any(c.isspace() for c in key):
            raise ValueError(
                f"API_KEYS entry {number}: a key needs at least {MIN_KEY_CHARS} characters and no spaces"
            )
        yield key_id, hash_key(key)


def _parse_file(path: Path) -> list[tuple[str, bytes]]:
    """``id:sha256hex`` lines (``printf %s KEY | sha256sum``); ``#`` comments and blanks skipped."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ValueError(f"API_KEYS_FILE {str(path)!r} cannot be read: {exc.strerror}") from exc
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _HASH_LINE.fullmatch(line)
        if match is None:
            # The line may be a key pasted by mistake: say where, never what.
            raise ValueError(f"API_KEYS_FILE line {number}: expected <key id>:<64 hex digits of SHA-256>")
        entries.append((match.group(1), bytes.fromhex(match.group(2))))
    if not entries:
        raise ValueError(f"API_KEYS_FILE {str(path)!r} holds no key")
    return entries


def presented_key(headers: dict[str, str]) -> str | None:
    """The key a request carries: ``X-API-Key``, else ``Authorization: Bearer``."""
    if (key := headers.get("x-api-key")) is not None:
        return key.strip()
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def is_open(method: str, path: str, *, probes_open: bool) -> bool:
    if method == "OPTIONS" or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return True
    return probes_open and path in PROBE_PATHS


def key_id(request: HTTPConnection) -> str | None:
    """The key id of the request (``middleware.authenticate`` put it there); None when keys are off."""
    return request.scope.get(SCOPE_KEY)
