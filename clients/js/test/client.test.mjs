// SDK tests against real gateway processes (target/debug/gateway or
// $GATEWAY_BIN). Run: npm test (needs Node's WebSocket: Node 22+, or Node 20
// with --experimental-websocket, which the npm script passes).

import { test, after } from "node:test";
import assert from "node:assert/strict";

import { GatewayClient, GatewayError, backoffDelay, isFatalCloseCode } from "../dist/gateway-client.js";
import { startGateway, api, waitFor, sleep, once, signJwt } from "./harness.mjs";

const CONFIG = `
max_message_size = 8192
[default_namespace]
client_publish = true

[namespaces.chat]
presence = true
join_leave = true
history_size = 100
client_publish = true

[namespaces.small]
history_size = 3
client_publish = true

[namespaces.task]
history_size = 1000
`;

const clients = new Set();
const gateways = new Set();

function client(opts) {
  const c = new GatewayClient({ minReconnectDelayMs: 50, maxReconnectDelayMs: 400, ...opts });
  clients.add(c);
  return c;
}

async function gateway(opts = {}) {
  const g = await startGateway({ config: CONFIG, ...opts });
  gateways.add(g);
  return g;
}

after(async () => {
  for (const c of clients) c.close();
  await Promise.all([...gateways].map((g) => g.stop()));
});

async function connected(c) {
  if (c.state !== "connected") await once(c, "connected");
  return c;
}

/** Collects a subscription's messages as [data, ctx] pairs. */
function collect(sub) {
  const got = [];
  sub.on("message", (data, ctx) => got.push({ data, ...ctx }));
  return got;
}

test("backoff: full jitter above the floor, doubling ceiling, capped", () => {
  for (let attempt = 0; attempt < 12; attempt++) {
    const ceiling = Math.min(20000, 500 * 2 ** (attempt + 1));
    assert.equal(backoffDelay(attempt, 500, 20000, () => 0), 500);
    assert.equal(backoffDelay(attempt, 500, 20000, () => 0.999999), Math.round(500 + 0.999999 * (ceiling - 500)));
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(attempt);
      assert.ok(d >= 500 && d <= ceiling, `attempt ${attempt}: ${d} not in [500, ${ceiling}]`);
    }
  }
  assert.equal(backoffDelay(1000, 500, 20000, () => 1), 20000);
  const spread = new Set(Array.from({ length: 20 }, () => backoffDelay(5)));
  assert.ok(spread.size > 10, "jitter spreads the delays");
});

test("close codes: which ones stop the client", () => {
  for (const code of [1008, 1009, 4500, 4501, 4999]) assert.ok(isFatalCloseCode(code), String(code));
  for (const code of [1000, 1001, 1006, 1011, 4000, 4001, 4002, 4003, 4004, 4499]) assert.ok(!isFatalCloseCode(code), String(code));
});

test("connect, subscribe, publish: welcome, request ids, replies and errors", async () => {
  const g = await gateway({ name: "basic" });
  const alice = client({ url: g.ws, params: { user: "alice" } }).connect();
  const bob = client({ url: [g.ws], params: { user: "bob" } });
  const welcomeP = once(alice, "connected");
  bob.connect();
  const welcome = await welcomeP;
  assert.equal(welcome.user, "alice");
  assert.match(welcome.conn, /\./);
  assert.equal(alice.conn, welcome.conn);
  assert.equal(welcome.ping_interval_ms, 25000);

  const sub = alice.subscribe("chat:basic");
  const info = await sub.ready();
  assert.equal(info.offset, 0);
  assert.equal(typeof info.epoch, "string");
  assert.equal(info.recovered, undefined);
  const got = collect(sub);

  await connected(bob);
  const r1 = await bob.publish("chat:basic", { text: "hi alice" });
  const r2 = await bob.publish("chat:basic", { text: "second" });
  assert.deepEqual([r1.offset, r2.offset], [1, 2]);
  await waitFor(() => got.length === 2, 3000, "two messages");
  assert.deepEqual(got.map((m) => [m.data.text, m.offset, m.from, m.replayed]), [
    ["hi alice", 1, "bob", false],
    ["second", 2, "bob", false],
  ]);
  assert.deepEqual(sub.position, { offset: 2, epoch: info.epoch });

  // A refused op rejects with the protocol's error code; the connection stays.
  await assert.rejects(bob.publish("task:1", { line: "nope" }), (e) => e instanceof GatewayError && e.code === "forbidden");
  await assert.rejects(bob.publish("nons:1", {}), (e) => e.code === "bad_request");
  const failed = bob.subscribe("unknown:x");
  await assert.rejects(failed.ready(), (e) => e.code === "bad_request");
  assert.equal(failed.state, "failed");
  assert.equal(typeof (await bob.ping()), "number");
  assert.equal(bob.state, "connected");

  // Unsubscribe stops delivery.
  await sub.unsubscribe();
  await bob.publish("chat:basic", { text: "after" });
  await sleep(200);
  assert.equal(got.length, 2);
});

test("presence, join and leave, broadcast and direct", async () => {
  const g = await gateway({ name: "presence" });
  const alice = client({ url: g.ws, params: { user: "alice" } }).connect();
  const sub = alice.subscribe("chat:pres");
  await sub.ready();
  const joins = [];
  const leaves = [];
  sub.on("join", (e) => joins.push(e));
  sub.on("leave", (e) => leaves.push(e));

  const bob = client({ url: g.ws, params: { user: "bob" } }).connect();
  const bobSub = bob.subscribe("chat:pres");
  await bobSub.ready();
  await waitFor(() => joins.some((j) => j.user === "bob"), 3000, "bob's join");
  const members = await alice.presence("chat:pres");
  assert.deepEqual(members.map((m) => m.user).sort(), ["alice", "bob"]);
  assert.deepEqual((await bobSub.presence()).length, 2);

  const broadcasts = [];
  const directs = [];
  alice.on("broadcast", (d) => broadcasts.push(d));
  alice.on("direct", (d) => directs.push(d));
  await api(g.http, "POST", "/api/broadcast", { data: { all: true } });
  await api(g.http, "POST", "/api/users/alice/send", { data: { to: "alice" } });
  await api(g.http, "POST", `/api/connections/${alice.conn}/send`, { data: { to: "conn" } });
  await waitFor(() => broadcasts.length === 1 && directs.length === 2, 3000, "pushes");
  assert.deepEqual(broadcasts, [{ all: true }]);
  assert.deepEqual(directs, [{ to: "alice" }, { to: "conn" }]);

  bob.close();
  await waitFor(() => leaves.some((l) => l.user === "bob"), 3000, "bob's leave");
});

test("a request without a reply times out", async () => {
  const g = await gateway({ name: "timeout" });
  const c = await connected(client({ url: g.ws, params: { user: "t" }, pingIntervalMs: 60000 }).connect());
  await g.freeze();
  try {
    await assert.rejects(c.ping(300), (e) => e instanceof GatewayError && e.code === "timeout");
  } finally {
    g.signal("SIGCONT");
  }
});

test("after a reconnect, resubscribes with since and delivers the missed messages in order", async () => {
  const g = await gateway({ name: "recover" });
  let gate = null;
  const c = client({
    url: async () => {
      if (gate) await gate.promise;
      return g.ws;
    },
    params: { user: "alice" },
  }).connect();
  const sub = c.subscribe("chat:rec");
  const first = await sub.ready();
  const got = collect(sub);
  const subscribed = [];
  sub.on("subscribed", (i) => subscribed.push(i));
  await api(g.http, "POST", "/api/publish", { channel: "chat:rec", data: { n: 1 } });
  await api(g.http, "POST", "/api/publish", { channel: "chat:rec", data: { n: 2 } });
  await waitFor(() => got.length === 2, 3000, "first messages");

  // Hold the reconnect until the missed messages are published.
  let release;
  gate = { promise: new Promise((r) => (release = r)) };
  const disc = once(c, "disconnected");
  await api(g.http, "POST", `/api/connections/${c.conn}/disconnect`, {});
  const info = await disc;
  assert.equal(info.code, 4004);
  assert.equal(info.reconnect, true);
  for (const n of [3, 4, 5]) await api(g.http, "POST", "/api/publish", { channel: "chat:rec", data: { n } });
  release();
  await waitFor(() => got.length === 5, 5000, "missed messages");
  assert.deepEqual(got.map((m) => [m.data.n, m.offset, m.replayed]), [
    [1, 1, false],
    [2, 2, false],
    [3, 3, true],
    [4, 4, true],
    [5, 5, true],
  ]);
  assert.equal(subscribed.length, 1);
  assert.equal(subscribed[0].recovered, true);
  assert.equal(subscribed[0].resubscribed, true);
  assert.equal(subscribed[0].epoch, first.epoch);
  assert.equal(subscribed[0].offset, 5);

  // Live messages keep flowing after the recovery, without duplicates.
  await api(g.http, "POST", "/api/publish", { channel: "chat:rec", data: { n: 6 } });
  await waitFor(() => got.length === 6, 3000, "live message");
  assert.equal(got[5].replayed, false);
});

test("recovered:false is surfaced when the gap was trimmed from history", async () => {
  const g = await gateway({ name: "trimmed" });
  let gate = null;
  const c = client({
    url: async () => {
      if (gate) await gate.promise;
      return g.ws;
    },
    params: { user: "alice" },
  }).connect();
  const sub = c.subscribe("small:x");
  await sub.ready();
  const got = collect(sub);
  await api(g.http, "POST", "/api/publish", { channel: "small:x", data: 1 });
  await waitFor(() => got.length === 1, 3000, "first message");
  let release;
  gate = { promise: new Promise((r) => (release = r)) };
  const disc = once(c, "disconnected");
  await api(g.http, "POST", `/api/connections/${c.conn}/disconnect`, { code: 4001 });
  assert.equal((await disc).code, 4001);
  for (let n = 2; n <= 10; n++) await api(g.http, "POST", "/api/publish", { channel: "small:x", data: n });
  const resub = once(sub, "subscribed");
  release();
  const info = await resub;
  assert.equal(info.recovered, false);
  assert.equal(info.resubscribed, true);
  // What is still retained (the last 3) is replayed, in order.
  await waitFor(() => got.length === 4, 3000, "retained messages");
  assert.deepEqual(got.map((m) => m.offset), [1, 8, 9, 10]);
});

test("recovered:false is surfaced when the stream's epoch changed (node restart)", async () => {
  const g1 = await gateway({ name: "epoch1" });
  const c = client({ url: g1.ws, params: { user: "alice" } }).connect();
  const sub = c.subscribe("chat:epoch");
  const first = await sub.ready();
  const got = collect(sub);
  await api(g1.http, "POST", "/api/publish", { channel: "chat:epoch", data: "old" });
  await waitFor(() => got.length === 1, 3000, "first message");

  const resub = once(sub, "subscribed", 15000);
  await g1.stop();
  const g2 = await gateway({ name: "epoch2", port: g1.port });
  const info = await resub;
  assert.equal(info.recovered, false);
  assert.notEqual(info.epoch, first.epoch);
  assert.deepEqual(sub.position, { offset: 0, epoch: info.epoch });
  await api(g2.http, "POST", "/api/publish", { channel: "chat:epoch", data: "new" });
  await waitFor(() => got.length === 2, 3000, "message of the new epoch");
  assert.deepEqual(got.map((m) => [m.data, m.offset]), [["old", 1], ["new", 1]]);
});

test("do-not-reconnect close codes stop the client (4500 via the API, 1009 for a too large frame)", async () => {
  const g = await gateway({ name: "fatal" });
  const c = await connected(client({ url: g.ws, params: { user: "alice" } }).connect());
  const closed = once(c, "closed");
  await api(g.http, "POST", `/api/connections/${c.conn}/disconnect`, { code: 4500, reason: "policy" });
  const info = await closed;
  assert.deepEqual([info.code, info.byClient], [4500, false]);
  assert.equal(c.state, "closed");
  await sleep(600);
  const nodes = await api(g.http, "GET", "/api/nodes");
  assert.equal(nodes.nodes[0].connections, 0, "no reconnect after 4500");
  await assert.rejects(c.publish("chat:x", 1), (e) => e.code === "closed");

  const d = await connected(client({ url: g.ws, params: { user: "bob" } }).connect());
  const dClosed = once(d, "closed");
  const big = d.publish("chat:x", { blob: "x".repeat(20000) });
  await assert.rejects(big, (e) => e instanceof GatewayError);
  assert.equal((await dClosed).code, 1009);
  await sleep(600);
  assert.equal(d.state, "closed");
  assert.equal((await api(g.http, "GET", "/api/nodes")).nodes[0].connections, 0, "no reconnect after 1009");
});

test("reconnects with exponential backoff and jitter, and resets after a stable connection", async () => {
  const g = await gateway({ name: "backoff1" });
  const draws = [];
  let rnd = 0.37;
  const c = client({
    url: g.ws,
    params: { user: "alice" },
    minReconnectDelayMs: 40,
    maxReconnectDelayMs: 400,
    stableAfterMs: 300,
    random: () => {
      rnd = (rnd * 9301 + 0.49297) % 1;
      draws.push(rnd);
      return rnd;
    },
  }).connect();
  await connected(c);
  const events = [];
  c.on("disconnected", (i) => events.push(i));
  await g.stop();
  await waitFor(() => events.length >= 6, 10000, "six reconnect attempts");
  const attempts = events.slice(0, 6);
  assert.deepEqual(attempts.map((e) => e.attempt), [0, 1, 2, 3, 4, 5]);
  attempts.forEach((e, i) => {
    const ceiling = Math.min(400, 40 * 2 ** (i + 1));
    assert.ok(e.reconnect);
    assert.ok(e.delayMs >= 40 && e.delayMs <= ceiling, `attempt ${i}: ${e.delayMs} not in [40, ${ceiling}]`);
    assert.equal(e.delayMs, backoffDelay(i, 40, 400, () => draws[i]));
  });
  assert.ok(new Set(attempts.map((e) => e.delayMs)).size > 3, "jittered delays differ");

  // The node comes back on the same port: the client reconnects; after
  // stableAfterMs the attempt counter is back at 0.
  const g2 = await gateway({ name: "backoff2", port: g.port });
  await waitFor(() => c.state === "connected", 5000, "reconnect");
  await sleep(400);
  const n = events.length;
  await g2.stop();
  await waitFor(() => events.length > n, 5000, "disconnect");
  assert.equal(events[n].attempt, 0);
  assert.equal(events[n].code, 1006);
});

test("a draining node (1001) is left at once for the next URL in the list", async () => {
  const a = await gateway({ name: "drainA", env: { GATEWAY_DRAIN_GRACE_MS: "1000" } });
  const b = await gateway({ name: "drainB" });
  const c = await connected(client({ url: [a.ws, b.ws], params: { user: "alice" } }).connect());
  const nodeA = c.node;
  const sub = c.subscribe("chat:drain");
  await sub.ready();
  const disc = once(c, "disconnected");
  const resub = once(sub, "subscribed", 5000);
  a.signal("SIGTERM");
  const info = await disc;
  assert.deepEqual([info.code, info.reconnect, info.delayMs], [1001, true, 0]);
  await resub;
  assert.equal(c.state, "connected");
  assert.notEqual(c.node, nodeA);
  // Another node's stream (embedded backends: separate history): recovery fails visibly.
  assert.equal((await resub).recovered, false);
});

test("a dead connection is detected with the ping op and replaced", async () => {
  const a = await gateway({ name: "deadA" });
  const b = await gateway({ name: "deadB" });
  const c = await connected(
    client({ url: [a.ws, b.ws], params: { user: "alice" }, pingIntervalMs: 200, pongTimeoutMs: 300 }).connect(),
  );
  // Pings keep a healthy connection up.
  await sleep(700);
  assert.equal(c.state, "connected");
  const nodeA = c.node;
  const disc = once(c, "disconnected", 3000);
  const t0 = Date.now();
  await a.freeze(); // the socket stays open, nothing answers
  try {
    const info = await disc;
    assert.equal(info.reason, "ping timeout");
    assert.equal(info.reconnect, true);
    assert.ok(Date.now() - t0 < 1500, `detected after ${Date.now() - t0} ms`);
    await waitFor(() => c.state === "connected", 3000, "reconnect to b");
    assert.notEqual(c.node, nodeA);
  } finally {
    a.signal("SIGCONT");
  }
});

test("the token callback runs before every connect; an expired token (4002) reconnects at once", async () => {
  const secret = "test-secret-0123456789";
  const g = await gateway({ name: "jwt", env: { GATEWAY_JWT_SECRET: secret, GATEWAY_AUTH_REQUIRED: "true" } });
  let calls = 0;
  const c = client({
    url: g.ws,
    token: async () => {
      calls++;
      return signJwt(secret, { sub: "alice", exp: Math.floor(Date.now() / 1000) + 2 });
    },
  }).connect();
  const welcome = await once(c, "connected");
  assert.equal(welcome.user, "alice");
  assert.equal(calls, 1);
  const info = await once(c, "disconnected", 5000);
  assert.deepEqual([info.code, info.delayMs], [4002, 0]);
  await waitFor(() => c.state === "connected", 3000, "reconnect");
  assert.equal(calls, 2);
});

test("getToken refreshes in band before exp: the connection outlives its first token", async () => {
  const secret = "test-secret-0123456789";
  const g = await gateway({ name: "jwt-refresh", env: { GATEWAY_JWT_SECRET: secret, GATEWAY_AUTH_REQUIRED: "true" } });
  let calls = 0;
  const c = client({
    url: g.ws,
    // The first token lasts 2 s, later ones 60 s.
    token: signJwt(secret, { sub: "alice", exp: Math.floor(Date.now() / 1000) + 2 }),
    getToken: async () => {
      calls++;
      return signJwt(secret, { sub: "alice", exp: Math.floor(Date.now() / 1000) + 60 });
    },
    refreshBeforeMs: 1000,
  }).connect();
  await once(c, "connected");
  const disconnects = [];
  c.on("disconnected", (info) => disconnects.push(info));
  const exp = await once(c, "refreshed", 5000);
  assert.equal(calls, 1);
  assert.ok(exp > Math.floor(Date.now() / 1000) + 30, `new exp ${exp}`);
  // Past the first token's exp: still the same connection.
  const conn = c.conn;
  await sleep(2500);
  assert.deepEqual(disconnects, []);
  assert.equal(c.conn, conn);
  await c.ping();
});

test("a refused in-band refresh is reported and the server still closes at exp", async () => {
  const secret = "test-secret-0123456789";
  const g = await gateway({ name: "jwt-refresh-bad", env: { GATEWAY_JWT_SECRET: secret, GATEWAY_AUTH_REQUIRED: "true" } });
  const c = client({
    url: g.ws,
    token: signJwt(secret, { sub: "alice", exp: Math.floor(Date.now() / 1000) + 2 }),
    getToken: async () => signJwt(secret, { sub: "mallory", exp: Math.floor(Date.now() / 1000) + 60 }),
    refreshBeforeMs: 1000,
  }).connect();
  await once(c, "connected");
  const err = await once(c, "refreshFailed", 5000);
  assert.equal(err.code, "forbidden");
  const info = await once(c, "disconnected", 5000);
  assert.equal(info.code, 4002);
});

test("server-side subscriptions: JWT subs and the HTTP API surface as subscriptions, kept across a reconnect", async () => {
  const secret = "test-secret-0123456789";
  const g = await gateway({ name: "server-subs", env: { GATEWAY_JWT_SECRET: secret, GATEWAY_AUTH_REQUIRED: "true" } });
  const token = () => signJwt(secret, { sub: "alice", exp: Math.floor(Date.now() / 1000) + 600, subs: ["chat:srv"] });
  const c = client({ url: g.ws, token });
  const server = [];
  const got = {};
  c.on("serverSubscribed", (sub) => {
    server.push(sub.channel);
    got[sub.channel] = collect(sub);
  });
  c.connect();
  await waitFor(() => c.getSubscription("chat:srv")?.state === "subscribed", 5000, "the JWT's subscription");
  const srv = c.getSubscription("chat:srv");
  assert.equal(srv.server, true);
  await api(g.http, "POST", "/api/publish", { channel: "chat:srv", data: { n: 1 } });
  await waitFor(() => got["chat:srv"]?.length === 1, 3000, "a message of the JWT's subscription");
  // The app's own subscribe of it is the same subscription, not an error.
  assert.equal(c.subscribe("chat:srv"), srv);

  // From the HTTP API, for every device of the user.
  await api(g.http, "POST", "/api/users/alice/subscribe", { channel: "chat:api" });
  await waitFor(() => c.getSubscription("chat:api")?.state === "subscribed", 5000, "the API's subscription");
  assert.deepEqual(server, ["chat:srv", "chat:api"]);
  await api(g.http, "POST", "/api/publish", { channel: "chat:api", data: { n: 2 } });
  await waitFor(() => got["chat:api"]?.length === 1, 3000, "a message of the API's subscription");

  // A reconnect keeps both: the server subscribes chat:srv again (JWT),
  // the SDK resubscribes chat:api itself, with recovery.
  const errors = [];
  c.on("error", (e) => errors.push(e));
  srv.on("error", (e) => errors.push(e));
  const disc = once(c, "disconnected");
  await api(g.http, "POST", `/api/connections/${c.conn}/disconnect`, {});
  await disc;
  await connected(c);
  await waitFor(
    () => c.getSubscription("chat:srv")?.state === "subscribed" && c.getSubscription("chat:api")?.state === "subscribed",
    5000,
    "both subscriptions back",
  );
  assert.equal(c.getSubscription("chat:srv"), srv, "the same object");
  await api(g.http, "POST", "/api/publish", { channel: "chat:srv", data: { n: 3 } });
  await api(g.http, "POST", "/api/publish", { channel: "chat:api", data: { n: 4 } });
  await waitFor(() => got["chat:srv"].length === 2 && got["chat:api"].length === 2, 3000, "messages after the reconnect");
  assert.deepEqual(errors, [], "no error for the server's and the SDK's subscribe meeting");
  assert.deepEqual(server, ["chat:srv", "chat:api"], "no new subscription objects");

  // The server unsubscribes: the subscription ends and says so.
  const api2 = c.getSubscription("chat:api");
  const ended = once(api2, "unsubscribed");
  await api(g.http, "POST", "/api/users/alice/unsubscribe", { channel: "chat:api" });
  await ended;
  assert.equal(api2.state, "unsubscribed");
  assert.equal(c.getSubscription("chat:api"), undefined);
});
