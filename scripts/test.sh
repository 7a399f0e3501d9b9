#!/usr/bin/env bash
# Install the test dependencies, then run the whole suite with pytest. Extra arguments go
# to pytest (e.g. -k monitor).
#
# Besides requirements-dev.txt, the tests use real servers from Debian's packages, which
# this installs with apt when they are missing: chromium (the browser tests; Playwright
# cannot download its own browser here), redis-server and postgresql (shared state across
# replicas; the tests start their own on free loopback ports, in temporary directories),
# and nginx (checks the deployment's proxy config with `nginx -t`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="none"; fi
  if [ "$SUDO" != "none" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing with apt: ${missing[*]}" >&2
    $SUDO apt-get update -qq
    # No service is started by the packages' own scripts here: the tests start their own.
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null && $SUDO chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    $SUDO rm -f /usr/sbin/policy-rc.d
  else
    echo "note: ${missing[*]} missing and cannot be installed here; the tests that need them will be skipped" >&2
  fi
fi
exec "$PYTHON" -m pytest "$@"
