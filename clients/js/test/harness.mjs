// Test harness: real gateway and redis-server processes, HTTP API calls,
// JWT signing, polling. Shared by the SDK tests and tests/browser.
//
// Every process is started on 127.0.0.1 with port 0 (or a port it had
// before, to restart "the same" node) and killed when the test ends. The
// gateway's stderr goes to target/test-logs/<dir>/<name>-<n>.log.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdirSync, createWriteStream, writeFileSync, mkdtempSync, readFileSync, readdirSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

export function gatewayBin() {
  if (process.env.GATEWAY_BIN) return process.env.GATEWAY_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? path.join(ROOT, "target");
  return path.join(target, "debug", "gateway");
}

const LOG_DIR = path.join(process.env.CARGO_TARGET_DIR ?? path.join(ROOT, "target"), "test-logs");
let instance = 0;
const live = new Set();

// Whatever a test leaves running dies with the test process.
process.on("exit", () => {
  for (const p of live) {
    try {
      p.kill("SIGKILL");
    } catch {
      // gone
    }
  }
});

/** Write a TOML config to a temp file and return its path. */
export function writeConfig(toml) {
  const dir = mkdtempSync(path.join(tmpdir(), "gw-js-"));
  const file = path.join(dir, "gateway.toml");
  writeFileSync(file, toml);
  return file;
}

/**
 * Start a gateway. `opts`: { name, config (TOML text), env ({GATEWAY_*}),
 * port (reuse a port), logDir }. Resolves once it printed its listening line.
 */
export async function startGateway(opts = {}) {
  const n = ++instance;
  const name = opts.name ?? "gw";
  const logDir = path.join(LOG_DIR, opts.logDir ?? "js-sdk");
  mkdirSync(logDir, { recursive: true });
  const logPath = path.join(logDir, `${name}-${process.pid}-${n}.log`);
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("GATEWAY_")) env[k] = v;
  }
  Object.assign(env, {
    GATEWAY_LISTEN: `127.0.0.1:${opts.port ?? 0}`,
    GATEWAY_LOG: "info",
    ...(opts.env ?? {}),
  });
  if (opts.config) env.GATEWAY_CONFIG = writeConfig(opts.config);
  const proc = spawn(gatewayBin(), [], { env, stdio: ["ignore", "pipe", "pipe"] });
  live.add(proc);
  const log = createWriteStream(logPath);
  proc.stderr.pipe(log);
  const exited = new Promise((resolve) => proc.once("exit", (code, signal) => {
    live.delete(proc);
    resolve({ code, signal });
  }));
  const addr = await new Promise((resolve, reject) => {
    let buf = "";
    const timer = setTimeout(() => reject(new Error(`gateway ${name} did not start in 30 s; log: ${logPath}`)), 30000);
    proc.stdout.on("data", (chunk) => {
      buf += chunk.toString();
      const m = /gateway listening on (\S+)/.exec(buf);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    proc.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`gateway ${name} exited with ${code} before listening; log: ${logPath}\n${safeRead(logPath)}`));
    });
  });
  const port = Number(addr.split(":").pop());
  return {
    name,
    proc,
    port,
    http: `http://127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}/ws`,
    logPath,
    exited,
    /** Send a signal (SIGKILL, SIGSTOP, SIGCONT, SIGTERM). */
    signal(sig) {
      try {
        proc.kill(sig);
      } catch {
        // gone
      }
    },
    /**
     * SIGSTOP, then wait until every thread is stopped: the signal is
     * delivered asynchronously, and a thread still running could answer a
     * frame sent right after kill(2) returned.
     */
    async freeze() {
      proc.kill("SIGSTOP");
      await waitFor(() => allStopped(proc.pid), 5000, `gateway ${name} stopped`);
    },
    /** Kill and wait for the exit. */
    async stop(sig = "SIGKILL") {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill("SIGCONT");
        proc.kill(sig);
      }
      return exited;
    },
  };
}

/** Whether every thread of `pid` is in state T (stopped). */
function allStopped(pid) {
  const tasks = readdirSync(`/proc/${pid}/task`);
  return tasks.every((t) => {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${t}/stat`, "utf8");
      const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
      return state === "T" || state === "t";
    } catch {
      return true; // the thread is gone
    }
  });
}

function safeRead(p) {
  try {
    return readFileSync(p, "utf8").split("\n").slice(-30).join("\n");
  } catch {
    return "";
  }
}

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Start redis-server on a free port without persistence. */
export async function startRedis() {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmpdir(), "gw-redis-"));
  const proc = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  live.add(proc);
  const exited = new Promise((resolve) => proc.once("exit", () => {
    live.delete(proc);
    resolve();
  }));
  await new Promise((resolve, reject) => {
    let buf = "";
    const timer = setTimeout(() => reject(new Error("redis-server did not start in 10 s")), 10000);
    proc.stdout.on("data", (c) => {
      buf += c.toString();
      if (/Ready to accept connections/i.test(buf)) {
        clearTimeout(timer);
        resolve();
      }
    });
    proc.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`redis-server exited with ${code}: ${buf}`));
    });
  });
  return {
    port,
    url: `redis://127.0.0.1:${port}/`,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
      return exited;
    },
  };
}

/** Call the HTTP API; resolves with the parsed JSON body, throws on non-2xx. */
export async function api(base, method, p, body) {
  const res = await fetch(base + p, {
    method,
    headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  const json = text ? JSON.parse(text) : null;
  if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
  return json;
}

/** Poll `fn` until it returns a truthy value (returned) or `ms` passes (throws). */
export async function waitFor(fn, ms = 5000, what = "condition") {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? `: ${last.message}` : ""}`);
    }
    await sleep(25);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The next `event` emitted by `emitter` (a GatewayClient or Subscription). */
export function once(emitter, event, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out after ${ms} ms waiting for ${event}`));
    }, ms);
    const off = emitter.on(event, (...args) => {
      clearTimeout(timer);
      off();
      resolve(args.length > 1 ? args : args[0]);
    });
  });
}

const b64url = (buf) => Buffer.from(buf).toString("base64url");

/** Sign an HS256 JWT. */
export function signJwt(secret, claims) {
  const head = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}
