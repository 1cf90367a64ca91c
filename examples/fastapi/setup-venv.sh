#!/usr/bin/env bash
# Creates or updates the FastAPI example's virtualenv and prints its path.
#
#   examples/fastapi/setup-venv.sh     # -> ${CARGO_TARGET_DIR:-<repo>/target}/fastapi-venv
#
# Needs Python 3.11+ (the pinned fastapi and starlette require it).
#
# FASTAPI_VENV overrides the location, PYTHON the interpreter (python3).
# Installs python3-venv with apt-get when the interpreter cannot create a
# venv (Debian ships venv/ensurepip separately). Skips pip when neither
# requirements.txt nor clients/python changed since the last install.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${FASTAPI_VENV:-${CARGO_TARGET_DIR:-$ROOT/target}/fastapi-venv}"
PY="${PYTHON:-python3}"

die() {
    printf 'examples/fastapi/setup-venv.sh: %s\n' "$*" >&2
    exit 1
}

[ -d "$ROOT/clients/python" ] || die "no SDK at clients/python"

apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "need $*, and there is no apt-get to install it"
    echo "installing $* (apt-get)" >&2
    local sudo_=()
    [ "$(id -u)" -eq 0 ] || sudo_=(sudo)
    "${sudo_[@]}" timeout 120 apt-get -q update >&2
    "${sudo_[@]}" env DEBIAN_FRONTEND=noninteractive timeout 300 \
        apt-get -q install -y --no-install-recommends "$@" >&2
}

command -v "$PY" >/dev/null 2>&1 || apt_install python3 python3-venv
command -v "$PY" >/dev/null 2>&1 || die "$PY not found: install Python 3.11 or newer"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$("$PY" --version 2>&1) is too old: the pinned fastapi needs Python 3.11 or newer (set PYTHON=python3.11)"

if [ ! -x "$VENV/bin/python" ]; then
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    if ! "$PY" -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        apt_install python3-venv
        "$PY" -m venv "$VENV" >&2 || die "$PY -m venv still fails after installing python3-venv"
    fi
fi

# What the install depends on: the requirements and the SDK's sources.
stamp="$(
    cd "$ROOT"
    {
        sha256sum examples/fastapi/requirements.txt
        find clients/python -type f \( -name '*.py' -o -name '*.toml' -o -name '*.md' -o -name '*.typed' \) \
            -not -path '*/tests/*' -not -path '*/__pycache__/*' -not -path '*/build/*' -print0 |
            sort -z | xargs -0 sha256sum
    } | sha256sum | cut -d' ' -f1
)"
if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$stamp" ]; then
    echo "pip install -r examples/fastapi/requirements.txt into $VENV" >&2
    # requirements.txt names the SDK as ../../clients/python: relative to
    # the current directory, so install from the example's folder.
    (cd "$HERE" && timeout 300 "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        --force-reinstall --no-deps ../../clients/python >&2 &&
        timeout 300 "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt >&2)
    echo "$stamp" >"$VENV/.installed"
fi
"$VENV/bin/python" -c 'import fastapi, uvicorn, gateway_client' || die "the venv at $VENV lacks fastapi, uvicorn or gateway_client"
echo "$VENV"
