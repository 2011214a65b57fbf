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
    const tr = row([alias, m.version, m.run_id, m.snapshot_id, fmt(metrics["ndcg@10"]), fmt(metrics["hr@10"])]);
    tr.dataset.alias = alias;
    tr.dataset.version = m.version || "";
    models.appendChild(tr);
  }
  const decisions = $("decisions").querySelector("tbody");
  decisions.replaceChildren();
  for (const d of data.decisions || []) decisions.appendChild(row([d.time, d.decision, (d.reasons || []).join("; ")]));
  if (!(data.decisions || []).length) decisions.appendChild(row(["", "no decisions yet", ""]));
  const drift = $("drift");
  drift.replaceChildren();
  const threshold = (data.drift && data.drift.threshold) || 0.2;
  for (const [name, value] of Object.entries((data.drift && data.drift.stats) || {})) {
    const li = el("li", {}, `${name}: ${fmt(value)}`);
    const bar = el("span", { class: "gauge" + (value > threshold ? " over" : ""), role: "img", "aria-label": `${name} ${fmt(value)}` });
    bar.style.width = Math.min(200, Math.round((value / threshold) * 100)) + "px";
    li.appendChild(bar);
    drift.appendChild(li);
  }
  if (!drift.childElementCount) drift.appendChild(el("li", {}, "no drift check yet"));
  const links = $("links");
  links.replaceChildren();
  for (const [name, href] of Object.entries(data.links || {})) {
    const li = el("li");
    if (!href) li.textContent = `${name}: not available`;
    else if (href.startsWith("/admin/")) {
      // Admin pages need the key: fetch with it and open the result, instead of a bare link.
      const button = el("button", { type: "button" }, name);
      button.addEventListener("click", () => openWithKey(href));
      li.appendChild(button);
    } else li.appendChild(el("a", { href, target: "_blank", rel: "noopener" }, name));
    links.appendChild(li);
  }
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
