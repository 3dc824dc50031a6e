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
from xml.etree import ElementTree

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


# A body over MAX_BODY_BYTES is refused with 413 before it is read, whatever else is wrong.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429, "5XX"]
"""


def test_schemathesis_finds_no_failure(api: str, tmp_path: Path) -> None:
    report = tmp_path / "schemathesis"
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG, "utf-8")
    command = [
        schemathesis(), "--config-file", str(config), "run", f"{api}/openapi.json",
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
    outcomes = junit_outcomes(report)
    failures = [name for name, kind, _ in outcomes if kind == "failure"]
    errors = [(name, text) for name, kind, text in outcomes if kind == "error"]
    assert not failures, result.stdout[-20000:]
    # The CPython 3.11 of the development machine sometimes raises this SystemError inside
    # the test-case generator (ast.parse deep in hypothesis; python/cpython#106905): a crash
    # of the tool, not an answer of the API. Any other error fails the test.
    assert all(CPYTHON_AST_BUG in text for _, text in errors), result.stdout[-20000:]
    if not errors:
        assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-4000:]


CPYTHON_AST_BUG = "AST constructor recursion depth mismatch"


def junit_outcomes(report: Path) -> list[tuple[str, str, str]]:
    """(operation, "failure" | "error", text) for every problem in the JUnit report."""
    files = list(report.glob("*.xml"))
    assert len(files) == 1, f"expected one JUnit report in {report}, found {files}"
    root = ElementTree.parse(files[0]).getroot()
    return [
        (case.get("name", ""), child.tag, (child.get("message") or "") + (child.text or ""))
        for case in root.iter("testcase")
        for child in case
        if child.tag in ("failure", "error")
    ]
