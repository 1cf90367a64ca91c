// End-to-end: the FastAPI example (examples/fastapi) in headless Chromium
// (Debian's chromium, driven by playwright-core) on a local 2-node cluster
// (redis-server + two gateway processes from target/debug/gateway or
// $GATEWAY_BIN), with the app run by uvicorn from the example's venv.
//
// The app mints the JWTs and publishes through node B's HTTP API with the
// Python SDK; the pages connect to node A. A task is started, and its page
// is opened only once some lines were published: it must show every line in
// order (the early ones replayed from history, then the live ones) and the
// finished state; /tasks/{id}/status answers from the channel info API.
// Then chat between two users (one of them on two devices): broadcast to
// others, presence, notifications to every device of a user. Last, node A
// is killed under an open task page, which reconnects through node B and
// recovers the lines it missed. Screenshots: target/browser-artifacts/fastapi/.
//
// Env: CHROMIUM (default /usr/bin/chromium), GATEWAY_BIN, FASTAPI_VENV
// (default ${CARGO_TARGET_DIR:-target}/fastapi-venv, made by
// examples/fastapi/setup-venv.sh, which tests/browser/run.sh calls).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import http from "node:http";
import { randomBytes } from "node:crypto";
import { appendFileSync, createWriteStream, existsSync, mkdirSync, readFileSync } from "node:fs";
import path from "node:path";

import { chromium } from "playwright-core";

import { ROOT, startGateway, startRedis, freePort, waitFor } from "../../clients/js/test/harness.mjs";

const TARGET = process.env.CARGO_TARGET_DIR ?? path.join(ROOT, "target");
const ARTIFACTS = path.join(TARGET, "browser-artifacts", "fastapi");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const VENV = process.env.FASTAPI_VENV ?? path.join(TARGET, "fastapi-venv");
const EXAMPLE = path.join(ROOT, "examples", "fastapi");

const JWT_SECRET = randomBytes(24).toString("hex");
const API_KEY = randomBytes(24).toString("hex");

let redis;
let nodeA;
let nodeB;
let app; // { proc, url, exited }
let browser;
const pageErrors = [];
const pageLog = path.join(ARTIFACTS, "pages.log");

/** The gateway's HTTP API with the key; resolves with the JSON body. */
async function gwApi(node, method, p, body) {
  const res = await fetch(node.http + p, {
    method,
    headers: { authorization: `Bearer ${API_KEY}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
  return JSON.parse(text);
}

/** The app's HTTP API (as a logged-in user when `user` is given). */
async function appApi(method, p, body, user) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (user) headers.cookie = `user=${user}`;
  const res = await fetch(app.url + p, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
    redirect: "manual",
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
  return JSON.parse(text);
}

async function startApp(port) {
  const uvicorn = path.join(VENV, "bin", "uvicorn");
  if (!existsSync(uvicorn)) {
    throw new Error(`no uvicorn at ${uvicorn}: run examples/fastapi/setup-venv.sh (tests/browser/run.sh does)`);
  }
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("GATEWAY_")) env[k] = v;
  Object.assign(env, {
    GATEWAY_JWT_SECRET: JWT_SECRET,
    GATEWAY_API_KEY: API_KEY,
    GATEWAY_API_URL: nodeB.http, // the app publishes through node B ...
    GATEWAY_WS_URL: `${nodeA.ws},${nodeB.ws}`, // ... the pages connect to node A first
    PYTHONUNBUFFERED: "1",
  });
  const logPath = path.join(TARGET, "test-logs", "browser", `fastapi-app-${process.pid}.log`);
  mkdirSync(path.dirname(logPath), { recursive: true });
  const log = createWriteStream(logPath);
  const proc = spawn(uvicorn, ["app:app", "--host", "127.0.0.1", "--port", String(port)], {
    cwd: EXAMPLE,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  proc.stdout.pipe(log);
  proc.stderr.pipe(log);
  const exited = new Promise((resolve) => proc.once("exit", (code, signal) => resolve({ code, signal })));
  let dead = null;
  let ready = false;
  exited.then((e) => (dead = e));
  // Whatever happens, uvicorn dies with the test process.
  const killOnExit = () => proc.kill("SIGKILL");
  process.once("exit", killOnExit);
  exited.then(() => process.off("exit", killOnExit));
  const url = `http://127.0.0.1:${port}`;
  try {
    await Promise.race([
      waitFor(
        async () => dead === null && (await fetch(`${url}/login`, { signal: AbortSignal.timeout(1000) })).status === 200,
        30000,
        `the FastAPI app on ${url} (log: ${logPath})`,
      ),
      // An app that exits (bad venv, import error, port taken) fails at once.
      exited.then((e) => {
        if (!ready) throw new Error(`uvicorn exited (${JSON.stringify(e)}); log: ${logPath}\n${readFileSync(logPath, "utf8")}`);
      }),
    ]);
    ready = true;
  } catch (e) {
    proc.kill("SIGKILL");
    throw e;
  }
  return {
    proc,
    url,
    exited,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill("SIGTERM");
        const t = setTimeout(() => proc.kill("SIGKILL"), 5000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}

function watch(page, name) {
  page.on("console", (m) => appendFileSync(pageLog, `[${name}] console.${m.type()}: ${m.text()}\n`));
  page.on("pageerror", (e) => {
    appendFileSync(pageLog, `[${name}] pageerror: ${e.stack ?? e.message}\n`);
    pageErrors.push(`${name}: ${e.message}`);
  });
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** A logged-in page of `user` at `next` in browser context `ctx`. */
async function openAs(ctx, user, next, name = user) {
  const page = await ctx.newPage();
  watch(page, name);
  await page.goto(`${app.url}/login?name=${encodeURIComponent(user)}&next=${encodeURIComponent(next)}`);
  await page.waitForSelector('#state[data-state="connected"]');
  return page;
}

async function waitForText(page, selector, text, timeout = 10000) {
  await page.waitForFunction(
    ([sel, t]) => [...document.querySelectorAll(sel)].some((el) => el.textContent.includes(t)),
    [selector, text],
    { timeout },
  );
}

const texts = (page, selector) => page.$$eval(selector, (els) => els.map((e) => e.textContent));

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  appendFileSync(pageLog, `--- run ${new Date().toISOString()}\n`);
  redis = await startRedis();
  // The example's own config file, with the secrets, the Redis URL and the
  // app's origin (a free port) from the environment, as the README says.
  const config = readFileSync(path.join(EXAMPLE, "gateway.toml"), "utf8");
  const env = {
    GATEWAY_REDIS_URL: redis.url,
    GATEWAY_JWT_SECRET: JWT_SECRET,
    GATEWAY_API_KEY: API_KEY,
  };
  // The app's port is known before the gateways start: it is in their
  // allowed origins.
  const appPort = await freePort();
  env.GATEWAY_ALLOWED_ORIGINS = `http://127.0.0.1:${appPort}`;
  nodeA = await startGateway({ name: "fastapi-nodeA", logDir: "browser", config, env: { ...env, GATEWAY_NODE_ID: "node-a" } });
  nodeB = await startGateway({ name: "fastapi-nodeB", logDir: "browser", config, env: { ...env, GATEWAY_NODE_ID: "node-b" } });
  app = await startApp(appPort);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});

after(async () => {
  await browser?.close().catch(() => {});
  await app?.stop();
  await Promise.all([nodeA?.stop(), nodeB?.stop()]);
  await redis?.stop();
});

/** The status of a WebSocket upgrade of `/ws` on `node` from `origin` (101 or the refusal's). */
function upgradeStatus(node, token, origin) {
  return new Promise((resolve, reject) => {
    const req = http.get(`${node.http}/ws?token=${encodeURIComponent(token)}`, {
      headers: {
        origin,
        connection: "Upgrade",
        upgrade: "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": randomBytes(16).toString("base64"),
      },
      timeout: 5000,
    });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve(res.statusCode);
    });
    req.on("response", (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on("timeout", () => req.destroy(new Error("upgrade timed out")));
    req.on("error", reject);
  });
}

test("the gateway lets the app's origin in and refuses other sites' pages", async () => {
  const { token } = await appApi("GET", "/token", undefined, "mallory");
  assert.equal(await upgradeStatus(nodeA, token, app.url), 101);
  assert.equal(await upgradeStatus(nodeA, token, "https://evil.example"), 403);
  // The token is the app's: without the login cookie there is none.
  await assert.rejects(appApi("GET", "/token"), /401/);
});

test("a task page opened late shows every line in order: history first, then live, then finished; status answers from channel info", async () => {
  const LINES = 30;
  // 30 lines over 6 s: the page opens after the 5th, well before the last.
  const task = await appApi("POST", "/tasks", { lines: LINES, interval_ms: 200 });
  const channel = `task:${task.id}`;

  // Nobody watches yet, but the lines are kept: wait for some of them.
  await waitFor(
    async () => (await gwApi(nodeA, "GET", `/api/channels/${channel}`)).history?.top_offset >= 5,
    15000,
    "5 lines published",
  );
  const early = await appApi("GET", `/tasks/${task.id}/status`);
  assert.equal(early.task_id, task.id);
  assert.equal(early.state, "running");
  assert.equal(early.connected, false, "no page open yet");
  assert.equal(early.subscribers, 0);
  assert.ok(early.queued_messages >= 5, `queued_messages ${early.queued_messages}`);
  assert.ok(early.queued_messages < LINES, "the task is still running");
  assert.equal(early.queued_messages, early.top_offset);
  assert.ok(early.epoch, "history has an epoch");

  const ctx = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  ctx.setDefaultTimeout(10000);
  const page = await openAs(ctx, "alice", task.page, "task");
  await page.waitForSelector('#state[data-node="node-a"]');
  await page.waitForSelector('#task-state[data-state="finished"]', { timeout: 30000 });
  await shot(page, "01-task-finished");

  const lines = await page.$$eval("#lines li", (lis) =>
    lis.map((li) => ({
      offset: Number(li.dataset.offset),
      level: li.querySelector(".level").textContent,
      message: li.querySelector(".message").textContent,
      pct: li.querySelector(".pct").textContent,
      kind: li.className,
    })),
  );
  const history = await gwApi(nodeB, "GET", `/api/channels/${channel}/history?since=0&limit=1000`);
  assert.equal(history.messages.length, LINES);
  const want = history.messages.map((m) => ({
    offset: m.offset,
    level: m.data.level,
    message: m.data.message,
    pct: `${Math.round(m.data.progress)}%`,
  }));
  assert.deepEqual(
    lines.map(({ kind, ...l }) => l),
    want,
    "every line once, in order, as published",
  );
  assert.deepEqual(
    want.map((l) => l.offset),
    Array.from({ length: LINES }, (_, i) => i + 1),
  );
  assert.equal(want[4].level, "warning");
  assert.equal(want.at(-1).message, "done");
  assert.equal(history.messages.at(-1).data.finished, true);
  assert.ok(history.messages.slice(0, -1).every((m) => m.data.finished === false));

  // The early lines came from history, the rest live, in one sequence.
  const kinds = lines.map((l) => l.kind);
  const firstLive = kinds.indexOf("live");
  const subscribedAt = Number(await page.getAttribute("#lines", "data-subscribed-at"));
  assert.ok(subscribedAt >= 5 && subscribedAt < LINES, `subscribed at offset ${subscribedAt}`);
  assert.equal(firstLive, subscribedAt, `lines 1..${subscribedAt} replayed, then live: ${kinds.join(",")}`);
  assert.ok(kinds.slice(0, firstLive).every((k) => k === "replayed"));
  assert.ok(kinds.slice(firstLive).every((k) => k === "live"));
  assert.equal(await page.textContent("#summary"), `${subscribedAt} line(s) from history, ${LINES - subscribedAt} live`);
  assert.equal(await page.$eval("#progress", (p) => p.value), 100);
  assert.equal(history.messages.at(-1).data.progress, 100);
  assert.equal(await page.textContent("#progress-text"), "100%");
  assert.equal(await page.isHidden("#gap"), true, "nothing was lost");

  // The page is watching: the channel info counts it (after one flush).
  const watching = await waitFor(
    async () => {
      const s = await appApi("GET", `/tasks/${task.id}/status`);
      return s.connected && s;
    },
    5000,
    "status: connected",
  );
  assert.deepEqual(
    { ...watching, epoch: undefined },
    { task_id: task.id, state: "finished", connected: true, subscribers: 1, queued_messages: LINES, top_offset: LINES, epoch: undefined },
  );
  assert.equal(watching.epoch, early.epoch, "same stream");

  // The page closes: nobody is watching any more, the lines stay.
  await ctx.close();
  const gone = await waitFor(
    async () => {
      const s = await appApi("GET", `/tasks/${task.id}/status`);
      return !s.connected && s;
    },
    5000,
    "status: not connected",
  );
  assert.equal(gone.subscribers, 0);
  assert.equal(gone.queued_messages, LINES);

  // A page opened after the end replays the whole log.
  const ctx2 = await browser.newContext();
  ctx2.setDefaultTimeout(10000);
  const again = await openAs(ctx2, "bob", task.page, "task-again");
  await again.waitForSelector('#task-state[data-state="finished"]');
  assert.deepEqual(await texts(again, "#lines .message"), want.map((l) => l.message));
  assert.equal(await again.textContent("#summary"), `${LINES} line(s) from history, 0 live`);
  await ctx2.close();
  assert.deepEqual(pageErrors, [], "no uncaught errors in the pages");
});

test("chat: broadcast to others, presence, one user on two devices, notifications to every device", async () => {
  const room = `r${Date.now().toString(36)}`;
  const aliceCtx = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const bobCtx = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  aliceCtx.setDefaultTimeout(10000);
  bobCtx.setDefaultTimeout(10000);
  try {
    const laptop = await openAs(aliceCtx, "alice", `/?room=${room}`, "alice-laptop");
    const phone = await openAs(aliceCtx, "alice", `/?room=${room}`, "alice-phone");
    const bob = await openAs(bobCtx, "bob", `/?room=${room}`, "bob");

    // Presence: everybody sees both users; alice is there twice.
    for (const p of [laptop, phone, bob]) {
      await p.waitForSelector('#members li[data-user="bob"]');
      await p.waitForSelector('#members li[data-user="alice"][data-devices="2"]');
    }
    const online = await appApi("GET", "/online/alice");
    assert.equal(online.online, true);
    assert.equal(online.connections.length, 2);

    // alice's laptop says hello: bob and alice's phone get it from the
    // gateway; the laptop (excluded) shows it once, from the app's answer.
    await laptop.fill("#text", "hello from the laptop");
    await laptop.press("#text", "Enter");
    await waitForText(bob, "#messages .text", "hello from the laptop");
    await waitForText(phone, "#messages .text", "hello from the laptop");
    await bob.fill("#text", "hi alice");
    await bob.press("#text", "Enter");
    // The channel keeps order: had the laptop not been excluded, its copy
    // would have arrived before bob's answer.
    await waitForText(laptop, "#messages .text", "hi alice");
    await waitForText(phone, "#messages .text", "hi alice");
    assert.deepEqual(await texts(laptop, "#messages .text"), ["hello from the laptop", "hi alice"]);
    assert.deepEqual(await texts(phone, "#messages .text"), ["hello from the laptop", "hi alice"]);
    assert.deepEqual(await texts(bob, "#messages .text"), ["hello from the laptop", "hi alice"]);
    await shot(laptop, "02-chat-alice-laptop");

    // bob notifies alice: both of her devices get it, bob's page does not.
    await bob.fill("#notify-user", "alice");
    await bob.fill("#notify-text", "look at this");
    await bob.press("#notify-text", "Enter");
    await waitForText(laptop, "#notifications .text", "look at this");
    await waitForText(phone, "#notifications .text", "look at this");
    // A kept notification to alice: live now, and still there on a new page.
    await bob.check("#notify-persist");
    await bob.fill("#notify-text", "kept for later");
    await bob.press("#notify-text", "Enter");
    await waitForText(laptop, "#notifications li", "kept for later");
    assert.deepEqual(await texts(bob, "#notifications .text"), [], "bob's own page got nothing");
    const later = await openAs(aliceCtx, "alice", `/?room=${room}`, "alice-later");
    await waitForText(later, "#notifications li.kept", "kept for later");
    assert.deepEqual(await texts(later, "#notifications .text"), ["kept for later"], "only the kept one is replayed");
    // The room's history: a new page shows the conversation.
    assert.deepEqual(await texts(later, "#messages .text"), ["hello from the laptop", "hi alice"]);
    await shot(later, "03-chat-alice-later");

    // bob leaves: alice's pages drop him from the members.
    await bob.close();
    await laptop.waitForSelector('#members li[data-user="bob"]', { state: "detached" });
    assert.deepEqual(pageErrors, [], "no uncaught errors in the pages");
  } finally {
    await aliceCtx.close();
    await bobCtx.close();
  }
});

test("a task page whose node dies reconnects through the other node and still shows every line once, in order", async () => {
  // Last: node A does not come back.
  const LINES = 40;
  const task = await appApi("POST", "/tasks", { lines: LINES, interval_ms: 100 });
  const ctx = await browser.newContext({ viewport: { width: 1100, height: 1100 } });
  ctx.setDefaultTimeout(10000);
  try {
    const page = await openAs(ctx, "carol", task.page, "task-failover");
    await page.waitForSelector('#state[data-node="node-a"]');
    await page.waitForFunction(() => document.querySelectorAll("#lines li.live").length >= 3);
    nodeA.signal("SIGKILL");
    await nodeA.exited;
    // The SDK reconnects to the next URL (node B) and resubscribes from the
    // last line it showed: what was published meanwhile is replayed.
    await page.waitForSelector('#state[data-state="connected"][data-node="node-b"]', { timeout: 15000 });
    await page.waitForSelector('#task-state[data-state="finished"]', { timeout: 30000 });
    await shot(page, "04-task-after-failover");
    assert.equal(await page.getAttribute("#lines", "data-resubscribed"), "true", "resubscribed with recovered: true");
    assert.match(await page.textContent("#note"), /^reconnected to node node-b: \d+ missed line\(s\) recovered from history$/);
    const offsets = await page.$$eval("#lines li", (lis) => lis.map((li) => Number(li.dataset.offset)));
    assert.deepEqual(offsets, Array.from({ length: LINES }, (_, i) => i + 1), "no gap, no duplicate across the failover");
    const history = await gwApi(nodeB, "GET", `/api/channels/task:${task.id}/history?since=0&limit=1000`);
    assert.deepEqual(await texts(page, "#lines .message"), history.messages.map((m) => m.data.message));
    assert.equal(await page.isHidden("#gap"), true, "recovered: nothing was lost");
    assert.deepEqual(pageErrors, [], "no uncaught errors in the pages");
  } finally {
    await ctx.close();
  }
});
