# llm-stream: `make help` lists the targets.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.DEFAULT_GOAL := help
.PHONY: help install run test typecheck test-unit test-tools test-integration test-integration-rabbitmq4 test-rabbitmq4 test-deploy test-observability bench bench-peers bench-charts chaos tools lint images

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-28s %s\n", $$1, $$2}'

install: ## Install uv (from PyPI if absent) and the whole workspace
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --all-packages --frozen

run: install ## Run API + LLM_WORKERS workers (+ mock LLM without OPENAI_API_KEY) on the local RabbitMQ
	$(UV) run python scripts/run_local.py

images: ## Build the api, worker and mockllm images with podman (skipped when their inputs are unchanged)
	python3 scripts/images.py build

tools: ## Make helm and kubectl available (PATH, or installed into .tools/bin)
	bash deploy/tools/install-tools.sh

# Test files run in parallel, each pytest worker with a private broker node of its own; a
# module's tests stay together, on one worker, so they share what the module starts.
TEST_JOBS ?= 3
PARALLEL := -n $(TEST_JOBS) --dist loadfile

test: install tools test-tools ## Types, every test (private RabbitMQ 3.x nodes) and, beside them, the broker-dependent tests on RabbitMQ 4
	bash scripts/containers.sh install
	UV="$(UV)" TEST_JOBS=$(TEST_JOBS) bash scripts/test.sh

test-tools: ## Install the Debian packages the tests need when missing (RabbitMQ, Prometheus, Chromium)
	bash scripts/ensure-test-tools.sh

test-unit: install ## Unit tests of every member
	$(UV) run pytest libs services

test-integration: install tools test-tools ## Integration tests against a real broker (TEST_BROKER) and real processes
	$(UV) run pytest tests/integration

test-rabbitmq4: install tools test-tools ## The tests marked `broker` (what the broker itself does) on RabbitMQ 4.0 in a container
	bash scripts/containers.sh install
	TEST_BROKER=container $(UV) run pytest $(PARALLEL) -m broker tests/integration

test-integration-rabbitmq4: install tools test-tools ## Every integration test on RabbitMQ 4.0 in a container (podman, testcontainers)
	bash scripts/containers.sh install
	TEST_BROKER=container $(UV) run pytest $(PARALLEL) tests/integration

test-deploy: install tools ## Render and validate the Helm chart, kustomize overlays and skaffold
	$(UV) run pytest tests/deploy

test-observability: install test-tools ## promtool checks and dashboards/alerts against a real Prometheus
	$(UV) run pytest tests/observability

bench: install ## Benchmark the stack against the mock LLM and direct (writes bench/results/, JSON, markdown, PNG charts)
	$(UV) run python bench/run.py $(BENCH_ARGS)

bench-peers: install ## LiteLLM's proxy (pinned, its own virtualenv) and this system in front of the same mock (bench/results/peers.*)
	UV="$(UV)" $(UV) run python bench/peers.py $(PEERS_ARGS)

bench-charts: install ## Redraw the PNG charts from bench/results/latest.json (and peers.json), without running anything
	$(UV) run python bench/charts.py bench/results/latest.json

chaos: install ## Load while workers are SIGKILLed, the broker restarts and an API process dies; every session judged (CHAOS_ARGS=--pools: with two model pools)
	$(UV) run python chaos/run.py $(CHAOS_ARGS)

lint: install typecheck ## Static checks: ruff, then the type checker
	$(UV) run ruff check libs services tests bench scripts

typecheck: install ## mypy over the packages in [tool.mypy] (strict on mqcommon and the API's core)
	$(UV) run mypy
