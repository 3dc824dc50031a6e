"""The OpenAPI document tells the truth: schemathesis, every check, against the running stack.

``schemathesis run --checks all`` generates requests from ``/openapi.json`` (valid ones, and
invalid ones the API must refuse) and checks every response against the document: status
codes, content types, headers, bodies, and that valid requests are accepted. It runs against a
real API and worker on the real broker and the mock LLM, bounded in examples and time so the
module stays well under two minutes. Its JUnit report is kept in the test's tmp dir.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .support.deployment import Deployment

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 25
MAX_TIME_S = 60
SEED = 20261201


@pytest.fixture(scope="module")
def api(module_deployment: Deployment) -> str:
    # Short waits: a generated stream id names a session nobody queued, which ends with an
    # error event after STREAM_WAIT_TIMEOUT_S.
    module_deployment.api(STREAM_WAIT_TIMEOUT_S="0.5", SSE_PING_S="1", MAX_MESSAGE_CHARS="2000")
    module_deployment.worker()
    return module_deployment.start().apis[0].base_url


def schemathesis() -> str:
    path = Path(sys.executable).parent / "schemathesis"
    if not path.exists():
        pytest.fail("schemathesis is not installed: uv sync --all-packages", pytrace=False)
    return str(path)


def test_the_document_states_the_constraints_the_api_enforces(api: str) -> None:
    document = httpx.get(f"{api}/openapi.json", timeout=10).json()
    body = document["paths"]["/chat/async"]["post"]["requestBody"]["content"]["application/json"]
    message = body["schema"]["properties"]["message"]
    assert message["minLength"] == 1
    assert message["maxLength"] == 2000  # MAX_MESSAGE_CHARS of this API process
    assert message["pattern"]  # not only whitespace
    for path, method in (("/chat/async", "post"), ("/chat", "post")):
        documented = set(document["paths"][path][method]["responses"])
        assert {"200", "400", "409", "413", "422", "503"} <= documented, (path, documented)
    assert {"200", "400", "422"} <= set(document["paths"]["/stream/{session_id}"]["get"]["responses"])


def test_schemathesis_finds_no_failure(api: str, tmp_path: Path) -> None:
    report = tmp_path / "schemathesis"
    command = [
        schemathesis(), "run", f"{api}/openapi.json",
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--max-time", str(MAX_TIME_S),
        "--seed", str(SEED),
        "--request-timeout", "15",
        "--workers", "2",
        "--no-color",
        "--report", "junit",
        "--report-dir", str(report),
    ]
    # Its example database goes to the tmp dir, not the checkout.
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=MAX_TIME_S + 60, cwd=tmp_path
    )
    print(f"schemathesis report: {report}")
    print(result.stdout[-6000:])
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-4000:]
