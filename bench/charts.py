"""PNG charts of benchmark results, drawn from the results JSON (so they can be redrawn later).

    uv run python bench/charts.py bench/results/latest.json [bench/results/latest-scale-out.json]
    uv run python bench/charts.py bench/results/peers.json

From a run of bench/run.py: ``throughput.png`` and ``ttft.png`` (against concurrency: direct,
the stack in each mode, and LiteLLM and this system's ``/v1/chat/completions`` from
``peers.json`` when it lies next to the results), ``cost.png`` (CPU per answer of each process
kind against its tokens, and the fit a + b x tokens) and ``scaleout.png`` (CPU per token against
the API replicas). From bench/peers.py's results: ``peers.png``. Each file given adds what it
holds, a later one's part replacing an earlier one's. Charts are written next to the first
file, named after it unless it is ``latest.json`` (``quick.json`` gives ``quick-ttft.png``);
a chart without data is not written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt
import orjson

STYLE = {
    "direct": ("direct to the mock", "black", "o"),
    "async": ("llm-stream async", "tab:blue", "s"),
    "sync": ("llm-stream sync", "tab:cyan", "D"),
    "openai": ("llm-stream /v1/chat/completions", "tab:green", "^"),
    "litellm": ("LiteLLM proxy", "tab:red", "v"),
}
KINDS = {"api": ("API", "tab:blue"), "worker": ("worker", "tab:orange"), "broker": ("broker", "tab:gray")}
PEER_MODES = ("litellm", "openai")  # what peers.json adds to a run's charts


def chart_prefix(name: str) -> str:
    """What a results file's charts are named with: nothing for ``latest`` and ``peers``."""
    return "" if name in ("latest", "peers") else f"{name}-"


def render(results: dict[str, Any], out_dir: Path, prefix: str = "",
           peers: dict[str, Any] | None = None, dpi: int = 110) -> list[Path]:
    """Write every chart the results have data for; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    series = _series(results.get("scenarios") or [])
    if peers:
        extra = _series(peers.get("scenarios") or [])
        series.update({f"{mode} (peers run)": rows for mode, rows in extra.items() if mode in PEER_MODES})
    mock = (results.get("config") or {}).get("mock")
    subtitle = (
        f"mock LLM: {mock['tokens']} tokens at {mock['tps']:g}/s after {mock['ttft_ms']:g} ms" if mock else ""
    )
    charts = [
        ("throughput", lambda data: _throughput(data, subtitle), series),
        ("ttft", lambda data: _ttft(data, subtitle), series),
        ("cost", _cost, results.get("cost")),
        ("scaleout", _scale_out, (results.get("scale_out") or {}).get("scenarios")),
    ]
    if results.get("kind") == "peers":
        charts = [("peers", _peers, results)]
    written = []
    for name, draw, data in charts:
        if data:
            path = out_dir / f"{prefix}{name}.png"
            figure = draw(data)
            figure.savefig(path, dpi=dpi)
            plt.close(figure)
            written.append(path)
    return written


def _series(scenarios: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Closed-loop scenarios by mode, in order of concurrency."""
    by_mode: dict[str, list[dict[str, Any]]] = {}
    for s in sorted(scenarios, key=lambda s: s["concurrency"]):
        by_mode.setdefault(s["mode"], []).append(s)
    return by_mode


def _style(series_name: str) -> tuple[str, str, str]:
    mode, _, tail = series_name.partition(" ")
    label, colour, marker = STYLE.get(mode, (mode, None, "x"))
    return f"{label} {tail}".strip(), colour, marker


def _throughput(series: dict[str, list[dict[str, Any]]], load: str) -> Any:
    figure, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for name, rows in series.items():
        label, colour, marker = _style(name)
        ax.plot([s["concurrency"] for s in rows], [s["throughput_rps"] for s in rows],
                marker=marker, color=colour, label=label)
    _concurrency_axis(ax, series)
    ax.set_ylabel("answers per second")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Throughput, closed loop ({load})" if load else "Throughput, closed loop")
    ax.legend(fontsize="small")
    return figure


def _ttft(series: dict[str, list[dict[str, Any]]], load: str) -> Any:
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), layout="constrained")
    for ax, q in zip(axes, ("p50", "p99"), strict=True):
        for name, rows in series.items():
            label, colour, marker = _style(name)
            points = [(s["concurrency"], s["ttft_ms"][q]) for s in rows if s["ttft_ms"][q] is not None]
            ax.plot(*zip(*points, strict=True), marker=marker, color=colour, label=label)
        _concurrency_axis(ax, series)
        ax.set_title(f"time to first token, {q}")
        ax.set_ylim(bottom=0)
    axes[0].set_ylabel("ms")
    axes[0].legend(fontsize="small")
    if load:
        figure.suptitle(load)
    return figure


def _concurrency_axis(ax: Any, series: dict[str, list[dict[str, Any]]]) -> None:
    ax.set_xlabel("concurrent users (C)")
    ax.set_xticks(sorted({s["concurrency"] for rows in series.values() for s in rows}))
    ax.grid(alpha=0.3)


def _cost(costs: dict[str, Any]) -> Any:
    figure, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    points = costs["points"]
    top = max(p["tokens"] for p in points)
    for kind, (label, colour) in KINDS.items():
        measured = [(p["tokens"], p["cpu_ms_per_answer"].get(kind)) for p in points]
        measured = [(x, y) for x, y in measured if y is not None]
        if not measured:
            continue
        ax.plot(*zip(*measured, strict=True), "o", color=colour)
        if fit := costs["model"].get(kind):
            a, b = fit["a_ms"], fit["b_us"] / 1000
            ax.plot([0, top], [a, a + b * top], color=colour,
                    label=f"{label}: {a:.1f} ms + {fit['b_us']:.0f} µs x tokens")
    ax.set_xlabel("tokens per answer")
    ax.set_ylabel("CPU ms per answer")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(f"Cost of an answer by process (async, C={costs['concurrency']}): measured, and fitted")
    ax.legend(fontsize="small")
    return figure


def _scale_out(scenarios: list[dict[str, Any]]) -> Any:
    figure, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    rows = sorted(scenarios, key=lambda s: s["replicas"])
    replicas = [s["replicas"] for s in rows]
    ax.plot(replicas, [s["per_replica"]["api_cpu_ms_per_token"] for s in rows], "o-", color="tab:blue",
            label="API, all replicas (idle one included) / delivered tokens")
    served = [
        (s["replicas"], r["cpu_ms_per_served_token"])
        for s in rows for r in s["per_replica"]["replicas"] if r.get("cpu_ms_per_served_token") is not None
    ]
    if served:
        ax.plot(*zip(*served, strict=True), "x", color="tab:blue", alpha=0.6,
                label="one replica / tokens it streamed")
    for kind in ("worker", "broker"):
        label, colour = KINDS[kind]
        values = [s["cpu_ms_per_token"].get(kind) for s in rows]
        if all(v is not None for v in values):
            ax.plot(replicas, values, "o--", color=colour, label=label)
    ax.set_xticks(replicas)
    ax.set_xlabel("API replicas behind HAProxy (R)")
    ax.set_ylabel("CPU ms per token")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title("Scale-out: CPU per token against API replicas (async, one machine)")
    ax.legend(fontsize="small")
    return figure


def _peers(peers: dict[str, Any]) -> Any:
    """Per concurrency: answers/s, TTFT p50 and p99, and CPU per answer of each proxy."""
    series = _series(peers["scenarios"])
    modes = [m for m in ("direct", "litellm", "openai", "async") if m in series]
    levels = sorted({s["concurrency"] for rows in series.values() for s in rows})
    width = 0.8 / len(modes)
    figure, (rate, ttft, cpu) = plt.subplots(1, 3, figsize=(16, 5), layout="constrained")
    for i, mode in enumerate(modes):
        label, colour, _ = STYLE[mode]
        by_c = {s["concurrency"]: s for s in series[mode]}
        xs = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(levels))]
        rows = [by_c.get(c) for c in levels]
        rate.bar(xs, [s["throughput_rps"] if s else 0 for s in rows], width, color=colour, label=label)
        for q, alpha in (("p99", 0.35), ("p50", 1.0)):
            ttft.bar(xs, [(s["ttft_ms"][q] or 0) if s else 0 for s in rows], width, color=colour, alpha=alpha)
        if mode == "direct":
            continue
        bottom = [0.0] * len(levels)
        # LiteLLM is one kind of process; this system's API, workers and broker are stacked.
        kinds = (("proxy", ""),) if mode == "litellm" else (("api", ""), ("worker", "//"), ("broker", ".."))
        for kind, hatch in kinds:
            heights = [((s or {}).get("cpu_ms_per_answer") or {}).get(kind) or 0.0 for s in rows]
            if any(heights):
                cpu.bar(xs, heights, width, bottom=bottom, color=colour, hatch=hatch, edgecolor="white",
                        label=f"{label}: {'LiteLLM' if kind == 'proxy' else KINDS[kind][0]}")
                bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        cpu.bar_label(cpu.containers[-1], [f"{b:.0f}" if b else "" for b in bottom], fontsize="small")
    for ax, title, unit in ((rate, "throughput", "answers per second"),
                            (ttft, "TTFT p50 (solid) and p99 (light)", "ms"),
                            (cpu, "CPU per answer of the proxy's processes", "CPU ms per answer")):
        ax.set_xticks(range(len(levels)), [f"C={c}" for c in levels])
        ax.set_title(title)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3, axis="y")
    rate.legend(fontsize="small")
    cpu.legend(fontsize="x-small")
    versions = peers["machine"]
    figure.suptitle(
        f"LiteLLM {versions.get('litellm')} and llm-stream in front of the same mock LLM "
        f"({versions['cores']} cores, {versions['cpu_model']}; broker: RabbitMQ {versions.get('rabbitmq')})"
    )
    return figure


def load(paths: list[Path]) -> dict[str, Any]:
    return load_all([orjson.loads(path.read_bytes()) for path in paths])


def load_all(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several results in one: a later one's parts replace the earlier's, and its closed-loop
    scenarios those of the same name (a scale-out run adds its direct baseline)."""
    merged: dict[str, Any] = {}
    for results in runs:
        scenarios = {s["name"]: s for s in merged.get("scenarios") or []}
        scenarios.update({s["name"]: s for s in results.get("scenarios") or []})
        merged.update({key: value for key, value in results.items() if value or key not in merged})
        merged["scenarios"] = list(scenarios.values())
    return merged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/charts.py", description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path, help="results JSON of bench/run.py or bench/peers.py")
    p.add_argument("--peers", type=Path, help="peers results to add (default: peers.json next to the first)")
    p.add_argument("--out", type=Path, help="directory of the PNGs (default: the first file's)")
    args = p.parse_args(argv)
    first = args.results[0]
    results = load(args.results)
    peers_path = args.peers or first.with_name("peers.json")
    peers = None
    if results.get("kind") != "peers" and peers_path.exists():
        peers = load([peers_path])
    for path in render(results, args.out or first.parent, chart_prefix(first.stem), peers):
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
