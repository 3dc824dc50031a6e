"""Run the whole system locally: the API, LLM_WORKERS workers and, without OPENAI_API_KEY,
the mock LLM; all against the local RabbitMQ. Ctrl-C stops everything.

With LLM_POOLS (docs/adr/0006), LLM_WORKERS workers per pool, each with its LLM_POOL; a pool
without a base_url of its own uses OPENAI_BASE_URL, or the mock.

Every port is checked before anything starts. A port set explicitly (PORT, MOCK_PORT,
WORKER_METRICS_PORT_BASE) that is taken stops the run with a message naming it; a default one
that is taken is replaced by the next free port, and the run says so.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from urllib.parse import urlsplit

from mqcommon.pools import PoolMap, PoolsError
from mqcommon.settings import BrokerSettings

DEFAULT_API_PORT = 8007
DEFAULT_MOCK_PORT = 8008
# Next to the API's and the mock's ports, away from the exporters' 9100-9999 (node_exporter 9100).
DEFAULT_WORKER_METRICS_BASE = 8110
PORT_SEARCH = 50  # how far past a taken default port to look for a free one
STOP_TIMEOUT_S = 40.0


class PortBusy(Exception):
    pass


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (as uvicorn would: SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class Ports:
    """Ports for every process, checked before anything starts; none handed out twice."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.taken: set[int] = set()

    def pick(self, what: str, variable: str, default: int, host: str, after: int | None = None) -> int:
        """The port for ``what``: ``variable``'s value, or ``default``; ``after`` (a port handed
        out just before) makes it the next port of a consecutive range instead."""
        explicit = variable in self.env
        base = int(self.env[variable]) if explicit else default
        wanted = base if after is None else after + 1
        if explicit:
            if wanted in self.taken or not port_free(host, wanted):
                raise PortBusy(
                    f"port {wanted} ({what}, from {variable}={self.env[variable]}) is in use. "
                    f"Stop whatever listens there (`ss -ltnp 'sport = :{wanted}'` shows it) or "
                    f"set {variable} to a free port."
                )
            self.taken.add(wanted)
            return wanted
        for port in range(wanted, wanted + PORT_SEARCH):
            if port in self.taken:
                continue
            if port_free(host, port):
                self.taken.add(port)
                return port
            say(f"port {port} ({what}) is in use: trying the next one.")
        raise PortBusy(
            f"ports {wanted}-{wanted + PORT_SEARCH - 1} ({what}) are all in use: set {variable} "
            "to a free port."
        )


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

    try:
        pools = PoolMap.from_settings(broker)
    except PoolsError as exc:
        say(str(exc))
        return 1
    env = dict(os.environ)
    env.setdefault("LOG_FORMAT", "console")
    per_pool = int(env.get("LLM_WORKERS", "2"))
    # (name, pool) of every worker: LLM_WORKERS of each pool
    pool_names = list(pools.pools) if pools.configured else [""]
    workers_of = [
        (f"{pool}-{i}" if pool else f"worker-{i}", pool) for pool in pool_names for i in range(per_pool)
    ]
    workers = len(workers_of)
    use_mock = not env.get("OPENAI_API_KEY")
    ports = Ports(env)
    try:
        api_port = ports.pick("API", "PORT", DEFAULT_API_PORT, env.get("HOST", "0.0.0.0"))
        mock_port = ports.pick("mock LLM", "MOCK_PORT", DEFAULT_MOCK_PORT, "127.0.0.1") if use_mock else 0
        metrics_host = env.get("METRICS_HOST", "0.0.0.0")
        worker_ports: list[int] = []
        for name, _ in workers_of:
            worker_ports.append(
                ports.pick(
                    f"{name} metrics", "WORKER_METRICS_PORT_BASE", DEFAULT_WORKER_METRICS_BASE,
                    metrics_host, after=worker_ports[-1] if worker_ports else None,
                )
            )
    except PortBusy as exc:
        say(str(exc))
        say("Nothing was started.")
        return 1
    env["PORT"] = str(api_port)

    procs: list[tuple[str, asyncio.subprocess.Process]] = []
    if use_mock:
        say("!" * 72)
        say("OPENAI_API_KEY is not set: answers come from the built-in MOCK LLM, not a real model.")
        say("Set OPENAI_API_KEY (and OPENAI_BASE_URL for vLLM/Ollama/...) to use a real one.")
        say("!" * 72)
        env["OPENAI_API_KEY"] = "mock"
        env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{mock_port}/v1"
        mock_env = {**env, "MOCK_PORT": str(mock_port)}
        procs.append(("mockllm", await start("mockllm", ["llm-stream-mockllm"], mock_env)))

    for (name, pool), metrics_port in zip(workers_of, worker_ports, strict=True):
        worker_env = {**env, "METRICS_PORT": str(metrics_port), **({"LLM_POOL": pool} if pool else {})}
        procs.append((name, await start(name, ["llm-stream-worker"], worker_env)))
    api_env = {k: v for k, v in env.items() if k != "OPENAI_API_KEY" or env.get("CHAT_DIRECT_LLM")}
    procs.append(("api", await start("api", ["llm-stream-api"], api_env)))
    port = api_port
    say(f"API on http://localhost:{port}  (chat page: http://localhost:{port}/), {workers} worker(s).")
    if pools.configured:
        for pool in pools.pools.values():
            say(f"pool {pool.name}: models {', '.join(pool.models) or '-'}; lanes {', '.join(pool.lanes)}.")
    mock_note = f", mock LLM on {mock_port}" if use_mock else ""
    say(f"worker metrics on {', '.join(str(p) for p in worker_ports)}{mock_note}.")
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
