// The storefront: browse, post events, and watch the recommendations follow each click.
// Uses only the publishable storefront-scope key from the page's <meta> tag.
"use strict";

const KEY = document.querySelector('meta[name="aisys-key"]').content;
const state = { user: null, category: null, k: 10 };
const $ = (id) => document.getElementById(id);

function api(path, options = {}) {
  const headers = { "Content-Type": "application/json" };
  if (KEY) headers["Authorization"] = "Bearer " + KEY;
  return fetch(path, { ...options, headers });
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && body.error.message) || response.statusText;
  } catch (e) {
    return response.statusText;
  }
}

function setStatus(text) { $("status").textContent = text; }

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function price(value) { return value == null ? "" : "$" + Number(value).toFixed(2); }

async function loadCatalogue() {
  const query = new URLSearchParams({ limit: "60" });
  if (state.category) query.set("category", state.category);
  const response = await api("/catalogue?" + query);
  if (!response.ok) { setStatus("catalogue unavailable: " + (await errorText(response))); return; }
  const data = await response.json();
  renderCategories(data.categories);
  renderGrid(data.items);
  const list = $("sample-users");
  if (!list.childElementCount) for (const user of data.sample_users) list.appendChild(el("option", { value: user }));
  if (!state.user && data.sample_users.length) useUser(data.sample_users[0]);
}

function renderCategories(categories) {
  const ul = $("categories");
  ul.replaceChildren();
  for (const name of [null, ...categories]) {
    const li = el("li");
    const button = el("button", { type: "button", "aria-pressed": String(state.category === name), "data-category": name || "" }, name || "All");
    button.addEventListener("click", () => { state.category = name; loadCatalogue(); });
    li.appendChild(button);
    ul.appendChild(li);
  }
}

function renderGrid(items) {
  const ul = $("grid");
  ul.replaceChildren();
  for (const item of items) {
    const li = el("li", { class: "card", "data-item": item.item_id, "data-category": item.category || "" });
    li.appendChild(el("h3", {}, item.item_id));
    li.appendChild(el("span", { class: "cat" }, item.category || "uncategorised"));
    li.appendChild(el("span", { class: "price" }, price(item.price)));
    const actions = el("div", { class: "actions" });
    for (const [type, label] of [["view", "View"], ["add_to_cart", "Add to cart"], ["purchase", "Buy"]]) {
      const button = el("button", { type: "button", "data-event": type, "aria-label": `${label} ${item.item_id}` }, label);
      button.addEventListener("click", () => sendEvent(item, type));
      actions.appendChild(button);
    }
    li.appendChild(actions);
    ul.appendChild(li);
  }
}

async function sendEvent(item, type) {
  if (!state.user) { setStatus("pick a shopper first"); return; }
  const body = { user_id: state.user, item_id: item.item_id, event_type: type };
  if (item.category) body.category = item.category;
  if (item.price != null) body.price = item.price;
  const response = await api("/events", { method: "POST", body: JSON.stringify(body) });
  if (!response.ok) { setStatus(`event refused: ${await errorText(response)}`); return; }
  setStatus(`${type.replace(/_/g, " ")}: ${item.item_id}`);
  await loadRecommendations();
}

async function loadRecommendations() {
  if (!state.user) return;
  const recs = $("recs");
  recs.setAttribute("aria-busy", "true");
  const started = performance.now();
  const response = await api(`/recommendations/${encodeURIComponent(state.user)}?k=${state.k}`);
  const ms = performance.now() - started;
  recs.setAttribute("aria-busy", "false");
  if (!response.ok) { setStatus("recommendations unavailable: " + (await errorText(response))); return; }
  const data = await response.json();
  recs.replaceChildren();
  for (const item of data.items) {
    const li = el("li", { "data-item": item.item_id, "data-category": item.category || "", class: data.fallback ? "fallback" : "" });
    li.appendChild(el("strong", {}, item.item_id));
    li.appendChild(document.createTextNode(item.category ? ` · ${item.category}` : ""));
    const why = item.reason || (data.fallback ? "popular now" : "");
    if (why) { li.appendChild(el("br")); li.appendChild(el("span", { class: "reason" }, why)); }
    recs.appendChild(li);
  }
  $("recs-note").textContent = data.fallback ? "New here: popular items until you click." : "Based on what you just did.";
  const parts = [`model v${data.model_version || "?"}`];
  if (data.arm) parts.push(`arm ${data.arm}`);
  parts.push(`${Math.round(ms)} ms`);
  $("meta").textContent = parts.join(" · ");
  recs.dataset.version = data.model_version || "";
}

function useUser(user) {
  state.user = user;
  $("user-id").value = user;
  setStatus(`shopping as ${user}`);
  loadRecommendations();
}

function anonymousId() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return "anon-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

document.addEventListener("DOMContentLoaded", () => {
  $("user-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("user-id").value.trim();
    if (user) useUser(user);
  });
  $("anon").addEventListener("click", () => useUser(anonymousId()));
  loadCatalogue();
});
