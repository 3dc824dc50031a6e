"""A RabbitMQ 4 broker in a container, started through testcontainers' ``RabbitMqContainer``.

No registry is needed: the image is built here from ``rabbitmq4/Containerfile`` on a Debian 13
(trixie) base made by debootstrap (``scripts/containers.sh base trixie``), which packages
RabbitMQ 4.0 with Erlang 27. The image is tagged with a hash of its inputs (the Containerfile,
the broker's configuration and the base image's id) and reused while they are unchanged.

The container engine is podman's Docker-compatible socket (``scripts/containers.sh socket``),
unless ``DOCKER_HOST`` already names an engine. ``RABBITMQ_IMAGE`` names a ready-made image
instead of building one (for example ``rabbitmq:4-management`` where a registry is reachable).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from .broker import Broker, BrokerUnavailable

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_SH = ROOT / "scripts" / "containers.sh"
IMAGE_DIR = Path(__file__).resolve().parent / "rabbitmq4"
IMAGE_REPO = "localhost/llm-stream-test-rabbitmq"
BASE_SUITE = "trixie"
BASE_IMAGE = f"localhost/debian:{BASE_SUITE}"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
BUILD_TIMEOUT_S = float(os.environ.get("RABBITMQ_IMAGE_BUILD_TIMEOUT_S", "900"))
READY_TIMEOUT_S = float(os.environ.get("RABBITMQ_CONTAINER_READY_TIMEOUT_S", "120"))
LOCK_DIR = Path(os.environ.get("LLM_STREAM_CONTAINERS_STATE", "/tmp/llm-stream-containers"))

NO_ENGINE = (
    "TEST_BROKER=container needs a container engine, and podman is not installed.\n"
    "Run `scripts/containers.sh install` (as root; Debian's podman, buildah, runc, debootstrap), "
    "or set DOCKER_HOST to a Docker engine and RABBITMQ_IMAGE to a RabbitMQ 4 image with the "
    "management plugin (e.g. rabbitmq:4-management).\nWithout containers, run the suite on a "
    "local node: TEST_BROKER=node."
)

last_image_note: str | None = None
"""How the image of the run was had (built in N s, or reused), for the run's summary."""


def _containers(*args: str, timeout: float = BUILD_TIMEOUT_S) -> str:
    """``scripts/containers.sh ARGS``: its stdout; its stderr becomes the error on failure."""
    result = subprocess.run(
        ["bash", str(CONTAINERS_SH), *args], capture_output=True, text=True, timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise BrokerUnavailable(
            f"`scripts/containers.sh {' '.join(args)}` failed:\n{result.stderr.strip()}"
        )
    return result.stdout.strip()


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _inputs_digest(base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode())
    for path in sorted(IMAGE_DIR.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _mirror_reachable() -> bool:
    try:
        urllib.request.urlopen(f"{DEBIAN_MIRROR}/dists/{BASE_SUITE}/Release", timeout=15).close()
    except OSError:
        return False
    return True


@contextmanager
def _lock(name: str) -> Iterator[None]:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with (LOCK_DIR / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_image() -> str:
    """The RabbitMQ 4 test image's tag: reused when its inputs are unchanged, else built."""
    global last_image_note
    if shutil.which("podman") is None:
        raise BrokerUnavailable(NO_ENGINE)
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "scripts" / "containers.conf"))
    _containers("base", BASE_SUITE)  # debootstrap once; its errors say what is missing
    inspected = _podman("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE)
    if inspected.returncode != 0:
        raise BrokerUnavailable(f"{BASE_IMAGE} is missing after `containers.sh base`: {inspected.stderr}")
    tag = f"{IMAGE_REPO}:4.0-{_inputs_digest(inspected.stdout.strip())}"
    with _lock("rabbitmq4-image"):
        if _podman("image", "exists", tag).returncode == 0:
            last_image_note = "reused"
            return tag
        if not _mirror_reachable():
            raise BrokerUnavailable(
                f"Building the RabbitMQ 4 test image needs Debian's package mirror "
                f"({DEBIAN_MIRROR}, for `apt-get install rabbitmq-server`), and it does not "
                "answer from here. Restore the network (or set DEBIAN_MIRROR), or name a ready "
                "image with RABBITMQ_IMAGE."
            )
        began = time.monotonic()
        build = _podman(
            "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
            "--tag", tag, "--file", str(IMAGE_DIR / "Containerfile"), str(IMAGE_DIR),
            timeout=BUILD_TIMEOUT_S,
        )
        if build.returncode != 0:
            tail = "\n".join((build.stdout + build.stderr).splitlines()[-25:])
            raise BrokerUnavailable(
                f"Building the RabbitMQ 4 test image failed:\n{tail}\nThe build installs "
                f"Debian's rabbitmq-server from {DEBIAN_MIRROR} (network needed)."
            )
        last_image_note = f"built in {time.monotonic() - began:.0f} s"
        _remove_stale_images(keep=tag)
    return tag


def _remove_stale_images(keep: str) -> None:
    """Older builds of the test image (other input hashes) only take disk space."""
    listed = _podman("images", "--format", "{{.Repository}}:{{.Tag}}", IMAGE_REPO)
    for name in listed.stdout.split():
        if name != keep and name.startswith(f"{IMAGE_REPO}:"):
            _podman("rmi", name)


def _engine() -> None:
    """Point testcontainers at an engine: DOCKER_HOST if set, else podman's socket."""
    if not os.environ.get("DOCKER_HOST"):
        if shutil.which("podman") is None:
            raise BrokerUnavailable(NO_ENGINE)
        os.environ["DOCKER_HOST"] = _containers("socket", timeout=60)
        # The engine runs on this machine and publishes ports on it. (testcontainers would
        # otherwise take this machine for a container and look for a gateway address.)
        os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
    if shutil.which("podman") is not None:
        # testcontainers' reaper (ryuk) is an image from a registry; the fixture removes the
        # container itself.
        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")


START_ATTEMPTS = 3


@contextmanager
def rabbitmq_container() -> Iterator[Broker]:
    image = os.environ.get("RABBITMQ_IMAGE") or ensure_image()
    _engine()
    from testcontainers.community.rabbitmq import RabbitMqContainer

    # The readiness probe logs every refused connection while the broker boots.
    pika_logger = logging.getLogger("pika")
    pika_level = pika_logger.level
    pika_logger.setLevel(logging.CRITICAL)
    try:
        for attempt in range(1, START_ATTEMPTS + 1):
            container = RabbitMqContainer(image).with_exposed_ports(15672, 15692)
            try:
                container.start()
                break
            except Exception as exc:
                with contextlib.suppress(Exception):
                    logs = b"\n".join(part or b"" for part in container.get_logs()).decode(errors="replace")
                    exc.add_note(f"container log:\n{logs[-4000:]}")
                with contextlib.suppress(Exception):
                    container.stop()
                # The engine itself sometimes fails a start ("write child: broken pipe" from
                # runc): a new container gets another chance; the last failure is reported.
                if attempt == START_ATTEMPTS:
                    raise BrokerUnavailable(
                        f"The RabbitMQ container ({image}) did not start in {START_ATTEMPTS} attempts: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
    finally:
        pika_logger.setLevel(pika_level)
    try:
        host = container.get_container_host_ip()
        amqp = container.get_exposed_port(container.port)
        management = container.get_exposed_port(15672)
        prometheus = container.get_exposed_port(15692)
        user, password = container.username, container.password
        version = _wait_management(f"http://{host}:{management}", user, password)
        yield Broker(
            description=f"RabbitMQ {version}, container {image}"
            + (f" ({last_image_note})" if last_image_note else ""),
            amqp_url=f"amqp://{user}:{password}@{host}:{amqp}/",
            management_url=f"http://{user}:{password}@{host}:{management}",
            prometheus_target=f"{host}:{prometheus}",
            version=version,
        )
    finally:
        container.stop()


def _wait_management(base: str, user: str, password: str) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(timeout=2.0, trust_env=False, auth=(user, password)) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = client.get(f"{base}/api/overview")
                if response.status_code == 200:
                    return str(response.json()["rabbitmq_version"])
            if time.monotonic() > deadline:
                raise BrokerUnavailable(
                    f"the RabbitMQ container's management API at {base} did not answer within "
                    f"{READY_TIMEOUT_S:g}s (RABBITMQ_CONTAINER_READY_TIMEOUT_S)"
                )
            time.sleep(0.5)
