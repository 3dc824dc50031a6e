"""``llm-stream-api``: serve the API with uvicorn on ``PORT`` with ``UVICORN_WORKERS`` processes."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import uvicorn

from llm_stream_api.settings import APISettings


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nConfiguration is read from the environment; see README.md.")
        return
    settings = APISettings()
    created = None
    if settings.uvicorn_workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Every worker process writes its metrics here; any of them can serve /metrics.
        created = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="llm-stream-metrics-")
    try:
        _serve(settings)
    finally:
        if created:
            shutil.rmtree(created, ignore_errors=True)


def _serve(settings: APISettings) -> None:
    uvicorn.run(
        "llm_stream_api.app:app",
        host=settings.host,
        port=settings.port,
        workers=settings.uvicorn_workers,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.sse_ping_s) + 5,
        # Longer than the idle timeouts of clients' pools and load balancers (often 60 s), so
        # the server is not the one closing a connection a client is about to reuse.
        timeout_keep_alive=settings.keep_alive_s,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
