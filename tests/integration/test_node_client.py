"""The official openai-node SDK, unchanged, against the Responses API: its by-id stream helper
(``client.responses.stream({response_id, starting_after})``) reads a whole replay and filters it
itself, so a replay must open with the response as it was created and then give every event
once, in order, or the helper's snapshots are wrong. Run on a finished response, on one still
being written, and on one whose answer is a function call.

The SDK is installed from npm (``tests/integration/clients/package-lock.json``) the first time.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import openai
import pytest
from llm_stream_mockllm.typed import arguments_of

from .support.deployment import Deployment, prompt
from .support.waits import until

pytestmark = pytest.mark.integration

CLIENTS = Path(__file__).parent / "clients"
MODEL = "gpt-4o-mini"
NPM_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def node_sdk() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("Node.js and npm are needed (scripts/ensure-test-tools.sh installs them)", pytrace=False)
    if not (CLIENTS / "node_modules" / "openai").is_dir():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=CLIENTS, capture_output=True, text=True,
            timeout=NPM_TIMEOUT_S,
        )
        assert done.returncode == 0, (
            f"npm ci in {CLIENTS} failed (is the npm registry reachable?):\n{done.stderr}"
        )
    return CLIENTS / "responses_by_id.mjs"


@pytest.fixture(scope="module")
def stack(module_deployment: Deployment) -> Deployment:
    module_deployment.api(SSE_PING_S="1")
    module_deployment.api(SSE_PING_S="1")
    module_deployment.worker()
    return module_deployment.start()


@pytest.fixture
async def sdk(stack: Deployment):
    base_url = f"{stack.apis[0].base_url}/v1"
    async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as c:
        yield c


async def by_id(script: Path, base_url: str, response_id: str, after: int) -> dict:
    process = await asyncio.create_subprocess_exec(
        "node", str(script), f"{base_url}/v1", response_id, str(after),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, f"the openai-node helper failed: {err.decode()[-2000:]}"
    return json.loads(out)


async def test_the_helper_resumes_a_finished_and_a_running_response(
    stack: Deployment, sdk: openai.AsyncOpenAI, node_sdk: Path
) -> None:
    done = prompt("node-done", tokens=40)
    created = await sdk.responses.create(model=MODEL, input=done.text)
    assert created.status == "completed"
    seen = await by_id(node_sdk, stack.apis[1].base_url, created.id, 20)
    assert seen["text"] == done.expected
    assert seen["shown"] and min(seen["shown"]) > 20
    assert done.expected.endswith(seen["deltas"]) and seen["deltas"]

    # One still being written when the helper starts: its replay opens as it was created.
    running = prompt("node-running", tokens=200, tps=20)  # about 10 s of text
    started = await sdk.responses.create(model=MODEL, input=running.text, background=True)

    async def has_text() -> bool:
        return bool((await sdk.responses.retrieve(started.id)).output_text)

    await until(has_text, what="the first text of a background response", timeout=120)
    assert (await sdk.responses.retrieve(started.id)).status == "in_progress"
    seen = await by_id(node_sdk, stack.apis[1].base_url, started.id, 10)
    assert seen["text"] == running.expected, (len(seen["text"]), len(running.expected))


async def test_the_helper_assembles_a_function_call(
    stack: Deployment, sdk: openai.AsyncOpenAI, node_sdk: Path
) -> None:
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tool = {"type": "function", "name": "get_weather", "parameters": parameters}
    question = prompt("node-call", tokens=5).text + " [[mock:reasoning=3]] [[mock:tool=get_weather]]"
    created = await sdk.responses.create(model=MODEL, input=question, tools=[tool])
    calls = [item for item in created.output if item.type == "function_call"]
    assert len(calls) == 1
    seen = await by_id(node_sdk, stack.apis[1].base_url, created.id, 5)
    (call,) = [item for item in seen["output"] if item["type"] == "function_call"]
    assert call["name"] == "get_weather"
    assert call["arguments"] == arguments_of(parameters, "get_weather") == calls[0].arguments
