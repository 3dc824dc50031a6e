#!/usr/bin/env bash
# Install the Debian packages the tests need, when they are missing: RabbitMQ (the tests start
# a node of their own from it, never the machine's broker), Prometheus and promtool, Chromium,
# HAProxy, and Node.js with npm (the openai-node client).
# Idempotent: when everything is present it returns at once, without touching apt.
set -euo pipefail

missing=()
have() { command -v "$1" >/dev/null 2>&1; }

{ [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] || have rabbitmq-server; } || missing+=(rabbitmq-server)
{ have prometheus && have promtool; } || missing+=(prometheus)
{ have chromium || have chromium-browser; } || missing+=(chromium)
have curl || missing+=(curl)
{ have haproxy || [[ -x /usr/sbin/haproxy ]]; } || missing+=(haproxy)
have node || missing+=(nodejs)
have npm || missing+=(npm)

if ((${#missing[@]} == 0)); then
  exit 0
fi

if ! have apt-get; then
  echo "The tests need: ${missing[*]}. This is not a Debian/Ubuntu machine (no apt-get):" >&2
  echo "install them with your package manager, with the binaries on PATH, then run make test again." >&2
  exit 1
fi
sudo=()
if [[ $(id -u) != 0 ]]; then
  if have sudo; then sudo=(sudo); else
    echo "The tests need: ${missing[*]}. Install them as root: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

echo "installing the test tools: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Another apt run on the same machine holds the lock for a while: wait for it, do not fail.
apt=(apt-get -o DPkg::Lock::Timeout=600 -qq)
if ! "${sudo[@]}" "${apt[@]}" update; then
  echo "apt-get update failed: is the Debian mirror reachable from this machine?" >&2
  exit 1
fi
"${sudo[@]}" "${apt[@]}" install -y --no-install-recommends "${missing[@]}"
