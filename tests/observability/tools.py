"""Prometheus's own tools: found on PATH, or the test fails and says how to install them."""

from __future__ import annotations

import shutil
import subprocess

import pytest

INSTALL_HINT = (
    "{tool} is not installed. The observability tests need the Prometheus server and promtool: "
    "on Debian/Ubuntu `apt-get install -y prometheus` (both binaries), elsewhere the release "
    "tarball from https://prometheus.io/download/ with both binaries on PATH."
)


def require_tool(name: str) -> str:
    """The path of ``name``; a missing tool fails the test (it is never skipped)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(INSTALL_HINT.format(tool=name), pytrace=False)
    return path


def promtool(*args: str, stdin: bytes | None = None) -> tuple[int, str]:
    result = subprocess.run(
        [require_tool("promtool"), *args], input=stdin, capture_output=True, timeout=60, check=False
    )
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace").strip()


def check_metrics(exposition: bytes, source: str) -> None:
    """``promtool check metrics``: the exposition parses and follows the naming conventions."""
    code, output = promtool("check", "metrics", stdin=exposition)
    assert code == 0 and not output, f"promtool check metrics on {source}:\n{output}"
