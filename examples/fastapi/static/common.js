// Shared by the pages: a GatewayClient that gets its JWT from the app.
import { GatewayClient } from "/static/gateway-client.js";

export const $ = (id) => document.getElementById(id);

/** GET /token: the JWT, the user and the gateway's WebSocket URL(s). */
export async function fetchToken() {
  const res = await fetch("/token", { credentials: "same-origin" });
  if (res.status === 401) {
    location.href = `/login?next=${encodeURIComponent(location.pathname + location.search)}`;
    throw new Error("not logged in");
  }
  if (!res.ok) throw new Error(`/token: HTTP ${res.status}`);
  return res.json();
}

/**
 * A client connected to the gateway. `getToken` is called before every
 * (re)connect and shortly before the token expires (in-band refresh), so the
 * connection outlives the token's 10 minutes without a reconnect.
 */
export async function connectGateway() {
  const first = await fetchToken();
  let pending = first;
  const client = new GatewayClient({
    url: first.ws_urls,
    getToken: async () => {
      if (pending) {
        const t = pending.token;
        pending = null;
        return t;
      }
      return (await fetchToken()).token;
    },
  });
  client.on("connected", (w) => badge("connected", `connected · node ${w.node} · ${w.user}`, w.node));
  client.on("disconnected", (d) =>
    badge("disconnected", d.reconnect ? `offline (${d.code}) · reconnecting in ${(d.delayMs / 1000).toFixed(1)} s` : `offline (${d.code})`),
  );
  client.on("state", (s) => {
    if (s === "connecting") badge("connecting", "connecting…");
  });
  client.on("closed", (c) => badge("closed", `closed · ${c.code}${c.reason ? " " + c.reason : ""}`));
  return { client, user: first.user };
}

function badge(state, text, node) {
  const el = $("state");
  if (!el) return;
  el.dataset.state = state;
  if (node) el.dataset.node = node;
  el.textContent = text;
}

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

export async function postJson(url, body) {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(json.detail ?? json.error ?? `HTTP ${res.status}`);
  return json;
}
