// The application backend of the tests: a plain Node HTTP server on a free
// port using the official `pusher` server library, as a user's backend would.
//
//   POST /pusher/auth        channel authorization (pusher.authorizeChannel);
//                            presence channel_data from the user, the
//                            shared_secret of private-encrypted- channels
//   POST /pusher/user-auth   user authentication (pusher.authenticateUser)
//   POST /pusher/webhooks    webhook receiver, each delivery checked with
//                            pusher.webhook({headers, rawBody}).isValid()
//   GET  /page.html, /page.js, /pusher.min.js   the Chromium test's page and
//                            pusher-js's browser build
//
// The user is who the request says it is (a test has no sessions):
// `Authorization: Bearer <user>` (what Laravel Echo's bearerToken sends), or
// a `user_id` form parameter (pusher-js's channelAuthorization.params).
// A user named `intruder` is refused (403), a channel named
// `private-forged-*` gets a signature made with the wrong secret.
// Every answer carries CORS headers: the backend listens on two ports, and
// the Chromium page is loaded from one (`url`) while it calls the auth
// endpoints on the other (`apiUrl`), so its auth requests are cross-origin
// (with a preflight, for the Authorization header), as when an app's page
// and its API live on different origins.

import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import Pusher from "pusher";

import { ENCRYPTION_MASTER_KEY_BASE64 } from "./cluster.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const STATIC = {
  "/page.html": [path.join(HERE, "../page/page.html"), "text/html; charset=utf-8"],
  "/page.js": [path.join(HERE, "../page/page.js"), "text/javascript; charset=utf-8"],
  "/pusher.min.js": [path.join(HERE, "../node_modules/pusher-js/dist/web/pusher.min.js"), "text/javascript; charset=utf-8"],
};

const CORS = {
  "access-control-allow-origin": "*",
  "access-control-allow-methods": "GET, POST, OPTIONS",
  "access-control-allow-headers": "Content-Type, Authorization, X-CSRF-TOKEN, X-Socket-ID",
  "access-control-max-age": "600",
};

/** Profile shown in presence member lists. */
export const userInfo = (id) => ({ id, name: `User ${id}` });

/**
 * Start the backend. `app` is {id, key, secret}; the library it builds is
 * only used to sign (no REST calls). Resolves with { url, apiUrl, port,
 * webhookUrl, webhooks, authRequests, webhookEvents(), close() }; `webhooks` is the list of deliveries
 * { valid, headers, body, events } in arrival order.
 */
export async function startBackend(app) {
  const pusher = new Pusher({
    appId: app.id,
    key: app.key,
    secret: app.secret,
    host: "127.0.0.1",
    useTLS: false,
    encryptionMasterKeyBase64: ENCRYPTION_MASTER_KEY_BASE64,
  });
  const webhooks = [];
  const authRequests = [];

  const onRequest = (req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      try {
        handle(req, Buffer.concat(chunks).toString("utf8"), res);
      } catch (e) {
        reply(res, 500, { error: String(e?.message ?? e) });
      }
    });
  };
  const server = createServer(onRequest);
  const apiServer = createServer(onRequest);

  function reply(res, status, body, type = "application/json") {
    const text = typeof body === "string" ? body : JSON.stringify(body);
    res.writeHead(status, { ...CORS, "content-type": type, "cache-control": "no-store" });
    res.end(text);
  }

  function who(req, form) {
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? "");
    return bearer ? bearer[1] : form.get("user_id");
  }

  function handle(req, raw, res) {
    const url = new URL(req.url, "http://backend");
    if (req.method === "OPTIONS") {
      res.writeHead(204, CORS);
      res.end();
      return;
    }
    if (req.method === "GET" && url.pathname === "/favicon.ico") {
      res.writeHead(204, CORS);
      res.end();
      return;
    }
    if (req.method === "GET" && STATIC[url.pathname]) {
      const [file, type] = STATIC[url.pathname];
      reply(res, 200, readFileSync(file, "utf8"), type);
      return;
    }
    if (req.method !== "POST") return reply(res, 404, { error: "not found" });
    switch (url.pathname) {
      case "/pusher/auth": {
        const form = new URLSearchParams(raw);
        const socketId = form.get("socket_id");
        const channel = form.get("channel_name");
        const user = who(req, form);
        authRequests.push({ socketId, channel, user });
        if (user === "intruder") return reply(res, 403, { error: "forbidden" });
        if (channel.startsWith("private-forged-")) {
          const forger = new Pusher({ appId: app.id, key: app.key, secret: "not-the-secret", host: "127.0.0.1", useTLS: false });
          return reply(res, 200, forger.authorizeChannel(socketId, channel));
        }
        if (channel.startsWith("presence-")) {
          if (!user) return reply(res, 403, { error: "presence needs a user" });
          return reply(res, 200, pusher.authorizeChannel(socketId, channel, { user_id: user, user_info: userInfo(user) }));
        }
        return reply(res, 200, pusher.authorizeChannel(socketId, channel));
      }
      case "/pusher/user-auth": {
        const form = new URLSearchParams(raw);
        const user = who(req, form);
        if (!user || user === "intruder") return reply(res, 403, { error: "forbidden" });
        return reply(res, 200, pusher.authenticateUser(form.get("socket_id"), { id: user, user_info: userInfo(user) }));
      }
      case "/pusher/webhooks": {
        const headers = req.headers; // node lower-cases header names, as webhook() wants
        const hook = pusher.webhook({ headers, rawBody: raw });
        const valid = hook.isValid();
        let body;
        try {
          body = JSON.parse(raw);
        } catch {
          body = null;
        }
        webhooks.push({ valid, headers, raw, body, events: body?.events ?? [] });
        return reply(res, 200, {});
      }
      default:
        return reply(res, 404, { error: "not found" });
    }
  }

  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  await new Promise((resolve) => apiServer.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  const apiPort = apiServer.address().port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    /** The same backend on a second port: another origin for the page. */
    apiUrl: `http://127.0.0.1:${apiPort}`,
    webhookUrl: `http://127.0.0.1:${port}/pusher/webhooks`,
    webhooks,
    authRequests,
    /** Every webhook event received so far, flattened, with its delivery's validity. */
    webhookEvents() {
      return webhooks.flatMap((w) => w.events.map((e) => ({ ...e, valid: w.valid })));
    },
    close() {
      const closing = [server, apiServer].map((s) => {
        s.closeAllConnections?.();
        return new Promise((resolve) => s.close(() => resolve()));
      });
      return Promise.all(closing);
    },
  };
}
