"""The Dockerfile read as an engine reads it, and its build stages replayed without an engine.

The repository-root Dockerfile has one target per service. The replay reads it: for a target
it copies what the COPY lines of its build stages copy (from a context filtered by
.dockerignore, as the engine would send it), runs their RUN lines (the `uv sync` steps, same
flags, same ENV) into a temporary root, then starts the console script from the resulting
virtualenv the way the image's ENTRYPOINT does, and calls the paths the Kubernetes probes call.
The real images, built and run under podman, are tests/containers/.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from .manifests import REPO, component, container, helm_template

pytestmark = pytest.mark.deploy

SERVICES = ("api", "worker", "mockllm")
DOCKERFILE = REPO / "Dockerfile"
EXTERNAL = ("--set", "rabbitmq.url=amqp://u:p@rabbitmq.example.com:5672/", "--set", "llm.apiKey=k")


# --- Dockerfile and .dockerignore, read as the engine reads them ------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif instruction == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            stages.append(Stage(base, parts[2] if len(parts) == 3 else None))
        else:
            stages[-1].instructions.append((instruction, rest))
    return args, stages


def lineage(stages: list[Stage], name: str) -> list[Stage]:
    """The stage called `name` and the stages it is built FROM, outermost first."""
    by_name = {s.name: s for s in stages if s.name}
    chain = [by_name[name]]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    return chain


def instructions(chain: list[Stage]) -> list[tuple[str, str]]:
    return [i for stage in chain for i in stage.instructions]


def env_pairs(rest: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(rest))


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip().strip("/"))
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def excluded(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker semantics: the last rule matching the path or one of its parents decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    result = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            result = not negate
    return result


def build_context(rules: list[tuple[bool, re.Pattern[str]]]) -> set[str]:
    """Files (repo-relative) the engine would send as the build context."""
    files = set()
    for path in REPO.rglob("*"):
        relative = path.relative_to(REPO).as_posix()
        if path.is_file() and not relative.startswith(".git/") and not excluded(relative, rules):
            files.add(relative)
    return files


# --- replay ---------------------------------------------------------------------------------


def copy_from_context(sources: list[str], dest: Path, context: set[str]) -> None:
    for source in sources:
        source = source.rstrip("/")
        if source in context:
            target = dest / Path(source).name if len(sources) > 1 or dest.is_dir() else dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / source, target)
            continue
        inside = sorted(f for f in context if f.startswith(source + "/"))
        assert inside, f"COPY {source}: not in the build context (.dockerignore?)"
        for relative in inside:
            target = dest / relative[len(source) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / relative, target)


def replay_build_stage(service: str, root: Path, context: set[str]) -> dict[str, str]:
    """Run the COPY/ENV/WORKDIR/RUN lines of `build-<service>` and the stages it is built
    from, under `root`; returns their ENV."""
    _, stages = parse_dockerfile(DOCKERFILE)
    env: dict[str, str] = {}
    workdir = root
    for instruction, rest in instructions(lineage(stages, f"build-{service}")):
        if instruction == "ENV":
            env |= env_pairs(rest)
        elif instruction == "WORKDIR":
            workdir = root / rest.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            words = shlex.split(rest)
            if any(w.startswith("--from=") for w in words):
                continue  # the uv binary: this machine's uv (the same pinned release) stands in
            *sources, dest = words
            target = workdir / dest if not dest.startswith("/") else root / dest.lstrip("/")
            if dest.endswith("/") or dest in (".", "./"):
                target.mkdir(parents=True, exist_ok=True)
            copy_from_context(sources, target, context)
        elif instruction == "RUN":
            words = [w for w in shlex.split(rest) if not w.startswith("--mount=")]
            assert words[:2] == ["uv", "sync"], f"unexpected RUN in the build stage: {rest}"
            run_env = {
                k: v
                for k, v in os.environ.items()
                if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT") and not k.startswith("UV_NO")
            }
            run_env |= env
            run_env["UV_PROJECT_ENVIRONMENT"] = str(root / env["UV_PROJECT_ENVIRONMENT"].lstrip("/"))
            run_env["UV_PYTHON"] = sys._base_executable  # the image's python is the base image's
            result = subprocess.run(
                [shutil.which("uv") or "uv", *words[1:]],
                cwd=workdir,
                env=run_env,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert result.returncode == 0, f"`{' '.join(words)}` failed:\n{result.stderr}"
        else:
            raise AssertionError(f"Dockerfile: {instruction} in build-{service} is not replayed")
    return env


def member_dirs() -> dict[str, Path]:
    """Workspace member name -> folder."""
    members = {}
    for pyproject in [*REPO.glob("libs/*/pyproject.toml"), *REPO.glob("services/*/pyproject.toml")]:
        members[tomllib.loads(pyproject.read_text())["project"]["name"]] = pyproject.parent
    return members


def workspace_deps(name: str, members: dict[str, Path]) -> set[str]:
    """A member and the workspace members it depends on, transitively."""
    deps = tomllib.loads((members[name] / "pyproject.toml").read_text())["project"]["dependencies"]
    found = {name}
    for dep in deps:
        dep_name = re.split(r"[\s<>=!~\[;]", dep, maxsplit=1)[0]
        if dep_name in members and dep_name not in found:
            found |= workspace_deps(dep_name, members)
    return found


# --- static checks ----------------------------------------------------------------------------


def test_one_dockerfile_with_a_target_per_service() -> None:
    assert not list(REPO.glob("services/*/Dockerfile")), "the images are built from the root Dockerfile"
    _, stages = parse_dockerfile(DOCKERFILE)
    names = [s.name for s in stages]
    assert set(SERVICES) <= set(names)
    assert names[-1] == "api", "a build without --target gives the API"
    # skaffold builds the same targets from the same file.
    skaffold = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    artifacts = list(skaffold["build"]["artifacts"])
    for profile in skaffold.get("profiles", []):
        artifacts += [p["value"] for p in profile.get("patches", []) if p["path"] == "/build/artifacts/-"]
    targets = {
        a["image"]: (a["context"], a["docker"]["dockerfile"], a["docker"]["target"]) for a in artifacts
    }
    assert targets == {f"llm-stream-{s}": (".", "Dockerfile", s) for s in SERVICES}


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_follows_the_rules(service: str) -> None:
    args, stages = parse_dockerfile(DOCKERFILE)
    members = member_dirs()
    package = tomllib.loads((REPO / f"services/{service}/pyproject.toml").read_text())["project"]["name"]

    # Pinned defaults: an exact Python patch release on a named Debian, an exact uv release
    # from PyPI (the one uv.lock was written with here). Every stage starts from PYTHON_IMAGE
    # or from another stage, so one build argument moves the whole file to another base.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", args["PYTHON_IMAGE"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["UV_VERSION"])
    stage_names = {s.name for s in stages}
    assert all(s.base == args["PYTHON_IMAGE"] or s.base in stage_names for s in stages)
    uv_stage = lineage(stages, "uv")
    assert any('"uv==${UV_VERSION}"' in rest for i, rest in instructions(uv_stage) if i == "RUN")

    build = instructions(lineage(stages, f"build-{service}"))
    runs = [n for n, (i, _) in enumerate(build) if i == "RUN"]
    assert len(runs) == 2, "one dependency sync, one code sync"
    build_env: dict[str, str] = {}
    for i, rest in build:
        if i == "ENV":
            build_env |= env_pairs(rest)
    assert build_env["UV_COMPILE_BYTECODE"] == "1" and build_env["UV_LINK_MODE"] == "copy"

    def copied(part: list[tuple[str, str]]) -> set[str]:
        return {
            w for i, rest in part if i == "COPY" and "--from=" not in rest for w in shlex.split(rest)[:-1]
        }

    # Dependencies in their own layer: the lock and every member's pyproject.toml (uv reads
    # the whole workspace), then a sync without the workspace members.
    manifests = copied(build[: runs[0]])
    expected = {"pyproject.toml", "uv.lock"} | {
        str((m / "pyproject.toml").relative_to(REPO)) for m in members.values()
    }
    assert manifests == expected
    # Then exactly this service and the workspace libraries it imports, and a non-editable sync.
    code = copied(build[runs[0] + 1 : runs[1]])
    assert code == {str(members[m].relative_to(REPO)) for m in workspace_deps(package, members)}
    deps_sync, code_sync = (
        [w for w in shlex.split(build[n][1]) if not w.startswith("--mount=")] for n in runs
    )
    for sync in (deps_sync, code_sync):
        assert sync[:2] == ["uv", "sync"] and {"--frozen", "--no-dev"} <= set(sync)
        assert sync[sync.index("--package") + 1] == package
    assert "--no-install-workspace" in deps_sync and "--no-editable" in code_sync

    # Final stage: only the virtualenv, a numeric non-root user, an exec-form entry point.
    final_chain = lineage(stages, service)
    assert final_chain[0].base == args["PYTHON_IMAGE"], "the final stage does not carry the build tools"
    final_instructions = instructions(final_chain)
    final = dict(final_instructions)
    assert [i for i, _ in final_instructions if i in ("RUN", "ADD")] == []
    assert [r for i, r in final_instructions if i == "COPY"] == [
        f"--from=build-{service} /app/venv /app/venv"
    ]
    assert final["USER"] == "10001:10001"
    entrypoint = json.loads(final["ENTRYPOINT"])
    scripts = tomllib.loads((REPO / f"services/{service}/pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == [next(iter(scripts))]
    assert "CMD" not in final and final.get("STOPSIGNAL", "SIGTERM") == "SIGTERM"


def test_dockerignore_keeps_the_context_small_and_sufficient() -> None:
    context = build_context(dockerignore())
    assert {"pyproject.toml", "uv.lock", "services/api/pyproject.toml"} <= context
    assert any(f.startswith("libs/mqcommon/src/mqcommon/") for f in context)
    for unwanted in (".venv/", ".git/", "tests/", "deploy/", "bench/", ".tools/", "docs/"):
        assert not any(f.startswith(unwanted) for f in context), unwanted
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in context)


# --- replayed builds, started ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def wait_listening(port: int, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode} before listening:\n{output(process)}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail(f"nothing listened on {port} within {seconds} s")


def output(process: subprocess.Popen) -> str:
    """The end of what the process wrote (it has exited); closes the pipe."""
    out, _ = process.communicate()
    return out[-4000:]


def stop(process: subprocess.Popen, seconds: float = 20) -> tuple[int, str]:
    """SIGTERM, as the kubelet sends it; the exit code and the output."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"did not stop within {seconds} s of SIGTERM:\n{out[-4000:]}")
    return process.returncode, out[-4000:]


@pytest.fixture(scope="module")
def context() -> set[str]:
    return build_context(dockerignore())


def probe_paths(name: str) -> dict[str, str]:
    c = container(component(helm_template(*EXTERNAL), "Deployment", name))
    return {p: c[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe", "startupProbe") if p in c}


@pytest.mark.parametrize("service", SERVICES)
def test_image_build_replayed_and_entry_point_started(
    service: str, context: set[str], tmp_path: Path
) -> None:
    env = replay_build_stage(service, tmp_path, context)
    venv = tmp_path / env["UV_PROJECT_ENVIRONMENT"].lstrip("/")
    _, stages = parse_dockerfile(DOCKERFILE)
    final_instructions = instructions(lineage(stages, service))
    final = dict(final_instructions)
    final_env: dict[str, str] = {}
    for i, rest in final_instructions:
        if i == "ENV":
            final_env |= env_pairs(rest)
    (script,) = json.loads(final["ENTRYPOINT"])
    package = {"api": "llm_stream_api", "worker": "llm_stream_worker", "mockllm": "llm_stream_mockllm"}

    # Installed as wheels: nothing points back into the source tree the image does not keep.
    site = next(venv.glob("lib/python3*/site-packages"))
    assert (site / package[service] / "__init__.py").is_file()
    for pth in site.glob("*.pth"):
        assert str(tmp_path / "src") not in pth.read_text(), f"editable install: {pth.name}"
    assert not list(site.glob("*test*/**/conftest.py")), "tests ended up in the image"

    # The runtime ENV of the final stage, then what the pod adds.
    run_env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "SYSTEMROOT")}
    run_env |= final_env | {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    run_env["HOME"] = str(tmp_path)
    unreachable_broker = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    port = free_port()
    if service == "api":
        run_env |= {
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "RABBIT_MQ": unreachable_broker,
            "LOG_FORMAT": "console",
        }
    elif service == "worker":
        run_env |= {
            "METRICS_PORT": str(port),
            "METRICS_HOST": "127.0.0.1",
            "RABBIT_MQ": unreachable_broker,
            "LOG_FORMAT": "console",
        }
    else:
        run_env |= {"MOCK_PORT": str(port), "MOCK_HOST": "127.0.0.1"}

    # Every module the entry point loads, imported with only the image's packages.
    modules = {
        "api": "llm_stream_api.app",
        "worker": "llm_stream_worker.__main__",
        "mockllm": "llm_stream_mockllm.__main__",
    }
    import_check = subprocess.run(
        [str(venv / "bin" / "python"), "-c", f"import {modules[service]}"],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert import_check.returncode == 0, import_check.stderr

    process = subprocess.Popen(
        [str(venv / "bin" / script)],
        env=run_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_listening(port, process)
        if service in ("api", "worker"):
            probes = probe_paths(service)
            # Liveness never depends on the broker; readiness reports it (503 while unreachable).
            assert http_get(f"http://127.0.0.1:{port}{probes['livenessProbe']}") == 200
            assert http_get(f"http://127.0.0.1:{port}{probes['readinessProbe']}") in (200, 503)
            assert http_get(f"http://127.0.0.1:{port}/metrics") == 200
    finally:
        code, out = stop(process)
    # SIGTERM to the entry point (PID 1 in the pod) ends it cleanly. uvicorn re-raises the
    # signal once it has shut down, so "killed by SIGTERM" after a logged shutdown is clean too.
    assert code == 0 or (code == -signal.SIGTERM and "shutdown complete" in out.lower()), out
