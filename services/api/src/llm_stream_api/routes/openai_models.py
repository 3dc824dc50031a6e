"""``GET /v1/models``: the models a request may name.

With model pools (LLM_POOLS), every model and alias a pool serves, also those of a pool scaled
to zero: the list is configuration, not who is running. Otherwise, with MODELS_ALLOWED,
those (a request naming another is refused, see ``quota.input_limits``). Without either, the
model this deployment answers with when a request names none: requests may name any model,
which is passed to the LLM as given, and the LLM decides.
"""

from __future__ import annotations

import time

from fastapi import APIRouter
from mqcommon.pools import PoolMap

from llm_stream_api.deps import StateDep
from llm_stream_api.dialects import OpenAIRoute
from llm_stream_api.openapi.responses import openai_error
from llm_stream_api.protocol.errors import NotFound
from llm_stream_api.settings import APISettings

router = APIRouter(prefix="/v1", route_class=OpenAIRoute)

STARTED = int(time.time())


def _model(model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": STARTED, "owned_by": "llm-stream"}


def _listed(settings: APISettings, pools: PoolMap) -> list[str]:
    if pools.configured:
        return pools.model_ids()
    return settings.allowed_models or [settings.llm_model]


MODEL_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
    "required": ["id", "object", "created", "owned_by"],
}
LIST_SCHEMA = {
    "type": "object",
    "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": MODEL_SCHEMA}},
    "required": ["object", "data"],
}


@router.get(
    "/models", summary="OpenAI models: those a request may name",
    responses={200: {"description": "The models.", "content": {"application/json": {"schema": LIST_SCHEMA}}}},
)
async def list_models(state: StateDep) -> dict[str, object]:
    return {"object": "list", "data": [_model(model_id) for model_id in _listed(state.settings, state.pools)]}


@router.get(
    "/models/{model_id:path}", summary="OpenAI models: one",
    responses={
        200: {"description": "The model.", "content": {"application/json": {"schema": MODEL_SCHEMA}}},
        404: openai_error("`model_not_found`: not a model a request may name."),
    },
)
async def get_model(model_id: str, state: StateDep) -> dict[str, object]:
    if model_id not in _listed(state.settings, state.pools):
        raise NotFound(f"The model {model_id!r} does not exist", param="model", code="model_not_found")
    return _model(model_id)
