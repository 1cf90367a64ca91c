"""The AsyncClient: every call against the real single node and cluster,
and its error paths."""

from __future__ import annotations

import pytest
from harness import unique

from gateway_client import AsyncClient, BadRequest, NotFound, Unauthorized


async def test_async_publish_send_and_subscriptions(aclient, ws, gw):
    user = unique("user")
    ch = unique("hist:")
    a, b = ws(user), ws(user)
    a.subscribe(ch)
    b.subscribe(ch)
    assert (await aclient.publish(ch, {"n": 1}, exclude=a.id)).offset == 1
    assert (await aclient.publish(ch, {"n": 2})).offset == 2
    assert b.message(ch)["data"] == {"n": 1}
    assert a.message(ch)["data"] == {"n": 2}
    await aclient.broadcast("all")
    a.expect(lambda f: f["type"] == "broadcast" and f["data"] == "all", "broadcast")
    await aclient.send_user(user, "u")
    await aclient.send_connection(b.id, "c")
    assert a.expect(lambda f: f["type"] == "direct", "direct")["data"] == "u"
    assert [b.expect(lambda f: f["type"] == "direct", "direct")["data"] for _ in range(2)] == ["u", "c"]

    ch2 = unique("chat:")
    await aclient.subscribe_user(user, ch2)
    for c in (a, b):
        c.expect(lambda f: f["type"] == "subscribed" and f["channel"] == ch2, "subscribed push")
    await aclient.unsubscribe_user(user, ch2)
    for c in (a, b):
        c.expect(lambda f: f["type"] == "unsubscribed" and f["channel"] == ch2, "unsubscribed push")
    await aclient.subscribe_connection(a.id, ch2)
    a.expect(lambda f: f["type"] == "subscribed" and f["channel"] == ch2, "subscribed push")
    await aclient.unsubscribe_connection(a.id, ch2)
    a.expect(lambda f: f["type"] == "unsubscribed" and f["channel"] == ch2, "unsubscribed push")

    await aclient.disconnect_connection(a.id, code=4100, reason="one")
    assert a.closed().code == 4100
    await aclient.disconnect_user(user)
    assert b.closed().code == 4004


async def test_async_reads(aclient, ws, gw):
    user = unique("user")
    ch = unique("chat:")
    c = ws(user, info={"k": "v"})
    c.subscribe(ch)

    async def poll(fn, ok, what):
        import asyncio
        import time

        deadline = time.monotonic() + 10
        while True:
            v = await fn()
            if ok(v):
                return v
            assert time.monotonic() < deadline, f"not within 10 s: {what} (last {v!r})"
            await asyncio.sleep(0.02)

    p = await poll(lambda: aclient.presence(ch), lambda p: len(p.members) == 1, "presence")
    assert p.members[0].user == user and p.members[0].info == {"k": "v"}
    s = await poll(lambda: aclient.user_status(user), lambda s: s.online, "online")
    assert s.connections[0].conn == c.id
    info = await poll(lambda: aclient.channel(ch), lambda i: i.subscribers == 1, "subscribers")
    assert info.presence.members == 1
    listed = []

    async def collect():
        listed.clear()
        async for e in aclient.iter_channels(ch, page_size=1):
            listed.append(e.channel)
        return listed

    await poll(collect, lambda got: got == [ch], "listed")
    page = await aclient.channels(prefix=ch, limit=1)
    assert [e.channel for e in page.channels] == [ch]
    hist = unique("hist:")
    await aclient.publish(hist, 1)
    await aclient.publish(hist, 2)
    h = await aclient.history(hist, since=1, limit=5)
    assert [m.data for m in h.messages] == [2] and h.offset == 2
    nodes = await aclient.nodes()
    assert len(nodes) >= 1 and all(n.version for n in nodes)
    assert await aclient.ready() is True
    assert "nodes" in await aclient.request("GET", "/api/nodes")


async def test_async_errors(gw):
    async with AsyncClient(gw.api, "wrong") as bad:
        with pytest.raises(Unauthorized) as e:
            await bad.publish("plain:x", 1)
        assert e.value.code == "unauthorized"
    from harness import API_KEY

    c = AsyncClient(gw.api, API_KEY)
    try:
        with pytest.raises(BadRequest, match="unknown namespace"):
            await c.publish("nope:x", 1)
        with pytest.raises(BadRequest, match="unknown field"):
            await c.request("POST", "/api/broadcast", json={"data": 1, "x": 2})
        with pytest.raises(NotFound):
            await c.request("GET", "/api/nothing")
        with pytest.raises(ValueError, match="empty"):
            await c.presence("")
    finally:
        await c.close()
