// The Pusher wire format itself, with a bare WebSocket (Node's global one,
// --experimental-websocket on Node 20): pusher-js tolerates some
// deviations (it parses `data` whether it is a string or an object), other
// Pusher clients do not, so the frames are checked as Pusher sends them.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";

import { startBackend } from "./lib/backend.mjs";
import { APP, startCluster } from "./lib/cluster.mjs";
import { waitFor } from "./lib/clients.mjs";
import { rawConnect } from "./lib/rawws.mjs";

const T = { timeout: 30000 };
const ACTIVITY = 2;

let backend;
let cluster;
let n1;
const sockets = new Set();

before(async () => {
  backend = await startBackend(APP);
  // A short announced activity timeout, and a short server heartbeat (WebSocket
  // ping every second, 1 s to answer), so that a silent connection is closed
  // within the test.
  cluster = await startCluster({
    name: "wire",
    webhookUrl: backend.webhookUrl,
    pusherTable: `activity_timeout_secs = ${ACTIVITY}`,
    env: { GATEWAY_PING_INTERVAL_MS: "1000", GATEWAY_PONG_TIMEOUT_MS: "1000" },
  });
  [n1] = cluster.nodes;
});

after(async () => {
  for (const ws of sockets) ws.close();
  await cluster?.stop();
  await backend?.close();
});

/**
 * A raw connection: { ws, frames (parsed, data left as sent), closed (promise
 * of {code, reason}), closeInfo (the same, once closed), send, next(pred) }.
 */
function raw(query = "protocol=7&client=js&version=8.4.0", key = APP.key) {
  const ws = new WebSocket(`ws://127.0.0.1:${n1.port}/app/${key}?${query}`);
  sockets.add(ws);
  const frames = [];
  ws.addEventListener("message", (ev) => frames.push(JSON.parse(ev.data)));
  const c = { closeInfo: null };
  const closed = new Promise((resolve) =>
    ws.addEventListener("close", (ev) => {
      c.closeInfo = { code: ev.code, reason: ev.reason };
      resolve(c.closeInfo);
    }),
  );
  return Object.assign(c, {
    ws,
    frames,
    closed,
    send: (event, data, extra = {}) => ws.send(JSON.stringify({ event, data, ...extra })),
    next: (pred, what = "frame") => waitFor(() => frames.find(pred), 5000, what),
  });
}

const sign = (text) => `${APP.key}:${createHmac("sha256", APP.secret).update(text).digest("hex")}`;

async function established(c) {
  const f = await c.next((f) => f.event === "pusher:connection_established", "connection_established");
  assert.equal(typeof f.data, "string", "data is a JSON string");
  const data = JSON.parse(f.data);
  assert.match(data.socket_id, /^\d+\.\d+$/);
  assert.equal(data.activity_timeout, ACTIVITY, "the configured activity_timeout_secs");
  return data.socket_id;
}

test("connection_established carries its data as a JSON string; pusher:ping gets pusher:pong", T, async () => {
  const c = raw();
  await established(c);
  c.send("pusher:ping", {});
  await c.next((f) => f.event === "pusher:pong", "pusher:pong");
  c.ws.close();
});

test("unknown key: pusher:error 4001, then close 4001", T, async () => {
  const c = raw(undefined, "no-such-key");
  const { code } = await waitFor(() => c.closeInfo, 10000, "the close");
  const err = c.frames.find((f) => f.event === "pusher:error");
  assert.ok(err, `pusher:error before the close: ${JSON.stringify(c.frames)}`);
  const data = typeof err.data === "string" ? JSON.parse(err.data) : err.data;
  assert.equal(data.code, 4001);
  assert.equal(code, 4001);
});

// Pusher's codes: 4006 invalid version string, 4007 unsupported version,
// 4008 no version supplied (the contract says "4006/4007" for all three).
for (const [query, what, codes] of [
  ["client=js&version=8.4.0", "no protocol", [4006, 4007, 4008]],
  ["protocol=abc&client=js&version=8.4.0", "protocol abc", [4006, 4007]],
  ["protocol=4&client=js&version=8.4.0", "protocol 4", [4007]],
  ["protocol=8&client=js&version=8.4.0", "protocol 8", [4007]],
]) {
  test(`${what}: refused with ${codes.join("/")}`, T, async () => {
    const c = raw(query);
    const { code } = await waitFor(() => c.closeInfo, 10000, "the close");
    assert.ok(codes.includes(code), `close code ${code}; frames ${JSON.stringify(c.frames)}`);
  });
}

test("subscription frames: public, private (signed), presence data as a string, bad signature -> AuthError 401", T, async () => {
  const c = raw();
  const socketId = await established(c);

  c.send("pusher:subscribe", { channel: "wire-public" });
  const ok = await c.next((f) => f.event === "pusher_internal:subscription_succeeded" && f.channel === "wire-public", "public subscribed");
  assert.ok(ok.data === "{}" || ok.data === undefined || typeof ok.data === "string", `data ${JSON.stringify(ok.data)}`);

  c.send("pusher:subscribe", { channel: "private-wire", auth: sign(`${socketId}:private-wire`) });
  await c.next((f) => f.event === "pusher_internal:subscription_succeeded" && f.channel === "private-wire", "private subscribed");

  const channelData = JSON.stringify({ user_id: "wire-user", user_info: { name: "Wire" } });
  c.send("pusher:subscribe", { channel: "presence-wire", auth: sign(`${socketId}:presence-wire:${channelData}`), channel_data: channelData });
  const p = await c.next((f) => f.event === "pusher_internal:subscription_succeeded" && f.channel === "presence-wire", "presence subscribed");
  assert.equal(typeof p.data, "string", "presence data is a JSON string");
  assert.deepEqual(JSON.parse(p.data), { presence: { ids: ["wire-user"], hash: { "wire-user": { name: "Wire" } }, count: 1 } });

  c.send("pusher:subscribe", { channel: "private-wire-2", auth: `${APP.key}:${"0".repeat(64)}` });
  const e = await c.next((f) => f.event === "pusher:subscription_error" && f.channel === "private-wire-2", "subscription_error");
  const data = typeof e.data === "string" ? JSON.parse(e.data) : e.data;
  assert.equal(data.type, "AuthError");
  assert.equal(data.status, 401);
  assert.equal(typeof data.error, "string");

  // Signature for another socket: refused as well.
  c.send("pusher:subscribe", { channel: "private-wire-3", auth: sign(`1.2:private-wire-3`) });
  await c.next((f) => f.event === "pusher:subscription_error" && f.channel === "private-wire-3", "subscription_error for another socket's signature");
  c.ws.close();
});

test("pusher:signin with a valid signature: signin_success with the user_data", T, async () => {
  const c = raw();
  const socketId = await established(c);
  const userData = JSON.stringify({ id: "wire-user", user_info: { name: "Wire" } });
  c.send("pusher:signin", { auth: sign(`${socketId}::user::${userData}`), user_data: userData });
  const ok = await c.next((f) => f.event === "pusher:signin_success", "signin_success");
  const data = typeof ok.data === "string" ? JSON.parse(ok.data) : ok.data;
  assert.equal(data.user_data, userData);
  c.send("pusher:subscribe", { channel: "#server-to-user-wire-user" });
  await c.next((f) => f.event === "pusher_internal:subscription_succeeded" && f.channel === "#server-to-user-wire-user", "#server-to-user subscribed");
  c.ws.close();
});

test("a connection that answers nothing, not even WebSocket pings, is closed with 4201; a live one stays", T, async () => {
  const path = `/app/${APP.key}?protocol=7&client=js&version=8.4.0`;
  const silent = await rawConnect(n1.port, path);
  // Node's WebSocket answers the server's pings, as browsers do, without
  // sending any Pusher frame: alive.
  const live = raw();
  await established(live);
  await waitFor(() => silent.frames.some((f) => f.event === "pusher:connection_established"), 5000, "established");
  // The server answers our WebSocket ping.
  silent.sendPing();
  await waitFor(() => silent.pongs > 0, 5000, "a pong frame");
  const { code } = await waitFor(() => silent.closeInfo, 15000, "the silent connection closed");
  assert.equal(code, 4201, `close code of the silent connection: ${JSON.stringify(silent.closeInfo)}`);
  assert.ok(silent.pings > 0, "the server pinged before giving up");
  assert.equal(live.closeInfo, null, "the connection that answers pings is still open");
  live.send("pusher:ping", {});
  await live.next((f) => f.event === "pusher:pong", "pusher:pong");
  silent.destroy();
  live.ws.close();
});
