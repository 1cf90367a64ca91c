#!/usr/bin/env bash
# Browser-side tests, the last stage of scripts/test:
#   1. the client SDK's tests (clients/js, Node's test runner, real gateway);
#   2. /demo and /status end to end in headless Chromium on a 2-node cluster;
#   3. the FastAPI example (examples/fastapi) in Chromium on a 2-node cluster,
#      the app run by uvicorn from a venv that examples/fastapi/setup-venv.sh
#      makes at ${CARGO_TARGET_DIR:-target}/fastapi-venv (python3 needed;
#      python3-venv is installed via apt-get when missing).
#
# Installs what is missing: Chromium (Debian's `chromium` via apt-get) and the
# node packages (`npm ci` in clients/js and tests/browser). Needs Node 20+
# with npm, redis-server, and the gateway binary: $GATEWAY_BIN, else
# target/debug/gateway (scripts/test builds it and exports GATEWAY_BIN).
# Every step is bounded by a timeout. Screenshots: target/browser-artifacts/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

die() {
    printf 'tests/browser/run.sh: %s\n' "$*" >&2
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

export GATEWAY_BIN="${GATEWAY_BIN:-$ROOT/target/debug/gateway}"
[ -x "$GATEWAY_BIN" ] || die "no gateway binary at $GATEWAY_BIN (run: cargo build -p gateway)"
command -v redis-server >/dev/null 2>&1 || die "redis-server not found (scripts/test installs it)"

command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 ||
    die "node and npm not found: install Node.js 20 or newer"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || die "Node.js $(node --version) is too old: need 20 or newer"

export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
    command -v apt-get >/dev/null 2>&1 || die "no $CHROMIUM and no apt-get to install it"
    echo "installing chromium (apt-get)"
    as_root timeout 120 apt-get -q update
    as_root env DEBIAN_FRONTEND=noninteractive timeout 300 \
        apt-get -q install -y --no-install-recommends chromium
    [ -x "$CHROMIUM" ] || die "chromium still missing at $CHROMIUM after install"
fi
echo "$(node --version); npm $(npm --version); $("$CHROMIUM" --version 2>/dev/null | head -n1)"

for dir in clients/js tests/browser; do
    echo "npm ci in $dir"
    (cd "$dir" && timeout 90 npm ci --no-audit --no-fund --loglevel=error)
done

# Node 22+ has a global WebSocket; Node 20 needs the flag.
ws_flag=()
node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' || ws_flag=(--experimental-websocket)

echo "SDK tests (clients/js)"
(cd clients/js && timeout 120 node "${ws_flag[@]}" --no-warnings --test --test-concurrency=1 \
    test/dist.test.mjs test/client.test.mjs)

echo "browser tests (tests/browser)"
(cd tests/browser && timeout 120 node --test --test-concurrency=1 cluster.test.mjs)

echo "FastAPI example venv"
FASTAPI_VENV="$(timeout 600 examples/fastapi/setup-venv.sh)"
export FASTAPI_VENV
echo "browser tests of the FastAPI example (tests/browser)"
(cd tests/browser && timeout 180 node --test --test-concurrency=1 fastapi.test.mjs)
echo "screenshots: ${CARGO_TARGET_DIR:-$ROOT/target}/browser-artifacts/"
