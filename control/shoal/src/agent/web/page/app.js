// The cluster page: draws the document /api/events sends (see agent/web.rs) and
// redraws it whenever a new one arrives. No framework, nothing fetched elsewhere.
"use strict";

const MAX_CHANGES = 100;
let previous = null; // the last document's tasks by ID, for the change log

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
}

// A steady colour per service name.
function colour(name) {
  let h = 0;
  for (const ch of name) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return `hsl(${h % 360} 55% 42%)`;
}

function taskCard(t) {
  const card = el("div", {
    class: "task" + (t.desired_state !== "running" ? " leaving" : ""),
    "data-task-id": t.id,
    "data-service": t.service,
    "data-state": t.state,
    title: `${t.name} ${t.id}\n${t.image}\nstate ${t.state}, desired ${t.desired_state}` +
      (t.error ? `\n${t.error}` : t.message ? `\n${t.message}` : ""),
  }, el("span", { class: "nm" }, t.name), el("span", { class: "st" }, t.state));
  card.style.background = colour(t.service);
  return card;
}

function drawNodes(doc) {
  const box = document.getElementById("nodes");
  const byNode = new Map();
  for (const t of doc.tasks) {
    const k = t.node_id || "";
    if (!byNode.has(k)) byNode.set(k, []);
    byNode.get(k).push(t);
  }
  const columns = [];
  const nodes = [...doc.nodes].sort((a, b) => a.hostname.localeCompare(b.hostname));
  for (const n of nodes) {
    const role = n.manager_status ? `manager (${n.manager_status})` : n.role;
    const col = el("div", {
      class: `node state-${n.state}`,
      "data-node-id": n.id,
      "data-hostname": n.hostname,
    },
      el("h3", {}, n.hostname + (n.self ? " ★" : "")),
      el("div", { class: "meta" }, `${role} · ${n.state} · ${n.availability} · ${n.address}`),
      trafficLine(n));
    for (const t of (byNode.get(n.id) || []).sort((a, b) => a.name.localeCompare(b.name))) {
      col.append(taskCard(t));
    }
    columns.push(col);
  }
  const waiting = byNode.get("") || [];
  if (waiting.length) {
    const col = el("div", { class: "node unassigned", "data-hostname": "" },
      el("h3", {}, "not placed"),
      el("div", { class: "meta" }, "pending: no node can take them yet"));
    for (const t of waiting) col.append(taskCard(t));
    columns.push(col);
  }
  box.replaceChildren(...columns);
}

function bytes(n) {
  const units = ["B", "kB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// A node's traffic per second, from the counters its heartbeats carry.
function trafficLine(n) {
  const t = n.traffic;
  if (!t) return el("div", { class: "traffic" }, "traffic: not reported yet");
  return el("div", {
    class: "traffic",
    "data-mesh-flows": t.mesh_flows_per_s,
    "data-vip-connects": t.vip_connects_per_s,
  }, `mesh ${t.mesh_flows_per_s.toFixed(1)} conn/s, ${bytes(t.mesh_bytes_per_s)}/s · VIP ${t.vip_connects_per_s.toFixed(1)} conn/s`);
}

function portText(p) { return `${p.published}/${p.protocol}`; }

function drawServices(doc) {
  const rows = doc.services.map(s => el("tr", { "data-service": s.name },
    el("td", {}, s.name),
    el("td", {}, s.mode),
    el("td", {}, s.replicas === null ? `${s.running} running` : `${s.running}/${s.replicas}`),
    el("td", {}, s.image),
    el("td", {}, s.ports.map(p => `${portText(p)}→${p.target}`).join(", "))));
  document.querySelector("#services tbody").replaceChildren(...rows);

  const addresses = doc.nodes.filter(n => n.state === "ready").map(n => n.address);
  const mesh = [];
  for (const s of doc.services) {
    for (const p of s.ports) {
      const at = p.mode === "ingress"
        ? addresses.map(a => `${a}:${p.published}`).join(", ")
        : doc.tasks.filter(t => t.service_id === s.id && t.state === "running" && t.node_id)
          .map(t => { const n = doc.nodes.find(n => n.id === t.node_id); return n ? `${n.address}:${p.published}` : ""; })
          .filter(Boolean).join(", ");
      mesh.push(el("tr", { "data-port": portText(p) },
        el("td", {}, portText(p)), el("td", {}, s.name), el("td", {}, String(p.target)),
        el("td", {}, p.mode), el("td", {}, at || "nowhere yet")));
    }
  }
  document.querySelector("#mesh tbody").replaceChildren(...mesh);
}

function logChanges(doc) {
  const now = new Map(doc.tasks.map(t => [t.id, t]));
  const hostname = id => (doc.nodes.find(n => n.id === id) || {}).hostname || "no node";
  if (previous) {
    const list = document.getElementById("changes");
    const at = new Date().toLocaleTimeString();
    for (const t of now.values()) {
      const was = previous.get(t.id);
      if (!was || was.state !== t.state || was.desired_state !== t.desired_state) {
        list.prepend(el("li", {}, `${at} ${t.name} on ${hostname(t.node_id)}: ${was ? was.state + " → " : "new, "}${t.state}` +
          (t.desired_state !== "running" ? ` (desired ${t.desired_state})` : "")));
      }
    }
    for (const [id, t] of previous) {
      if (!now.has(id)) list.prepend(el("li", {}, `${at} ${t.name} on ${hostname(t.node_id)}: gone`));
    }
    while (list.children.length > MAX_CHANGES) list.lastChild.remove();
  }
  previous = now;
}

function draw(doc) {
  const me = doc.nodes.find(n => n.self);
  const running = doc.tasks.filter(t => t.state === "running").length;
  const mesh = doc.nodes.reduce((sum, n) => sum + (n.traffic ? n.traffic.mesh_flows_per_s : 0), 0);
  document.getElementById("summary").textContent =
    `${doc.nodes.length} nodes · ${doc.services.length} services · ${running} tasks running · ` +
    `${mesh.toFixed(1)} conn/s through the mesh · ` +
    `seen by ${me ? me.hostname : doc.manager} at store version ${doc.version}`;
  document.body.dataset.version = doc.version;
  drawNodes(doc);
  drawServices(doc);
  logChanges(doc);
}

function problem(text) {
  const p = document.getElementById("problem");
  p.hidden = !text;
  p.textContent = text || "";
}

function connect() {
  const link = document.getElementById("link");
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => { link.textContent = "live"; link.className = "link up"; problem(""); });
  source.addEventListener("cluster", e => draw(JSON.parse(e.data)));
  source.addEventListener("gone", e => { problem(JSON.parse(e.data).message); });
  source.addEventListener("error", async () => {
    link.textContent = "reconnecting…";
    link.className = "link down";
    // An EventSource does not say why: ask once, to show a 503's reason.
    try {
      const r = await fetch("/api/cluster");
      if (!r.ok) problem((await r.json()).message);
    } catch (err) {
      problem("the manager does not answer");
    }
  });
}

connect();
