"""``llm-stream-worker``: run one worker process until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog
from aio_pika.exceptions import AMQPException
from aiormq.exceptions import AMQPError
from mqcommon.connection import redacted
from mqcommon.gc import freeze_startup_heap
from mqcommon.logging import setup_logging

from llm_stream_worker.heartbeat import Heartbeat
from llm_stream_worker.service import Worker, start_metrics_server
from llm_stream_worker.settings import WorkerSettings

log = structlog.get_logger("llm_stream_worker")

BROKER_RETRY_S = 2.0


async def run(settings: WorkerSettings) -> None:
    worker = Worker(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    server = await start_metrics_server(worker)
    heartbeat = Heartbeat(
        settings, lambda: worker._connection, lambda: len(worker.running), worker.is_ready,
        started_in=lambda: worker.started_in_s, holds=worker.holds,
    )
    heartbeat.start()
    if not settings.openai_api_key:
        log.warning("OPENAI_API_KEY is not set: requests go to OPENAI_BASE_URL without a key",
                    base_url=settings.openai_base_url)
    while not stop.is_set():
        try:
            await worker.start()
            break
        except (OSError, AMQPException, AMQPError) as exc:
            log.error("broker unreachable; retrying", error=str(exc) or type(exc).__name__,
                      url_host=redacted(settings.rabbit_mq), retry_s=BROKER_RETRY_S)
            try:
                await asyncio.wait_for(stop.wait(), BROKER_RETRY_S)
            except TimeoutError:
                pass
    freeze_startup_heap()
    watchdog = asyncio.create_task(worker.run_watchdog())
    await stop.wait()
    watchdog.cancel()
    await heartbeat.stop()
    await worker.shutdown()
    if server is not None:
        server.close()
    log.info("worker stopped")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nConfiguration is read from the environment; see README.md.")
        return
    settings = WorkerSettings()
    setup_logging(settings.log_level, settings.log_format, service="worker")
    try:
        import uvloop

        uvloop.run(run(settings))
    except ImportError:
        asyncio.run(run(settings))


if __name__ == "__main__":
    main()
