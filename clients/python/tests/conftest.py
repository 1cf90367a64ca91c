"""Fixtures: one single node and one 2-node cluster (on a fresh
redis-server, with a key prefix of its own) per test session, shared by the
tests, which isolate themselves with unique channel and user names
(:func:`harness.unique`). Tests that kill or freeze a gateway start their
own. Every process is killed at session end.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import API_KEY, JWT_SECRET, WEBHOOK_SECRET, Gateway, Redis, WebhookSink, WsClient, unique  # noqa: E402

from gateway_client import AsyncClient, Client, mint_token  # noqa: E402


@dataclass
class Target:
    """A deployment under test: the SDK talks to ``api``; WebSocket clients
    connect to ``ws`` (the other node on the cluster, so every delivery
    crosses nodes)."""

    name: str
    api: str
    ws: str
    ws_all: List[str]
    nodes: List[Gateway] = field(default_factory=list)


@pytest.fixture(scope="session")
def sink() -> Iterator[WebhookSink]:
    s = WebhookSink()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def single(sink: WebhookSink) -> Iterator[Gateway]:
    gw = Gateway(
        "single",
        {
            "GATEWAY_NODE_ID": "s1",
            "GATEWAY_API_KEY": API_KEY,
            "GATEWAY_JWT_SECRET": JWT_SECRET,
            "GATEWAY_WEBHOOK_URL": sink.url,
            "GATEWAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "GATEWAY_WEBHOOK_BATCH_MAX_WAIT_MS": "0",
        },
    )
    yield gw
    gw.kill()


@pytest.fixture(scope="session")
def redis() -> Iterator[Redis]:
    r = Redis()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def cluster(redis: Redis) -> Iterator[List[Gateway]]:
    prefix = unique("pysdk")
    nodes: List[Gateway] = []
    try:
        for n in (1, 2):
            nodes.append(
                Gateway(
                    f"cluster-n{n}",
                    {
                        "GATEWAY_NODE_ID": f"n{n}",
                        "GATEWAY_API_KEY": API_KEY,
                        "GATEWAY_JWT_SECRET": JWT_SECRET,
                        "GATEWAY_REDIS_URL": redis.url,
                        "GATEWAY_REDIS_PREFIX": prefix,
                    },
                )
            )
        yield nodes
    finally:
        for gw in nodes:
            gw.kill()


@pytest.fixture(params=["single", "cluster"])
def gw(request: pytest.FixtureRequest) -> Target:
    if request.param == "single":
        node = request.getfixturevalue("single")
        return Target("single", node.http, node.ws, [node.ws], [node])
    nodes = request.getfixturevalue("cluster")
    return Target("cluster", nodes[0].http, nodes[1].ws, [n.ws for n in nodes], nodes)


@pytest.fixture
def client(gw: Target) -> Iterator[Client]:
    with Client(gw.api, API_KEY) as c:
        yield c


@pytest.fixture
async def aclient(gw: Target) -> Any:
    async with AsyncClient(gw.api, API_KEY) as c:
        yield c


@pytest.fixture
def ws(gw: Target) -> Iterator[Callable[..., WsClient]]:
    """``ws(user, node=-1, **claims)``: a connected WebSocket client with a
    minted token (``user=None``: no token, anonymous)."""
    opened: List[WsClient] = []

    def open_(user: Any = "u", node: int = -1, **claims: Any) -> WsClient:
        token = mint_token(JWT_SECRET, user, **claims) if user else None
        c = WsClient(gw.ws_all[node] if node != -1 else gw.ws, token)
        opened.append(c)
        return c

    yield open_
    for c in opened:
        c.close()
