"""What a benchmark phase needs of the run it belongs to.

``run.Bench`` provides it; the phases (``cancel``, ``scaleout``) depend on this description
only, so that the run imports its phases and no phase imports the run.
"""

from __future__ import annotations

import argparse
from typing import Protocol

from stack import CpuMeter, Stack


class BenchRun(Protocol):
    args: argparse.Namespace
    stack: Stack
    run_id: str
    mock_url: str
    meters: dict[str, CpuMeter]
    n_tokens: int
    answer_s: float
