// The HTTP API through the official `pusher` server library against the
// 2-node cluster: multi-channel trigger, triggerBatch, channel listings and
// info, presence users, terminateUserConnections; and the refusals (status
// codes) for a wrong secret, a wrong key, a stale timestamp, a body that
// does not match its body_md5, an unknown app, a bad body, a too large one.
// The hand-signed requests are checked against a control request signed
// the same way that must succeed.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash, createHmac } from "node:crypto";

import { startBackend } from "./lib/backend.mjs";
import { APP, startCluster, serverLib } from "./lib/cluster.mjs";
import { connected, subscribe, collect, disconnectAll, eventually, waitFor } from "./lib/clients.mjs";

const T = { timeout: 30000 };

let backend;
let cluster;
let n1;
let n2;
let api1;
let api2;

before(async () => {
  backend = await startBackend(APP);
  cluster = await startCluster({ name: "rest", webhookUrl: backend.webhookUrl });
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

/** The status of a rejected library call (RequestError.status), or 2xx. */
async function statusOf(promise) {
  try {
    const res = await promise;
    return res.status;
  } catch (e) {
    if (e?.status === undefined) throw e;
    return e.status;
  }
}

/**
 * A request signed by hand as Pusher signs: query auth_key, auth_timestamp,
 * auth_version, body_md5 (when there is a body) and any `params`, sorted,
 * then auth_signature = HMAC-SHA256(secret, "METHOD\nPATH\nQUERY").
 * `tamper` may change { timestamp, bodyMd5, sentBody, key, secret }.
 */
async function signedFetch(node, method, path, body, tamper = {}) {
  const secret = tamper.secret ?? APP.secret;
  const bodyText = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
  const q = {
    auth_key: tamper.key ?? APP.key,
    auth_timestamp: String(tamper.timestamp ?? Math.floor(Date.now() / 1000)),
    auth_version: "1.0",
    ...(tamper.params ?? {}),
  };
  if (bodyText !== undefined) q.body_md5 = tamper.bodyMd5 ?? createHash("md5").update(bodyText).digest("hex");
  const query = Object.keys(q)
    .sort()
    .map((k) => `${k}=${q[k]}`)
    .join("&");
  const signature = createHmac("sha256", secret).update(`${method}\n${path}\n${query}`).digest("hex");
  const sent = tamper.sentBody ?? bodyText;
  const res = await fetch(`${node.http}${path}?${query}&auth_signature=${signature}`, {
    method,
    headers: sent === undefined ? {} : { "content-type": "application/json" },
    body: sent,
  });
  return { status: res.status, text: await res.text() };
}

test("trigger to several channels at once reaches each channel's subscribers on both nodes", T, async () => {
  const a = await connected(n1.port, opts("alice"));
  const b = await connected(n2.port, opts("bob"));
  const channels = ["multi-a", "multi-b", "private-multi-c"];
  const seen = [];
  for (const [i, c] of [a, b].entries()) {
    for (const ch of channels) {
      const { channel } = await subscribe(c, ch);
      channel.bind("fanout", (d) => seen.push(`${i}:${ch}:${d.n}`));
    }
  }
  const res = await api1.trigger(channels, "fanout", { n: 1 });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), {});
  await waitFor(() => seen.length >= 6, 5000, "6 deliveries");
  assert.deepEqual(seen.sort(), channels.flatMap((ch) => [`0:${ch}:1`, `1:${ch}:1`]).sort());
  a.disconnect();
  b.disconnect();
});

test("triggerBatch delivers each event to its channel, honouring socket_id", T, async () => {
  const a = await connected(n1.port, opts("alice"));
  const b = await connected(n2.port, opts("bob"));
  const [sa1, sa2, sb1, sb2] = await Promise.all([subscribe(a, "batch-1"), subscribe(a, "batch-2"), subscribe(b, "batch-1"), subscribe(b, "batch-2")]);
  const [ea1, ea2, eb1, eb2] = [sa1, sa2, sb1, sb2].map((s) => collect(s.channel));
  const res = await api2.triggerBatch([
    { channel: "batch-1", name: "e1", data: { n: 1 } },
    { channel: "batch-2", name: "e2", data: "two" },
    { channel: "batch-1", name: "e3", data: { n: 3 }, socket_id: a.socketId },
  ]);
  assert.equal(res.status, 200);
  await eb1.wait("e3");
  await eb2.wait("e2", (d) => d === "two");
  await ea2.wait("e2", (d) => d === "two");
  await ea1.wait("e1", (d) => d.n === 1);
  assert.deepEqual(eb1.of("e1").map((e) => e.data), [{ n: 1 }]);
  // Barrier for the excluded one: a later event on batch-1 reaches alice.
  await api1.trigger("batch-1", "after", {});
  await ea1.wait("after");
  assert.deepEqual(ea1.of("e3"), [], "socket_id in a batch item excludes alice");
  a.disconnect();
  b.disconnect();
});

test("GET /channels, /channels/{c} and /channels/{c}/users see the whole cluster", T, async () => {
  const alice = await connected(n1.port, opts("alice"));
  const alice2 = await connected(n2.port, opts("alice"));
  const bob = await connected(n2.port, opts("bob"));
  await Promise.all([alice, alice2, bob].map((c) => subscribe(c, "presence-lobby")));
  await Promise.all([subscribe(alice, "info-public"), subscribe(bob, "info-public")]);
  await subscribe(bob, "private-info");

  const get = async (api, path, params) => {
    const res = await api.get({ path, params });
    assert.equal(res.status, 200, path);
    return res.json();
  };

  // The listings may lag a subscription on another node by a moment:
  // each check is retried for a bounded time.
  // Presence channels only, with their user count, from either node.
  for (const api of [api1, api2]) {
    await eventually(async () => {
      const body = await get(api, "/channels", { filter_by_prefix: "presence-", info: "user_count" });
      assert.deepEqual(body, { channels: { "presence-lobby": { user_count: 2 } } });
    });
  }
  await eventually(async () => {
    const all = await get(api1, "/channels");
    for (const ch of ["presence-lobby", "info-public", "private-info"]) assert.ok(ch in all.channels, `${ch} listed: ${JSON.stringify(all)}`);
  });
  await eventually(async () => {
    const priv = await get(api2, "/channels", { filter_by_prefix: "private-" });
    assert.deepEqual(Object.keys(priv.channels), ["private-info"]);
  });

  await eventually(async () => {
    const lobby = await get(api1, "/channels/presence-lobby", { info: "user_count,subscription_count" });
    assert.equal(lobby.occupied, true);
    assert.equal(lobby.user_count, 2, JSON.stringify(lobby));
    assert.equal(lobby.subscription_count, 3, JSON.stringify(lobby));
  });
  await eventually(async () => {
    const pub = await get(api2, "/channels/info-public", { info: "subscription_count" });
    assert.equal(pub.occupied, true);
    assert.equal(pub.subscription_count, 2, JSON.stringify(pub));
  });
  const empty = await get(api2, "/channels/nobody-here");
  assert.equal(empty.occupied, false, JSON.stringify(empty));

  await eventually(async () => {
    const users = await get(api2, "/channels/presence-lobby/users");
    assert.deepEqual(users.users.map((u) => u.id).sort(), ["alice", "bob"]);
  });

  // Leaving shows up everywhere.
  bob.disconnect();
  await waitFor(async () => (await get(api1, "/channels/presence-lobby/users")).users.length === 1, 5000, "bob gone from users");
  await waitFor(async () => !("private-info" in (await get(api1, "/channels")).channels), 5000, "private-info vacated");
  alice.disconnect();
  alice2.disconnect();
  await waitFor(async () => (await get(api2, "/channels", { filter_by_prefix: "presence-" })).channels["presence-lobby"] === undefined, 5000, "presence-lobby vacated");
});

test("terminateUserConnections over REST closes that user's connections on both nodes", T, async () => {
  const alice1 = await connected(n1.port, opts("alice"));
  const alice2 = await connected(n2.port, opts("alice"));
  for (const c of [alice1, alice2]) c.pusher.signin();
  for (const c of [alice1, alice2]) await c.frame((f) => f.event === "pusher:signin_success", 5000, "signin_success");
  const res = await api1.terminateUserConnections("alice");
  assert.equal(res.status, 200);
  for (const c of [alice1, alice2]) await c.waitState("disconnected");
  // Nobody signed in as that user: still 200.
  assert.equal(await statusOf(api2.terminateUserConnections("nobody")), 200);
});

test("refusals: wrong secret, wrong key, unknown app -> 401, 401, 404", T, async () => {
  const wrongSecret = serverLib(n1, { ...APP, secret: "wrong-secret" });
  assert.equal(await statusOf(wrongSecret.trigger("refused", "e", {})), 401);
  assert.equal(await statusOf(wrongSecret.get({ path: "/channels" })), 401);
  const wrongKey = serverLib(n1, { ...APP, key: "wrong-key" });
  assert.equal(await statusOf(wrongKey.trigger("refused", "e", {})), 401);
  const noApp = serverLib(n2, { ...APP, id: "no-such-app" });
  assert.equal(await statusOf(noApp.trigger("refused", "e", {})), 404);
  assert.equal(await statusOf(noApp.get({ path: "/channels" })), 404);
});

test("refusals of hand-signed requests: stale timestamp, body changed after signing, wrong body_md5 -> 401; bad body 400; too large 413", T, async () => {
  const path = `/apps/${APP.id}/events`;
  const body = { name: "e", channel: "signed", data: "{}" };
  // Control: signed by hand, fresh: accepted.
  const ok = await signedFetch(n1, "POST", path, body);
  assert.equal(ok.status, 200, ok.text);
  assert.deepEqual(JSON.parse(ok.text), {});
  const okGet = await signedFetch(n2, "GET", `/apps/${APP.id}/channels`, undefined, { params: { filter_by_prefix: "presence-" } });
  assert.equal(okGet.status, 200, okGet.text);

  const stale = await signedFetch(n1, "POST", path, body, { timestamp: Math.floor(Date.now() / 1000) - 700 });
  assert.equal(stale.status, 401, `stale auth_timestamp: ${stale.text}`);
  const future = await signedFetch(n1, "POST", path, body, { timestamp: Math.floor(Date.now() / 1000) + 700 });
  assert.equal(future.status, 401, `future auth_timestamp: ${future.text}`);
  const changed = await signedFetch(n1, "POST", path, body, { sentBody: JSON.stringify({ ...body, data: '{"evil":1}' }) });
  assert.equal(changed.status, 401, `body changed after signing: ${changed.text}`);
  const wrongMd5 = await signedFetch(n1, "POST", path, body, { bodyMd5: createHash("md5").update("something else").digest("hex") });
  assert.equal(wrongMd5.status, 401, `wrong body_md5: ${wrongMd5.text}`);
  const badSig = await signedFetch(n2, "GET", `/apps/${APP.id}/channels`, undefined, { secret: "nope" });
  assert.equal(badSig.status, 401, `bad signature on GET: ${badSig.text}`);

  const notJson = await signedFetch(n1, "POST", path, "this is not json");
  assert.equal(notJson.status, 400, `unparsable body: ${notJson.text}`);
  const noChannel = await signedFetch(n1, "POST", path, { name: "e", data: "{}" });
  assert.equal(noChannel.status, 400, `no channel: ${noChannel.text}`);
  const big = await signedFetch(n1, "POST", path, { name: "e", channel: "signed", data: "x".repeat(20000) });
  assert.equal(big.status, 413, `data over max_event_bytes: ${big.text}`);
});
