# Shared by the test stages that scripts/test runs (tests/browser/run.sh,
# tests/pusher/run.sh, clients/python/run-tests.sh): sourced, never run.
# The caller sets STAGE (its path, for messages) before sourcing.
#
#   die MSG...             print "STAGE: MSG" to stderr and exit 1
#   as_root CMD...         run CMD as root (directly, or through sudo)
#   need_gateway_and_redis GATEWAY_BIN must be an executable, redis-server on PATH
#   need_node20            node and npm on PATH, Node 20 or newer
#   need_chromium          $CHROMIUM (default /usr/bin/chromium), apt-get installed when missing

die() {
    printf '%s: %s\n' "${STAGE:-stage}" "$*" >&2
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

need_gateway_and_redis() {
    [ -x "$GATEWAY_BIN" ] || die "no gateway binary at $GATEWAY_BIN (run: cargo build -p gateway)"
    command -v redis-server >/dev/null 2>&1 || die "redis-server not found (scripts/test installs it)"
}

need_node20() {
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 ||
        die "node and npm not found: install Node.js 20 or newer"
    local major
    major="$(node -p 'process.versions.node.split(".")[0]')"
    [ "$major" -ge 20 ] || die "Node.js $(node --version) is too old: need 20 or newer"
}

need_chromium() {
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
}
