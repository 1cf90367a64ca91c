"""Test harness: real ``gateway`` and ``redis-server`` processes, a real
webhook sink, a WebSocket client, and a bounded polling helper.

Every process listens on 127.0.0.1 on a port the OS picks (the gateway
binds port 0 and prints ``gateway listening on ADDR``; redis-server gets a
port freed by the OS, retried on a race) and is killed and reaped at
teardown (:func:`kill_all` also runs at interpreter exit). Nothing waits
with a bare sleep: :func:`eventually` polls a condition under a deadline.
Gateway stderr goes to ``<target>/test-logs/python-sdk/<name>-<pid>-<n>.log``.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, TypeVar

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[3]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
LOG_DIR = TARGET / "test-logs" / "python-sdk"

API_KEY = "test-api-key-0123456789"
JWT_SECRET = "test-jwt-secret-0123456789abcdef"
WEBHOOK_SECRET = "test-webhook-secret-0123456789"

#: Namespaces every test gateway gets.
CONFIG = """
[default_namespace]
client_publish = true

[namespaces.chat]
presence = true
join_leave = true
client_publish = true

[namespaces.hist]
history_size = 100
history_ttl_secs = 300
client_publish = true

[namespaces.task]
history_size = 1000
history_ttl_secs = 3600

[namespaces.plain]
"""

START_TIMEOUT = 30.0
T = TypeVar("T")

_live: "set[subprocess.Popen[bytes]]" = set()
_counter = itertools.count(1)


def gateway_bin() -> Path:
    env = os.environ.get("GATEWAY_BIN")
    return Path(env) if env else TARGET / "debug" / "gateway"


def unique(prefix: str = "t") -> str:
    """A name no other test uses (channels, users, key prefixes)."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def eventually(cond: Callable[[], Optional[T]], what: str, timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll ``cond`` until it returns something truthy (returned) or raise
    ``AssertionError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = cond()
        except AssertionError as e:  # a cond may assert to say "not yet"
            value, last = None, e
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what} (last: {last!r})")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _track(proc: "subprocess.Popen[bytes]") -> None:
    _live.add(proc)


def _kill(proc: "subprocess.Popen[bytes]") -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    _live.discard(proc)


@atexit.register
def kill_all() -> None:
    """Kill every process the harness started that is still running."""
    for proc in list(_live):
        _kill(proc)


class Redis:
    """A throw-away redis-server on a free port, without persistence."""

    def __init__(self) -> None:
        self.dir = LOG_DIR / f"redis-{os.getpid()}-{next(_counter)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        last = ""
        for _ in range(5):
            self.port = free_port()
            log = open(self.dir / "redis.log", "ab")
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
            log.close()
            _track(self.proc)
            try:
                eventually(lambda: self.proc.poll() is not None or self.ping(), "redis-server answers PING", 10)
            except AssertionError as e:
                last = str(e)
            if self.proc.poll() is None and self.ping():
                return
            _kill(self.proc)  # lost the port race, or did not start
            last = last or (self.dir / "redis.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"could not start redis-server: {last}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        _kill(self.proc)


class Gateway:
    """One gateway process. ``env``: extra ``GATEWAY_*`` settings."""

    def __init__(self, name: str, env: Optional[Dict[str, str]] = None, config: str = CONFIG) -> None:
        bin_ = gateway_bin()
        if not bin_.exists():
            raise RuntimeError(f"gateway binary not found at {bin_} (run `cargo build -p gateway`, or set GATEWAY_BIN)")
        self.name = name
        n = next(_counter)
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{name}-{os.getpid()}-{n}.log"
        config_path = LOG_DIR / f"{name}-{os.getpid()}-{n}.toml"
        config_path.write_text(config)
        full = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        full.update({"GATEWAY_LISTEN": "127.0.0.1:0", "GATEWAY_LOG": "info", "GATEWAY_CONFIG": str(config_path)})
        full.update(env or {})
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(bin_)], env=full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log
        )
        log.close()
        _track(self.proc)
        self.addr = self._wait_listening()
        self.http = f"http://{self.addr}"
        self.ws = f"ws://{self.addr}/ws"

    def _wait_listening(self) -> str:
        found: Dict[str, str] = {}
        seen: List[str] = []
        done = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace").strip()
                seen.append(line)
                if line.startswith("gateway listening on ") and "addr" not in found:
                    found["addr"] = line.split()[-1]
                    done.set()
            done.set()  # stdout closed: the process exited

        self._reader = threading.Thread(target=read, daemon=True, name=f"{self.name}-stdout")
        self._reader.start()
        if not done.wait(START_TIMEOUT) or "addr" not in found:
            self.kill()
            raise RuntimeError(
                f"gateway {self.name} did not print its listening line within {START_TIMEOUT} s; "
                f"stdout: {seen}; stderr ({self.log_path}):\n{self.log_tail()}"
            )
        return found["addr"]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def freeze(self, frozen: bool = True) -> None:
        """SIGSTOP (``frozen``) or SIGCONT: the sockets stay open, nothing answers.
        Returns once every thread is stopped (SIGSTOP is asynchronous)."""
        self.proc.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)
        if frozen:
            eventually(self._all_stopped, f"gateway {self.name} stopped", 5)

    def _all_stopped(self) -> bool:
        task_dir = Path(f"/proc/{self.proc.pid}/task")
        for t in task_dir.iterdir():
            try:
                stat = (t / "stat").read_text()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2] not in "tT":
                return False
        return True

    def kill(self) -> None:
        _kill(self.proc)
        # The reader sees EOF once the process is gone; then close the pipe.
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.join(timeout=5)
        if self.proc.stdout is not None and not (reader and reader.is_alive()):
            self.proc.stdout.close()


# --- webhook sink -----------------------------------------------------------


class WebhookSink:
    """An HTTP server on a free port that records every POST (headers with
    lowercase names, raw body) and answers 200."""

    def __init__(self) -> None:
        self.received: List[Dict[str, Any]] = []
        self.lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with sink.lock:
                    sink.received.append({"headers": headers, "body": body, "at": time.time()})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="webhook-sink")
        self.thread.start()

    def requests(self) -> List[Dict[str, Any]]:
        with self.lock:
            return list(self.received)

    def find_event(self, pred: Callable[[Dict[str, Any]], bool]) -> Optional[Dict[str, Any]]:
        """The first recorded request holding an event matching ``pred``."""
        for req in self.requests():
            try:
                events = json.loads(req["body"]).get("events", [])
            except ValueError:
                continue
            if any(pred(e) for e in events):
                return req
        return None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- WebSocket client -------------------------------------------------------


class WsClient:
    """A real WebSocket client of the gateway (the ``websockets`` package)."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 10.0) -> None:
        full = f"{url}?token={token}" if token else url
        # Entered as a context manager: newer websockets want that for connect().
        self._cm = connect(full, open_timeout=timeout, close_timeout=2)
        self.conn: ClientConnection = self._cm.__enter__()
        self.frames: List[Dict[str, Any]] = []  # read but not yet consumed
        self.ids = itertools.count(1)
        self.welcome = self.expect(lambda f: f.get("type") == "welcome", "welcome")
        self.id: str = self.welcome["conn"]
        self.node: str = self.welcome["node"]

    def send(self, op: str, **fields: Any) -> int:
        rid = next(self.ids)
        self.conn.send(json.dumps({"op": op, "id": rid, **fields}))
        return rid

    def expect(self, pred: Callable[[Dict[str, Any]], bool], what: str, timeout: float = 10.0) -> Dict[str, Any]:
        """The first frame matching ``pred`` (earlier unmatched frames are kept)."""
        for i, f in enumerate(self.frames):
            if pred(f):
                return self.frames.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no frame {what} within {timeout} s; got {self.frames[-10:]}")
            try:
                raw = self.conn.recv(timeout=left)
            except TimeoutError:
                continue
            f = json.loads(raw)
            if pred(f):
                return f
            self.frames.append(f)

    def subscribe(self, channel: str, **fields: Any) -> Dict[str, Any]:
        rid = self.send("subscribe", channel=channel, **fields)
        reply = self.expect(lambda f: f.get("id") == rid, f"reply to subscribe {channel}")
        assert reply["type"] == "subscribed", reply
        return reply

    def message(self, channel: str, timeout: float = 10.0) -> Dict[str, Any]:
        """The next ``message`` of ``channel``."""
        return self.expect(lambda f: f.get("type") == "message" and f.get("channel") == channel,
                           f"message on {channel}", timeout)

    def closed(self, timeout: float = 10.0) -> Any:
        """Wait until the server closes the connection; returns its close frame."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection {self.id} not closed within {timeout} s")
            try:
                self.frames.append(json.loads(self.conn.recv(timeout=left)))
            except TimeoutError:
                continue
            except ConnectionClosed as e:
                return e.rcvd

    def close(self) -> None:
        try:
            self._cm.__exit__(None, None, None)
        except Exception:  # already closed by the server, or broken
            pass
