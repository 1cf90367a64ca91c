// Webhooks from the 2-node cluster to the backend: channel_occupied and
// channel_vacated (once per channel for the cluster, with subscribers on
// both nodes), member_added and member_removed, client_event; every
// delivery signed so that the official library's
// pusher.webhook({headers, rawBody}).isValid() accepts it.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";

import { startBackend } from "./lib/backend.mjs";
import { APP, startCluster, serverLib } from "./lib/cluster.mjs";
import { connected, subscribe, collect, disconnectAll, eventually, waitFor } from "./lib/clients.mjs";

const T = { timeout: 30000 };

let backend;
let cluster;
let n1;
let n2;

before(async () => {
  backend = await startBackend(APP);
  cluster = await startCluster({ name: "webhooks", webhookUrl: backend.webhookUrl });
  [n1, n2] = cluster.nodes;
});

after(async () => {
  disconnectAll();
  await cluster?.stop();
  await backend?.close();
});

const opts = (user) => ({ backend: backend.url, user });
const events = (name, channel) => backend.webhookEvents().filter((e) => e.name === name && e.channel === channel);
/** The deliveries about `channel`, for failure messages: [time_ms, node, name]. */
const story = (channel) =>
  JSON.stringify(
    backend.webhooks.flatMap((w) => w.events.filter((e) => e.channel === channel).map((e) => [w.body?.time_ms, w.headers["x-gateway-node"], e.name])),
  );
const hook = (name, channel, pred = () => true, ms = 10000) =>
  waitFor(() => events(name, channel).find(pred), ms, `webhook ${name} for ${channel}`);

test("channel_occupied and channel_vacated, once for the cluster", T, async () => {
  const ch = "hooked-public";
  const a = await connected(n1.port, opts());
  const b = await connected(n2.port, opts());
  await subscribe(a, ch);
  await hook("channel_occupied", ch);
  await subscribe(b, ch);
  // Node 1 has learnt of b's subscription on node 2 (the cluster's
  // occupancy is eventually consistent; the race when a leaves before that
  // was a gateway bug, tested below).
  const api1 = serverLib(n1);
  await eventually(async () => {
    const info = await (await api1.get({ path: `/channels/${ch}`, params: { info: "subscription_count" } })).json();
    assert.equal(info.subscription_count, 2);
  });
  a.disconnect();
  // Barrier: something that happens after both, on the same app.
  const c = await connected(n1.port, opts());
  await subscribe(c, "hooked-barrier");
  await hook("channel_occupied", "hooked-barrier");
  assert.equal(events("channel_vacated", ch).length, 0, `still occupied by b on node 2; webhooks: ${story(ch)}`);
  b.disconnect();
  await hook("channel_vacated", ch);
  assert.equal(events("channel_occupied", ch).length, 1, `occupied once, though subscribed on two nodes; webhooks: ${story(ch)}`);
  c.disconnect();
  await hook("channel_vacated", "hooked-barrier");
  assert.equal(events("channel_vacated", ch).length, 1, story(ch));
  const order = backend.webhookEvents().filter((e) => e.channel === ch).map((e) => e.name);
  assert.deepEqual(order, ["channel_occupied", "channel_vacated"]);
});

// Each node flushes its subscriber counts every 50 ms, and the transitions
// come from the sum; a channel's first subscriber on a node writes its count
// before its subscribe is answered (docs/pusher.md), so the last subscriber
// on node 1 leaving right after a subscriber on node 2 got
// subscription_succeeded must not vacate the channel. Before that fix this
// failed in 10 to 45 % of the tries.
test("no channel_vacated while the channel is occupied on another node, even right after that node's subscribe", T, async () => {
  // The window is a few tens of ms: seen in 10 to 45 % of the tries.
  for (let i = 0; i < 10; i++) {
    const ch = `hooked-race-${i}`;
    const a = await connected(n1.port, opts());
    const b = await connected(n2.port, opts());
    await subscribe(a, ch);
    await hook("channel_occupied", ch);
    await subscribe(b, ch);
    a.disconnect();
    // Barrier: a channel occupied through node 1 after a left; node 1 has
    // written a's leave by then (its writes go out in order).
    const c = await connected(n1.port, opts());
    await subscribe(c, `${ch}-barrier`);
    await hook("channel_occupied", `${ch}-barrier`);
    c.disconnect();
    const early = events("channel_vacated", ch).length;
    b.disconnect();
    await hook("channel_vacated", ch);
    assert.equal(early, 0, `try ${i}: channel_vacated while b was subscribed on node 2; webhooks ${story(ch)}`);
    const order = backend.webhookEvents().filter((e) => e.channel === ch).map((e) => e.name);
    assert.deepEqual(order, ["channel_occupied", "channel_vacated"], `try ${i}: webhooks ${story(ch)}`);
  }
});

test("member_added and member_removed for users on both nodes", T, async () => {
  const ch = "presence-hooked";
  const alice = await connected(n1.port, opts("alice"));
  const bob = await connected(n2.port, opts("bob"));
  await subscribe(alice, ch);
  await subscribe(bob, ch);
  await hook("member_added", ch, (e) => e.user_id === "alice");
  await hook("member_added", ch, (e) => e.user_id === "bob");
  await hook("channel_occupied", ch);
  bob.disconnect();
  await hook("member_removed", ch, (e) => e.user_id === "bob");
  alice.disconnect();
  await hook("member_removed", ch, (e) => e.user_id === "alice");
  await hook("channel_vacated", ch);
  assert.equal(events("member_added", ch).length, 2);
  assert.equal(events("member_removed", ch).length, 2);
});

test("client_event with channel, event, data, socket_id and user_id", T, async () => {
  const alice = await connected(n1.port, opts("alice"));
  const bob = await connected(n2.port, opts("bob"));
  for (const ch of ["presence-hooked-chat", "private-hooked-chat"]) {
    const [sa, sb] = await Promise.all([subscribe(alice, ch), subscribe(bob, ch)]);
    const eb = collect(sb.channel, ["client-wave"]);
    sa.channel.trigger("client-wave", { hand: "left" });
    await eb.wait("client-wave");
    const e = await hook("client_event", ch);
    assert.equal(e.event, "client-wave");
    assert.equal(e.socket_id, alice.socketId);
    const data = typeof e.data === "string" ? JSON.parse(e.data) : e.data;
    assert.deepEqual(data, { hand: "left" });
    if (ch.startsWith("presence-")) assert.equal(e.user_id, "alice");
  }
  alice.disconnect();
  bob.disconnect();
});

test("every delivery is valid for pusher.webhook(...).isValid(), with X-Pusher-Key and time_ms", T, async () => {
  await waitFor(() => backend.webhooks.length > 0, 5000, "some webhooks");
  for (const w of backend.webhooks) {
    assert.equal(w.valid, true, `invalid webhook: headers ${JSON.stringify(w.headers)} body ${w.raw}`);
    assert.equal(w.headers["x-pusher-key"], APP.key);
    assert.match(w.headers["x-pusher-signature"], /^[0-9a-f]{64}$/);
    assert.equal(typeof w.body.time_ms, "number");
    assert.ok(Math.abs(w.body.time_ms - Date.now()) < 60000, "time_ms is now-ish");
    assert.ok(Array.isArray(w.body.events) && w.body.events.length > 0);
  }
  // And the library rejects one that was tampered with (the check is real).
  const w = backend.webhooks[0];
  const lib = serverLib(n1);
  assert.equal(lib.webhook({ headers: w.headers, rawBody: w.raw.replace("channel", "chann3l") }).isValid(), false);
});
