// A 2-node gateway cluster with Pusher apps configured, on a real
// redis-server with a fresh key prefix, plus the official `pusher` server
// library pointed at either node. Built on clients/js/test/harness.mjs (free
// ports, process reaping, logs in target/test-logs/pusher/).

import { startGateway, startRedis } from "../../../clients/js/test/harness.mjs";
import Pusher from "pusher";

// The harness kills its children (gateways, redis-server) in an "exit"
// handler, which a signal bypasses: the test runner stops a file that ran
// out of time with SIGTERM, and timeout(1) and Ctrl-C send one too. Turn
// them into an exit so nothing is left running.
for (const [signal, code] of [["SIGTERM", 143], ["SIGINT", 130], ["SIGHUP", 129]]) {
  process.once(signal, () => process.exit(code));
}

/**
 * End-to-end encryption key of private-encrypted- channels: known to the
 * backend and the server library only; the gateway relays ciphertext.
 */
export const ENCRYPTION_MASTER_KEY_BASE64 = Buffer.alloc(32, 7).toString("base64");

/** The app every scenario uses: client events on, webhooks to the backend. */
export const APP = { id: "app-1", key: "app-key", secret: "app-secret" };
/** A second app with client events off (the default). */
export const QUIET_APP = { id: "app-2", key: "quiet-key", secret: "quiet-secret" };
/** A third app with client events on and low limits. */
export const SLOW_APP = {
  id: "app-3",
  key: "slow-key",
  secret: "slow-secret",
  client_event_rate: 5,
  max_presence_members: 2,
  max_presence_member_bytes: 64,
};

export const WEBHOOK_EVENTS = ["channel_occupied", "channel_vacated", "member_added", "member_removed", "client_event"];

/** The TOML config of both nodes; `pusherTable` adds lines to `[pusher]`. */
export function pusherConfig(webhookUrl, pusherTable = "") {
  return `
[pusher]
${pusherTable}

[[pusher.apps]]
id = "${APP.id}"
key = "${APP.key}"
secret = "${APP.secret}"
client_events = true
client_event_rate = 100
webhook_url = "${webhookUrl}"
webhook_events = ${JSON.stringify(WEBHOOK_EVENTS)}

[[pusher.apps]]
id = "${QUIET_APP.id}"
key = "${QUIET_APP.key}"
secret = "${QUIET_APP.secret}"

[[pusher.apps]]
id = "${SLOW_APP.id}"
key = "${SLOW_APP.key}"
secret = "${SLOW_APP.secret}"
client_events = true
client_event_rate = ${SLOW_APP.client_event_rate}
max_presence_members = ${SLOW_APP.max_presence_members}
max_presence_member_bytes = ${SLOW_APP.max_presence_member_bytes}
`;
}

/**
 * Start redis-server and two gateways sharing it under a fresh prefix.
 * `name` names the log files; `pusherTable` (TOML lines) goes into
 * `[pusher]`; `env` adds GATEWAY_* settings. Returns { redis, nodes: [n1, n2], config,
 * env, restart(i), stop() }.
 */
export async function startCluster({ name, webhookUrl, pusherTable, env: extraEnv = {} }) {
  const redis = await startRedis();
  const config = pusherConfig(webhookUrl, pusherTable);
  const prefix = `pt${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
  const env = {
    GATEWAY_REDIS_URL: redis.url,
    GATEWAY_REDIS_PREFIX: prefix,
    // A killed node's presence entries expire fast enough for a test.
    GATEWAY_PRESENCE_REFRESH_MS: "1000",
    GATEWAY_PRESENCE_TTL_MS: "4000",
    ...extraEnv,
  };
  const start = (i, port) =>
    startGateway({ name: `${name}-node${i + 1}`, logDir: "pusher", config, port, env: { ...env, GATEWAY_NODE_ID: `node-${i + 1}` } });
  const nodes = [await start(0), await start(1)];
  return {
    redis,
    nodes,
    prefix,
    /** Start node i again (after a kill) on its old port. */
    async restart(i) {
      nodes[i] = await start(i, nodes[i].port);
      return nodes[i];
    },
    async stop() {
      await Promise.all(nodes.map((n) => n.stop()));
      await redis.stop();
    },
  };
}

/** The official server library talking to `node` (REST API on the same listener). */
export function serverLib(node, app = APP, extra = {}) {
  return new Pusher({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: "127.0.0.1",
    port: String(node.port),
    useTLS: false,
    timeout: 5000,
    encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY_BASE64,
    ...extra,
  });
}
