"""Request-scoped dependencies, as short ``Annotated`` aliases.

They are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a thread pool.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from llm_stream_api.broker import Broker
from llm_stream_api.hub import SessionHub
from llm_stream_api.settings import APISettings


async def _settings(request: Request) -> APISettings:
    return request.app.state.settings


async def _broker(request: Request) -> Broker:
    return request.app.state.broker


async def _hub(request: Request) -> SessionHub:
    return request.app.state.hub


SettingsDep = Annotated[APISettings, Depends(_settings)]
BrokerDep = Annotated[Broker, Depends(_broker)]
HubDep = Annotated[SessionHub, Depends(_hub)]
