"""The deterministic answer of the mock LLM.

The answer depends only on the prompt text (the last user message, directives included) and
the token count, so any process can recompute what the mock said:

    >>> answer_tokens("hello", 3)[0]
    'Echo-46fb74'
    >>> expected_answer("hello", 3) == "".join(answer_tokens("hello", 3))
    True

The first token is ``"Echo-"`` plus six hex digits of the prompt's digest, which makes an
answer easy to recognise in logs. Every later token is chosen by a hash of (prompt, index):
mostly a space-prefixed English word, and about one token in sixteen an "awkward" one (accented
letters, an arrow, an emoji, CJK, a newline, a quote, a backslash) so that UTF-8 handling and
JSON/SSE escaping get exercised end to end. A prefix of a longer answer is the shorter answer:
``answer_tokens(p, n)[:k] == answer_tokens(p, k)``.

BLAKE2b is used rather than ``hash()``, which is salted per process.
"""

from __future__ import annotations

from hashlib import blake2b

WORDS: tuple[str, ...] = tuple(
    " " + word
    for word in (
        "the stream of tokens flows from worker to broker and back to every user who waits "
        "for an answer while queues hold tasks durable quorum replicated messages arrive in "
        "order acknowledged once delivered quickly latency throughput events chunk session "
        "model prompt reply server client socket buffer retry backoff heartbeat window"
    ).split()
)
AWKWARD: tuple[str, ...] = (
    " café",
    " naïve",
    " →",
    " 🚀",
    " 日本語",
    " Grüße",
    "\n",
    ' "quoted"',
    " back\\slash",
    " <tag>",
    " €5",
    " ✓",
)


def _seed(prompt: str) -> bytes:
    return blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def answer_tokens(prompt: str, n_tokens: int) -> list[str]:
    """The ``n_tokens`` tokens the mock sends for ``prompt``."""
    if n_tokens <= 0:
        return []
    seed = _seed(prompt)
    tokens = ["Echo-" + seed.hex()[:6]]
    for i in range(1, n_tokens):
        value = int.from_bytes(blake2b(i.to_bytes(4, "big"), key=seed, digest_size=4).digest())
        if value & 15 == 0:
            tokens.append(AWKWARD[(value >> 4) % len(AWKWARD)])
        else:
            tokens.append(WORDS[(value >> 4) % len(WORDS)])
    return tokens


def expected_answer(prompt: str, n_tokens: int) -> str:
    """The full answer text for ``prompt``: the tokens joined."""
    return "".join(answer_tokens(prompt, n_tokens))


def choice_prompt(prompt: str, choice: int) -> str:
    """What choice ``choice`` of a request with ``n`` above 1 answers (choice 0: the prompt)."""
    return prompt if choice == 0 else f"{prompt} (choice {choice})"
