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
            Target(name, "TTFT overhead p50 (ms)", vs["ttft_overhead_ms"]["p50"], 20),
            Target(name, "TTFT overhead p99 (ms)", vs["ttft_overhead_ms"]["p99"], 100),
            Target(name, "errors", s["errors"], 0),
            Target(name, "wrong answers", s["wrong"], 0),
        ]
    elif vs is not None and c == 200:
        targets += [
            Target(name, "throughput / direct", vs["throughput_ratio"], 0.90, at_least=True),
            Target(name, "TTFT overhead p99 (ms)", vs["ttft_overhead_ms"]["p99"], 150),
        ]
    per_token = s["cpu_ms_per_token"].get("api+worker") if s["mode"] != "direct" else None
    if per_token is not None:
        targets.append(Target(name, "API+worker CPU ms per token", per_token, 0.15))
    return targets


def burst_targets(b: dict[str, Any]) -> list[Target]:
    return [
        Target("burst", "enqueues/s", b["enqueues_per_s"], 1000, at_least=True),
        Target("burst", "POST p99 (ms)", b["post_ms"]["p99"], 200),
        Target("burst", "answers complete and correct", b["correct"], b["requests"], at_least=True),
    ]


SCALE_OUT_RATIO_LIMIT = 1.15


def scale_out_targets(part: dict[str, Any] | None) -> list[Target]:
    """The scale-out targets: per R, the R_max / R=1 CPU ratio, buffered RSS, the restart."""
    if not part:
        return []
    targets: list[Target] = []
    by_r = {s["replicas"]: s for s in part.get("scenarios", [])}
    for _, s in sorted(by_r.items()):
        name, pr, vs = s["name"], s["per_replica"], s.get("vs_direct")
        for row in pr["replicas"]:
            if row["role"] == "idle":
                targets.append(
                    Target(
                        name,
                        "idle replica CPU µs per token it does not serve",
                        row["cpu_us_per_unserved_token"],
                        1,
                    )
                )
        targets.append(
            Target(name, "API+worker CPU ms per token", s["cpu_ms_per_token"].get("api+worker"), 0.08)
        )
        if vs is not None:
            targets.append(Target(name, "throughput / direct", vs["throughput_ratio"], 0.95, at_least=True))
        targets += [Target(name, "errors", s["errors"], 0), Target(name, "wrong answers", s["wrong"], 0)]
    if 1 in by_r and len(by_r) > 1:
        top = max(by_r)
        one, many = (
            by_r[1]["per_replica"]["api_cpu_ms_per_token"],
            by_r[top]["per_replica"]["api_cpu_ms_per_token"],
        )
        ratio = round(many / one, 3) if one and many is not None else None
        targets.append(
            Target(f"scale-out R={top} vs R=1", "total API CPU per token ratio", ratio, SCALE_OUT_RATIO_LIMIT)
        )
    if rss := part.get("rss"):
        targets.append(
            Target(
                "buffered answers",
                f"RSS KB per buffered {rss['tokens_per_answer']:,}-token answer",
                rss["kb_per_answer"],
                30,
            )
        )
    if restart := part.get("restart"):
        name = f"restart R={restart['replicas']}"
        targets += [
            Target(name, "restart to /health/full 200 (s)", restart["ready_s"], 3),
            Target(
                name,
                "sessions after the restart with TTFT above steady p99",
                restart["after_above_steady_p99"],
                0,
            ),
        ]
    return targets


def cost_targets(costs: dict[str, Any] | None) -> list[Target]:
    fit = (costs or {}).get("model", {}).get("api+worker")
    if not fit:
        return []
    return [
        Target("cost model", "API+worker a (ms per answer)", fit["a_ms"], 3),
        Target("cost model", "API+worker b (µs per token)", fit["b_us"], 20),
    ]


def cancel_targets(c: dict[str, Any] | None) -> list[Target]:
    """Running generations: the LLM sees the connection close within the limit (p99). Queued
    tasks: never sent to the LLM. Every stream ends ``cancelled``."""
    if not c:
        return []
    return [
        Target("cancel", "upstream closed after the cancel p99 (ms)", c["upstream_close_ms"]["p99"],
               c["limit_ms"]),
        Target("cancel", "running generations the LLM saw closed", c["upstream_closed_seen"], c["running"],
               at_least=True),
        Target("cancel", "queued tasks that reached the LLM", c["queued_reached_llm"], 0),
        Target("cancel", "streams that ended cancelled", c["ended_cancelled"], c["running"] + c["queued"],
               at_least=True),
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
    ]
    lines += [
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
    ] if report["scenarios"] else []
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
    if costs := report.get("cost"):
        lines += _cost_markdown(costs)
    if c := report.get("cancel"):
        lines += _cancel_markdown(c)
    if part := report.get("scale_out"):
        lines += _scale_out_markdown(part)
    if report["targets"]:
        lines += ["", "## Targets", "", "| scenario | target | value | limit | |", "|---|---|--:|--:|---|"]
        for t in report["targets"]:
            value = "-" if t["value"] is None else f"{t['value']:g}"
            lines.append(f"| {t['scenario']} | {t['target']} | {value} | {t['limit']} | {_mark(t['met'])} |")
    errors = [
        (s["name"], s["error_kinds"])
        for s in [*report["scenarios"], *((report.get("scale_out") or {}).get("scenarios") or [])]
        if s["error_kinds"]
    ]
    if (restart := (report.get("scale_out") or {}).get("restart")) and restart.get("error_kinds"):
        errors.append((f"restart R={restart['replicas']}", restart["error_kinds"]))
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


def _cost_markdown(costs: dict[str, Any]) -> list[str]:
    lines = [
        "", "## Cost of an answer",
        "",
        f"Async answers of each length at C={costs['concurrency']}, the mock's pace; CPU per answer "
        "in ms by process kind, and the least-squares fit CPU per answer = a + b x tokens.",
        "",
        "| tokens | answers correct | API | worker | broker | API+worker |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    for p in costs["points"]:
        per = p["cpu_ms_per_answer"]
        lines.append(
            f"| {p['tokens']} | {p['correct']}/{p['answers']} | {_cpu(per.get('api'))} | "
            f"{_cpu(per.get('worker'))} | {_cpu(per.get('broker'))} | {_cpu(per.get('api+worker'))} |"
        )
    lines += ["", "| process | a (ms per answer) | b (µs per token) |", "|---|--:|--:|"]
    for kind, fit in costs["model"].items():
        lines.append(f"| {kind} | {fit['a_ms']:g} | {fit['b_us']:g} |")
    if typed := costs.get("typed"):
        per = typed["us_per_typed_token"]
        lines += [
            "", f"Typed parts: answers of {typed['tokens']} text tokens and {typed['reasoning']} "
            f"reasoning tokens ({typed['correct']}/{typed['answers']} correct). CPU per reasoning "
            "token, in µs, beyond the same answers' text alone (compare with b):", "",
            "| process | µs per typed token |", "|---|--:|",
            *(f"| {kind} | {value:g} |" for kind, value in per.items()),
        ]
    if profile := costs.get("profile"):
        graphs = ", ".join(f"`bench/results/{path}`" for path in profile["flame_graphs"].values())
        lines += [
            "", f"Where the time goes during the 500-token answers (py-spy at {profile['rate']} Hz, "
            f"samples while the GIL is held; flame graphs {graphs or 'not written'}): the frames "
            "with the most self time.",
        ]
        for name, frames in profile["top_self"].items():
            lines += ["", f"| {name}: frame | share of samples |", "|---|--:|"]
            lines += [f"| `{f['frame']}` | {f['share']:.1%} |" for f in frames]
        lines += [f"- py-spy: {problem}" for problem in profile.get("problems") or []]
    return lines


def _cancel_markdown(c: dict[str, Any]) -> list[str]:
    close, answer, end = c["upstream_close_ms"], c["cancel_answer_ms"], c["stream_end_ms"]
    queued_answer = c["queued_cancel_answer_ms"]

    def row(name: str, d: dict[str, Any]) -> str:
        return f"| {name} | {_ms(d['p50'])} | {_ms(d['p95'])} | {_ms(d['p99'])} | {_ms(d['max'])} |"

    statuses = "; ".join(
        f"{kind}: " + ", ".join(f"{n} x `{status}`" for status, n in sorted(counts.items()))
        for kind, counts in c["cancel_statuses"].items() if counts
    )
    return [
        "",
        "## Cancel",
        "",
        f"{c['running']} running generations (the worker's every slot), each cancelled with "
        f"`DELETE /sessions/{{id}}` at a random moment up to {c['spread_s']:g} s after its first "
        f"chunk, and {c['queued']} queued tasks cancelled at once. Load average before: "
        f"{' '.join(map(str, c['load_average_before']))}; other load during it "
        f"{_cpu(c.get('background_cores'))} cores. Times in ms from sending the cancel request.",
        "",
        "| from the cancel request to | p50 | p95 | p99 | max |",
        "|---|--:|--:|--:|--:|",
        row("the LLM seeing its connection closed", close),
        row("the cancel's answer", answer),
        row("the `cancelled` event of the stream", end),
        row("a queued task's cancel answer (202 after `CANCEL_WAIT_S`)", queued_answer),
        "",
        f"Upstream closed within {c['limit_ms']} ms: {c['within_limit']} of {c['running']} "
        f"({c['upstream_closed_seen']} closes seen by the mock). Queued tasks that reached the LLM: "
        f"{c['queued_reached_llm']} of {c['queued']}. Streams ended `cancelled`: "
        f"{c['ended_cancelled']} of {c['running'] + c['queued']}. Cancel answers: {statuses}.",
    ]


def _cpu(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _scale_out_markdown(part: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if part.get("scenarios"):
        lines += [
            "",
            "## Scale-out",
            "",
            "Async closed loop through HAProxy; with R > 1 every stream is read on another replica "
            "than the one that took its POST (request k POSTed on replica k mod R, read on the next), "
            "R API processes of one uvicorn process each, plus one API process on "
            "the same broker that no client reaches (idle). CPU in ms per delivered token; API = "
            "all API processes, idle one included; balancer = HAProxy.",
            "",
            "| R | req/s | vs direct | TTFT p50 / p99 | errors | wrong | CPU API total | CPU worker "
            "| CPU API+worker | CPU broker | CPU balancer | idle replica µs per token | other load (cores) |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for s in part["scenarios"]:
            vs, cpu, pr = s.get("vs_direct"), s["cpu_ms_per_token"], s["per_replica"]
            idle = next((r for r in pr["replicas"] if r["role"] == "idle"), None)
            lines.append(
                "| "
                + " | ".join(
                    [
                        str(s["replicas"]),
                        f"{s['throughput_rps']:.1f}",
                        "-" if vs is None else f"{vs['throughput_ratio']:.3f}",
                        f"{_ms(s['ttft_ms']['p50'])} / {_ms(s['ttft_ms']['p99'])}",
                        str(s["errors"]),
                        str(s["wrong"]),
                        _cpu(pr["api_cpu_ms_per_token"]),
                        *(_cpu(cpu.get(k)) for k in ("worker", "api+worker", "broker", "balancer")),
                        "-"
                        if idle is None or idle["cpu_us_per_unserved_token"] is None
                        else f"{idle['cpu_us_per_unserved_token']:.2f}",
                        _cpu(s.get("background_cores")),
                    ]
                )
                + " |"
            )
        lines += [
            "",
            "Per replica: POSTs it accepted, streams it sent (correct answers), their tokens, its "
            "CPU seconds, and CPU per token it served (ms) or, for the idle one, per token the "
            "stack delivered (µs; the idle replica's CPU per second under load and with no traffic "
            "next to it). History lookups, their mean time, failures and live frames applied come "
            "from each replica's /metrics.",
            "",
            "| R | replica | POSTs | streams | tokens | CPU s | CPU per served token (ms) "
            "| CPU per token not served (µs) | CPU ms/s under load / quiet | history lookups "
            "| lookup mean (ms) | lookups failed | live frames |",
            "|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for s in part["scenarios"]:
            for row in s["per_replica"]["replicas"]:
                served = row.get("cpu_ms_per_served_token")
                unserved = row.get("cpu_us_per_unserved_token")
                m = row.get("metrics") or {}
                rate = (
                    f"{_cpu(row.get('cpu_ms_per_s'))} / {_cpu(row.get('quiet_cpu_ms_per_s'))}"
                    if "quiet_cpu_ms_per_s" in row
                    else "-"
                )
                lines.append(
                    f"| {s['replicas']} | {row['name']} | {row['posts']} | {row['streams']} | "
                    f"{row['tokens']} | {row['cpu_s']:.3f} | {_cpu(served)} | "
                    f"{'-' if unserved is None else f'{unserved:.2f}'} | {rate} | "
                    f"{_count(m.get('lookups'))} | {_ms(m.get('lookup_mean_ms'))} | "
                    f"{_count(m.get('lookup_failures'))} | {_count(m.get('frames'))} |"
                )
        lines += [
            "",
            "TTFT by path: the stream read on the replica that accepted the POST, or on another "
            "one (which learns of the session from the workers or the history).",
            "",
            "| R | same replica: requests | TTFT p50 / p99 | other replica: requests | TTFT p50 / p99 "
            "| API start to ready (s) |",
            "|--:|--:|--:|--:|--:|---|",
        ]
        for s in part["scenarios"]:
            paths = s.get("ttft_by_path")
            if not paths:
                continue
            same, other = paths["same_replica"], paths["other_replica"]
            lines.append(
                f"| {s['replicas']} | {same['requests']} | {_ms(same['ttft_ms']['p50'])} / "
                f"{_ms(same['ttft_ms']['p99'])} | {other['requests']} | {_ms(other['ttft_ms']['p50'])} / "
                f"{_ms(other['ttft_ms']['p99'])} | "
                f"{', '.join('-' if v is None else f'{v:.2f}' for v in s.get('start_to_ready_s', []))} |"
            )
    if rss := part.get("rss"):
        lines += [
            "",
            "## Buffered answers",
            "",
            f"One API process, {rss['answers']} answers of {rss['tokens_per_answer']:,} tokens "
            f"({rss['correct']} correct, {rss['errors']} errors, in {rss['wall_s']:.1f} s), each "
            f"{rss['text_kb_per_answer']:.1f} KB of UTF-8 text; {rss['sessions_held']} sessions held "
            f"at the end. RSS {rss['rss_before_mb']:.1f} MB before, {rss['rss_after_mb']:.1f} MB "
            f"after (+{rss['rss_growth_mb']:.2f} MB): **{_cpu(rss['kb_per_answer'])} KB per answer** "
            "(growth / answers; no garbage collection can be forced from outside, so this is an "
            f"upper bound of what the buffers keep). Other load meanwhile: "
            f"{_cpu(rss.get('background_cores'))} cores.",
        ]
    if r := part.get("restart"):
        h = r["history"]
        lines += [
            "",
            "## Restart with history",
            "",
            f"{r['replicas']} API processes behind the balancer, started on a history stream "
            f"already holding {h['sessions']:,} sessions ({h['records']:,} records: "
            f"{h['seconds_of_load']:g} s at {h.get('rate_per_s', '?')} sessions/s, published in "
            f"{h['publish_s']:.1f} s before the stack started). The closed loop ran through the "
            f"balancer; after {r['kill_after_s']:g} s replica `{r['replica']}` was SIGKILLed and "
            f"started again on its port: **ready (`/health/full` 200) {_s(r['ready_s'])} s after "
            "the process started**.",
            "",
            "| requests | TTFT p50 | p99 | max | above steady p99 | errors |",
            "|---|--:|--:|--:|--:|--:|",
            f"| steady state before the kill: {r['steady_requests']} | "
            f"{_ms(r['steady_ttft_ms']['p50'])} | {_ms(r['steady_ttft_ms']['p99'])} | "
            f"{_ms(r['steady_ttft_ms']['max'])} | - | - |",
            f"| sent ≤ {r['window_s']:g} s after ready: {r['after_requests']} | "
            f"{_ms(r['after_ttft_ms']['p50'])} | {_ms(r['after_ttft_ms']['p99'])} | "
            f"{_ms(r['after_ttft_ms']['max'])} | {r['after_above_steady_p99']} | {r['after_errors']} |",
            f"| of which served by `{r['replica']}`: {r['touching_requests']} | "
            f"{_ms(r['touching_ttft_ms']['p50'])} | {_ms(r['touching_ttft_ms']['p99'])} | "
            f"{_ms(r['touching_ttft_ms']['max'])} | {r['touching_above_steady_p99']} | - |",
            "",
            f"{r['broken_by_kill']} of the {r['in_flight_at_kill']} requests in flight at the kill "
            f"failed (streams cut by it; a client would resume elsewhere with Last-Event-ID). "
            f"In all {r['requests']} requests, {r['errors']} errors, {r['wrong']} wrong answers. "
            f"Other load during the loop: {_cpu(r.get('background_cores'))} cores (the restarted "
            "process included). "
            f"TTFT p99 of the scale-out scenario at R={r['replicas']} (no history but its own): "
            f"{_ms(r['scale_out_ttft_p99_ms'])} ms.",
        ]
    return lines


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
