// The /demo page: a chat room with presence and a task log, on the client
// SDK served by the gateway at /sdk/gateway-client.js.
import { GatewayClient } from "/sdk/gateway-client.js";

const $ = (id) => document.getElementById(id);
const q = new URLSearchParams(location.search);
const token = q.get("token") || undefined;
const user = q.get("user") || `guest-${Math.floor(1000 + Math.random() * 9000)}`;
const room = `chat:${q.get("room") || "lobby"}`;
const task = `task:${q.get("task") || "demo"}`;
const urls = (q.get("urls") || "")
  .split(",")
  .map((s) => s.trim())
  .filter(Boolean);

$("room-name").textContent = room;
$("task-name").textContent = task;

const client = new GatewayClient({
  url: urls.length ? urls : "/ws",
  token,
  params: token ? {} : { user },
});

// --- connection state ---------------------------------------------------

function event(text, cls = "") {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  if (cls) li.className = cls;
  const list = $("events");
  list.prepend(li);
  while (list.children.length > 50) list.lastChild.remove();
}

function badge(state, text) {
  const el = $("state");
  el.dataset.state = state;
  el.textContent = text;
}

client.on("connected", (w) => {
  badge("connected", `connected · node ${w.node} · ${w.user ?? "anonymous"}`);
  $("state").dataset.node = w.node;
  event(`connected to node ${w.node} as ${w.user ?? "anonymous"}`);
});
client.on("disconnected", (d) => {
  const why = `${d.code}${d.reason ? " " + d.reason : ""}`;
  if (d.reconnect) {
    badge("disconnected", `offline · reconnecting in ${(d.delayMs / 1000).toFixed(1)} s`);
    event(`disconnected (${why}); reconnecting in ${d.delayMs} ms`, "warn");
  } else {
    event(`disconnected (${why}); not reconnecting`, "bad");
  }
});
client.on("state", (s) => {
  if (s === "connecting") badge("connecting", "connecting…");
});
client.on("closed", (c) => badge("closed", `closed · ${c.code}${c.reason ? " " + c.reason : ""}`));
client.on("error", (e) => event(`error: ${e.code} ${e.message}`, "bad"));

// --- chat -------------------------------------------------------------------

const members = new Map(); // conn -> user
let chat = null;

function renderMembers() {
  const users = [...new Set(members.values())].sort();
  const list = $("members");
  list.replaceChildren(
    ...users.map((u) => {
      const li = document.createElement("li");
      li.textContent = u === client.welcome?.user ? `${u} (you)` : u;
      li.dataset.user = u;
      return li;
    }),
  );
}

async function refreshPresence(sub) {
  try {
    const list = await sub.presence();
    members.clear();
    for (const m of list) members.set(m.conn, m.user ?? "anonymous");
    renderMembers();
  } catch (e) {
    event(`presence: ${e.code ?? ""} ${e.message}`, "bad");
  }
}

function addMessage(data, ctx, recovered) {
  const li = document.createElement("li");
  li.className = "msg";
  if (recovered) li.classList.add("recovered");
  if (ctx.from && ctx.from === client.welcome?.user) li.classList.add("mine");
  li.dataset.offset = String(ctx.offset ?? "");
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = ctx.from ?? "backend";
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = typeof data?.text === "string" ? data.text : JSON.stringify(data);
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = ctx.offset === null ? "" : `#${ctx.offset}`;
  li.append(from, text, meta);
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function subscribeChat() {
  // since {offset: 0}: show what the room's history still holds, then live.
  const sub = client.subscribe(room, { since: { offset: 0 } });
  let recovering = false;
  sub.on("subscribed", (info) => {
    if (info.resubscribed) {
      if (info.recovered) {
        const missed = info.offset - (sub.position?.offset ?? info.offset);
        recovering = missed > 0;
        event(`resubscribed ${room} on node ${client.node}: ${missed} missed message(s) recovered`);
      } else {
        // A gap we cannot fill: reload the room from its history.
        event(`resubscribed ${room}: messages were lost, reloading`, "warn");
        $("gap-banner").hidden = false;
        $("messages").replaceChildren();
        void sub.unsubscribe().then(() => {
          chat = subscribeChat();
        });
        return;
      }
    }
    void refreshPresence(sub);
  });
  sub.on("message", (data, ctx) => {
    if (recovering && !ctx.replayed) recovering = false;
    addMessage(data, ctx, recovering && ctx.replayed);
  });
  sub.on("join", (e) => {
    const known = [...members.values()].includes(e.user ?? "anonymous");
    members.set(e.conn, e.user ?? "anonymous");
    renderMembers();
    if (!known) event(`${e.user ?? "anonymous"} joined`);
  });
  sub.on("leave", (e) => {
    members.delete(e.conn);
    renderMembers();
    if (![...members.values()].includes(e.user ?? "anonymous")) event(`${e.user ?? "anonymous"} left`);
  });
  sub.on("error", (e) => event(`${room}: ${e.code} ${e.message}`, "bad"));
  return sub;
}

$("send").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const input = $("text");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  try {
    // echo: our own message comes back through the channel, in order.
    await chat.publish({ text }, { echo: true });
  } catch (e) {
    event(`not sent (${e.code}): ${text}`, "bad");
  }
});

// --- task log -----------------------------------------------------------------

let logSub = null;
const counts = { history: 0, live: 0 };

function summary() {
  $("log-summary").textContent = `${counts.history} line(s) from history, ${counts.live} live`;
}

function openLog() {
  $("log").replaceChildren();
  counts.history = 0;
  counts.live = 0;
  summary();
  logSub = client.subscribe(task, { since: { offset: 0 } });
  logSub.on("message", (data, ctx) => {
    const li = document.createElement("li");
    const kind = ctx.replayed ? "replayed" : "live";
    li.className = kind;
    li.dataset.offset = String(ctx.offset ?? "");
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = ctx.replayed ? "history" : "live";
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = typeof data === "string" ? data : typeof data?.line === "string" ? data.line : JSON.stringify(data);
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `#${ctx.offset}`;
    li.append(tag, text, meta);
    $("log").append(li);
    counts[ctx.replayed ? "history" : "live"]++;
    summary();
  });
  logSub.on("error", (e) => event(`${task}: ${e.code} ${e.message}`, "bad"));
}

$("reopen").addEventListener("click", async () => {
  await logSub?.unsubscribe();
  openLog();
});

$("run-task").addEventListener("click", async () => {
  const button = $("run-task");
  button.disabled = true;
  const id = Math.random().toString(16).slice(2, 8);
  try {
    for (let i = 1; i <= 10; i++) {
      const res = await fetch("/api/publish", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          channel: task,
          data: { line: `${new Date().toLocaleTimeString()} job ${id}: step ${i}/10 ${i === 10 ? "done" : "working…"}` },
        }),
      });
      if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
      await new Promise((r) => setTimeout(r, 300));
    }
  } catch (e) {
    event(`task: ${e.message} (the HTTP API needs its key when one is configured)`, "bad");
  } finally {
    button.disabled = false;
  }
});

chat = subscribeChat();
openLog();
client.connect();

// For the browser tests and curious developers.
window.demo = { client, room, task, user };
