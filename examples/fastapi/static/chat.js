// The chat page: a room with presence, notifications to every device of a
// user, and a button that starts a background task.
import { $, connectGateway, el, postJson } from "/static/common.js";

const q = new URLSearchParams(location.search);
const roomName = q.get("room") || "lobby";
const room = `chat:${roomName}`;
$("room-name").textContent = room;

const { client, user } = await connectGateway();
$("me").textContent = `you are ${user}`;

// --- chat ----------------------------------------------------------------------

function addMessage(data, { offset, replayed, mine }) {
  const li = el("li", "msg");
  if (replayed) li.classList.add("history");
  if (mine || data.user === user) li.classList.add("mine");
  li.dataset.offset = String(offset ?? "");
  li.append(el("span", "from", data.user ?? "?"), el("span", "text", String(data.text ?? "")));
  const list = $("messages");
  list.append(li);
  list.scrollTop = list.scrollHeight;
}

// since {offset: 0}: the room's retained history first, then live messages.
const chat = client.subscribe(room, { since: { offset: 0 } });
chat.on("message", (data, ctx) => addMessage(data, ctx));

// Presence: the members when (re)subscribed, then join/leave as set updates.
const members = new Map(); // conn -> user
function renderMembers() {
  const users = [...new Set(members.values())].sort();
  $("members").replaceChildren(
    ...users.map((u) => {
      const li = el("li", "", u === user ? `${u} (you)` : u);
      li.dataset.user = u;
      li.dataset.devices = String([...members.values()].filter((x) => x === u).length);
      return li;
    }),
  );
}
chat.on("subscribed", async () => {
  const list = await chat.presence();
  members.clear();
  for (const m of list) members.set(m.conn, m.user);
  renderMembers();
});
chat.on("join", (e) => {
  members.set(e.conn, e.user);
  renderMembers();
});
chat.on("leave", (e) => {
  members.delete(e.conn);
  renderMembers();
});

$("send").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  $("text").value = "";
  try {
    // The app publishes to everyone but this connection (broadcast to
    // others); this page shows its own message from the app's answer.
    const res = await postJson(`/chat/${encodeURIComponent(roomName)}`, { text, conn: client.conn });
    addMessage(res.data, { offset: res.offset, replayed: false, mine: true });
  } catch (e) {
    addMessage({ user, text: `not sent (${e.message}): ${text}` }, { offset: null, mine: true });
  }
});

// --- is online -----------------------------------------------------------------

$("online-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const who = $("online-user").value.trim();
  if (!who) return;
  const res = await fetch(`/online/${encodeURIComponent(who)}`);
  const s = await res.json();
  $("online-result").textContent = s.online ? `${who} is online on ${s.connections.length} connection(s)` : `${who} is offline`;
});

// --- notifications -------------------------------------------------------------

function addNotification(data, how) {
  const li = el("li", `note ${how}`);
  li.append(el("span", "from", data.from ?? "app"), el("span", "text", String(data.text ?? "")), el("span", "meta", how));
  $("notifications").prepend(li);
}
// send_user arrives as a `direct` push on every connection of this user.
client.on("direct", (data) => {
  if (data?.kind === "notification") addNotification(data, "live");
});
// The kept ones: this user's feed channel, history first.
const feed = client.subscribe(`user:${user}`, { since: { offset: 0 } });
feed.on("message", (data, ctx) => addNotification(data, ctx.replayed ? "kept" : "kept · live"));

$("notify-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const to = $("notify-user").value.trim() || user;
  const text = $("notify-text").value.trim();
  if (!text) return;
  $("notify-text").value = "";
  await postJson(`/notify/${encodeURIComponent(to)}`, { text, persist: $("notify-persist").checked });
});

// --- tasks ---------------------------------------------------------------------

$("start-task").addEventListener("click", async () => {
  const t = await postJson("/tasks", { lines: 20, interval_ms: 500 });
  const a = el("a", "", `task ${t.id}`);
  a.href = t.page;
  a.target = "_blank";
  const li = el("li");
  li.append(a);
  $("task-links").prepend(li);
});

client.connect();
window.app = { client, chat, feed, user, room };
