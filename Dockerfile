# syntax=docker/dockerfile:1.7
# The llm-stream images, one target per service. Build from the repository root so the shared
# library is in the context:
#
#   docker build --target api     -t llm-stream-api .
#   docker build --target worker  -t llm-stream-worker .
#   docker build --target mockllm -t llm-stream-mockllm .
#
# `make images` builds all three with podman, from Debian's python3 on a base image made
# locally (scripts/containers.sh python bookworm), by passing PYTHON_IMAGE.
#
# Stages: "uv" installs a pinned uv from PyPI; "build-base" holds the workspace manifests;
# "build-<service>" resolves that service's environment from the frozen uv.lock into
# /app/venv, dependencies first (their own cached layer), then the service's code and the
# workspace libraries it imports; "runtime" is the common final stage; each target adds only its
# virtualenv. tests/deploy/test_images.py reads this file and replays the build stages' COPY
# and `uv sync` steps, so keep them in the simple forms used here.

# The build stages trust the base image's CA store (UV_NATIVE_TLS); behind a TLS-inspecting
# proxy, mount the host's bundle over it for the build (`make images` does, with podman's
# --volume).
#
# Any image with python3 on PATH (also at /usr/bin or /usr/local/bin in every stage alike: the
# virtualenv links to the interpreter of the build stage, which is the runtime's).
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm
ARG UV_VERSION=0.13.9

FROM ${PYTHON_IMAGE} AS uv
ARG UV_VERSION
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/uv && /opt/uv/bin/pip install --disable-pip-version-check "uv==${UV_VERSION}" \
    || { echo "pip could not install uv==${UV_VERSION} from PyPI: the build needs the network (podman/buildah: --network host; behind a proxy: --build-arg HTTPS_PROXY=...)" >&2; exit 1; }

FROM ${PYTHON_IMAGE} AS build-base
COPY --from=uv /opt/uv/bin/uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_DEV=1 \
    UV_PYTHON_DOWNLOADS=0 \
    UV_PROJECT_ENVIRONMENT=/app/venv \
    UV_NATIVE_TLS=1
WORKDIR /src
# uv needs every workspace member's pyproject.toml to read the workspace, none of their code.
COPY pyproject.toml uv.lock ./
COPY libs/mqcommon/pyproject.toml libs/mqcommon/pyproject.toml
COPY services/api/pyproject.toml services/api/pyproject.toml
COPY services/mockllm/pyproject.toml services/mockllm/pyproject.toml
COPY services/worker/pyproject.toml services/worker/pyproject.toml

# Dependencies first, in their own layer: it changes only when uv.lock or a pyproject.toml does.
# Then the code, installed as plain wheels (--no-editable) so the virtualenv does not point
# back into /src.
FROM build-base AS build-api
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package llm-stream-api
COPY libs/mqcommon libs/mqcommon
COPY services/api services/api
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package llm-stream-api

FROM build-base AS build-worker
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package llm-stream-worker
COPY libs/mqcommon libs/mqcommon
COPY services/worker services/worker
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package llm-stream-worker

# The mock LLM does not use the shared library.
FROM build-base AS build-mockllm
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace --package llm-stream-mockllm
COPY services/mockllm services/mockllm
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable --package llm-stream-mockllm

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/app/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp
# A numeric uid (no passwd entry needed) lets Kubernetes verify runAsNonRoot. The virtualenv
# stays owned by root: the process cannot modify its own code.
USER 10001:10001
WORKDIR /app
STOPSIGNAL SIGTERM

# Each entry point is in exec form: the console script is PID 1 and installs its own SIGTERM
# handler (PID 1 gets no default one).
FROM runtime AS mockllm
LABEL org.opencontainers.image.title="llm-stream-mockllm" \
      org.opencontainers.image.description="llm-stream mock LLM: deterministic OpenAI-compatible streaming server"
COPY --from=build-mockllm /app/venv /app/venv
ENV MOCK_HOST=0.0.0.0 \
    MOCK_PORT=8008
EXPOSE 8008
ENTRYPOINT ["llm-stream-mockllm"]

# One worker process per container (Kubernetes scales replicas, not processes). On SIGTERM it
# stops consuming and finishes or requeues in-flight tasks within SHUTDOWN_GRACE_S.
FROM runtime AS worker
LABEL org.opencontainers.image.title="llm-stream-worker" \
      org.opencontainers.image.description="llm-stream worker: consumes chat tasks and streams them from an OpenAI-compatible LLM"
COPY --from=build-worker /app/venv /app/venv
ENV METRICS_PORT=9100
# /metrics and /health.
EXPOSE 9100
ENTRYPOINT ["llm-stream-worker"]

# uvicorn stops accepting connections on SIGTERM and lets open streams finish. It reads PORT,
# HOST and UVICORN_WORKERS. Last, so that a build without --target gives the API.
FROM runtime AS api
LABEL org.opencontainers.image.title="llm-stream-api" \
      org.opencontainers.image.description="llm-stream HTTP API: accepts chat requests and streams answers as SSE"
COPY --from=build-api /app/venv /app/venv
ENV PORT=8007
EXPOSE 8007
ENTRYPOINT ["llm-stream-api"]
