"""An isolated llm-stream deployment on the shared broker, and prompts for the mock LLM.

A deployment is a set of uuid-named queues and exchanges plus the API and worker processes
configured with them; it shares the broker and the mock LLM with the rest of the run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from llm_stream_mockllm.answer import expected_answer

from .broker import Names, delete_topology, run_sync
from .processes import Service, free_port, start_all, stop_all

MOCK_TTFT_MS = 20
MOCK_TPS = 400
MOCK_TOKENS = 12


def mock_llm(log_dir: Path) -> Service:
    """The mock LLM with fast defaults; slow answers are asked for per prompt."""
    port = free_port()
    env = {
        "MOCK_HOST": "127.0.0.1",
        "MOCK_PORT": str(port),
        "MOCK_TTFT_MS": str(MOCK_TTFT_MS),
        "MOCK_TPS": str(MOCK_TPS),
        "MOCK_TOKENS": str(MOCK_TOKENS),
        "MOCK_LOG_LEVEL": "warning",
    }
    return Service(
        "mockllm", "llm_stream_mockllm", env,
        base_url=f"http://127.0.0.1:{port}", health_path="/health", log_dir=log_dir,
    )


class Deployment:
    def __init__(
        self, broker_url: str, mock_url: str, log_dir: Path, management_url: str | None = None
    ) -> None:
        self.broker_url = broker_url
        self.management_url = management_url
        self.mock_url = mock_url
        self.log_dir = log_dir
        self.names = Names.fresh()
        self.apis: list[Service] = []
        self.workers: list[Service] = []

    def _common_env(self) -> dict[str, str]:
        return {
            "RABBIT_MQ": self.broker_url,
            **({"RABBITMQ_MANAGEMENT_URL": self.management_url} if self.management_url else {}),
            "OPENAI_BASE_URL": f"{self.mock_url}/v1",
            "OPENAI_API_KEY": "test",
            "LOG_FORMAT": "console",
            "LOG_LEVEL": "INFO",
            **self.names.env(),
        }

    # A busy test machine can keep the broker from confirming a publish for seconds: a slow
    # confirm is not what these tests are about, so POSTs wait longer than the 5 s default.
    API_DEFAULTS = {"ENQUEUE_TIMEOUT_S": "20"}

    def api(self, *, ready_path: str = "/health/full", **env: str) -> Service:
        """Add an API process (not started); ``env`` overrides the defaults.

        It counts as started once ``ready_path`` answers 200: ``/health/full`` means connected
        to the broker, ``/health`` only that the process serves HTTP.
        """
        port = free_port()
        service = Service(
            f"api-{len(self.apis) + 1}", "llm_stream_api",
            {**self._common_env(), **self.API_DEFAULTS, "HOST": "127.0.0.1", "PORT": str(port), **env},
            base_url=f"http://127.0.0.1:{port}", health_path=ready_path, log_dir=self.log_dir,
        )
        self.apis.append(service)
        return service

    def worker(self, **env: str) -> Service:
        """Add a worker process (not started); ``base_url`` is its metrics server."""
        port = free_port()
        service = Service(
            f"worker-{len(self.workers) + 1}", "llm_stream_worker",
            {
                **self._common_env(),
                "METRICS_HOST": "127.0.0.1",
                "METRICS_PORT": str(port),
                # A short grace keeps teardown quick; tests about shutdown set their own.
                "SHUTDOWN_GRACE_S": "2",
                **env,
            },
            base_url=f"http://127.0.0.1:{port}", health_path="/health", log_dir=self.log_dir,
        )
        self.workers.append(service)
        return service

    def start(self) -> Deployment:
        """Start every process not started yet and wait until all are ready."""
        start_all(*(s for s in (*self.workers, *self.apis) if s.proc is None))
        return self

    def close(self) -> None:
        """Stop every process, then delete the deployment's queues and exchanges."""
        try:
            stop_all(*self.apis, *self.workers)
        finally:
            run_sync(lambda: delete_topology(self.broker_url, self.names))


@dataclass(frozen=True, slots=True)
class Prompt:
    text: str
    tokens: int

    @property
    def expected(self) -> str:
        """The exact answer the mock gives to this prompt."""
        return expected_answer(self.text, self.tokens)


def prompt(label: str, *, tokens: int = MOCK_TOKENS, **directives: int | float) -> Prompt:
    """A prompt never sent before, with ``[[mock:...]]`` directives; ``tokens`` is explicit."""
    parts = [f"{label} {uuid.uuid4().hex[:10]}", f"[[mock:tokens={tokens}]]"]
    parts += [f"[[mock:{name}={value}]]" for name, value in directives.items()]
    return Prompt(" ".join(parts), tokens)


def session_id(label: str = "s") -> str:
    """A fresh client-chosen session id."""
    return f"{label}-{uuid.uuid4().hex}"


@contextmanager
def deployment(
    broker_url: str, mock_url: str, log_dir: Path, management_url: str | None = None
) -> Iterator[Deployment]:
    """A deployment that is closed (processes stopped, topology deleted) on the way out."""
    created = Deployment(broker_url, mock_url, log_dir, management_url)
    try:
        yield created
    finally:
        created.close()
