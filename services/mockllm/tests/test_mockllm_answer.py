from __future__ import annotations

import re

from llm_stream_mockllm.answer import AWKWARD, answer_tokens, expected_answer


def test_same_prompt_same_answer() -> None:
    assert answer_tokens("bench async 1", 50) == answer_tokens("bench async 1", 50)


def test_different_prompts_differ_from_the_first_token() -> None:
    answers = {expected_answer(f"bench async {i}", 50) for i in range(500)}
    assert len(answers) == 500
    firsts = {answer_tokens(f"bench async {i}", 1)[0] for i in range(500)}
    assert len(firsts) == 500


def test_first_token_is_echo_and_digest() -> None:
    assert re.fullmatch(r"Echo-[0-9a-f]{6}", answer_tokens("hello", 5)[0])


def test_length_and_prefix() -> None:
    long = answer_tokens("prompt", 40)
    assert len(long) == 40
    assert long[:7] == answer_tokens("prompt", 7)
    assert answer_tokens("prompt", 0) == []
    assert expected_answer("prompt", 40) == "".join(long)


def test_awkward_tokens_show_up() -> None:
    tokens = [t for i in range(50) for t in answer_tokens(f"p{i}", 50)]
    awkward = [t for t in tokens if t in AWKWARD]
    assert 0.02 < len(awkward) / len(tokens) < 0.15
    assert any(not t.isascii() for t in awkward)
    assert any(len(t.encode()) - len(t) >= 3 for t in awkward)  # a 4-byte emoji


def test_prompt_with_lone_surrogate_does_not_crash() -> None:
    assert len(answer_tokens("bad \ud800 text", 3)) == 3
