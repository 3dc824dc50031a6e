"""What the routes get from the app: one typed state, and short ``Annotated`` dependencies.

Everything the lifespan builds lives in one ``AppState`` on ``app.state.llm_stream``; nothing
else reads ``app.state``. The dependencies are ``async def`` on purpose: FastAPI runs plain
``def`` dependencies in a thread pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from mqcommon.pools import PoolMap
from prometheus_client.registry import Collector

from llm_stream_api import keys
from llm_stream_api.broker.heartbeats import WorkerRegistry
from llm_stream_api.broker.queue_depth import QueueDepth
from llm_stream_api.llm_clients import LLMClients
from llm_stream_api.service.sessions import SessionService
from llm_stream_api.service.stored import StoredConversations
from llm_stream_api.settings import APISettings


@dataclass(slots=True)
class AppState:
    settings: APISettings
    sessions: SessionService
    stored: StoredConversations
    workers: WorkerRegistry
    depth: QueueDepth
    llm_client: LLMClients  # the OpenAI SDK client, made on first use
    pools: PoolMap  # the model pools and their lanes (docs/adr/0006)
    collectors: list[Collector] = field(default_factory=list)  # read at scrape time


def set_state(app: FastAPI, state: AppState) -> None:
    app.state.llm_stream = state


def state_of(app: FastAPI) -> AppState:
    found: AppState = app.state.llm_stream
    return found


async def _state(request: Request) -> AppState:
    return state_of(request.app)


async def _settings(request: Request) -> APISettings:
    return state_of(request.app).settings


async def _sessions(request: Request) -> SessionService:
    return state_of(request.app).sessions


async def _stored(request: Request) -> StoredConversations:
    return state_of(request.app).stored


async def _key_id(request: Request) -> str | None:
    return keys.key_id(request)


StateDep = Annotated[AppState, Depends(_state)]
SettingsDep = Annotated[APISettings, Depends(_settings)]
SessionsDep = Annotated[SessionService, Depends(_sessions)]
StoredDep = Annotated[StoredConversations, Depends(_stored)]
KeyDep = Annotated[str | None, Depends(_key_id)]
"""The key id of the request; None when API keys are off."""
