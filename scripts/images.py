"""Build the three images with podman from the repository's Dockerfile, cached by their inputs.

    python3 scripts/images.py build [--force]    # what `make images` runs
    python3 scripts/images.py sizes [--write]    # their sizes (--write: into docs/deploy.md)

Every image is tagged ``localhost/llm-stream-<service>:dev``, and also
``:inputs-<digest>`` with a digest of its inputs: the Dockerfile, the build arguments, the base
image and the files of the build context (the repository filtered by .dockerignore) that its
build stages copy. When
``:dev`` is the image of the current inputs' tag, its build is skipped; otherwise podman builds
it, reusing its own layer cache (the dependency layers change only with uv.lock and the
pyproject.toml files).

Base images come from scripts/containers.sh (Debian's python3 on a debootstrapped bookworm);
set PYTHON_IMAGE to build from another one (for example python:3.11.15-slim-bookworm, where a
registry is reachable). Standard library only: runs with the system python3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONTAINERS_SH = REPO / "scripts" / "containers.sh"
SERVICES = ("api", "worker", "mockllm")
TAG = "dev"


def image_name(service: str) -> str:
    return f"localhost/llm-stream-{service}:{TAG}"


def fail(message: str) -> None:
    print(f"images: {message}", file=sys.stderr)
    raise SystemExit(1)


# --- the build context, as the engine sends it -----------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: "*" and "?" stay within one path segment."""
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


def _rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern_regex(os.path.normpath(line.lstrip("!").strip().strip("/")))))
    return rules


def context_files() -> list[str]:
    """Repository-relative files of the build context (Docker's .dockerignore semantics: the
    last rule matching a path or one of its parents decides)."""
    rules = _rules()
    reincluded = [regex.pattern for negate, regex in rules if negate]

    def excluded(relative: str) -> bool:
        parts = relative.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for negate, regex in rules:
            if any(regex.match(c) for c in candidates):
                result = not negate
        return result

    def prunable(relative: str) -> bool:
        # An excluded folder that no "!" rule reaches into (.git, .venv, node_modules, ...).
        return excluded(relative) and not any(p.startswith(re.escape(relative + "/")) for p in reincluded)

    files = []
    for dirpath, dirnames, filenames in os.walk(REPO):
        rel_dir = Path(dirpath).relative_to(REPO).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [d for d in dirnames if not prunable(prefix + d)]
        files += [prefix + name for name in filenames if not excluded(prefix + name)]
    return sorted(files)


def build_args() -> dict[str, str]:
    return {"PYTHON_IMAGE": os.environ.get("PYTHON_IMAGE", "localhost/python3:bookworm")}


def copied_paths(service: str) -> list[str]:
    """Context paths the COPY lines of `build-<service>` and the stages it is built from name."""
    stages: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text()).splitlines():
        words = line.split()
        if len(words) == 4 and words[0].upper() == "FROM" and words[2].upper() == "AS":
            current = words[3]
            stages[current] = (words[1], [])
        elif (
            current
            and words
            and words[0].upper() == "COPY"
            and not any(w.startswith("--from=") for w in words)
        ):
            stages[current][1].extend(w for w in words[1:-1] if not w.startswith("--"))
    paths, stage = [], f"build-{service}"
    while stage in stages:
        base, copied = stages[stage]
        paths += copied
        stage = base
    if not paths:
        fail(f"Dockerfile: no stage build-{service} copying from the context")
    return paths


def inputs_digest(service: str, base_id: str) -> str:
    """A digest of what the image is made of: the Dockerfile, the build arguments, the base
    image and the context files its build stages copy."""
    digest = hashlib.sha256()
    digest.update(f"target={service}\nbase={base_id}\n".encode())
    digest.update(json.dumps(build_args(), sort_keys=True).encode())
    paths = [p.rstrip("/") for p in copied_paths(service)]
    used = [f for f in context_files() if any(f == p or f.startswith(p + "/") for p in paths)]
    for relative in ["Dockerfile", *used]:
        digest.update(relative.encode() + b"\0" + (REPO / relative).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


# --- podman --------------------------------------------------------------------------------------


def podman(*args: str, capture: bool = True, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(CONTAINERS_SH), "podman", *args],
        capture_output=capture,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        fail(f"`podman {' '.join(args)}` exited {result.returncode}:\n{result.stderr or ''}")
    return result


def image_id(name: str) -> str | None:
    result = podman("image", "inspect", "--format", "{{.Id}}", name, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def inputs_tag(service: str, digest: str) -> str:
    return f"localhost/llm-stream-{service}:inputs-{digest}"


def up_to_date(service: str, digest: str) -> bool:
    """The image tagged :dev is the one built from these inputs."""
    built = image_id(inputs_tag(service, digest))
    return built is not None and built == image_id(image_name(service))


def record_inputs(service: str, digest: str) -> None:
    """Tag the image with its inputs digest, and drop the tags of earlier inputs. (A label would
    not do: buildah reuses a cached image whole, with the label of the build that made it.)"""
    repository = f"localhost/llm-stream-{service}"
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", repository, check=False).stdout
    for tag in listed.split():
        if tag.startswith(f"{repository}:inputs-") and tag != inputs_tag(service, digest):
            # Only that name; the image goes too when no other name or container holds it.
            podman("rmi", tag, check=False)
    podman("tag", image_name(service), inputs_tag(service, digest))


def image_size(name: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


def prepare_base() -> str:
    """The base image (made locally unless PYTHON_IMAGE names another); returns its id."""
    subprocess.run([str(CONTAINERS_SH), "install"], check=True)
    base = build_args()["PYTHON_IMAGE"]
    if base == "localhost/python3:bookworm":
        subprocess.run([str(CONTAINERS_SH), "python", "bookworm"], check=True, stdout=subprocess.DEVNULL)
    result = podman("image", "inspect", "--format", "{{.Id}}", base, check=False)
    if result.returncode != 0:
        fail(f"base image {base} is not present and no registry can be reached: build it or pull it first")
    return result.stdout.strip()


def build(force: bool = False) -> dict[str, float]:
    """Build (or reuse) every image; returns the seconds each build took (0 when reused)."""
    base_id = prepare_base()
    took = {}
    for service in SERVICES:
        name = image_name(service)
        digest = inputs_digest(service, base_id)
        if not force and up_to_date(service, digest):
            print(f"images: {name} is up to date (inputs {digest})", file=sys.stderr)
            took[service] = 0.0
            continue
        print(f"images: building {name} (inputs {digest})", file=sys.stderr)
        args = [f"--build-arg={k}={v}" for k, v in build_args().items()]
        # The machine's trust store for the RUN steps (pip, uv), so a TLS-inspecting proxy
        # that the host trusts is trusted by the build too; the images do not keep it.
        bundle = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
        if bundle.is_file():
            args.append(f"--volume={bundle.resolve()}:/etc/ssl/certs/ca-certificates.crt:ro")
        started = time.monotonic()
        result = podman(
            "build",
            "--network=host",
            "--pull=never",
            "--layers",
            f"--target={service}",
            f"--tag={name}",
            *args,
            "--file",
            str(REPO / "Dockerfile"),
            str(REPO),
            capture=False,
            check=False,
        )
        if result.returncode != 0:
            fail(
                f"building {name} failed (output above). Without network to PyPI and Debian the "
                "build cannot install uv or the dependencies; see scripts/containers.sh for the setup."
            )
        record_inputs(service, digest)
        took[service] = time.monotonic() - started
    return took


def sizes_table() -> str:
    sizes = " | ".join(f"{image_size(image_name(s)) / 1e6:.0f} MB" for s in SERVICES)
    return "\n".join(
        [
            "| | " + " | ".join(SERVICES) + " |",
            "|---|" + "--:|" * len(SERVICES),
            f"| image size (`podman image inspect`) | {sizes} |",
        ]
    )


SIZES_BEGIN, SIZES_END = "<!-- image-sizes: scripts/images.py sizes --write -->", "<!-- /image-sizes -->"


def write_sizes(doc: Path) -> None:
    """Replace the block between the image-sizes markers of `doc` with the current table."""
    text = doc.read_text()
    begin, end = text.find(SIZES_BEGIN), text.find(SIZES_END)
    if begin < 0 or end < begin:
        fail(f"{doc}: no {SIZES_BEGIN} ... {SIZES_END} block to write the sizes into")
    doc.write_text(text[: begin + len(SIZES_BEGIN)] + "\n" + sizes_table() + "\n" + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build_parser = sub.add_parser("build", help="build the images (skipped when their inputs are unchanged)")
    build_parser.add_argument("--force", action="store_true", help="build even when the inputs are unchanged")
    sizes_parser = sub.add_parser("sizes", help="print the images' sizes")
    sizes_parser.add_argument(
        "--write", action="store_true", help="also write them into docs/deploy.md (between its markers)"
    )
    args = parser.parse_args()
    if args.command == "build":
        took = build(force=args.force)
        for service, seconds in took.items():
            state = f"built in {seconds:.0f} s" if seconds else "reused"
            print(f"images: {image_name(service)}: {state}", file=sys.stderr)
    print(sizes_table())
    if args.command == "sizes" and args.write:
        write_sizes(REPO / "docs" / "deploy.md")


if __name__ == "__main__":
    main()
