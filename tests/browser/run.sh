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

STAGE=tests/browser/run.sh
# shellcheck source=../../scripts/lib/stage.sh
. "$ROOT/scripts/lib/stage.sh"

export GATEWAY_BIN="${GATEWAY_BIN:-$ROOT/target/debug/gateway}"
need_gateway_and_redis
need_node20
need_chromium

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
