// Laravel Echo (broadcaster "pusher", pusher-js underneath), configured as a
// Laravel app configures it but for host and port, against the 2-node
// cluster: Echo.private(...).listen(...) and Echo.join(...).here/joining/
// leaving, events triggered by the official `pusher` library as Laravel's
// broadcaster does, whispers between nodes, and toOthers (socket_id).
//
// Echo prefixes channel names (private-orders.1, presence-room.1) and event
// names (App\Events\OrderShipped) unless the listened name starts with ".".

import { test, before, after } from "node:test";
import assert from "node:assert/strict";

import Echo from "laravel-echo";

import { startBackend, userInfo } from "./lib/backend.mjs";
import { APP, startCluster, serverLib } from "./lib/cluster.mjs";
import { PusherJs, record, waitFor } from "./lib/clients.mjs";

const T = { timeout: 30000 };

let backend;
let cluster;
let api;
const echos = [];

before(async () => {
  backend = await startBackend(APP);
  cluster = await startCluster({ name: "echo", webhookUrl: backend.webhookUrl });
  api = serverLib(cluster.nodes[0]);
});

after(async () => {
  for (const e of echos) e.disconnect();
  await cluster?.stop();
  await backend?.close();
});

/** An Echo instance for `user` on node `i`, as resources/js/echo.js would make it. */
function echoFor(user, i) {
  const echo = new Echo({
    broadcaster: "pusher",
    key: APP.key,
    wsHost: "127.0.0.1",
    wsPort: cluster.nodes[i].port,
    forceTLS: false,
    enabledTransports: ["ws"],
    cluster: "mt1",
    authEndpoint: `${backend.url}/pusher/auth`,
    // What a Laravel session cookie does; explicit per instance, because
    // Echo mutates its shared default `auth.headers` when it sets tokens.
    auth: { headers: { Authorization: `Bearer ${user}` } },
    Pusher: PusherJs,
  });
  echos.push(echo);
  const rec = record(echo.connector.pusher);
  return { echo, rec };
}

test("Echo.private(...).listen: dotted and namespaced event names", T, async () => {
  const { echo, rec } = echoFor("alice", 0);
  const { echo: echo2 } = echoFor("bob", 1);
  const got = [];
  const subscribed = [];
  for (const [who, e] of [["alice", echo], ["bob", echo2]]) {
    e.private("orders.1")
      .subscribed(() => subscribed.push(who))
      .error((err) => got.push({ who, error: err }))
      .listen(".order.shipped", (data) => got.push({ who, kind: "dotted", data }))
      .listen("OrderShipped", (data) => got.push({ who, kind: "namespaced", data }));
  }
  await waitFor(() => subscribed.length === 2, 10000, "both subscribed to private-orders.1");
  assert.ok(backend.authRequests.some((r) => r.channel === "private-orders.1" && r.user === "alice"));
  assert.ok(rec.frames.some((f) => f.event === "pusher_internal:subscription_succeeded" && f.channel === "private-orders.1"));

  await api.trigger("private-orders.1", "order.shipped", { order: { id: 1 } });
  await api.trigger("private-orders.1", "App\\Events\\OrderShipped", { order: { id: 2 } });
  await waitFor(() => got.length >= 4, 5000, "four deliveries");
  const sorted = got.map((g) => `${g.who}:${g.kind}:${g.data?.order?.id}`).sort();
  assert.deepEqual(sorted, ["alice:dotted:1", "alice:namespaced:2", "bob:dotted:1", "bob:namespaced:2"]);
  echo.leave("orders.1");
  echo2.leave("orders.1");
});

test("Echo.join(...).here/joining/leaving across nodes; whisper; toOthers", T, async () => {
  const alice = echoFor("alice", 0);
  const log = { here: null, joining: [], leaving: [], whispers: [], shipped: [] };
  alice.echo
    .join("room.1")
    .here((users) => {
      log.here = users;
    })
    .joining((u) => log.joining.push(u))
    .leaving((u) => log.leaving.push(u))
    .listenForWhisper("typing", (d) => log.whispers.push(d))
    .listen(".order.shipped", (d) => log.shipped.push(d));
  await waitFor(() => log.here, 10000, "alice's here()");
  assert.deepEqual(log.here, [userInfo("alice")]);

  const bob = echoFor("bob", 1);
  const bobLog = { here: null, whispers: [], shipped: [] };
  const bobRoom = bob.echo
    .join("room.1")
    .here((users) => {
      bobLog.here = users;
    })
    .listenForWhisper("typing", (d) => bobLog.whispers.push(d))
    .listen(".order.shipped", (d) => bobLog.shipped.push(d));
  await waitFor(() => bobLog.here, 10000, "bob's here()");
  assert.deepEqual(bobLog.here.map((u) => u.id).sort(), ["alice", "bob"]);
  await waitFor(() => log.joining.length === 1, 5000, "alice sees bob joining");
  assert.deepEqual(log.joining, [userInfo("bob")]);

  // Whisper (client-typing) from node 2 to node 1, and not back to bob.
  bobRoom.whisper("typing", { name: "bob" });
  await waitFor(() => log.whispers.length === 1, 5000, "alice gets bob's whisper");
  assert.deepEqual(log.whispers, [{ name: "bob" }]);

  // toOthers: Laravel sends the X-Socket-ID of the requester as socket_id.
  await api.trigger("presence-room.1", "order.shipped", { n: 1 }, { socket_id: alice.echo.socketId() });
  await api.trigger("presence-room.1", "order.shipped", { n: 2 });
  await waitFor(() => log.shipped.length === 1 && bobLog.shipped.length === 2, 5000, "shipped events");
  assert.deepEqual(log.shipped, [{ n: 2 }], "alice excluded from n=1");
  assert.deepEqual(bobLog.whispers, [], "no echo of bob's own whisper");

  bob.echo.leave("room.1");
  await waitFor(() => log.leaving.length === 1, 5000, "alice sees bob leaving");
  assert.deepEqual(log.leaving, [userInfo("bob")]);
  alice.echo.leave("room.1");
});
