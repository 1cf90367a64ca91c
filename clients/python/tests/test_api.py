"""Every HTTP API call of the sync client against a real single node and a
real 2-node cluster (the SDK on one node, WebSocket clients on the other),
asserting what connected clients receive."""

from __future__ import annotations

import time

from harness import eventually, unique

from gateway_client import (
    ChannelInfo,
    History,
    NodeInfo,
    Presence,
    PublishResult,
    UserStatus,
)


def test_publish_reaches_subscriber_with_offsets(client, ws):
    ch = unique("hist:")
    sub = ws("alice")
    sub.subscribe(ch)
    r1 = client.publish(ch, {"n": 1})
    r2 = client.publish(ch, {"n": 2})
    assert isinstance(r1, PublishResult)
    assert (r1.offset, r2.offset) == (1, 2)
    assert r1["offset"] == 1 and r1.raw == {"offset": 1}
    m1, m2 = sub.message(ch), sub.message(ch)
    assert (m1["data"], m1["offset"], m1["from"]) == ({"n": 1}, 1, None)
    assert (m2["data"], m2["offset"]) == ({"n": 2}, 2)


def test_publish_without_history_has_no_offset(client, ws):
    ch = unique("plain:")
    sub = ws("bob")
    sub.subscribe(ch)
    assert client.publish(ch, "text").offset is None
    assert sub.message(ch)["data"] == "text"


def test_publish_any_json_and_odd_channel_names(client, ws):
    ch = unique("chat:") + "/a@b=c.d-e_f"
    sub = ws("carol")
    sub.subscribe(ch)
    data = {"s": "héllo ✓", "l": [1, 2.5, None, True], "o": {"x": {}}}
    client.publish(ch, data)
    assert sub.message(ch)["data"] == data
    assert client.presence(ch).channel == ch  # path segment quoting


def test_publish_exclude_skips_one_connection(client, ws):
    ch = unique("chat:")
    a, b = ws("dave"), ws("erin")
    a.subscribe(ch)
    b.subscribe(ch)
    client.publish(ch, "not for a", exclude=a.id)
    client.publish(ch, "for all")
    assert b.message(ch)["data"] == "not for a"
    assert b.message(ch)["data"] == "for all"
    # a's first message is the second publication: the first skipped it.
    assert a.message(ch)["data"] == "for all"


def test_broadcast_reaches_every_connection(client, ws, gw):
    tag = unique()
    clients = [ws("fred", node=i) for i in range(len(gw.ws_all))]
    assert client.broadcast({"tag": tag}) is None
    for c in clients:
        c.expect(lambda f: f["type"] == "broadcast" and f["data"] == {"tag": tag}, "broadcast")


def test_send_user_reaches_all_their_connections(client, ws, gw):
    user = unique("user")
    mine = [ws(user, node=i) for i in range(len(gw.ws_all))]
    other = ws(unique("other"))
    client.send_user(user, {"hi": user})
    for c in mine:
        assert c.expect(lambda f: f["type"] == "direct", "direct")["data"] == {"hi": user}
    client.send_user(other.welcome["user"], "marker")
    assert other.expect(lambda f: f["type"] == "direct", "direct")["data"] == "marker"


def test_send_user_offline_is_not_an_error(client):
    assert client.send_user(unique("nobody"), 1) is None


def test_send_connection_reaches_only_that_connection(client, ws):
    user = unique("user")
    a, b = ws(user), ws(user)
    client.send_connection(b.id, "only b")
    client.send_user(user, "both")
    assert b.expect(lambda f: f["type"] == "direct", "direct")["data"] == "only b"
    assert a.expect(lambda f: f["type"] == "direct", "direct")["data"] == "both"


def test_disconnect_user_default_code(client, ws, gw):
    user = unique("user")
    conns = [ws(user, node=i) for i in range(len(gw.ws_all))]
    client.disconnect_user(user)
    for c in conns:
        close = c.closed()
        assert close is not None and close.code == 4004


def test_disconnect_connection_code_and_reason(client, ws):
    user = unique("user")
    a, b = ws(user), ws(user)
    client.disconnect_connection(a.id, code=4321, reason="bye now")
    close = a.closed()
    assert (close.code, close.reason) == (4321, "bye now")
    # b is still open: it still gets directed messages.
    client.send_connection(b.id, "still here")
    assert b.expect(lambda f: f["type"] == "direct", "direct")["data"] == "still here"


def test_subscribe_and_unsubscribe_user(client, ws, gw):
    user = unique("user")
    ch = unique("chat:")
    conns = [ws(user, node=i) for i in range(len(gw.ws_all))]
    client.subscribe_user(user, ch)
    for c in conns:
        push = c.expect(lambda f: f["type"] == "subscribed" and f["channel"] == ch, "subscribed push")
        assert push["id"] is None
    client.publish(ch, "via server-side subscription")
    for c in conns:
        assert c.message(ch)["data"] == "via server-side subscription"
    client.unsubscribe_user(user, ch)
    for c in conns:
        c.expect(lambda f: f["type"] == "unsubscribed" and f["channel"] == ch, "unsubscribed push")


def test_subscribe_and_unsubscribe_connection(client, ws):
    user = unique("user")
    ch = unique("hist:")
    a, b = ws(user), ws(user)
    client.subscribe_connection(a.id, ch)
    a.expect(lambda f: f["type"] == "subscribed" and f["channel"] == ch, "subscribed push")
    client.publish(ch, 1)
    assert a.message(ch)["data"] == 1
    client.unsubscribe_connection(a.id, ch)
    a.expect(lambda f: f["type"] == "unsubscribed" and f["channel"] == ch, "unsubscribed push")
    # b was never subscribed: a directed marker is the first thing it sees.
    client.send_connection(b.id, "marker")
    assert b.expect(lambda f: f["type"] in ("message", "direct", "subscribed"), "frame")["type"] == "direct"


def test_presence_lists_members_with_info(client, ws):
    ch = unique("chat:")
    a = ws("pia", info={"name": "Pia"})
    b = ws("quinn")
    a.subscribe(ch)
    b.subscribe(ch)

    def both() -> Presence:
        p = client.presence(ch)
        return p if len(p.members) == 2 else None

    p = eventually(both, f"2 members in {ch}")
    assert p.channel == ch
    assert p.users == ["pia", "quinn"]
    by_conn = {m.conn: m for m in p.members}
    assert by_conn[a.id].user == "pia" and by_conn[a.id].info == {"name": "Pia"}
    assert by_conn[a.id].node == a.node
    assert by_conn[b.id].info is None
    assert p["members"][0]["conn"] in by_conn
    assert p.to_dict() == {"channel": ch, "members": p.raw["members"]}


def test_history_since_and_limit(client):
    ch = unique("hist:")
    for i in range(1, 6):
        client.publish(ch, {"i": i})
    h = client.history(ch)
    assert isinstance(h, History)
    assert h.channel == ch and h.offset == 5 and h.epoch
    assert [m.offset for m in h.messages] == [1, 2, 3, 4, 5]
    assert h.messages[0].data == {"i": 1} and h.messages[0].from_ is None
    page = client.history(ch, since=2, limit=2)
    assert [m.data["i"] for m in page.messages] == [3, 4]
    assert page.epoch == h.epoch
    assert client.history(ch, since=5).messages == []
    empty = client.history(unique("hist:"))
    assert empty.messages == [] and empty.offset == 0


def test_history_names_the_publishing_user(client, ws):
    ch = unique("hist:")
    pub = ws("writer")
    rid = pub.send("publish", channel=ch, data="by a client")
    assert pub.expect(lambda f: f.get("id") == rid, "published")["type"] == "published"
    client.publish(ch, "by the API")
    msgs = client.history(ch).messages
    assert [(m.data, m.from_) for m in msgs] == [("by a client", "writer"), ("by the API", None)]
    assert msgs[0]["from"] == "writer"


def test_user_status_online_and_offline(client, ws, gw):
    user = unique("user")
    conns = [ws(user, node=i) for i in range(len(gw.ws_all))]

    def online() -> UserStatus:
        s = client.user_status(user)
        return s if len(s.connections) == len(conns) else None

    s = eventually(online, f"{user} online with {len(conns)} connections")
    assert s.online and s.user == user
    assert {(c.conn, c.node) for c in s.connections} == {(c.id, c.node) for c in conns}
    off = client.user_status(unique("offline"))
    assert off.online is False and off.connections == []


def test_nodes(client, gw):
    expected = {"single": {"s1"}, "cluster": {"n1", "n2"}}[gw.name]
    nodes = eventually(lambda: (lambda n: n if {x.id for x in n} == expected else None)(client.nodes()),
                       f"nodes {expected}")
    for n in nodes:
        assert isinstance(n, NodeInfo)
        assert n.version and n.started_at > 1_600_000_000 and n.connections >= 0 and n.subscriptions >= 0


def test_channel_info(client, ws):
    ch = unique("chat:")
    a, b = ws("ron"), ws("ron")
    a.subscribe(ch)
    b.subscribe(ch)

    def counted() -> ChannelInfo:
        info = client.channel(ch)
        return info if info.subscribers == 2 and info.presence and info.presence.members == 2 else None

    info = eventually(counted, f"{ch}: 2 subscribers")
    assert info.channel == ch and info.presence.users == 1 and info.history is None

    hist = unique("hist:")
    client.publish(hist, 1)
    client.publish(hist, 2)
    h = client.channel(hist)
    assert h.subscribers == 0 and h.presence is None
    assert (h.history.length, h.history.top_offset) == (2, 2) and h.history.epoch
    assert h["history"]["top_offset"] == 2


def test_channels_pages_and_iterator(client, ws):
    prefix = unique("room") + "-"
    names = [f"{prefix}{i}" for i in range(5)]
    sub = ws("sam")
    for n in names:
        sub.subscribe(n)

    def listed():
        got = [e.channel for e in client.iter_channels(prefix, page_size=2)]
        return got if got == names else None

    eventually(listed, f"iter_channels lists {names}")
    first = client.channels(prefix=prefix, limit=2)
    assert [e.channel for e in first.channels] == names[:2] and first.next_cursor == names[1]
    assert all(e.subscribers == 1 for e in first.channels)
    second = client.channels(prefix=prefix, limit=2, cursor=first.next_cursor)
    assert [e.channel for e in second.channels] == names[2:4]
    everything = client.channels(prefix=prefix)
    assert [e.channel for e in everything.channels] == names and everything.next_cursor is None
    assert list(client.iter_channels(unique("none"))) == []


def test_ready_and_raw_request(client):
    assert client.ready() is True
    raw = client.request("GET", "/api/nodes")
    assert isinstance(raw["nodes"], list)


def test_calls_are_fast_on_a_pooled_connection(client):
    ch = unique("plain:")
    start = time.monotonic()
    for _ in range(50):
        client.publish(ch, 1)
    assert time.monotonic() - start < 10
