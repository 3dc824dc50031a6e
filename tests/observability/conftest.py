from __future__ import annotations

from collections.abc import Iterator

import pytest

from .stack import Processes


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Every process a test module starts; all of them are stopped at its end."""
    started = Processes(tmp_path_factory.mktemp("logs"))
    try:
        yield started
    finally:
        started.stop_all()
