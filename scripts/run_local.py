"""Run the whole system locally: the API, LLM_WORKERS workers and, without OPENAI_API_KEY,
the mock LLM; all against the local RabbitMQ. Ctrl-C stops everything."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from urllib.parse import urlsplit

from mqcommon.settings import BrokerSettings

MOCK_PORT = int(os.environ.get("MOCK_PORT", "8008"))
WORKER_METRICS_BASE = int(os.environ.get("WORKER_METRICS_PORT_BASE", "9100"))
STOP_TIMEOUT_S = 40.0


def say(text: str) -> None:
    print(f"[run] {text}", flush=True)


def broker_reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "localhost", parts.port or 5672), timeout=2):
            return True
    except OSError:
        return False


async def pump(name: str, stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        sys.stdout.write(f"{name:>9} | {line.decode(errors='replace')}")
        sys.stdout.flush()


async def start(name: str, argv: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    asyncio.get_running_loop().create_task(pump(name, proc.stdout))
    return proc


async def main() -> int:
    broker = BrokerSettings()
    if not broker_reachable(broker.rabbit_mq):
        host = urlsplit(broker.rabbit_mq).hostname
        say(f"RabbitMQ is not reachable at {host} (RABBIT_MQ={broker.rabbit_mq.rsplit('@', 1)[-1]}).")
        say("Start one, then run `make run` again:")
        say("  this machine:  rabbitmq-server -detached   (Debian: apt-get install rabbitmq-server)")
        say("  with Docker:   docker run -d -p 5672:5672 -p 15672:15672 rabbitmq:3.13-management")
        return 1

    env = dict(os.environ)
    env.setdefault("LOG_FORMAT", "console")
    procs: list[tuple[str, asyncio.subprocess.Process]] = []
    if not env.get("OPENAI_API_KEY"):
        say("!" * 72)
        say("OPENAI_API_KEY is not set: answers come from the built-in MOCK LLM, not a real model.")
        say("Set OPENAI_API_KEY (and OPENAI_BASE_URL for vLLM/Ollama/...) to use a real one.")
        say("!" * 72)
        env["OPENAI_API_KEY"] = "mock"
        env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{MOCK_PORT}/v1"
        mock_env = {**env, "MOCK_PORT": str(MOCK_PORT)}
        procs.append(("mockllm", await start("mockllm", ["llm-stream-mockllm"], mock_env)))

    workers = int(env.get("LLM_WORKERS", "2"))
    for i in range(workers):
        worker_env = {**env, "METRICS_PORT": str(WORKER_METRICS_BASE + i)}
        procs.append((f"worker-{i}", await start(f"worker-{i}", ["llm-stream-worker"], worker_env)))
    api_env = {k: v for k, v in env.items() if k != "OPENAI_API_KEY" or env.get("CHAT_DIRECT_LLM")}
    procs.append(("api", await start("api", ["llm-stream-api"], api_env)))
    port = env.get("PORT", "8007")
    say(f"API on http://localhost:{port}  (chat page: http://localhost:{port}/), {workers} worker(s).")
    say("Ctrl-C stops everything.")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exited = [asyncio.create_task(p.wait()) for _, p in procs]
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([stopper, *exited], return_when=asyncio.FIRST_COMPLETED)
    crashed = [name for name, p in procs if p.returncode is not None]
    if crashed:
        say(f"{', '.join(crashed)} exited; stopping the rest.")
    say("stopping...")
    for _, p in procs:
        if p.returncode is None:
            os.killpg(p.pid, signal.SIGTERM)
    await asyncio.wait(exited, timeout=STOP_TIMEOUT_S)
    for _, p in procs:
        if p.returncode is None:
            os.killpg(p.pid, signal.SIGKILL)
    say("stopped.")
    return 1 if crashed and not stop.is_set() else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
