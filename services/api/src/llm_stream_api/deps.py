"""Request-scoped dependencies, as short ``Annotated`` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from llm_stream_api.broker import Broker
from llm_stream_api.hub import SessionHub
from llm_stream_api.settings import APISettings


def _settings(request: Request) -> APISettings:
    return request.app.state.settings


def _broker(request: Request) -> Broker:
    return request.app.state.broker


def _hub(request: Request) -> SessionHub:
    return request.app.state.hub


SettingsDep = Annotated[APISettings, Depends(_settings)]
BrokerDep = Annotated[Broker, Depends(_broker)]
HubDep = Annotated[SessionHub, Depends(_hub)]
