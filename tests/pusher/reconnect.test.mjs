// pusher-js survives the death of its node: it is connected through a
// failover TCP proxy (lib/proxy.mjs: node 1 first, node 2 when node 1
// refuses), node 1 is SIGKILLed, and pusher-js reconnects on its own
// (through the proxy, now to node 2), resubscribes its public, private and
// presence channels (new socket_id, so new auth), and receives events
// again. Node 1 comes back on its old port at the end and joins the cluster.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";

import { startBackend } from "./lib/backend.mjs";
import { APP, startCluster, serverLib } from "./lib/cluster.mjs";
import { connected, subscribe, collect, disconnectAll, waitFor } from "./lib/clients.mjs";
import { startProxy } from "./lib/proxy.mjs";

let backend;
let cluster;
let proxy;

before(async () => {
  backend = await startBackend(APP);
  cluster = await startCluster({ name: "reconnect", webhookUrl: backend.webhookUrl });
  const [n1, n2] = cluster.nodes;
  proxy = await startProxy([n1.port, n2.port]);
});

after(async () => {
  disconnectAll();
  await proxy?.close();
  await cluster?.stop();
  await backend?.close();
});

test("node 1 is killed: pusher-js reconnects to node 2, resubscribes, receives again", { timeout: 60000 }, async () => {
  const [n1, n2] = cluster.nodes;
  const api2 = serverLib(n2);
  const carol = await connected(proxy.port, { backend: backend.url, user: "carol" });
  assert.equal(proxy.connections.get(n1.port), 1, "carol is on node 1");
  const dave = await connected(n2.port, { backend: backend.url, user: "dave" });

  const names = ["ticker", "private-feed", "presence-desk"];
  const subs = {};
  for (const name of names) {
    const { channel } = await subscribe(carol, name);
    subs[name] = { channel, events: collect(channel) };
  }
  const davesDesk = await subscribe(dave, "presence-desk");
  assert.equal(davesDesk.data.count, 2);
  for (const name of names) {
    await api2.trigger(name, "tick", { n: 1 });
    await subs[name].events.wait("tick", (d) => d.n === 1);
  }

  const firstSocket = carol.socketId;
  const statesBefore = carol.states.length;
  n1.signal("SIGKILL");
  await n1.exited;

  // pusher-js notices (the proxy drops its socket with node 1's), retries,
  // and the proxy sends the new connection to node 2.
  await waitFor(() => carol.state === "connected" && carol.socketId !== firstSocket, 20000, "carol connected again");
  assert.ok(proxy.connections.get(n2.port) >= 1, "the new connection went to node 2");
  assert.ok(carol.states.slice(statesBefore).includes("connecting"), `states: ${carol.states.join(",")}`);
  for (const name of names) {
    await subs[name].events.wait("pusher:subscription_succeeded", () => true, 10000).catch(() => {
      throw new Error(`${name} was not resubscribed`);
    });
  }
  assert.ok(backend.authRequests.some((r) => r.channel === "private-feed" && r.socketId === carol.socketId), "private channel re-authorized for the new socket_id");
  assert.ok(backend.authRequests.some((r) => r.channel === "presence-desk" && r.socketId === carol.socketId), "presence channel re-authorized");

  for (const name of names) {
    await api2.trigger(name, "tick", { n: 2 });
    await subs[name].events.wait("tick", (d) => d.n === 2);
  }
  // carol is (still, or again) a member of the presence channel for dave.
  await waitFor(() => davesDesk.channel.members.get("carol"), 10000, "carol in dave's member list");
  assert.ok(subs["presence-desk"].channel.members.get("dave"), "dave in carol's member list");

  // Node 1 comes back on its port and takes part again.
  const back = await cluster.restart(0);
  const api1 = serverLib(back);
  await api1.trigger("ticker", "tick", { n: 3 });
  await subs.ticker.events.wait("tick", (d) => d.n === 3);
  carol.disconnect();
  dave.disconnect();
});
