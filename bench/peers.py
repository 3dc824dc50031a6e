"""LiteLLM's proxy and this system in front of the same mock LLM, under the same closed loop.

    make bench-peers                                     # = uv run python bench/peers.py
    uv run python bench/peers.py --concurrency 50 --requests-per-user 4
    uv run python bench/peers.py --help

One run on this machine: the mock LLM as bench/run.py starts it (``--ttft-ms 200 --tokens 50
--tps 50``), then, for each C of ``--concurrency``, C users in a closed loop sending N = 10 x C
requests, checked word for word against the mock's deterministic answers:

- ``direct``: straight to the mock (``POST /v1/chat/completions``, ``stream: true``);
- ``litellm``: the same request through LiteLLM's proxy (``LITELLM_VERSION``, in a virtualenv of
  its own, see :func:`ensure_litellm`), one ``model_list`` entry on the mock, no database, a
  master key, logs at ERROR, offline (:data:`LITELLM_ENV`), one worker process per core;
- ``openai``: the same request through this system, API + workers + RabbitMQ started as
  bench/run.py starts them, with an API key as LiteLLM has its master key;
- ``async``: this system's own dialect, ``POST /chat/async`` + ``GET /stream/{id}``.

LiteLLM runs first, and is stopped before this system starts: neither idles beside the other.
CPU per answer is that of the proxy's own processes (LiteLLM's process and its children; this
system's API and workers), the broker's ``beam.smp`` on its own. Results:
``bench/results/peers.json``, ``peers.md`` and ``peers.png`` (``<out>.json``, ``<out>.md`` and
``<out>-peers.png`` with another ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

import charts
import loadgen
import report
import run
from stack import CpuMeter, Service, Stack, cpu_seconds, free_port, rabbitmq_version

LITELLM_VERSION = "1.108.7"
VENV = Path(__file__).resolve().parent / ".peers" / "litellm-venv"
MODEL = "gpt-4o-mini"
LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # the package's model cost map: nothing fetched
    "LITELLM_MODE": "PRODUCTION",  # reads no .env of the working directory
    "LITELLM_LOG": "ERROR",  # and uvicorn's access log with it
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
    "DISABLE_ADMIN_UI": "True",
    "HF_HUB_OFFLINE": "1",
}
# Which processes each mode's CPU per answer is of; the broker's is added for this system's.
PROXY = {"direct": (), "litellm": ("litellm",), "openai": ("api", "worker"), "async": ("api", "worker")}
OURS = ("openai", "async")
SETTLED_CORES = 0.2
START_TIMEOUT_S = 240  # LiteLLM starts in 20 s, 80 s with 2 workers on 2 busy cores


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/peers.py", description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--concurrency", default="50,200", help="closed-loop users, comma-separated")
    p.add_argument("--requests-per-user", type=int, default=10, help="N = this x C")
    p.add_argument(
        "--litellm-workers", type=int, default=os.cpu_count() or 1,
        help="LiteLLM's --num_workers (its own default is 1; one per core is what it advises for production)",
    )
    p.add_argument("--out", default="peers", help="results file name under bench/results/")
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/")
    return p.parse_args(argv)


def run_args(args: argparse.Namespace) -> argparse.Namespace:
    """bench/run.py's settings for the mock and the stack, with its defaults."""
    return run.parse_args([
        "--concurrency", args.concurrency, "--requests-per-user", str(args.requests_per_user),
        "--modes", "async", "--burst", "0", "--cost-answers", "0", "--cancel-running", "0",
        "--scale-out", "", "--amqp-url", args.amqp_url,
    ])


def installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    found = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True, text=True, check=False,
    )
    return found.stdout.strip() if found.returncode == 0 else None


def ensure_litellm(venv: Path = VENV) -> str:
    """``litellm[proxy]==LITELLM_VERSION`` in ``venv``, installed when it is not there: a
    virtualenv of its own, since its pins would fight the workspace's."""
    python = venv / "bin" / "python"
    if installed_version(python) == LITELLM_VERSION:
        return LITELLM_VERSION
    spec = f"litellm[proxy]=={LITELLM_VERSION}"
    uv = shlex.split(os.environ.get("UV", "")) or ([found] if (found := shutil.which("uv")) else [])
    print(f"installing {spec} into {venv} ...", flush=True)
    if uv:
        if not python.exists():
            subprocess.run([*uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
        subprocess.run([*uv, "pip", "install", "--quiet", "--python", str(python), spec], check=True)
    else:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", spec], check=True)
    if (version := installed_version(python)) != LITELLM_VERSION:
        raise RuntimeError(f"{venv}: litellm {version} installed, {LITELLM_VERSION} wanted")
    return version


def litellm_config(mock_url: str) -> dict[str, Any]:
    """One model on the mock's OpenAI-compatible API; no database, no callbacks."""
    return {
        "model_list": [{
            "model_name": MODEL,
            "litellm_params": {"model": f"openai/{MODEL}", "api_base": f"{mock_url}/v1", "api_key": "mock"},
        }],
        "litellm_settings": {"telemetry": False, "set_verbose": False},
        "general_settings": {"disable_spend_logs": True},
    }


class Peers:
    def __init__(self, args: argparse.Namespace, stack: Stack) -> None:
        self.args = args
        self.stack = stack
        self.bench = run.Bench(run_args(args), stack)
        self.concurrency = self.bench.args.concurrency
        self.key = f"sk-bench-{secrets.token_hex(16)}"
        self.auth = {"Authorization": f"Bearer {self.key}"}
        self.urls: dict[str, str] = {}
        self.notes: list[str] = []

    async def run(self, litellm_version: str) -> dict[str, Any]:
        started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        began = time.perf_counter()
        bench = self.bench
        modes, bench.args.modes = bench.args.modes, []
        await bench.start()  # the mock alone for now, and the broker's and this process's meters
        self.urls["direct"] = bench.mock_url
        scenarios: list[dict[str, Any]] = []
        direct: dict[int, dict[str, Any]] = {}
        async with loadgen.new_session(max(self.concurrency) + 100) as session:
            proxy = await self.start_litellm()
            await self.warm_up(session, ("direct", "litellm"))
            for c in self.concurrency:
                direct[c] = await self.scenario(session, "direct", c, None)
                scenarios += [direct[c], await self.scenario(session, "litellm", c, direct[c])]
            self.stack.stop([proxy])
            del bench.meters["litellm"]

            bench.args.modes = modes
            await bench.start_stack({"API_KEYS": f"bench:{self.key}", "API_KEYS_OPEN_PROBES": "true"})
            self.urls["openai"] = self.urls["async"] = bench.api_url or ""
            await self.warm_up(session, OURS)
            for c in self.concurrency:
                for mode in OURS:
                    scenarios.append(await self.scenario(session, mode, c, direct[c]))
        for s in scenarios:
            if s["errors"] or s["wrong"]:
                kinds = ", ".join(f"{n} x `{kind}`" for kind, n in s["error_kinds"].items())
                self.notes.append(f"{s['name']}: {s['errors']} errors ({kinds}), {s['wrong']} wrong answers")
            if s.get("background_cores", 0) > run.BUSY_CORES:
                self.notes.append(f"{s['name']}: other programs used {s['background_cores']} cores")
        rabbitmq = await rabbitmq_version(self.args.amqp_url)
        return {
            "kind": "peers",
            "run_id": self.stack.run_id,
            "started_at": started_at,
            "duration_s": round(time.perf_counter() - began, 1),
            "machine": {
                **report.machine_info(rabbitmq),
                "litellm": litellm_version,
                "litellm_python": _python_version(VENV / "bin" / "python"),
            },
            "config": {
                "command": " ".join(["uv run python bench/peers.py", *sys.argv[1:]]),
                "commit": run.commit(),
                "mock": bench.mock_config,
                "requests_per_user": self.args.requests_per_user,
                "litellm": {
                    "version": litellm_version, "workers": self.args.litellm_workers,
                    "config": litellm_config("<mock>"), "env": LITELLM_ENV,
                },
                "stack": (
                    f"{bench.args.api_workers} API process(es), {bench.args.workers} worker process(es) x "
                    f"{bench.args.worker_concurrency} concurrent generations, "
                    f"LOG_LEVEL={bench.args.log_level}, API_KEYS set"
                ),
            },
            "scenarios": scenarios,
            "ratios": ratios(scenarios),
            "notes": [*self.notes, *bench.notes],
        }

    async def start_litellm(self) -> Service:
        port = free_port()
        config = self.stack.log_dir / "litellm.yaml"  # JSON is YAML
        config.write_bytes(orjson.dumps(litellm_config(self.bench.mock_url), option=orjson.OPT_INDENT_2))
        args = [
            "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", str(self.args.litellm_workers), "--telemetry", "False",
        ]
        if self.args.litellm_workers > 1:
            # uvicorn kills a worker that does not answer its ping within 5 s: one still importing
            # LiteLLM on a busy machine is killed and started again, over and over.
            args += ["--timeout_worker_healthcheck", str(START_TIMEOUT_S)]
        proxy = self.stack.start(
            "litellm", str(VENV / "bin" / "litellm"), {**LITELLM_ENV, "LITELLM_MASTER_KEY": self.key},
            f"http://127.0.0.1:{port}/health/liveliness", args,
        )
        await self.stack.wait_ready([proxy], timeout=START_TIMEOUT_S)
        meter = CpuMeter.of_pids([proxy.popen.pid])
        await _settle(meter)
        print(f"litellm ready in {proxy.ready_s:.1f} s", flush=True)
        self.urls["litellm"] = f"http://127.0.0.1:{port}"
        self.bench.meters["litellm"] = meter
        return proxy

    def request_fn(self, mode: str) -> loadgen.RequestFn:
        url, tokens = self.urls[mode], self.bench.n_tokens
        if mode == "direct":
            return loadgen.direct(url, tokens, MODEL)
        if mode == "async":
            return loadgen.chat_async(url, tokens, route=lambda: (self.auth, self.auth))
        return loadgen.direct(url, tokens, MODEL, headers=self.auth)

    async def warm_up(self, session: aiohttp.ClientSession, modes: tuple[str, ...]) -> None:
        for mode in modes:
            prompts = [f"bench peers warmup {mode} {i}" for i in range(run.WARMUP_REQUESTS)]
            done = await loadgen.closed_loop(
                session, self.request_fn(mode), prompts, run.WARMUP_CONCURRENCY,
                request_timeout=self.bench.args.request_timeout, deadline=self.bench.args.scenario_timeout,
            )
            if bad := [r for r in done.results if not r.correct]:
                first = next((r.error for r in bad if r.error), "wrong answer")
                print(f"warm-up {mode}: {len(bad)}/{len(prompts)} failed ({first})", flush=True)

    async def scenario(
        self, session: aiohttp.ClientSession, mode: str, c: int, direct: dict[str, Any] | None
    ) -> dict[str, Any]:
        bench = self.bench
        meters = bench.meters  # only the proxy under test runs: the other is stopped or not started
        prompts = [f"bench peers {mode}-c{c} {i}" for i in range(c * self.args.requests_per_user)]
        before = cpu_seconds(meters)
        family = _family(meters.get("litellm"))
        done = await loadgen.closed_loop(
            session, self.request_fn(mode), prompts, c, request_timeout=bench.args.request_timeout,
            deadline=bench.args.scenario_timeout, ramp=bench.args.ramp,
        )
        cpu = {k: v - before[k] for k, v in cpu_seconds(meters).items()}
        if family != _family(meters.get("litellm")):
            # A process that started and ended between two readings is missing from the figures.
            self.notes.append(f"{mode} C={c}: LiteLLM's worker processes changed (one restarted)")
        s = report.summarise(f"{mode} C={c}", mode, c, done.results, done.wall, bench.n_tokens, cpu)
        if direct is not None:
            report.compare(s, direct)
        s["cpu_ms_per_answer"] = per_answer(s, mode)
        print(_progress(s), flush=True)
        bench.check_alive(s["name"])
        await asyncio.sleep(1)  # let the proxy drain between scenarios, as bench/run.py does
        return s


def _family(meter: CpuMeter | None) -> set[int]:
    found: set[int] = set()
    for root in meter.roots if meter else []:
        with contextlib.suppress(psutil.Error):
            found |= {p.pid for p in root.children(recursive=True)}
    return found


async def _settle(meter: CpuMeter, limit_s: float = 90.0) -> None:
    """Wait until the processes idle: the first worker to answer is not the last one started."""
    deadline = time.monotonic() + limit_s
    last = meter.seconds()
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        if (now := meter.seconds()) - last < SETTLED_CORES:
            return
        last = now


def per_answer(s: dict[str, Any], mode: str) -> dict[str, float | None]:
    """CPU ms per correct answer: each of the proxy's process kinds, ``proxy`` their sum, and the
    broker's for this system (while LiteLLM runs it idles)."""
    kinds = [*PROXY[mode], *(["broker"] if mode in OURS else [])]
    cpu, answers = s["cpu_s"], s["correct"]
    out = {k: round(cpu[k] * 1000 / answers, 2) if answers and k in cpu else None for k in kinds}
    if PROXY[mode] and answers:
        out["proxy"] = round(sum(cpu.get(k, 0.0) for k in PROXY[mode]) * 1000 / answers, 2)
    return out


def ratios(scenarios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """LiteLLM's CPU per answer over this system's, per C and mode, without and with the broker."""
    by = {(s["mode"], s["concurrency"]): s["cpu_ms_per_answer"] for s in scenarios}
    rows = []
    for (mode, c), ours in by.items():
        theirs = (by.get(("litellm", c)) or {}).get("proxy")
        if mode not in OURS or not theirs or not ours.get("proxy"):
            continue
        with_broker = ours["proxy"] + (ours.get("broker") or 0.0)
        rows.append({
            "concurrency": c, "mode": mode, "litellm_ms": theirs, "llm_stream_ms": ours["proxy"],
            "ratio": round(theirs / ours["proxy"], 2),
            "llm_stream_with_broker_ms": round(with_broker, 2),
            "ratio_with_broker": round(theirs / with_broker, 2),
        })
    return rows


def _python_version(python: Path) -> str | None:
    found = subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                           capture_output=True, text=True, check=False)
    return found.stdout.strip() or None


def _progress(s: dict[str, Any]) -> str:
    cpu = s["cpu_ms_per_answer"]
    return (
        f"{s['name']:>14}: {s['correct']}/{s['requests']} correct, {s['errors']} errors, "
        f"{s['throughput_rps']:.1f} answers/s, TTFT p50 {s['ttft_ms']['p50']} p99 {s['ttft_ms']['p99']} ms"
        + (f", CPU ms per answer {cpu}" if cpu else "")
    )


def markdown(r: dict[str, Any]) -> str:
    m, cfg = r["machine"], r["config"]
    mock = cfg["mock"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [
        f"# LiteLLM and llm-stream, {r['started_at']}",
        "",
        f"Machine: {m['cores']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, {m['os']}; Python "
        f"{m['python']} (LiteLLM's virtualenv: {m['litellm_python']}), LiteLLM {m['litellm']} "
        f"({cfg['litellm']['workers']} worker process(es)), RabbitMQ {m['rabbitmq'] or 'unknown'}. "
        "Load generator, mock LLM, the proxy under test and the broker share these cores.",
        "",
        f"Mock LLM: {mock['ttft_ms']:g} ms to first token, {mock['tokens']} tokens at {mock['tps']:g} "
        f"tokens/s. llm-stream: {cfg['stack']}. Run `{cfg['command']}` at commit `{cfg.get('commit')}`.",
        "",
        "Closed loop, N = C x requests per user; every answer checked against the mock's. TTFT in ms; "
        "CPU in ms per correct answer, of the proxy's own processes (LiteLLM's; llm-stream's API and "
        "workers), the broker beside it; other load: cores used by other programs meanwhile.",
        "",
        "| system | C | N | answers/s | vs direct | TTFT p50 | TTFT p99 | errors | wrong | CPU proxy "
        "| of which API / worker | CPU broker | other load |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    names = {"direct": "direct to the mock", "litellm": "LiteLLM proxy",
             "openai": "llm-stream /v1/chat/completions", "async": "llm-stream async"}
    for s in sorted(r["scenarios"], key=lambda s: (s["concurrency"], list(names).index(s["mode"]))):
        cpu, vs = s["cpu_ms_per_answer"], s.get("vs_direct")
        split = f"{ms(cpu.get('api'))} / {ms(cpu.get('worker'))}" if s["mode"] in OURS else "-"
        ratio = "-" if vs is None else f"{vs['throughput_ratio']:.3f}"
        lines.append(
            f"| {names[s['mode']]} | {s['concurrency']} | {s['requests']} | {s['throughput_rps']:.1f} | "
            f"{ratio} | {ms(s['ttft_ms']['p50'])} | "
            f"{ms(s['ttft_ms']['p99'])} | {s['errors']} | {s['wrong']} | {ms(cpu.get('proxy'))} | {split} | "
            f"{ms(cpu.get('broker'))} | {s.get('background_cores', '-')} |"
        )
    lines += [
        "",
        "LiteLLM's CPU per answer over llm-stream's (API + workers; and with the broker added):",
        "",
        "| C | llm-stream route | LiteLLM ms | llm-stream ms | ratio | llm-stream + broker ms | ratio |",
        "|--:|---|--:|--:|--:|--:|--:|",
        *(
            f"| {x['concurrency']} | {names[x['mode']].removeprefix('llm-stream ')} | "
            f"{x['litellm_ms']:.1f} | {x['llm_stream_ms']:.1f} | **{x['ratio']:.2f}x** | "
            f"{x['llm_stream_with_broker_ms']:.1f} | "
            f"{x['ratio_with_broker']:.2f}x |"
            for x in r["ratios"]
        ),
    ]
    if r["notes"]:
        lines += ["", "## Notes", "", *(f"- {note}" for note in r["notes"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        version = ensure_litellm()
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        print(f"LiteLLM could not be installed: {exc}", file=sys.stderr)
        return 2
    run.raise_fd_limit()
    signal.signal(signal.SIGTERM, run.terminate)
    run_id = time.strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(2)
    stack = Stack(run_id, Path(tempfile.mkdtemp(prefix=f"llm-stream-peers-{run_id}-")))
    print(f"run {run_id}: process logs in {stack.log_dir}", flush=True)
    peers = Peers(args, stack)
    try:
        result = run.run_loop(peers.run(version))
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        run.clean_up(peers.bench.args, stack)
    run.RESULTS.mkdir(exist_ok=True)
    (run.RESULTS / f"{args.out}.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    (run.RESULTS / f"{args.out}.md").write_text(text := markdown(result))
    print("\n" + text)
    for path in charts.render(result, run.RESULTS, charts.chart_prefix(args.out)):
        print(f"written: {path}")
    print(f"written: {run.RESULTS / args.out}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
