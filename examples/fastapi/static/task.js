// The task page: every log line of a task, in order. Lines published before
// the page opened are replayed from the channel's history, then live ones
// follow on the same subscription, without gap or duplicate.
import { $, connectGateway, el } from "/static/common.js";

const taskId = decodeURIComponent(location.pathname.split("/").filter(Boolean)[1] ?? "");
const channel = `task:${taskId}`;
$("task-id").textContent = taskId;
$("status-link").href = `/tasks/${encodeURIComponent(taskId)}/status`;

const { client } = await connectGateway();
const counts = { history: 0, live: 0 };

function summary() {
  $("summary").textContent = `${counts.history} line(s) from history, ${counts.live} live`;
}
summary();

function setState(state, text) {
  const s = $("task-state");
  s.dataset.state = state;
  s.textContent = text;
}

function render(data, ctx) {
  const li = el("li", ctx.replayed ? "replayed" : "live");
  li.dataset.offset = String(ctx.offset);
  li.dataset.level = String(data.level ?? "info");
  // task_log: progress in percent (0-100) or null, ts in unix milliseconds.
  const ts = typeof data.ts === "number" ? new Date(data.ts).toLocaleTimeString() : "";
  li.append(
    el("span", "ts", ts),
    el("span", `level ${data.level ?? "info"}`, String(data.level ?? "info")),
    el("span", "message", String(data.message ?? "")),
    el("span", "pct", typeof data.progress === "number" ? `${Math.round(data.progress)}%` : ""),
    el("span", "tag", ctx.replayed ? "history" : "live"),
  );
  $("lines").append(li);
  counts[ctx.replayed ? "history" : "live"]++;
  summary();
  if (typeof data.progress === "number") {
    $("progress").value = data.progress;
    $("progress-text").textContent = `${Math.round(data.progress)}%`;
  }
  if (data.finished) {
    const failed = data.level === "error";
    setState(failed ? "failed" : "finished", failed ? `failed: ${data.message}` : "finished");
  } else {
    setState("running", "running");
  }
}

// since {offset: 0}: everything the history still holds, then live lines.
// After a reconnect the SDK resubscribes from the last line it showed.
const sub = client.subscribe(channel, { since: { offset: 0 } });
sub.on("message", render);
sub.on("subscribed", (info) => {
  $("lines").dataset.subscribedAt = String(info.offset);
  if (info.resubscribed) {
    // After a reconnect (possibly to another node): the lines published
    // while this page was away follow now, from history.
    const missed = info.offset - (sub.position?.offset ?? info.offset);
    $("lines").dataset.resubscribed = String(info.recovered);
    $("note").hidden = false;
    $("note").textContent = info.recovered
      ? `reconnected to node ${client.node}: ${missed} missed line(s) recovered from history`
      : `reconnected to node ${client.node}: some lines could not be recovered`;
  }
  // recovered false: the oldest lines were trimmed (history_size) or had
  // expired (history_ttl_secs), or the stream was lost; show what is left.
  if (info.recovered === false) $("gap").hidden = false;
});
sub.on("error", (e) => setState("error", `${e.code}: ${e.message}`));

client.connect();
window.app = { client, sub, taskId };
