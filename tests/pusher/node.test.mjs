// pusher-js (Node build) and the official `pusher` server library against
// a 2-node gateway cluster on a real redis-server: public, private and
// presence channels across nodes, client events, socket_id exclusion,
// user sign-in, sendToUser and terminateUserConnections.
//
// "Never received" is asserted after a barrier: a later event that travels
// the same way and has been received, so the one that must not arrive had
// its chance.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";

import nacl from "tweetnacl";

import { startBackend, userInfo } from "./lib/backend.mjs";
import { APP, QUIET_APP, SLOW_APP, startCluster, serverLib } from "./lib/cluster.mjs";
import { connect, connected, subscribe, collect, disconnectAll, errorCode, waitFor } from "./lib/clients.mjs";

const T = { timeout: 30000 };
const run = Date.now().toString(36);

let backend;
let cluster;
let n1;
let n2;
let api1;
let api2;

before(async () => {
  backend = await startBackend(APP);
  cluster = await startCluster({ name: "node", webhookUrl: backend.webhookUrl });
  [n1, n2] = cluster.nodes;
  api1 = serverLib(n1);
  api2 = serverLib(n2);
});

after(async () => {
  disconnectAll();
  await cluster?.stop();
  await backend?.close();
});

const opts = (user) => ({ backend: backend.url, user });

test("connection_established: a socket_id like 123.456, an activity timeout", T, async () => {
  const a = await connected(n1.port, opts());
  const b = await connected(n2.port, opts());
  assert.match(a.socketId, /^\d+\.\d+$/);
  assert.match(b.socketId, /^\d+\.\d+$/);
  assert.notEqual(a.socketId, b.socketId);
  // pusher-js takes the smaller of its own (120 s) and the server's.
  assert.ok(a.pusher.connection.activityTimeout > 0 && a.pusher.connection.activityTimeout <= 120000);
  a.disconnect();
  b.disconnect();
});

test("unknown app key: pusher:error 4001 and the connection is refused", T, async () => {
  const c = connect(n1.port, { ...opts(), key: "no-such-key" });
  await waitFor(() => c.errors.some((e) => errorCode(e) === 4001), 5000, "error 4001");
  // 4000-4099 means "do not reconnect" to pusher-js.
  await c.waitState("disconnected");
  c.disconnect();
});

test("public channel: an event triggered by the server library reaches subscribers on both nodes", T, async () => {
  const a = await connected(n1.port, opts());
  const b = await connected(n2.port, opts());
  const ch = `news-${run}`;
  const [sa, sb] = await Promise.all([subscribe(a, ch), subscribe(b, ch)]);
  const ea = collect(sa.channel);
  const eb = collect(sb.channel);
  for (const api of [api1, api2]) {
    const res = await api.trigger(ch, "breaking", { headline: `via ${api === api1 ? 1 : 2}` });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), {});
  }
  for (const e of [ea, eb]) {
    await e.wait("breaking", (d) => d.headline === "via 1");
    await e.wait("breaking", (d) => d.headline === "via 2");
  }
  // String data stays a string.
  await api2.trigger(ch, "plain", "just text");
  await ea.wait("plain", (d) => d === "just text");
  await eb.wait("plain", (d) => d === "just text");
  a.disconnect();
  b.disconnect();
});

test("private channel: authorized through the backend; a forged signature is refused with AuthError 401", T, async () => {
  const a = await connected(n1.port, opts("alice"));
  const b = await connected(n2.port, opts("bob"));
  const ch = `private-orders-${run}`;
  const [sa, sb] = await Promise.all([subscribe(a, ch), subscribe(b, ch)]);
  assert.ok(backend.authRequests.some((r) => r.channel === ch && r.socketId === a.socketId));
  assert.ok(backend.authRequests.some((r) => r.channel === ch && r.socketId === b.socketId));
  const ea = collect(sa.channel);
  const eb = collect(sb.channel);
  await api1.trigger(ch, "order-shipped", { id: 7 });
  await ea.wait("order-shipped", (d) => d.id === 7);
  await eb.wait("order-shipped", (d) => d.id === 7);

  const forged = `private-forged-${run}`;
  await assert.rejects(subscribe(a, forged), (err) => {
    assert.equal(err.status, 401, JSON.stringify(err.detail));
    assert.equal(err.detail.type, "AuthError");
    return true;
  });
  const frame = a.got("pusher:subscription_error", forged)[0];
  assert.ok(frame, "the gateway sent pusher:subscription_error on the channel");
  // The connection survives a refused subscription.
  assert.equal(a.state, "connected");
  await api2.trigger(ch, "order-shipped", { id: 8 });
  await ea.wait("order-shipped", (d) => d.id === 8);

  // A subscribe without any auth on a private channel is refused too.
  // (The contract names subscription_error for a bad signature; for a
  // missing one a pusher:error is accepted too.)
  const errorsBefore = a.got("pusher:error").length;
  a.pusher.send_event("pusher:subscribe", { channel: `private-noauth-${run}` });
  await a.frame(
    (f) => (f.event === "pusher:subscription_error" && f.channel === `private-noauth-${run}`) || a.got("pusher:error").length > errorsBefore,
    5000,
    "a refusal of the subscribe without auth",
  );
  assert.equal(a.got("pusher_internal:subscription_succeeded", `private-noauth-${run}`).length, 0);
  a.disconnect();
  b.disconnect();
});

test("private-encrypted channel: the gateway relays the ciphertext, pusher-js decrypts it", T, async () => {
  const a = await connected(n1.port, { ...opts("alice"), extra: { nacl } });
  const b = await connected(n2.port, { ...opts("bob"), extra: { nacl } });
  const ch = `private-encrypted-vault-${run}`;
  const [sa, sb] = await Promise.all([subscribe(a, ch), subscribe(b, ch)]);
  const ea = collect(sa.channel);
  const eb = collect(sb.channel);
  await api1.trigger(ch, "secret", { code: "1234" });
  await ea.wait("secret", (d) => d.code === "1234");
  await eb.wait("secret", (d) => d.code === "1234");
  // On the wire it was nonce + ciphertext, as the server library made it.
  const frame = b.got("secret", ch)[0];
  assert.equal(typeof frame.data.ciphertext, "string");
  assert.equal(typeof frame.data.nonce, "string");
  a.disconnect();
  b.disconnect();
});

test("presence channel across nodes: members, member_added, member_removed", T, async () => {
  const ch = `presence-room-${run}`;
  const alice = await connected(n1.port, opts("alice"));
  const bob = await connected(n2.port, opts("bob"));

  const sa = await subscribe(alice, ch);
  assert.equal(sa.data.count, 1);
  assert.equal(sa.data.me.id, "alice");
  assert.deepEqual(sa.data.me.info, userInfo("alice"));
  const ea = collect(sa.channel, ["pusher:member_added", "pusher:member_removed"]);

  const sb = await subscribe(bob, ch);
  assert.equal(sb.data.count, 2);
  assert.deepEqual(sb.data.get("alice"), { id: "alice", info: userInfo("alice") });
  assert.deepEqual(sb.data.get("bob"), { id: "bob", info: userInfo("bob") });
  const raw = bob.got("pusher_internal:subscription_succeeded", ch)[0];
  assert.deepEqual([...raw.data.presence.ids].sort(), ["alice", "bob"]);
  assert.deepEqual(raw.data.presence.hash.alice, userInfo("alice"));
  assert.equal(raw.data.presence.count, 2);

  const added = await ea.wait("pusher:member_added", (m) => m.id === "bob");
  assert.deepEqual(added.data.info, userInfo("bob"));
  const eb = collect(sb.channel, ["pusher:member_added", "pusher:member_removed"]);

  // alice's second connection (other node) is not a new member for bob...
  const alice2 = await connected(n2.port, opts("alice"));
  const s2 = await subscribe(alice2, ch);
  assert.equal(s2.data.count, 2);
  // ...and closing it does not remove alice.
  alice2.disconnect();
  // Barrier: bob leaves, alice sees it; by then anything about alice2 has
  // reached bob too (it went out earlier, through the same nodes).
  bob.disconnect();
  await ea.wait("pusher:member_removed", (m) => m.id === "bob");
  assert.deepEqual(eb.events, [], "bob saw no member event for alice's second connection");
  assert.equal(bob.got("pusher_internal:member_added").filter((f) => f.data.user_id === "bob").length, 0, "never told about itself");
  assert.equal(ea.of("pusher:member_added").length, 1);
  assert.equal(sa.channel.members.count, 1);
  alice.disconnect();
});

test("client events on private and presence channels cross nodes, are not echoed, carry user_id on presence", T, async () => {
  const alice = await connected(n1.port, opts("alice"));
  const bob = await connected(n2.port, opts("bob"));
  for (const ch of [`private-chat-${run}`, `presence-chat-${run}`]) {
    const [sa, sb] = await Promise.all([subscribe(alice, ch), subscribe(bob, ch)]);
    const ea = collect(sa.channel, ["client-typing", "client-ack"]);
    const eb = collect(sb.channel, ["client-typing", "client-ack"]);
    assert.equal(sa.channel.trigger("client-typing", { who: "alice", n: 1 }), true);
    const got = await eb.wait("client-typing", (d) => d.n === 1);
    assert.deepEqual(got.data, { who: "alice", n: 1 });
    if (ch.startsWith("presence-")) assert.equal(got.meta?.user_id, "alice", `${ch}: user_id metadata`);
    // Barrier: bob answers; alice gets the answer after her own event would have come back.
    sb.channel.trigger("client-ack", { n: 1 });
    const ack = await ea.wait("client-ack", (d) => d.n === 1);
    if (ch.startsWith("presence-")) assert.equal(ack.meta?.user_id, "bob");
    assert.deepEqual(ea.of("client-typing"), [], `${ch}: not echoed to the sender`);
    assert.deepEqual(eb.of("client-ack"), [], `${ch}: not echoed to the sender`);
    const frame = bob.got("client-typing", ch)[0];
    if (ch.startsWith("presence-")) assert.equal(frame.user_id, "alice");
    else assert.equal(frame.user_id, undefined, "no user_id on private channels");
  }
  alice.disconnect();
  bob.disconnect();
});

test("client event on a public channel: refused with pusher:error, not delivered", T, async () => {
  const alice = await connected(n1.port, opts("alice"));
  const bob = await connected(n2.port, opts("bob"));
  const ch = `lobby-${run}`;
  const [sa, sb] = await Promise.all([subscribe(alice, ch), subscribe(bob, ch)]);
  const eb = collect(sb.channel);
  sa.channel.trigger("client-shout", { loud: true });
  const err = await alice.frame((f) => f.event === "pusher:error", 5000, "pusher:error for the public client event");
  assert.equal(err.data.code, 4301, JSON.stringify(err.data));
  await api1.trigger(ch, "barrier", {});
  await eb.wait("barrier");
  assert.deepEqual(eb.of("client-shout"), []);
  assert.equal(alice.state, "connected", "an error reply, not a disconnect");

  // A client event on a channel the sender is not subscribed to does not
  // reach that channel's subscribers (an error reply is allowed, not required).
  const sneaky = `private-never-joined-${run}`;
  const { channel: bobsSneaky } = await subscribe(bob, sneaky);
  const es = collect(bobsSneaky);
  alice.pusher.send_event("client-sneak", { x: 1 }, sneaky);
  await api1.trigger(sneaky, "barrier", {});
  await es.wait("barrier");
  assert.deepEqual(es.of("client-sneak"), [], "not delivered to a channel the sender is not subscribed to");
  alice.disconnect();
  bob.disconnect();
});

test("client events are off when the app does not allow them: pusher:error 4301", T, async () => {
  const quiet = serverLib(n1, QUIET_APP);
  const channelAuthorization = {
    customHandler: ({ socketId, channelName }, cb) => cb(null, quiet.authorizeChannel(socketId, channelName)),
  };
  const a = await connected(n1.port, { ...opts(), key: QUIET_APP.key, extra: { channelAuthorization } });
  const b = await connected(n2.port, { ...opts(), key: QUIET_APP.key, extra: { channelAuthorization } });
  const ch = `private-quiet-${run}`;
  const [sa, sb] = await Promise.all([subscribe(a, ch), subscribe(b, ch)]);
  const eb = collect(sb.channel);
  sa.channel.trigger("client-hello", {});
  const err = await a.frame((f) => f.event === "pusher:error", 5000, "pusher:error 4301");
  assert.equal(err.data.code, 4301);
  // The app's own events still flow; the client event never arrives.
  await quiet.trigger(ch, "barrier", {});
  await eb.wait("barrier");
  assert.deepEqual(eb.of("client-hello"), []);
  a.disconnect();
  b.disconnect();
});

test("client events over the app's client_event_rate: pusher:error 4301, the excess is dropped", T, async () => {
  const slow = serverLib(n1, SLOW_APP);
  const channelAuthorization = {
    customHandler: ({ socketId, channelName }, cb) => cb(null, slow.authorizeChannel(socketId, channelName)),
  };
  const a = await connected(n1.port, { ...opts(), key: SLOW_APP.key, extra: { channelAuthorization } });
  const b = await connected(n2.port, { ...opts(), key: SLOW_APP.key, extra: { channelAuthorization } });
  const ch = `private-slow-${run}`;
  const [sa, sb] = await Promise.all([subscribe(a, ch), subscribe(b, ch)]);
  const eb = collect(sb.channel, ["client-burst"]);
  const rest = collect(sb.channel);
  const sent = 4 * SLOW_APP.client_event_rate;
  for (let i = 0; i < sent; i++) sa.channel.trigger("client-burst", { i });
  const err = await a.frame((f) => f.event === "pusher:error", 5000, "pusher:error 4301 for the burst");
  assert.equal(err.data.code, 4301, JSON.stringify(err.data));
  // Barrier: an event from the server after the burst.
  await slow.trigger(ch, "barrier", {});
  await rest.wait("barrier");
  assert.ok(eb.events.length < sent, `rate-limited: ${eb.events.length} of ${sent} delivered`);
  assert.ok(eb.events.length >= SLOW_APP.client_event_rate - 1, `the burst allowance went through: ${eb.events.length}`);
  a.disconnect();
  b.disconnect();
});

test("presence limits: max_presence_members and max_presence_member_bytes refuse the subscription", T, async () => {
  const slow = serverLib(n1, SLOW_APP);
  const as = (user, info) => ({
    ...opts(),
    key: SLOW_APP.key,
    extra: {
      channelAuthorization: {
        customHandler: ({ socketId, channelName }, cb) => cb(null, slow.authorizeChannel(socketId, channelName, { user_id: user, user_info: info })),
      },
    },
  });
  const ch = `presence-small-${run}`;
  const refusedOn = async (c, name) => {
    const errors = c.got("pusher:error").length;
    c.pusher.subscribe(name);
    await c.frame((f) => (f.event === "pusher:subscription_error" && f.channel === name) || c.got("pusher:error").length > errors, 5000, `a refusal of ${name}`);
    assert.equal(c.got("pusher_internal:subscription_succeeded", name).length, 0, `${name} not joined`);
  };
  const u1 = await connected(n1.port, as("u1", { n: 1 }));
  const u2 = await connected(n2.port, as("u2", { n: 2 }));
  await subscribe(u1, ch);
  await subscribe(u2, ch);
  // A third member, on either node, is one too many.
  const u3 = await connected(n1.port, as("u3", { n: 3 }));
  await refusedOn(u3, ch);
  // A second connection of a member is not a new member.
  const u1b = await connected(n2.port, as("u1", { n: 1 }));
  await subscribe(u1b, ch);
  // user_info over max_presence_member_bytes.
  const big = await connected(n2.port, as("big", { blob: "x".repeat(SLOW_APP.max_presence_member_bytes * 2) }));
  await refusedOn(big, `presence-roomy-${run}`);
  for (const c of [u1, u2, u3, u1b, big]) c.disconnect();
});

test("trigger with socket_id excludes that connection only", T, async () => {
  const alice = await connected(n1.port, opts("alice"));
  const bob = await connected(n2.port, opts("bob"));
  const carol = await connected(n1.port, opts("carol"));
  const ch = `private-excl-${run}`;
  const subs = await Promise.all([alice, bob, carol].map((c) => subscribe(c, ch)));
  const [ea, eb, ec] = subs.map((s) => collect(s.channel));
  await api2.trigger(ch, "update", { n: 1 }, { socket_id: alice.socketId });
  await api2.trigger(ch, "update", { n: 2 });
  for (const e of [ea, eb, ec]) await e.wait("update", (d) => d.n === 2);
  assert.deepEqual(ea.of("update").map((e) => e.data.n), [2], "alice was excluded from n=1");
  assert.deepEqual(eb.of("update").map((e) => e.data.n), [1, 2]);
  assert.deepEqual(ec.of("update").map((e) => e.data.n), [1, 2]);
  for (const c of [alice, bob, carol]) c.disconnect();
});

test("signin, then sendToUser reaches every connection of that user on both nodes", T, async () => {
  const alice1 = await connected(n1.port, opts("alice"));
  const alice2 = await connected(n2.port, opts("alice"));
  const bob = await connected(n2.port, opts("bob"));
  for (const c of [alice1, alice2, bob]) c.pusher.signin();
  for (const c of [alice1, alice2, bob]) {
    const ok = await c.frame((f) => f.event === "pusher:signin_success", 5000, "pusher:signin_success");
    const user = JSON.parse(ok.data.user_data);
    assert.equal(user.id, c === bob ? "bob" : "alice");
  }
  // pusher-js subscribes to #server-to-user-<id> after signing in.
  for (const c of [alice1, alice2, bob]) {
    await waitFor(() => c.pusher.user.serverToUserChannel?.subscribed, 5000, "#server-to-user subscribed");
  }
  const [ua1, ua2, ub] = [alice1, alice2, bob].map((c) => collect(c.pusher.user));
  const res = await api1.sendToUser("alice", "notice", { text: "hi alice" });
  assert.equal(res.status, 200);
  await ua1.wait("notice", (d) => d.text === "hi alice");
  await ua2.wait("notice", (d) => d.text === "hi alice");
  await api2.sendToUser("bob", "notice", { text: "hi bob" });
  await ub.wait("notice", (d) => d.text === "hi bob");
  assert.deepEqual(ub.of("notice").map((e) => e.data.text), ["hi bob"], "bob got only his own");
  assert.deepEqual(ua1.of("notice").map((e) => e.data.text), ["hi alice"]);

  // Someone else's server-to-user channel is out of reach.
  const bobErrors = bob.got("pusher:error").length;
  bob.pusher.send_event("pusher:subscribe", { channel: "#server-to-user-alice" });
  await bob.frame(
    (f) => (f.event === "pusher:subscription_error" && f.channel === "#server-to-user-alice") || bob.got("pusher:error").length > bobErrors,
    5000,
    "a refusal of #server-to-user-alice",
  );
  assert.equal(bob.got("pusher_internal:subscription_succeeded", "#server-to-user-alice").length, 0);
  await api1.sendToUser("alice", "notice", { text: "second" });
  await ua1.wait("notice", (d) => d.text === "second");
  await api1.sendToUser("bob", "notice", { text: "barrier" });
  await ub.wait("notice", (d) => d.text === "barrier");
  assert.ok(!bob.frames.some((f) => f.channel === "#server-to-user-alice" && f.event === "notice"));
  for (const c of [alice1, alice2, bob]) c.disconnect();
});

test("signin with a forged signature: pusher:error 4009 and close 4009", T, async () => {
  const forger = serverLib(n1, { ...APP, secret: "not-the-secret" });
  const userAuthentication = {
    customHandler: ({ socketId }, cb) => cb(null, forger.authenticateUser(socketId, { id: "mallory" })),
  };
  const m = await connected(n1.port, { ...opts(), extra: { userAuthentication } });
  m.pusher.signin();
  await waitFor(() => m.frames.some((f) => f.event === "pusher:error" && f.data?.code === 4009), 5000, "pusher:error 4009");
  await waitFor(() => m.errors.some((e) => errorCode(e) === 4009) && m.state !== "connected", 5000, "close 4009");
  await m.waitState("disconnected");
  m.disconnect();
});

test("terminateUserConnections closes every connection of that user (4009), nobody else's", T, async () => {
  const alice1 = await connected(n1.port, opts("alice"));
  const alice2 = await connected(n2.port, opts("alice"));
  const bob = await connected(n1.port, opts("bob"));
  for (const c of [alice1, alice2, bob]) c.pusher.signin();
  for (const c of [alice1, alice2, bob]) await c.frame((f) => f.event === "pusher:signin_success", 5000, "signin_success");
  const res = await api2.terminateUserConnections("alice");
  assert.equal(res.status, 200);
  for (const c of [alice1, alice2]) {
    await c.waitState("disconnected", 5000);
    assert.ok(c.errors.some((e) => errorCode(e) === 4009), `closed with 4009: ${JSON.stringify(c.errors)}`);
  }
  // bob is still there and still reachable.
  await waitFor(() => bob.pusher.user.serverToUserChannel?.subscribed, 5000, "bob's #server-to-user");
  const ub = collect(bob.pusher.user);
  await api1.sendToUser("bob", "still-here", {});
  await ub.wait("still-here");
  assert.equal(bob.state, "connected");
  bob.disconnect();
});
