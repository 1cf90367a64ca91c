#!/usr/bin/env bash
# Tests of the Python server SDK (clients/python) against real processes:
#
#   1. a venv in ${CARGO_TARGET_DIR:-<repo>/target}/python-venv with the
#      package (editable) and its test extras;
#   2. pytest: the real gateway binary ($GATEWAY_BIN, default
#      <target>/debug/gateway, built when missing) on a single node and a
#      2-node cluster over a real redis-server, real WebSocket clients and a
#      real webhook sink;
#   3. python -m build: sdist and wheel into <target>/python-dist;
#   4. a fresh venv with only the wheel installed runs the README's quick
#      start against a gateway (tests/smoke_quickstart.py).
#
# Installs python3-venv / redis-server with apt-get when missing (as root or
# through sudo). Every step is bounded by a timeout. Gateway logs:
# <target>/test-logs/python-sdk/.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
export GATEWAY_BIN="${GATEWAY_BIN:-$TARGET/debug/gateway}"
VENV="$TARGET/python-venv"
SMOKE_VENV="$TARGET/python-smoke-venv"
DIST="$TARGET/python-dist"
PYTHON="${PYTHON:-python3}"

START=$SECONDS
step() { printf -- '--- %s (%ds)\n' "$*" $((SECONDS - START)); }
STAGE=clients/python/run-tests.sh
# shellcheck source=../../scripts/lib/stage.sh
. "$ROOT/scripts/lib/stage.sh"

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "missing: $* -- no apt-get here, install it by hand"
    as_root apt-get -q update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends "$@"
}

step "prerequisites"
missing=()
command -v "$PYTHON" >/dev/null 2>&1 || missing+=(python3 python3-venv python3-pip)
if [ "${#missing[@]}" -eq 0 ] && ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv python3-pip)
fi
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt_install "${missing[@]}"
fi
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 9), sys.version' ||
    die "$PYTHON is older than 3.9"
if [ ! -x "$GATEWAY_BIN" ]; then
    [ "$GATEWAY_BIN" = "$TARGET/debug/gateway" ] || die "GATEWAY_BIN=$GATEWAY_BIN is not an executable"
    echo "building the gateway ($GATEWAY_BIN missing)"
    (cd "$ROOT" && timeout 1200 cargo build -q -p gateway)
fi
echo "$("$PYTHON" --version); $(redis-server --version | cut -d' ' -f1-3); GATEWAY_BIN=$GATEWAY_BIN"

step "venv $VENV with gateway-client[test]"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$VENV"
    timeout 120 "$PYTHON" -m venv "$VENV"
fi
# The editable install sees new source files by itself; reinstall only when
# pyproject.toml (dependencies, extras) changed.
STAMP="$VENV/.gateway-client-installed"
want="$(sha256sum "$HERE/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    timeout 300 "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$HERE[test]"
    echo "$want" >"$STAMP"
else
    echo "up to date (pyproject.toml unchanged)"
fi

step "pytest"
(cd "$HERE" && timeout 600 "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests)

step "python -m build into $DIST"
rm -rf "$DIST"
timeout 300 "$VENV/bin/python" -m build --no-isolation --outdir "$DIST" "$HERE" >"$TARGET/python-build.log" 2>&1 ||
    { tail -n 40 "$TARGET/python-build.log" >&2; die "python -m build failed (log: $TARGET/python-build.log)"; }
WHEEL="$(ls "$DIST"/gateway_client-*-py3-none-any.whl)"
ls "$DIST"

step "fresh venv $SMOKE_VENV with only the wheel; README quick start"
rm -rf "$SMOKE_VENV"
# Without its own pip (ensurepip is slow on a loaded machine): the test
# venv's pip installs into it (pip >= 22.3 has --python); else the usual way.
if timeout 120 "$PYTHON" -m venv --without-pip "$SMOKE_VENV" &&
    timeout 300 "$VENV/bin/python" -m pip --python "$SMOKE_VENV/bin/python" install -q \
        --disable-pip-version-check "$WHEEL"; then
    :
else
    echo "pip --python failed; a venv with its own pip instead"
    rm -rf "$SMOKE_VENV"
    timeout 120 "$PYTHON" -m venv "$SMOKE_VENV"
    timeout 300 "$SMOKE_VENV/bin/python" -m pip install -q --disable-pip-version-check "$WHEEL"
fi
"$SMOKE_VENV/bin/python" -c 'import gateway_client, httpx, jwt' || die "the wheel's install is incomplete"
(cd "$TARGET" && timeout 120 "$SMOKE_VENV/bin/python" "$HERE/tests/smoke_quickstart.py" "$ROOT" "$GATEWAY_BIN")

step "python SDK: all passed"
