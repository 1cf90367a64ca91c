// The /status page: polls GET /api/nodes (the cluster) and this node's
// /metrics (rates), every 2 s (?interval=ms to change).
const $ = (id) => document.getElementById(id);
const q = new URLSearchParams(location.search);
const interval = Math.max(250, Number(q.get("interval")) || 2000);
let apiKey = sessionStorage.getItem("gateway-api-key") || "";
let previous = null; // { at, counters }

const fmt = (n) => (n === null || n === undefined || Number.isNaN(n) ? "–" : Math.round(n).toLocaleString("en-US"));
const rate = (n) => (n === null ? "–" : n < 10 ? n.toFixed(1) : Math.round(n).toLocaleString("en-US"));

function uptime(startedAt) {
  let s = Math.max(0, Math.floor(Date.now() / 1000 - startedAt));
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

/** Sum of every series of each metric in Prometheus text, plus the node label of gateway_node_info. */
function parseMetrics(text) {
  const sums = {};
  let node = null;
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const [, name, labels, value] = m;
    sums[name] = (sums[name] ?? 0) + Number(value);
    if (name === "gateway_node_info" && labels) {
      const n = /node="([^"]*)"/.exec(labels);
      if (n) node = n[1];
    }
  }
  return { sums, node };
}

async function get(path) {
  const headers = apiKey ? { authorization: `Bearer ${apiKey}` } : {};
  const res = await fetch(path, { headers, cache: "no-store" });
  return res;
}

function renderNodes(nodes, self) {
  const rows = nodes.map((n) => {
    const tr = document.createElement("tr");
    tr.dataset.node = n.id;
    if (n.id === self) tr.className = "self";
    const cells = [
      [n.id, ""],
      [fmt(n.connections), "num"],
      [fmt(n.subscriptions), "num"],
      [uptime(n.started_at), "num"],
      [n.version, ""],
    ];
    for (const [text, cls] of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
    }
    return tr;
  });
  $("nodes").replaceChildren(...rows);
  $("c-nodes").textContent = fmt(nodes.length);
  $("c-conns").textContent = fmt(nodes.reduce((a, n) => a + (n.connections || 0), 0));
  $("c-channels").textContent = fmt(nodes.reduce((a, n) => a + (n.subscriptions || 0), 0));
}

async function poll() {
  const problems = [];
  let self = null;
  try {
    const res = await get("/metrics");
    if (res.ok) {
      const { sums, node } = parseMetrics(await res.text());
      self = node;
      const now = performance.now();
      const counters = {
        in: sums.gateway_messages_received_total ?? 0,
        out: sums.gateway_messages_sent_total ?? 0,
        pub: sums.gateway_publications_total ?? 0,
      };
      if (previous) {
        const dt = (now - previous.at) / 1000;
        for (const k of ["in", "out", "pub"]) {
          $(`c-${k}`).textContent = rate(Math.max(0, counters[k] - previous.counters[k]) / dt);
        }
      }
      previous = { at: now, counters };
    } else {
      // /metrics lives on admin_listen when that is set.
      for (const k of ["in", "out", "pub"]) $(`c-${k}`).textContent = "n/a";
    }
  } catch (e) {
    problems.push(`metrics: ${e.message}`);
  }
  try {
    const res = await get("/api/nodes");
    if (res.status === 401) {
      $("key-form").hidden = false;
      problems.push("the HTTP API refused the key");
    } else if (!res.ok) {
      problems.push(`/api/nodes: HTTP ${res.status}`);
    } else {
      $("key-form").hidden = true;
      const body = await res.json();
      renderNodes(body.nodes ?? [], self);
    }
  } catch (e) {
    problems.push(`/api/nodes: ${e.message}`);
  }
  const updated = $("updated");
  if (problems.length) {
    $("error").hidden = false;
    $("error").textContent = problems.join(" · ");
    updated.dataset.state = "disconnected";
  } else {
    $("error").hidden = true;
    updated.dataset.state = "connected";
  }
  updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
}

$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  apiKey = $("key").value.trim();
  sessionStorage.setItem("gateway-api-key", apiKey);
  void poll();
});

async function loop() {
  await poll();
  setTimeout(loop, interval);
}
void loop();
