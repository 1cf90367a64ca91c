// Configuration paths of the contract: one app from the environment
// (GATEWAY_PUSHER_APP_*), bad settings exit 64 naming the setting, and an
// app with user_authentication = true closing connections that do not sign
// in within user_auth_timeout_ms.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";

import { spawn } from "node:child_process";

import { gatewayBin, startGateway, startRedis, writeConfig } from "../../clients/js/test/harness.mjs";
import { startBackend } from "./lib/backend.mjs";
import { serverLib } from "./lib/cluster.mjs";
import { connected, subscribe, collect, disconnectAll, waitFor } from "./lib/clients.mjs";

const T = { timeout: 30000 };
const ENV_APP = { id: "env-app", key: "env-key", secret: "env-secret-123" };
const STRICT_APP = { id: "strict-app", key: "strict-key", secret: "strict-secret" };

let redis;
let backend;
const nodes = [];

before(async () => {
  redis = await startRedis();
  backend = await startBackend(ENV_APP);
});

after(async () => {
  disconnectAll();
  await Promise.all(nodes.map((n) => n.stop()));
  await redis?.stop();
  await backend?.close();
});

const base = () => ({ GATEWAY_REDIS_URL: redis.url, GATEWAY_REDIS_PREFIX: `cfg${Date.now().toString(36)}${nodes.length}` });

async function start(name, { env = {}, config } = {}) {
  const node = await startGateway({ name, logDir: "pusher", config, env: { ...base(), ...env } });
  nodes.push(node);
  return node;
}

/**
 * Run a gateway that must refuse its settings; resolves with its exit code
 * and all it wrote to stderr, once it has exited (at most 10 s).
 */
function refused(name, { env = {}, config } = {}) {
  const childEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("GATEWAY_")) childEnv[k] = v;
  Object.assign(childEnv, base(), { GATEWAY_LISTEN: "127.0.0.1:0" }, env);
  if (config) childEnv.GATEWAY_CONFIG = writeConfig(config);
  const proc = spawn(gatewayBin(), [], { env: childEnv, stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  proc.stdout.on("data", (c) => (log += c));
  proc.stderr.on("data", (c) => (log += c));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`gateway ${name} still running after 10 s with bad settings: ${log}`));
    }, 10000);
    // "close": the process exited and its output is all read.
    proc.once("close", (code) => {
      clearTimeout(timer);
      resolve({ code, log: `${name}: ${log}` });
    });
  });
}

test("one app from GATEWAY_PUSHER_APP_*: pusher-js and the server library work with it", T, async () => {
  const node = await start("env-app", {
    env: {
      GATEWAY_PUSHER_APP_ID: ENV_APP.id,
      GATEWAY_PUSHER_APP_KEY: ENV_APP.key,
      GATEWAY_PUSHER_APP_SECRET: ENV_APP.secret,
      GATEWAY_PUSHER_CLIENT_EVENTS: "true",
    },
  });
  const opts = (user) => ({ backend: backend.url, user, key: ENV_APP.key });
  const a = await connected(node.port, opts("alice"));
  const b = await connected(node.port, opts("bob"));
  const ch = "private-env";
  const [sa, sb] = await Promise.all([subscribe(a, ch), subscribe(b, ch)]);
  const eb = collect(sb.channel, ["client-hi", "from-server"]);
  sa.channel.trigger("client-hi", { n: 1 });
  await eb.wait("client-hi", (d) => d.n === 1);
  const api = serverLib(node, ENV_APP);
  await api.trigger(ch, "from-server", { ok: true });
  await eb.wait("from-server", (d) => d.ok === true);
  a.disconnect();
  b.disconnect();
});

test("bad Pusher settings exit 64 naming the setting", T, async () => {
  const partial = await refused("partial-env", { env: { GATEWAY_PUSHER_APP_ID: "lonely" } });
  assert.equal(partial.code, 64, partial.log);
  assert.match(partial.log, /pusher_app|PUSHER_APP/, "names the setting");

  const dup = await refused("duplicate-key", {
    config: `
[[pusher.apps]]
id = "one"
key = "same-key"
secret = "secret-one"

[[pusher.apps]]
id = "two"
key = "same-key"
secret = "secret-two"
`,
  });
  assert.equal(dup.code, 64, dup.log);
  assert.match(dup.log, /key/, "names the setting");

  const badUrl = await refused("bad-webhook-url", {
    config: `
[[pusher.apps]]
id = "one"
key = "one-key"
secret = "secret-one"
webhook_url = "not a url"
`,
  });
  assert.equal(badUrl.code, 64, badUrl.log);
  assert.match(badUrl.log, /webhook_url/, "names the setting");
});

test("user_authentication = true: a connection that does not sign in in time is closed; one that does stays", T, async () => {
  const node = await start("strict", {
    config: `
[[pusher.apps]]
id = "${STRICT_APP.id}"
key = "${STRICT_APP.key}"
secret = "${STRICT_APP.secret}"
user_authentication = true
user_auth_timeout_ms = 1000
`,
  });
  const open = (name) => {
    const ws = new WebSocket(`ws://127.0.0.1:${node.port}/app/${STRICT_APP.key}?protocol=7&client=js&version=8.4.0`);
    const c = { name, ws, frames: [], closeInfo: null };
    ws.addEventListener("message", (ev) => c.frames.push(JSON.parse(ev.data)));
    ws.addEventListener("close", (ev) => {
      c.closeInfo = { code: ev.code, reason: ev.reason };
    });
    return c;
  };
  const lazy = open("lazy");
  const prompt = open("prompt");
  const est = await waitFor(() => prompt.frames.find((f) => f.event === "pusher:connection_established"), 5000, "established");
  const socketId = JSON.parse(est.data).socket_id;
  const userData = JSON.stringify({ id: "prompt-user" });
  const auth = `${STRICT_APP.key}:${createHmac("sha256", STRICT_APP.secret).update(`${socketId}::user::${userData}`).digest("hex")}`;
  prompt.ws.send(JSON.stringify({ event: "pusher:signin", data: { auth, user_data: userData } }));
  await waitFor(() => prompt.frames.some((f) => f.event === "pusher:signin_success"), 5000, "signin_success");

  const { code } = await waitFor(() => lazy.closeInfo, 10000, "the connection that never signed in closed");
  assert.equal(code, 4009, `close code ${code}`);
  assert.equal(prompt.closeInfo, null, "the signed-in connection is still open");
  prompt.ws.send(JSON.stringify({ event: "pusher:ping", data: {} }));
  await waitFor(() => prompt.frames.some((f) => f.event === "pusher:pong"), 5000, "pong after the deadline");
  prompt.ws.close();
});
