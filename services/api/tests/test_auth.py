"""API keys: parsing, constant-time identification, and refusals in each route's dialect."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from llm_stream_api import dialects
from llm_stream_api.deps import KeyDep
from llm_stream_api.dialects import NativeRoute, OpenAIRoute
from llm_stream_api.keys import KeyRing, key_id_of, presented_key
from llm_stream_api.middleware.authenticate import Authenticate
from llm_stream_api.quota.key_limits import KeyLimits

ALICE = "alice-secret-0001"
BOB = "bob-secret-000002"


def test_named_and_unnamed_keys_get_ids_that_are_not_the_key() -> None:
    ring = KeyRing.load(f"alice:{ALICE}, {BOB}", None)
    assert ring.ids == ["alice", key_id_of(BOB)]
    assert BOB not in key_id_of(BOB) and key_id_of(BOB).startswith("key-")
    assert ring.identify(ALICE) == "alice" and ring.identify(BOB) == key_id_of(BOB)
    assert ring.identify("alice") is None and ring.identify(ALICE + "x") is None
    assert ALICE not in repr(ring) and hashlib.sha256(ALICE.encode()).hexdigest() not in repr(ring)


def test_no_keys_means_off() -> None:
    assert not KeyRing.load("", None).enabled
    assert not KeyRing.load(" , ", None).enabled


def test_a_file_holds_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    digest = hashlib.sha256(ALICE.encode()).hexdigest()
    path.write_text(f"# issued 2024\n\nalice:{digest}\n")
    ring = KeyRing.load(f"bob:{BOB}", path)
    assert ring.ids == ["bob", "alice"] and ring.identify(ALICE) == "alice"


@pytest.mark.parametrize("content", [ALICE, f"alice:{'0' * 63}", "al ice:" + "0" * 64, ""])
def test_a_bad_file_is_refused_without_quoting_it(tmp_path: Path, content: str) -> None:
    path = tmp_path / "keys"
    path.write_text(content)
    with pytest.raises(ValueError) as refused:
        KeyRing.load("", path)
    assert ALICE not in str(refused.value)


def test_bad_key_lists_are_refused_without_quoting_a_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="entry 2") as short:
        KeyRing.load(f"{ALICE},short", None)
    assert ALICE not in str(short.value)
    with pytest.raises(ValueError, match="twice"):
        KeyRing.load(f"a:{ALICE},a:{BOB}", None)
    with pytest.raises(ValueError, match="same key"):
        KeyRing.load(f"a:{ALICE},b:{ALICE}", None)
    with pytest.raises(ValueError, match="cannot be read"):
        KeyRing.load("", tmp_path / "missing")


def test_x_api_key_wins_over_bearer() -> None:
    assert presented_key({"authorization": "Bearer  abc "}) == "abc"
    assert presented_key({"authorization": "bearer abc"}) == "abc"
    assert presented_key({"authorization": "Basic abc"}) is None
    assert presented_key({"authorization": "Bearer "}) is None
    assert presented_key({"x-api-key": "k", "authorization": "Bearer abc"}) == "k"


def _app(requests_per_minute: int = 0) -> FastAPI:
    app = FastAPI()
    native, compatible = APIRouter(route_class=NativeRoute), APIRouter(route_class=OpenAIRoute)

    @native.get("/whoami")
    async def whoami(key: KeyDep) -> dict:
        return {"key": key}

    @compatible.get("/v1/whoami")
    async def whoami_v1(key: KeyDep) -> dict:
        return {"key": key}

    @native.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    routes = dialects.install(app, [native, compatible])
    app.include_router(native)
    app.include_router(compatible)

    limits = KeyLimits(requests_per_minute=requests_per_minute, max_sessions=0, tokens_per_minute=0)
    app.add_middleware(
        Authenticate, keys=KeyRing.load(f"alice:{ALICE}", None), probes_open=True, limits=limits,
        routes=routes,
    )
    return app


async def _get(app: FastAPI, path: str, **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        return await client.get(path, headers=headers)


async def test_refusals_speak_the_route_dialect() -> None:
    app = _app()
    native = await _get(app, "/whoami")
    assert native.status_code == 401 and native.json()["error"] == "unauthorized"
    assert native.headers["www-authenticate"].startswith("Bearer")
    wrong = await _get(app, "/v1/whoami", authorization="Bearer not-a-key-at-all")
    assert wrong.status_code == 401
    assert wrong.json()["error"]["type"] == "authentication_error"
    assert "not-a-key" not in wrong.text
    assert (await _get(app, "/health")).status_code == 200


async def test_both_headers_identify_the_key() -> None:
    app = _app()
    assert (await _get(app, "/whoami", authorization=f"Bearer {ALICE}")).json() == {"key": "alice"}
    assert (await _get(app, "/v1/whoami", **{"x-api-key": ALICE})).json() == {"key": "alice"}


async def test_requests_per_minute_answer_429_with_retry_after() -> None:
    app = _app(requests_per_minute=2)
    for _ in range(2):
        assert (await _get(app, "/whoami", **{"x-api-key": ALICE})).status_code == 200
    native = await _get(app, "/whoami", **{"x-api-key": ALICE})
    assert native.status_code == 429 and native.json()["error"] == "rate_limited"
    assert 1 <= int(native.headers["retry-after"]) <= 60
    openai = await _get(app, "/v1/whoami", **{"x-api-key": ALICE})
    assert openai.status_code == 429 and openai.json()["error"]["type"] == "rate_limit_error"
    assert "retry-after" in openai.headers


def test_only_liveness_the_page_and_preflights_are_open_unless_probes_are() -> None:
    from llm_stream_api.keys import is_open

    for path in ("/health", "/", "/chat.html", "/static/vendor/x.js"):
        assert is_open("GET", path, probes_open=False), path
    assert is_open("OPTIONS", "/chat/async", probes_open=False)
    for path in ("/health/full", "/metrics", "/stats", "/test", "/stream/s", "/v1/models"):
        assert not is_open("GET", path, probes_open=False), path
    assert is_open("GET", "/health/full", probes_open=True) and is_open("GET", "/metrics", probes_open=True)
    assert not is_open("GET", "/stats", probes_open=True)
