"""The dialects the API speaks, and the one place where an error becomes a response.

A route's dialect is a property of the route: the routers of each dialect build their routes
with its route class (``NativeRoute``, ``OpenAIRoute``). Every failure, raised anywhere (a
route, the session service, a middleware that refuses before routing), is turned into an
``APIError`` once and written by the renderer of the dialect of the route it was meant for:
``native`` or ``openai``. A request no route matches takes the dialect of the routes its path
shares the most leading segments with (``/v1/nope`` is OpenAI's, ``/nope`` native).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from mqcommon.errors import BrokerUnavailable
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Scope

from llm_stream_api import metrics
from llm_stream_api.dialects import native, openai
from llm_stream_api.protocol.errors import APIError, BrokerDown


class Dialect(enum.Enum):
    NATIVE = "native"
    OPENAI = "openai"


class NativeRoute(APIRoute):
    dialect = Dialect.NATIVE


class OpenAIRoute(APIRoute):
    dialect = Dialect.OPENAI


class RouteTable:
    """The routes of the app, each with its dialect: where handlers are looked up for a request
    that failed before (or without) reaching its route."""

    def __init__(self, routers: Iterable[APIRouter]) -> None:
        self.routes = [route for router in routers for route in router.routes if isinstance(route, APIRoute)]

    def dialect_of(self, scope: Scope) -> Dialect:
        """The dialect of the route that serves (or would serve) the request."""
        route = scope.get("route") or self._route_for(scope)
        return getattr(route, "dialect", Dialect.NATIVE)

    def paths(self, dialect: Dialect) -> set[str]:
        """The path templates (as the OpenAPI document writes them) of one dialect's routes."""
        return {route.path_format for route in self.routes if getattr(route, "dialect", None) is dialect}

    def render(self, scope: Scope, exc: Exception) -> Response:
        """The response for ``exc``, in the dialect of the request's route."""
        dialect = self.dialect_of(scope)
        error = as_api_error(exc, dialect)
        if not isinstance(exc, StarletteHTTPException):  # an unknown path or method is no refusal
            metrics.REJECTED.labels(_reason(error)).inc()
        return native.render(error) if dialect is Dialect.NATIVE else openai.render(error)

    def _route_for(self, scope: Scope) -> APIRoute | None:
        partial = None
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route
            if match == Match.PARTIAL and partial is None:
                partial = route  # the path is right, the method is not: a 405 of this route
        return partial or _nearest(scope.get("path", "/"), self.routes)


def _nearest(path: str, routes: list[APIRoute]) -> APIRoute | None:
    wanted = [part for part in path.split("/") if part]
    best, shared_most = None, 0
    for route in routes:
        shared = 0
        for have, want in zip((p for p in route.path.split("/") if p), wanted, strict=False):
            if have != want:
                break
            shared += 1
        if shared > shared_most:
            best, shared_most = route, shared
    return best


def as_api_error(exc: Exception, dialect: Dialect) -> APIError:
    """Whatever was raised, as the one hierarchy's error."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, BrokerUnavailable):
        return BrokerDown(str(exc))
    if isinstance(exc, RequestValidationError):
        errors = list(exc.errors())
        translate = native.validation_error if dialect is Dialect.NATIVE else openai.validation_error
        return translate(errors)
    if isinstance(exc, StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        if code is None and dialect is Dialect.NATIVE:
            code = "http_error"
        return APIError(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))
    raise TypeError(f"no mapping for {type(exc).__name__}")


def _reason(error: APIError) -> str:
    if error.code in ("validation_error", "invalid_value") or error.code is None:
        return "validation"
    return error.code


def install(app: FastAPI, routers: Iterable[APIRouter]) -> RouteTable:
    """Answer every failure of ``app`` in its route's dialect; the table is for the middleware
    that refuses requests before they reach a route."""
    table = RouteTable(routers)

    async def handle(request: Request, exc: Exception) -> Response:
        return table.render(request.scope, exc)

    for cls in (APIError, BrokerUnavailable, RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(cls, handle)
    return table
