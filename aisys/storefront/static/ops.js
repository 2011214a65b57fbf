// The operator view: the admin key is typed in, kept in memory only, and sent as a bearer token.
"use strict";

let adminKey = null;
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function row(cells) {
  const tr = el("tr");
  for (const cell of cells) tr.appendChild(el("td", {}, cell == null ? "" : String(cell)));
  return tr;
}

function fmt(value) { return typeof value === "number" ? value.toFixed(4) : value ?? ""; }

async function load() {
  const response = await fetch("/admin/overview", { headers: { Authorization: "Bearer " + adminKey } });
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* keep statusText */ }
    $("login-error").textContent = `sign-in failed (${response.status}): ${message}`;
    $("overview").hidden = true;
    return;
  }
  const data = await response.json();
  $("login-error").textContent = "";
  $("overview").hidden = false;
  render(data);
}

function render(data) {
  const models = $("models").querySelector("tbody");
  models.replaceChildren();
  for (const [alias, m] of Object.entries(data.models || {})) {
    if (!m) { models.appendChild(row([alias, "none"])); continue; }
    const metrics = m.metrics || {};
    const baseline = metrics.baseline || {};
    const tr = row([alias, m.version, m.run_id, m.snapshot_id, fmt(metrics["ndcg@10"]), fmt(metrics["hr@10"]),
      fmt(baseline["ndcg@10"])]);
    tr.dataset.alias = alias;
    tr.dataset.version = m.version || "";
    models.appendChild(tr);
  }
  renderTraffic(data.traffic);
  const decisions = $("decisions").querySelector("tbody");
  decisions.replaceChildren();
  for (const d of data.decisions || []) {
    const tr = row([d.time, d.decision, (d.reasons || []).join("; ")]);
    tr.dataset.decision = d.decision;
    decisions.appendChild(tr);
  }
  if (!(data.decisions || []).length) decisions.appendChild(row(["", "no decisions yet", ""]));
  renderDrift(data.drift || {});
  const links = $("links");
  links.replaceChildren();
  for (const link of data.links || []) {
    const li = el("li", { "data-ok": String(Boolean(link.ok)) });
    if (link.href && link.href.startsWith("/admin/")) {
      // Admin pages need the key: fetch with it and open the result, instead of a bare link.
      const button = el("button", { type: "button" }, link.name);
      button.addEventListener("click", () => openWithKey(link.href));
      li.appendChild(button);
    } else if (link.href) li.appendChild(el("a", { href: link.href, target: "_blank", rel: "noopener" }, link.name));
    else {
      li.appendChild(el("strong", {}, link.name));
      li.appendChild(el("span", { class: "reason" }, ": " + (link.reason || "not available")));
    }
    links.appendChild(li);
  }
}

function renderTraffic(traffic) {
  const ul = $("traffic");
  ul.replaceChildren();
  if (!traffic) { ul.appendChild(el("li", {}, "no traffic window")); return; }
  const ms = (v) => (v == null ? "–" : `${v.toFixed(1)} ms`);
  for (const [label, value, key] of [
    ["requests/s", traffic.rate_per_s.toFixed(2), "rate"], ["p50 latency", ms(traffic.p50_ms), "p50"],
    ["p95 latency", ms(traffic.p95_ms), "p95"],
    ["5xx share", traffic.error_share == null ? "–" : (100 * traffic.error_share).toFixed(1) + "%", "errors"]]) {
    const li = el("li", { "data-stat": key });
    li.appendChild(el("strong", {}, String(value)));
    li.appendChild(document.createTextNode(label));
    ul.appendChild(li);
  }
  $("traffic-note").textContent = `${traffic.requests} requests in the last ${traffic.window_s} s (${traffic.scope}).`;
}

function renderDrift(drift) {
  const threshold = drift.threshold || 0.2;
  $("drift-summary").textContent = drift.summary || "";
  const chart = $("drift-chart");
  // The chart is SVG drawn by the server, shown as an image: no markup enters the page.
  chart.hidden = !drift.chart;
  if (drift.chart) { chart.src = drift.chart; chart.alt = "PSI per feature over time: " + (drift.summary || ""); }
  const list = $("drift");
  list.replaceChildren();
  for (const [name, value] of Object.entries(drift.stats || {})) {
    const li = el("li", {}, `${name}: ${fmt(value)}`);
    const bar = el("span", { class: "gauge" + (value > threshold ? " over" : ""), role: "img", "aria-label": `${name} ${fmt(value)}` });
    bar.style.width = Math.min(200, Math.round((value / threshold) * 100)) + "px";
    li.appendChild(bar);
    list.appendChild(li);
  }
  if (!list.childElementCount) list.appendChild(el("li", {}, "no drift check yet"));
}

async function openWithKey(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + adminKey } });
  if (!response.ok) { $("login-error").textContent = `could not open ${path} (${response.status})`; return; }
  const url = URL.createObjectURL(await response.blob());
  window.open(url, "_blank", "noopener");
}

document.addEventListener("DOMContentLoaded", () => {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    adminKey = $("admin-key").value;
    $("admin-key").value = "";
    load();
  });
  $("refresh").addEventListener("click", load);
});
