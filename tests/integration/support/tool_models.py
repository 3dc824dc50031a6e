"""The pydantic models the tool and structured-output tests hand to the clients."""

from __future__ import annotations

from pydantic import BaseModel


class GetWeather(BaseModel):
    city: str
    days: int
    metric: bool


class Forecast(BaseModel):
    summary: str
    high: float
    tags: list[str]
