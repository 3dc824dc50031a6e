"""The cost of one answer, as a model: CPU per answer = a + b x tokens, for each process kind.

On the main stack, async answers of ``COST_TOKENS`` tokens (10, 50, 500; the mock's own pace,
``--tps``) run at ``--cost-concurrency`` (50) users, ``--cost-answers`` of each. The CPU each
process kind used (API, workers, the broker's ``beam.smp``) is divided by the answers, and a
least-squares line through the three points gives ``a`` (fixed, per answer) and ``b`` (per
token). The target is for API + worker together: a ≤ 3 ms, b ≤ 20 µs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp

import loadgen
from context import BenchRun
from profiling import Profiler

COST_TOKENS = (10, 50, 500)
PROFILED_TOKENS = 500  # the loop during which py-spy records the API and a worker
# Typed parts against text alone: answers of TYPED_BASE text tokens plus as many reasoning
# tokens (mqcommon.parts), against the same text alone; the difference per reasoning token is
# what a typed part costs where a text token costs b.
TYPED_BASE = 50
PROCESSES = ("api", "worker", "broker")


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares ``y = a + b x`` through ``points``: (a, b)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    b = sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0
    return mean_y - b * mean_x, b


class CostPart:
    def __init__(
        self, bench: BenchRun, api_url: str, cpu: Any, *, profile: dict[str, int] | None = None,
        results: Path | None = None,
    ) -> None:
        """``profile``: the process ids to record with py-spy, by name; ``results``: where."""
        self.bench = bench
        self.args = bench.args
        self.api_url = api_url
        self._cpu = cpu  # () -> {process kind: CPU seconds so far}
        self._profiler = Profiler(results, profile) if profile and results else None
        self.profile: dict[str, Any] | None = None

    async def run(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        points: list[dict[str, Any]] = []
        for tokens in COST_TOKENS:
            points.append(await self._measure(session, tokens))
        model: dict[str, dict[str, float]] = {}
        for kind in (*PROCESSES, "api+worker"):
            series = [(p["tokens"], p["cpu_ms_per_answer"].get(kind)) for p in points]
            if any(y is None for _, y in series):
                continue
            a, b = fit([(float(x), float(y)) for x, y in series])  # type: ignore[arg-type]
            model[kind] = {"a_ms": round(a, 3), "b_us": round(b * 1000, 2)}
        typed = await self._measure(session, TYPED_BASE, reasoning=TYPED_BASE)
        text = next(p for p in points if p["tokens"] == TYPED_BASE)
        typed["us_per_typed_token"] = {
            kind: round((value - text["cpu_ms_per_answer"][kind]) * 1000 / TYPED_BASE, 2)
            for kind, value in typed["cpu_ms_per_answer"].items()
            if value is not None and text["cpu_ms_per_answer"].get(kind) is not None
        }
        return {
            "concurrency": self.args.cost_concurrency, "points": points, "model": model,
            "typed": typed, "profile": self.profile,
        }

    async def _measure(
        self, session: aiohttp.ClientSession, tokens: int, reasoning: int = 0
    ) -> dict[str, Any]:
        count = self.args.cost_answers
        extra = f" [[mock:reasoning={reasoning}]]" if reasoning else ""
        prompts = [
            f"bench cost {tokens} {reasoning} {i} [[mock:tokens={tokens}]]{extra}" for i in range(count)
        ]
        answer_s = self.args.ttft_ms / 1000 + max(tokens + reasoning - 1, 0) / self.args.tps
        profiling = tokens == PROFILED_TOKENS and not reasoning and self._profiler is not None
        if profiling and self._profiler is not None:
            span = count / self.args.cost_concurrency * answer_s + answer_s
            profiling = self._profiler.start(span)
        before = self._cpu()
        started = time.perf_counter()
        run = await loadgen.closed_loop(
            session, loadgen.chat_async(self.api_url, tokens), prompts, self.args.cost_concurrency,
            request_timeout=max(self.args.request_timeout, answer_s * 3),
            deadline=self.args.scenario_timeout, ramp=answer_s,
        )
        wall = time.perf_counter() - started
        after = self._cpu()
        if profiling and self._profiler is not None:
            self.profile = self._profiler.finish()
        good = sum(1 for r in run.results if r.correct)
        cpu_s = {kind: after[kind] - before[kind] for kind in PROCESSES if kind in after}
        if "api" in cpu_s and "worker" in cpu_s:
            cpu_s["api+worker"] = cpu_s["api"] + cpu_s["worker"]
        per_answer = {kind: round(s * 1000 / good, 3) if good else None for kind, s in cpu_s.items()}
        print(
            f"cost {tokens:>3} tokens{f' + {reasoning} reasoning' if reasoning else ''}: "
            f"{good}/{count} correct in {wall:.1f}s, ms per answer "
            + ", ".join(f"{k} {v}" for k, v in per_answer.items()),
            flush=True,
        )
        return {
            "tokens": tokens, "reasoning": reasoning, "answers": count, "correct": good,
            "wall_s": round(wall, 2), "cpu_ms_per_answer": per_answer,
        }
