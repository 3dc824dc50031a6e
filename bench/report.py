"""Figures, targets and the JSON / markdown reports of a benchmark run."""

from __future__ import annotations

import os
import platform
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from loadgen import Result


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (``q`` in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def distribution_ms(values: Sequence[float]) -> dict[str, float | None]:
    return {
        name: None if (v := percentile(values, q)) is None else round(v * 1000, 2)
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
    }


def summarise(
    name: str,
    mode: str,
    concurrency: int,
    results: list[Result],
    wall: float,
    n_tokens: int,
    cpu_s: dict[str, float],
) -> dict[str, Any]:
    cpu_s = dict(cpu_s)
    host = cpu_s.pop("host", None)
    done = [r for r in results if r.ok]
    correct = [r for r in done if r.correct]
    errors = Counter(_kind(r.error) for r in results if not r.ok)
    tokens = len(correct) * n_tokens
    summary: dict[str, Any] = {
        "name": name,
        "mode": mode,
        "concurrency": concurrency,
        "requests": len(results),
        "completed": len(done),
        "correct": len(correct),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors.most_common(8)),
        "wrong": len(done) - len(correct),
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(done) / wall, 2) if wall else 0.0,
        "ttft_ms": distribution_ms([r.ttft for r in done if r.ttft is not None]),
        "total_ms": distribution_ms([r.total for r in done if r.total is not None]),
        "tokens_delivered": tokens,
        "cpu_s": {k: round(v, 3) for k, v in cpu_s.items()},
        "cpu_ms_per_token": {k: round(v * 1000 / tokens, 4) if tokens else None for k, v in cpu_s.items()},
    }
    if host is not None and wall:
        # CPU used on the machine by anything not measured above (other programs).
        summary["background_cores"] = round(max(0.0, host - sum(cpu_s.values())) / wall, 2)
    if mode == "async":
        summary["post_ms"] = distribution_ms([r.post for r in done if r.post is not None])
    if "api" in cpu_s and "worker" in cpu_s and tokens:
        summary["cpu_ms_per_token"]["api+worker"] = round((cpu_s["api"] + cpu_s["worker"]) * 1000 / tokens, 4)
    return summary


def _kind(error: str | None) -> str:
    return (error or "unknown")[:80]


def compare(stack: dict[str, Any], direct: dict[str, Any]) -> None:
    """Add the stack-over-direct figures to ``stack``."""

    def overhead(key: str, q: str) -> float | None:
        a, b = stack[key][q], direct[key][q]
        return None if a is None or b is None else round(a - b, 2)

    stack["vs_direct"] = {
        "throughput_ratio": round(stack["throughput_rps"] / direct["throughput_rps"], 3)
        if direct["throughput_rps"]
        else None,
        "ttft_overhead_ms": {"p50": overhead("ttft_ms", "p50"), "p99": overhead("ttft_ms", "p99")},
        "total_overhead_ms": {
            "p50": overhead("total_ms", "p50"),
            "p99": overhead("total_ms", "p99"),
        },
    }


@dataclass(frozen=True)
class Target:
    scenario: str
    what: str
    value: float | None
    limit: float
    at_least: bool = False

    @property
    def met(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "target": self.what,
            "value": self.value,
            "limit": ("≥ " if self.at_least else "≤ ") + f"{self.limit:g}",
            "met": self.met,
        }


def scenario_targets(s: dict[str, Any]) -> list[Target]:
    name, c, vs = s["name"], s["concurrency"], s.get("vs_direct")
    targets = []
    if vs is not None and c == 50:
        targets += [
            Target(name, "throughput / direct", vs["throughput_ratio"], 0.95, at_least=True),
            Target(name, "TTFT overhead p50 (ms)", vs["ttft_overhead_ms"]["p50"], 10),
            Target(name, "TTFT overhead p99 (ms)", vs["ttft_overhead_ms"]["p99"], 50),
            Target(name, "errors", s["errors"], 0),
            Target(name, "wrong answers", s["wrong"], 0),
        ]
    elif vs is not None and c == 200:
        targets += [
            Target(name, "throughput / direct", vs["throughput_ratio"], 0.85, at_least=True),
            Target(name, "TTFT overhead p99 (ms)", vs["ttft_overhead_ms"]["p99"], 150),
        ]
    per_token = s["cpu_ms_per_token"].get("api+worker") if s["mode"] != "direct" else None
    if per_token is not None:
        targets.append(Target(name, "API+worker CPU ms per token", per_token, 0.15))
    return targets


def burst_targets(b: dict[str, Any]) -> list[Target]:
    return [
        Target("burst", "enqueues/s", b["enqueues_per_s"], 1000, at_least=True),
        Target("burst", "POST p99 (ms)", b["post_ms"]["p99"], 50),
        Target("burst", "answers complete and correct", b["correct"], b["requests"], at_least=True),
    ]


def machine_info(rabbitmq: str | None) -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "rabbitmq": rabbitmq,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _mark(met: bool) -> str:
    return "met" if met else "**not met**"


def markdown(report: dict[str, Any]) -> str:
    m, cfg = report["machine"], report["config"]
    lines = [
        f"# llm-stream benchmark, {report['started_at']}",
        "",
        f"Machine: {m['cores']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, Python "
        f"{m['python']}, RabbitMQ {m['rabbitmq'] or 'unknown'}, {m['os']}; load average "
        f"{' '.join(map(str, m['load_average']))} at the end of the run. Load generator, mock LLM, "
        "API, workers and broker share these cores.",
        "",
        f"Mock LLM: {cfg['mock']['ttft_ms']:g} ms to first token, {cfg['mock']['tokens']} tokens "
        f"at {cfg['mock']['tps']:g} tokens/s. Stack: {cfg['stack']}. "
        f"Run `{cfg['command']}` at commit `{cfg.get('commit')}` (run id `{report['run_id']}`).",
        "",
        *(
            [
                f"**Run aborted** ({report['aborted'].splitlines()[0].rstrip(':')}): the figures stop there.",
                "",
            ]
            if report.get("aborted")
            else []
        ),
        "## Closed loop",
        "",
        "Times in ms. Overheads are stack minus direct at the same percentile. CPU is "
        "milliseconds per delivered token (= CPU seconds per 1000 tokens); the broker's includes "
        "whatever else uses it. Other load: CPU used on the machine by other programs during the "
        "scenario, in cores; above a few tenths the figures are disturbed.",
        "",
        "| scenario | C | N | req/s | vs direct | TTFT p50 | TTFT p99 | TTFT overhead p50 / p99 "
        "| total p50 / p99 | total overhead p50 / p99 | POST p50 / p99 | errors | wrong "
        "| CPU API | CPU worker | CPU broker | CPU API+worker | CPU mock | CPU load generator "
        "| other load (cores) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in report["scenarios"]:
        vs = s.get("vs_direct")
        cpu = s["cpu_ms_per_token"]
        lines.append(
            "| "
            + " | ".join(
                [
                    s["name"],
                    str(s["concurrency"]),
                    str(s["requests"]),
                    f"{s['throughput_rps']:.1f}",
                    "-" if vs is None else f"{vs['throughput_ratio']:.3f}",
                    _ms(s["ttft_ms"]["p50"]),
                    _ms(s["ttft_ms"]["p99"]),
                    "-"
                    if vs is None
                    else f"{_ms(vs['ttft_overhead_ms']['p50'])} / {_ms(vs['ttft_overhead_ms']['p99'])}",
                    f"{_ms(s['total_ms']['p50'])} / {_ms(s['total_ms']['p99'])}",
                    "-"
                    if vs is None
                    else f"{_ms(vs['total_overhead_ms']['p50'])} / {_ms(vs['total_overhead_ms']['p99'])}",
                    f"{_ms(s['post_ms']['p50'])} / {_ms(s['post_ms']['p99'])}" if "post_ms" in s else "-",
                    str(s["errors"]),
                    str(s["wrong"]),
                    *(_cpu(cpu.get(k)) for k in ("api", "worker", "broker", "api+worker", "mock", "loadgen")),
                    _cpu(s.get("background_cores")),
                ]
            )
            + " |"
        )
    if b := report.get("burst"):
        lines += [
            "",
            "## Burst",
            "",
            f"{b['requests']} `POST /chat/async` with {b['concurrency']} concurrent clients: "
            f"{b['enqueues_per_s']:.0f} enqueues/s, POST p50 {_ms(b['post_ms']['p50'])} ms, "
            f"p99 {_ms(b['post_ms']['p99'])} ms, {b['post_errors']} POST errors. Then every stream "
            f"read to the end: {b['correct']} of {b['requests']} complete and correct "
            f"({b['wrong']} wrong, {b['stream_errors']} errors), the last answer "
            f"{b['all_done_s']:.1f} s after the first POST ({b['read_s']:.1f} s of reading).",
        ]
    if report["targets"]:
        lines += ["", "## Targets", "", "| scenario | target | value | limit | |", "|---|---|--:|--:|---|"]
        for t in report["targets"]:
            value = "-" if t["value"] is None else f"{t['value']:g}"
            lines.append(f"| {t['scenario']} | {t['target']} | {value} | {t['limit']} | {_mark(t['met'])} |")
    errors = [(s["name"], s["error_kinds"]) for s in report["scenarios"] if s["error_kinds"]]
    if b and b.get("error_kinds"):
        errors.append(("burst", b["error_kinds"]))
    if errors:
        lines += ["", "## Errors", ""]
        for name, kinds in errors:
            for kind, count in kinds.items():
                lines.append(f"- {name}: {count} x `{kind}`")
    if report.get("notes"):
        lines += ["", "## Notes", "", *(f"- {note}" for note in report["notes"])]
    return "\n".join(lines) + "\n"


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
