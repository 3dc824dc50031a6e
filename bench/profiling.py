"""Where the CPU of an answer goes: py-spy on the API and a worker while answers run.

``Profiler`` records each process twice at ``RATE`` samples/s for the span of a cost loop
(``cost.py``, the 500-token answers), only while a thread holds the GIL (``--gil``: time spent
running Python, not waiting for the event loop): once as a flame graph (SVG, ``bench/results/flame-*.svg``),
once as collapsed stacks, from which the frames with the most self time are tabled (the frame
on top of a sample is the one running). py-spy reads the process's memory from outside
(ptrace), so the process runs unmodified; it needs the right to trace it (root, or
``kernel.yama.ptrace_scope`` 0).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

RATE = 100
TOP_FRAMES = 15


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, results: Path, targets: dict[str, int]) -> None:
        """``targets``: a name (``api``, ``worker``) per process id."""
        self.results = results
        self.targets = targets
        self._running: list[tuple[str, Path, subprocess.Popen[bytes]]] = []

    def start(self, seconds: float) -> bool:
        program = py_spy()
        if program is None:
            return False
        for name, pid in self.targets.items():
            for kind, path in (("flamegraph", self.flame(name)), ("raw", self._raw(name))):
                command = [
                    program, "record", "--pid", str(pid), "--gil", "--rate", str(RATE), "--duration",
                    str(max(1, round(seconds))), "--format", kind, "--output", str(path), "--nonblocking",
                ]
                self._running.append(
                    (name, path, subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
                )
        return True

    def flame(self, name: str) -> Path:
        return self.results / f"flame-{name}.svg"

    def _raw(self, name: str) -> Path:
        return self.results / f".profile-{name}.txt"

    def finish(self) -> dict[str, Any]:
        """Wait for the recorders; the top self-time frames of each process."""
        problems = []
        for name, _, process in self._running:
            try:
                _, err = process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                err = b"py-spy did not finish"
            if process.returncode:
                problems.append(f"{name}: {err.decode(errors='replace').strip().splitlines()[-1:]}")
        tops = {name: top_frames(self._raw(name)) for name in self.targets}
        for name in self.targets:
            self._raw(name).unlink(missing_ok=True)
        return {
            "rate": RATE,
            "flame_graphs": {
                name: self.flame(name).name for name in self.targets if self.flame(name).exists()
            },
            "top_self": tops,
            "problems": problems,
        }


def top_frames(raw: Path, count: int = TOP_FRAMES) -> list[dict[str, Any]]:
    """The frames on top of the most samples in a collapsed-stacks file (``a;b;c N`` lines)."""
    if not raw.exists():
        return []
    self_samples: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        samples = int(number)
        total += samples
        self_samples[stack.rsplit(";", 1)[-1].strip()] += samples
    return [
        {"frame": frame, "samples": samples, "share": round(samples / total, 4)}
        for frame, samples in self_samples.most_common(count)
    ]
