"""Runs the README's quick start, as written, against a real gateway.

Meant for a fresh venv holding only the installed wheel (stdlib plus
gateway_client and its dependencies; no pytest). Starts the gateway binary
with the README's settings on a free port (``GATEWAY_LISTEN=127.0.0.1:0``,
the port read from its ``gateway listening on`` line), runs the README's
``quickstart`` code block with ``GATEWAY_URL`` pointing at it, checks what
it printed and what it published, and kills the gateway.

Usage: python smoke_quickstart.py <repo root> <gateway binary>
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import threading
from pathlib import Path


def main() -> int:
    root, gateway_bin = Path(sys.argv[1]), sys.argv[2]
    import gateway_client

    where = Path(gateway_client.__file__).resolve()
    if (root / "clients" / "python" / "src") in where.parents:
        print(f"smoke: gateway_client imported from the source tree ({where}), not the wheel", file=sys.stderr)
        return 1
    if not (where.parent / "py.typed").exists():
        print("smoke: the installed package has no py.typed", file=sys.stderr)
        return 1

    readme = (root / "clients" / "python" / "README.md").read_text()
    block = re.search(r"<!-- quickstart:begin -->\s*```python\n(.*?)```\s*<!-- quickstart:end -->", readme, re.S)
    if not block:
        print("smoke: no quickstart block in README.md", file=sys.stderr)
        return 1
    shell = re.search(r"```sh\n(GATEWAY_API_KEY=.*?)cargo run --release -p gateway\n```", readme, re.S)
    if not shell:
        print("smoke: no gateway start command in README.md", file=sys.stderr)
        return 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    for key, value in re.findall(r"(GATEWAY_[A-Z_]+)=(\S+)", shell.group(1)):
        env[key] = str(root / value) if key == "GATEWAY_CONFIG" else value
    env["GATEWAY_LISTEN"] = "127.0.0.1:0"

    log_dir = Path(os.environ.get("CARGO_TARGET_DIR") or root / "target") / "test-logs" / "python-sdk"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"smoke-{os.getpid()}.log", "ab")
    proc = subprocess.Popen([gateway_bin], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    try:
        found: dict = {}
        done = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode(errors="replace").strip()
                if line.startswith("gateway listening on "):
                    found["addr"] = line.split()[-1]
                    done.set()
            done.set()

        threading.Thread(target=read, daemon=True).start()
        if not done.wait(30) or "addr" not in found:
            print(f"smoke: the gateway did not start (log: {log.name})", file=sys.stderr)
            return 1
        os.environ["GATEWAY_URL"] = f"http://{found['addr']}"

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block.group(1), "README.md quickstart", "exec"), {"__name__": "__quickstart__"})
        text = out.getvalue()
        sys.stdout.write(text)
        for want in ("published, offset 1", "token for alice: ey",
                     "task:42 history: ['started', 'halfway', 'done']", "nodes: ['n"):
            if want not in text:
                print(f"smoke: the quick start did not print {want!r}", file=sys.stderr)
                return 1

        from gateway_client import Client

        with Client(os.environ["GATEWAY_URL"], api_key=env["GATEWAY_API_KEY"]) as gw:
            last = gw.history("task:42").messages[-1].data
            assert last["finished"] is True and isinstance(last["ts"], int), last
        print("smoke: README quick start OK")
        return 0
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
