"""No circle of imports anywhere in the tree (``scripts/import_graph.py`` draws the graphs).

The API package's own rooms and floors are checked beside it (``services/api/tests``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLACES = [
    "libs/mqcommon/src/mqcommon",
    "services/api/src/llm_stream_api",
    "services/worker/src/llm_stream_worker",
    "services/mockllm/src/llm_stream_mockllm",
    "bench",
    "chaos",
    "scripts",
    "tests/support",
    "tests/integration/support",
]


def _graph_tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("place", PLACES)
def test_no_circle_of_imports(place: str) -> None:
    circles = _graph_tool().report(ROOT / place, [])["circles"]
    assert not circles, f"{place}: modules that import each other in a circle: {circles}"


def test_the_check_sees_a_circle(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("from a import x\n")
    (tmp_path / "c.py").write_text("import a\n")
    assert _graph_tool().report(tmp_path, [])["circles"] == [["a", "b"]]
