// pusher-js's browser build in headless Chromium (Debian's chromium, driven
// by playwright-core) against the 2-node cluster. alice's page connects
// through the failover proxy (node 1 first), bob's to node 2. They use
// public, private and presence channels and client events; node 1 is
// SIGKILLed and alice's page reconnects (to node 2), resubscribes and
// receives again. The page and pusher.min.js come from the backend; the
// auth endpoints are on the backend's other port (cross-origin, CORS).
// Screenshots: target/pusher-artifacts/.
//
// Env: CHROMIUM (default /usr/bin/chromium), GATEWAY_BIN.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, appendFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

import { chromium } from "playwright-core";

import { ROOT } from "../../clients/js/test/harness.mjs";
import { startBackend } from "./lib/backend.mjs";
import { APP, startCluster, serverLib } from "./lib/cluster.mjs";
import { startProxy } from "./lib/proxy.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = path.join(process.env.CARGO_TARGET_DIR ?? path.join(ROOT, "target"), "pusher-artifacts");
const pageLog = path.join(ARTIFACTS, "pages.log");

let backend;
let cluster;
let proxy;
let context;
let userDataDir;
const pageErrors = [];

before(async () => {
  rmSync(ARTIFACTS, { recursive: true, force: true });
  mkdirSync(ARTIFACTS, { recursive: true });
  writeFileSync(pageLog, "");
  backend = await startBackend(APP);
  cluster = await startCluster({ name: "chromium", webhookUrl: backend.webhookUrl });
  proxy = await startProxy(cluster.nodes.map((n) => n.port));
  userDataDir = mkdtempSync(path.join(tmpdir(), "pusher-chromium-"));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 900, height: 700 },
  });
  context.setDefaultTimeout(10000);
});

after(async () => {
  await context?.close().catch(() => {});
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
  await proxy?.close();
  await cluster?.stop();
  await backend?.close();
});

async function openPage(user, wsPort) {
  const page = await context.newPage();
  page.on("console", (m) => appendFileSync(pageLog, `[${user}] console.${m.type()}: ${m.text()}\n`));
  page.on("pageerror", (e) => {
    appendFileSync(pageLog, `[${user}] pageerror: ${e.stack ?? e.message}\n`);
    pageErrors.push(`${user}: ${e.message}`);
  });
  const q = new URLSearchParams({ key: APP.key, wsPort: String(wsPort), api: backend.apiUrl, user });
  await page.goto(`${backend.url}/page.html?${q}`);
  await page.waitForSelector('#state[data-state="connected"]');
  return page;
}

/** Wait in the page until `fn(arg)` (run there, with window.t) is truthy. */
const until = (page, fn, arg, timeout = 10000) => page.waitForFunction(fn, arg, { timeout });
const got = (page, channel, event, pred) =>
  until(page, ([c, e, p]) => window.t.events.some((x) => x.channel === c && x.event === e && (!p || JSON.stringify(x.data).includes(p))), [channel, event, pred]);

test("public, private, presence and client events in Chromium across nodes; reconnect after a node kill", { timeout: 90000 }, async () => {
  const [n1, n2] = cluster.nodes;
  const api = serverLib(n2);
  const alice = await openPage("alice", proxy.port);
  assert.equal(proxy.connections.get(n1.port), 1, "alice's page is on node 1");
  const bob = await openPage("bob", n2.port);
  const socketBefore = await alice.evaluate(() => window.t.socketId());
  assert.match(socketBefore, /^\d+\.\d+$/);

  const channels = ["browser-news", "private-browser", "presence-browser"];
  for (const page of [alice, bob]) {
    for (const ch of channels) await page.evaluate((c) => window.t.subscribe(c), ch);
  }
  for (const page of [alice, bob]) {
    for (const ch of channels) await until(page, (c) => window.t.subscribed(c), ch);
  }
  // The auth requests were cross-origin (the page is on backend.url).
  assert.ok(backend.authRequests.some((r) => r.user === "alice" && r.channel === "presence-browser"));

  // Events from the server library reach both pages.
  for (const ch of channels) await api.trigger(ch, "headline", { text: `on ${ch}` });
  for (const page of [alice, bob]) {
    for (const ch of channels) await got(page, ch, "headline", `on ${ch}`);
  }

  // Presence: both members on both pages.
  for (const page of [alice, bob]) {
    await until(page, () => JSON.stringify(window.t.members("presence-browser")) === '["alice","bob"]');
  }
  await alice.waitForSelector('#members li[data-user="bob"]');

  // Client events between the pages (node 1 -> node 2 and back), with user_id on presence.
  await alice.evaluate(() => window.t.trigger("presence-browser", "client-typing", { from: "alice" }));
  await until(bob, () => window.t.events.some((e) => e.event === "client-typing#meta" && e.meta?.user_id === "alice"));
  await bob.evaluate(() => window.t.trigger("private-browser", "client-typing", { from: "bob" }));
  await got(alice, "private-browser", "client-typing", "bob");
  assert.equal(await alice.evaluate(() => window.t.count("presence-browser", "client-typing")), 0, "not echoed");
  await alice.screenshot({ path: path.join(ARTIFACTS, "01-alice-node1.png"), fullPage: true });

  // Node 1 dies; alice's page reconnects through the proxy, to node 2.
  n1.signal("SIGKILL");
  await n1.exited;
  await until(alice, (before) => window.t.state() === "connected" && window.t.socketId() !== before, socketBefore, 20000);
  assert.ok(proxy.connections.get(n2.port) >= 1);
  for (const ch of channels) {
    await until(alice, (c) => window.t.events.filter((e) => e.channel === c && e.event === "pusher:subscription_succeeded").length >= 2, ch);
  }
  for (const ch of channels) await api.trigger(ch, "headline", { text: `again ${ch}` });
  for (const ch of channels) await got(alice, ch, "headline", `again ${ch}`);
  await until(bob, () => JSON.stringify(window.t.members("presence-browser")) === '["alice","bob"]', undefined, 10000);
  await bob.evaluate(() => window.t.trigger("private-browser", "client-typing", { from: "bob", after: "kill" }));
  await got(alice, "private-browser", "client-typing", "kill");
  const states = await alice.evaluate(() => window.t.states);
  assert.ok(states.includes("connecting") && states.at(-1) === "connected", states.join(","));
  await alice.screenshot({ path: path.join(ARTIFACTS, "02-alice-after-kill.png"), fullPage: true });
  await bob.screenshot({ path: path.join(ARTIFACTS, "03-bob.png"), fullPage: true });
  assert.deepEqual(pageErrors, [], "no uncaught errors in the pages");
});
