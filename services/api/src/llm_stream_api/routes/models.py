"""``GET /v1/models``: the models a request may name.

With MODELS_ALLOWED, those (a request naming another is refused, see ``limits``). Without it,
the model this deployment answers with when a request names none: requests may name any
model, which is passed to the LLM as given, and the LLM decides.
"""

from __future__ import annotations

import time

from fastapi import APIRouter

from llm_stream_api.deps import SettingsDep
from llm_stream_api.protocol.openai_base import OpenAIError
from llm_stream_api.settings import APISettings

router = APIRouter(prefix="/v1", include_in_schema=False)

STARTED = int(time.time())


def _model(model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": STARTED, "owned_by": "llm-stream"}


def _listed(settings: APISettings) -> list[str]:
    return settings.allowed_models or [settings.llm_model]


@router.get("/models")
async def list_models(settings: SettingsDep) -> dict[str, object]:
    return {"object": "list", "data": [_model(model_id) for model_id in _listed(settings)]}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, settings: SettingsDep) -> dict[str, object]:
    if model_id not in _listed(settings):
        raise OpenAIError(
            404, f"The model {model_id!r} does not exist", param="model", code="model_not_found"
        )
    return _model(model_id)
