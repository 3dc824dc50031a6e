from __future__ import annotations

import pytest
from llm_stream_mockllm.directives import NONE, DirectiveError, Directives, parse_directives


def test_no_directives() -> None:
    assert parse_directives("just a question") is NONE


def test_every_directive() -> None:
    prompt = (
        "q [[mock:tokens=5]] [[mock:ttft_ms=1.5]] [[mock:tps=20]] [[mock:fail=503]]"
        "[[mock:fail_times=2]] [[mock:retry_after_ms=10]] [[mock:fail_after=3]]"
    )
    assert parse_directives(prompt) == Directives(
        tokens=5, ttft_ms=1.5, tps=20.0, fail=503, fail_times=2, retry_after_ms=10, fail_after=3
    )


def test_last_occurrence_wins() -> None:
    assert parse_directives("[[mock:tokens=5]] [[mock:tokens=7]]").tokens == 7


@pytest.mark.parametrize(
    "prompt",
    [
        "[[mock:unknown=1]]",
        "[[mock:tokens=many]]",
        "[[mock:tokens=1.5]]",
        "[[mock:fail=200]]",
        "[[mock:tps=0]]",
        "[[mock:ttft_ms=-1]]",
        "[[mock:ttft_ms=inf]]",
    ],
)
def test_refused(prompt: str) -> None:
    with pytest.raises(DirectiveError):
        parse_directives(prompt)
