// End-to-end: /demo and /status in headless Chromium (Debian's chromium,
// driven by playwright-core) on a local 2-node cluster (redis-server + two
// gateway processes from target/debug/gateway or $GATEWAY_BIN).
//
// alice's page is served by node A, bob's by node B; they chat. Node A is
// frozen (SIGSTOP) while bob and the backend publish, then killed
// (SIGKILL): alice's page reconnects through node B (its SDK has both URLs)
// and shows what it missed, in order, marked as recovered. The status page
// lists both nodes before the kill. Screenshots and page logs go to
// target/browser-artifacts/.
//
// Env: CHROMIUM (default /usr/bin/chromium), GATEWAY_BIN.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, appendFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

import { chromium } from "playwright-core";

import { ROOT, startGateway, startRedis, api, waitFor } from "../../clients/js/test/harness.mjs";

const ARTIFACTS = path.join(process.env.CARGO_TARGET_DIR ?? path.join(ROOT, "target"), "browser-artifacts");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

const CONFIG = `
[namespaces.chat]
presence = true
join_leave = true
history_size = 100
history_ttl_secs = 600
client_publish = true

[namespaces.task]
history_size = 1000
`;

const run = Date.now().toString(36);
const ROOM = `e2e-${run}`;
const TASK = `e2e-${run}`;

let redis;
let nodeA;
let nodeB;
let context;
let userDataDir;

const pageLog = path.join(ARTIFACTS, "pages.log");

function watch(page, name) {
  page.on("console", (m) => appendFileSync(pageLog, `[${name}] console.${m.type()}: ${m.text()}\n`));
  page.on("pageerror", (e) => {
    appendFileSync(pageLog, `[${name}] pageerror: ${e.stack ?? e.message}\n`);
    pageErrors.push(`${name}: ${e.message}`);
  });
}
const pageErrors = [];

async function shot(page, name) {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** Texts of the chat messages shown on `page`, with their classes. */
function messages(page) {
  return page.$$eval("#messages li", (lis) =>
    lis.map((li) => ({
      from: li.querySelector(".from")?.textContent,
      text: li.querySelector(".text")?.textContent,
      offset: Number(li.dataset.offset),
      recovered: li.classList.contains("recovered"),
    })),
  );
}

async function waitForText(page, selector, text, timeout = 10000) {
  await page.waitForFunction(
    ([sel, t]) => [...document.querySelectorAll(sel)].some((el) => el.textContent.includes(t)),
    [selector, text],
    { timeout },
  );
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

before(async () => {
  rmSync(ARTIFACTS, { recursive: true, force: true });
  mkdirSync(ARTIFACTS, { recursive: true });
  writeFileSync(pageLog, "");
  redis = await startRedis();
  const env = {
    GATEWAY_REDIS_URL: redis.url,
    GATEWAY_PAGES: "true",
    GATEWAY_PRESENCE_REFRESH_MS: "1000",
    GATEWAY_PRESENCE_TTL_MS: "4000",
  };
  nodeA = await startGateway({ name: "nodeA", logDir: "browser", config: CONFIG, env: { ...env, GATEWAY_NODE_ID: "node-a" } });
  nodeB = await startGateway({ name: "nodeB", logDir: "browser", config: CONFIG, env: { ...env, GATEWAY_NODE_ID: "node-b" } });
  userDataDir = mkdtempSync(path.join(tmpdir(), "gw-chromium-"));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1100, height: 800 },
  });
  context.setDefaultTimeout(10000);
});

after(async () => {
  await context?.close().catch(() => {});
  if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
  await Promise.all([nodeA?.stop(), nodeB?.stop()]);
  await redis?.stop();
});

test("serves the pages and the SDK with their content types", async () => {
  for (const [p, type] of [
    ["/demo", "text/html"],
    ["/status", "text/html"],
    ["/sdk/gateway-client.js", "text/javascript"],
    ["/static/demo.js", "text/javascript"],
    ["/static/pages.css", "text/css"],
  ]) {
    const res = await fetch(nodeA.http + p);
    assert.equal(res.status, 200, p);
    assert.ok(res.headers.get("content-type").startsWith(type), `${p}: ${res.headers.get("content-type")}`);
    assert.equal(res.headers.get("cache-control"), "no-cache");
    const etag = res.headers.get("etag");
    const again = await fetch(nodeA.http + p, { headers: { "if-none-match": etag } });
    assert.equal(again.status, 304, `${p} revalidates`);
  }
});

test("two pages on two nodes chat; one node dies; its page recovers the missed messages in order through the other", async () => {
  // Log lines a task published before anyone opened a page.
  for (let i = 1; i <= 3; i++) {
    await api(nodeB.http, "POST", "/api/publish", { channel: `task:${TASK}`, data: { line: `early line ${i}` } });
  }

  const alice = await context.newPage();
  const bob = await context.newPage();
  watch(alice, "alice");
  watch(bob, "bob");
  const q = (user, urls) => `/demo?user=${user}&room=${ROOM}&task=${TASK}&urls=${encodeURIComponent(urls.join(","))}`;
  await alice.goto(nodeA.http + q("alice", [nodeA.ws, nodeB.ws]));
  await bob.goto(nodeB.http + q("bob", [nodeB.ws, nodeA.ws]));
  await alice.waitForSelector('#state[data-state="connected"][data-node="node-a"]');
  await bob.waitForSelector('#state[data-state="connected"][data-node="node-b"]');

  // Presence across nodes.
  await alice.waitForSelector('#members li[data-user="bob"]');
  await bob.waitForSelector('#members li[data-user="alice"]');

  // Chat both ways.
  await say(alice, "hello bob");
  await waitForText(bob, "#messages .text", "hello bob");
  await say(bob, "hi alice");
  await waitForText(alice, "#messages .text", "hi alice");
  await waitForText(alice, "#messages .text", "hello bob");

  // The task log replays what was published before the page opened, then live lines.
  await api(nodeA.http, "POST", "/api/publish", { channel: `task:${TASK}`, data: { line: "live line 4" } });
  await waitForText(alice, "#log .text", "live line 4");
  const log = await alice.$$eval("#log li", (lis) => lis.map((li) => [li.className, li.querySelector(".text").textContent]));
  assert.deepEqual(log, [
    ["replayed", "early line 1"],
    ["replayed", "early line 2"],
    ["replayed", "early line 3"],
    ["live", "live line 4"],
  ]);
  await shot(alice, "01-alice-chat-node-a");
  await shot(bob, "02-bob-chat-node-b");

  // The status page lists both nodes.
  const status = await context.newPage();
  watch(status, "status");
  await status.goto(`${nodeB.http}/status?interval=500`);
  await status.waitForSelector('#nodes tr[data-node="node-a"]');
  await status.waitForSelector('#nodes tr[data-node="node-b"].self');
  await status.waitForFunction(() => document.getElementById("c-nodes").textContent === "2");
  await status.waitForFunction(() => /^[\d.,]+$/.test(document.getElementById("c-in").textContent));
  await shot(status, "03-status-two-nodes");

  // Node A stops answering, then dies: everything published in between is
  // missed by alice.
  const aliceBefore = await messages(alice);
  await nodeA.freeze();
  await say(bob, "missed 1");
  await waitForText(bob, "#messages .text", "missed 1");
  await say(bob, "missed 2");
  await waitForText(bob, "#messages .text", "missed 2");
  await api(nodeB.http, "POST", "/api/publish", { channel: `chat:${ROOM}`, data: { text: "missed 3 from the backend" } });
  await waitForText(bob, "#messages .text", "missed 3 from the backend");
  assert.deepEqual(await messages(alice), aliceBefore, "alice sees nothing while her node is frozen");
  nodeA.signal("SIGKILL");
  await nodeA.exited;

  // alice's page notices, reconnects through node B, and recovers.
  await alice.waitForSelector('#state[data-state="connected"][data-node="node-b"]', { timeout: 15000 });
  await waitForText(alice, "#messages .text", "missed 3 from the backend");
  const got = await messages(alice);
  assert.deepEqual(
    got.map((m) => [m.from, m.text, m.recovered]),
    [
      ["alice", "hello bob", false],
      ["bob", "hi alice", false],
      ["bob", "missed 1", true],
      ["bob", "missed 2", true],
      ["backend", "missed 3 from the backend", true],
    ],
  );
  assert.deepEqual(got.map((m) => m.offset), [1, 2, 3, 4, 5], "in order, no gap, no duplicate");
  await waitForText(alice, "#events li", "3 missed message(s) recovered");
  assert.equal(await alice.isHidden("#gap-banner"), true, "recovery succeeded: no gap banner");
  await shot(alice, "04-alice-recovered-via-node-b");

  // And the conversation goes on over node B.
  await say(alice, "back again");
  await waitForText(bob, "#messages .text", "back again");
  await say(bob, "welcome back");
  await waitForText(alice, "#messages .text", "welcome back");
  const after = await messages(alice);
  assert.deepEqual(after.slice(5).map((m) => [m.text, m.offset, m.recovered]), [
    ["back again", 6, false],
    ["welcome back", 7, false],
  ]);
  await shot(bob, "05-bob-after-recovery");

  // The dead node leaves the status page once its registry entry expires.
  await status.waitForSelector('#nodes tr[data-node="node-a"]', { state: "detached", timeout: 15000 });
  await status.waitForFunction(() => document.getElementById("c-nodes").textContent === "1");
  await shot(status, "06-status-after-kill");

  assert.deepEqual(pageErrors, [], "no uncaught errors in the pages");
});

test("the demo's task log: reopening replays every line from history", async () => {
  const page = await context.newPage();
  watch(page, "tasklog");
  await page.goto(`${nodeB.http}/demo?user=carol&room=${ROOM}&task=${TASK}`);
  await page.waitForSelector('#state[data-state="connected"]');
  await waitForText(page, "#log .text", "live line 4");
  await api(nodeB.http, "POST", "/api/publish", { channel: `task:${TASK}`, data: { line: "live line 5" } });
  await waitForText(page, "#log .text", "live line 5");
  assert.equal(await page.textContent("#log-summary"), "4 line(s) from history, 1 live");
  await page.click("#reopen");
  await page.waitForFunction(() => document.getElementById("log-summary").textContent === "5 line(s) from history, 0 live");
  const classes = await page.$$eval("#log li", (lis) => lis.map((li) => li.className));
  assert.deepEqual(classes, ["replayed", "replayed", "replayed", "replayed", "replayed"]);
  await shot(page, "07-task-log-reopened");
  assert.deepEqual(pageErrors, []);
  // The surviving node still counts this page.
  await waitFor(async () => (await api(nodeB.http, "GET", "/api/nodes")).nodes.some((n) => n.id === "node-b" && n.connections >= 3), 5000, "connections on node-b");
});
