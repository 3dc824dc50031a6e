"""The API package's layout, as docs/architecture.md draws it: rooms on floors, arrows only down.

``scripts/import_graph.py`` draws the graph from the imports (inside functions too). A room is
a sub-package or a top-level module; each may import only the rooms listed before it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[3]
PACKAGE = ROOT / "services/api/src/llm_stream_api"
# Bottom up: each room may import those before it, never one after it.
ROOMS = [
    "settings", "metrics", "protocol", "sessions", "quota", "broker", "service", "dialects",
    "keys", "openapi", "middleware", "llm_clients", "deps", "routes", "app", "__main__",
]
MAX_FLOORS = 8


def _graph_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_room_imports_only_rooms_below_it() -> None:
    report = _graph_tool().report(PACKAGE, ROOMS)
    missing = report["unplaced_rooms"]
    assert not missing, f"rooms missing from ROOMS and docs/architecture.md: {missing}"
    assert not report["back_up"], f"arrows up the floors (move the shared part down): {report['back_up']}"
    assert not report["circles"], f"modules that import each other in a circle: {report['circles']}"
    assert report["floors"] <= MAX_FLOORS, f"{report['floors']} floors, at most {MAX_FLOORS}: flatten a chain"


def test_protocol_imports_nothing_of_the_package_but_itself() -> None:
    for path in (PACKAGE / "protocol").glob("*.py"):
        for imported in re.findall(r"^\s*(?:from|import) (llm_stream_api\.\w+)", path.read_text(), re.M):
            where = f"protocol/{path.name}"
            assert imported == "llm_stream_api.protocol", f"{where} imports {imported}: keep shapes pure"


def test_only_the_dependencies_module_reads_the_app_state() -> None:
    readers = sorted(
        str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
        if "app.state" in path.read_text() and path.name != "deps.py"
    )
    assert not readers, f"read app.state through deps.AppState instead: {readers}"


def test_the_check_sees_an_arrow_up(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("from pkg import high\n")
    (package / "high.py").write_text("")
    assert _graph_tool().report(package, ["low", "high"])["back_up"]
