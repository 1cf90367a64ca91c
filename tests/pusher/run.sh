#!/usr/bin/env bash
# Pusher protocol compatibility, a stage of scripts/test (after the browser
# stage): the clients Pusher users use, unchanged but for host and port,
# against a local 2-node gateway cluster on a real redis-server:
#   - pusher-js (Node build) and the official `pusher` server library:
#     channels, presence, client events, users (node.test.mjs), the REST API
#     and its refusals (rest.test.mjs), webhooks (webhooks.test.mjs),
#     reconnecting after a node is killed (reconnect.test.mjs);
#   - the wire format with a bare WebSocket (wire.test.mjs); configuration:
#     one app from GATEWAY_PUSHER_APP_*, exit 64 on bad settings,
#     user_authentication (config.test.mjs);
#   - Laravel Echo on pusher-js (echo.test.mjs);
#   - pusher-js's browser build in headless Chromium (chromium.test.mjs).
#
# Installs what is missing: Chromium (Debian's `chromium` via apt-get) and the
# node packages (`npm ci` in tests/pusher). Needs Node 20+ with npm,
# redis-server, and the gateway binary: $GATEWAY_BIN, else
# ${CARGO_TARGET_DIR:-target}/debug/gateway. Every step is bounded by a
# timeout. Logs: target/test-logs/pusher/; screenshots: target/pusher-artifacts/.
#
#   tests/pusher/run.sh                    # every file
#   tests/pusher/run.sh rest.test.mjs ...  # some
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

STAGE=tests/pusher/run.sh
# shellcheck source=../../scripts/lib/stage.sh
. "$ROOT/scripts/lib/stage.sh"

export GATEWAY_BIN="${GATEWAY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/gateway}"
need_gateway_and_redis
need_node20
need_chromium

echo "npm ci in tests/pusher"
(cd tests/pusher && timeout 90 npm ci --no-audit --no-fund --loglevel=error)

# Node 22+ has a global WebSocket (wire and config tests use it); Node 20 needs the flag.
ws_flag=()
node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' || ws_flag=(--experimental-websocket)

if [ "$#" -gt 0 ]; then
    files=("$@")
else
    files=(wire.test.mjs config.test.mjs node.test.mjs rest.test.mjs webhooks.test.mjs echo.test.mjs reconnect.test.mjs chromium.test.mjs)
fi
echo "pusher compatibility tests (tests/pusher): ${files[*]}"
# One file at a time: each starts its own redis-server and two gateways.
# --test-force-exit: pusher-js's bundled faye-websocket arms a 30 s timer when
# it closes a socket the server already closed (4009, 4001), which would keep
# each file's process alive for 30 s after its last test; every child process
# has been stopped by then (the after hooks, and the harness's exit handler).
(cd tests/pusher && timeout 240 node "${ws_flag[@]}" --no-warnings --test --test-concurrency=1 \
    --test-force-exit --test-timeout=120000 "${files[@]}")
echo "logs: ${CARGO_TARGET_DIR:-$ROOT/target}/test-logs/pusher/, screenshots: ${CARGO_TARGET_DIR:-$ROOT/target}/pusher-artifacts/"
