// The storefront: browse, post events, and watch the recommendations follow each click.
// The page holds no API key: it asks the server for a shopper session (POST /shop/session), bound to one
// anonymous user the server picks, keeps it in sessionStorage (this tab only) and sends it as a Bearer token.
// The server lets that session read and write only its own user.
"use strict";

const state = { user: null, category: null, offset: 0, limit: 24, k: 10, viewing: null, basket: new Set() };
const names = new Map(); // item id -> product, for what the page has shown
const $ = (id) => document.getElementById(id);

const SESSION_STORAGE_KEY = "aisys-shopper-session";
const RENEW_BEFORE_MS = 5 * 60 * 1000;  // renew (same user) when less than this is left
let session = null;

function storedSession() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(SESSION_STORAGE_KEY) || "null");
    if (saved && saved.token && Date.parse(saved.expires_at) > Date.now()) return saved;
  } catch (e) { /* unreadable: start a new one */ }
  return null;
}

// renew: keep the current user (the server checks the old token); otherwise a new anonymous shopper.
async function openSession(renew) {
  const headers = renew && session ? { "Authorization": "Bearer " + session.token } : {};
  const response = await fetch("/shop/session", { method: "POST", headers });
  if (!response.ok) throw new Error("no shopper session: " + (await errorText(response)));
  session = await response.json();
  sessionStorage.setItem(SESSION_STORAGE_KEY, JSON.stringify(session));
  return session;
}

async function ensureSession() {
  if (!session) session = storedSession();
  if (!session) return openSession(false);
  if (Date.parse(session.expires_at) - Date.now() < RENEW_BEFORE_MS) {
    try { return await openSession(true); } catch (e) { return openSession(false); }
  }
  return session;
}

async function api(path, options = {}) {
  await ensureSession();
  const send = () => fetch(path, {
    ...options, headers: { "Content-Type": "application/json", "Authorization": "Bearer " + session.token },
  });
  let response = await send();
  if (response.status === 401) {  // expired, or the server's secret changed: start over as a new shopper
    await openSession(false);
    if (state.user !== session.user_id) useUser(session.user_id);
    response = await send();
  }
  return response;
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

function picture(item) {
  // The server draws each product as an SVG data: URI (the CSP allows img-src data:); alt is empty
  // because the name is right beside it and a screen reader should not read it twice.
  return el("img", { src: item.image || "", alt: "", width: "120", height: "96", class: "pic" });
}

async function loadCatalogue() {
  const query = new URLSearchParams({ limit: String(state.limit), offset: String(state.offset) });
  if (state.category) query.set("category", state.category);
  const response = await api("/catalogue?" + query);
  if (!response.ok) { setStatus("catalogue unavailable: " + (await errorText(response))); return; }
  const data = await response.json();
  renderCategories(data.categories);
  renderGrid(data.items);
  renderPager(data);
  // The page is its own shopper: the user its session is bound to.
  if (!state.user) useUser(anonymousId());
}

function renderCategories(categories) {
  const ul = $("categories");
  ul.replaceChildren();
  for (const cat of [null, ...categories]) {
    const id = cat ? cat.id : null;
    const li = el("li");
    const label = cat ? `${cat.name} (${cat.count})` : "All";
    const button = el("button", { type: "button", "aria-pressed": String(state.category === id), "data-category": id || "" }, label);
    button.addEventListener("click", () => { state.category = id; state.offset = 0; loadCatalogue(); });
    li.appendChild(button);
    ul.appendChild(li);
  }
}

function renderPager(data) {
  const pages = Math.max(1, Math.ceil(data.total / data.limit));
  const current = Math.floor(data.offset / data.limit) + 1;
  const first = data.total ? data.offset + 1 : 0;
  const last = data.offset + data.items.length;
  $("page-info").textContent = `Page ${current} of ${pages} · products ${first}–${last} of ${data.total}`;
  $("page-info").dataset.page = String(current);
  $("page-info").dataset.pages = String(pages);
  for (const [id, offset] of [["prev", data.prev_offset], ["next", data.next_offset]]) {
    const button = $(id);
    button.disabled = offset == null;
    button.onclick = () => { state.offset = offset; loadCatalogue().then(() => $("catalogue-title").focus()); };
  }
}

function renderGrid(items) {
  const ul = $("grid");
  ul.replaceChildren();
  for (const item of items) {
    names.set(item.item_id, item);
    const li = el("li", { class: "card", "data-item": item.item_id, "data-category": item.category || "" });
    li.appendChild(picture(item));
    li.appendChild(el("h3", {}, item.name || item.item_id));
    if (item.brand) li.appendChild(el("span", { class: "brand" }, item.brand));
    li.appendChild(el("span", { class: "cat" }, item.tags || item.category_name || "uncategorised"));
    li.appendChild(el("span", { class: "price" }, price(item.price)));
    const actions = el("div", { class: "actions" });
    for (const [type, label] of [["view", "View"], ["add_to_cart", "Add to cart"], ["purchase", "Buy"]]) {
      const button = el("button", { type: "button", "data-event": type, "aria-label": `${label} ${item.name || item.item_id}` }, label);
      button.addEventListener("click", () => sendEvent(item, type));
      actions.appendChild(button);
    }
    li.appendChild(actions);
    ul.appendChild(li);
  }
}

function renderViewing() {
  const box = $("viewing");
  box.replaceChildren();
  const item = state.viewing && names.get(state.viewing);
  box.hidden = !item;
  box.dataset.item = state.viewing || "";
  if (!item) return;
  box.appendChild(picture(item));
  const text = el("div");
  text.appendChild(el("span", { class: "note" }, "Now viewing"));
  text.appendChild(el("strong", {}, item.name || item.item_id));
  text.appendChild(el("span", { class: "price" }, price(item.price)));
  box.appendChild(text);
}

function renderBasket() {
  const items = [...state.basket].map((id) => (names.get(id) || {}).name || id);
  $("basket").textContent = items.length ? `Basket (${items.length}): ${items.join(", ")}` : "Basket is empty";
  $("basket").dataset.items = [...state.basket].join(" ");
}

async function sendEvent(item, type) {
  if (!state.user) { setStatus("pick a shopper first"); return; }
  const body = { user_id: state.user, item_id: item.item_id, event_type: type };
  if (item.category) body.category = item.category;
  if (item.price != null) body.price = item.price;
  const response = await api("/events", { method: "POST", body: JSON.stringify(body) });
  if (!response.ok) { setStatus(`event refused: ${await errorText(response)}`); return; }
  setStatus(`${type.replace(/_/g, " ")}: ${item.name || item.item_id}`);
  state.viewing = item.item_id;  // every action happens on a product page
  if (type === "add_to_cart") state.basket.add(item.item_id);
  if (type === "purchase") state.basket.delete(item.item_id);  // bought: out of the basket
  renderViewing();
  renderBasket();
  await loadRecommendations();
}

async function loadRecommendations() {
  if (!state.user) return;
  const recs = $("recs");
  recs.setAttribute("aria-busy", "true");
  const query = new URLSearchParams({ k: String(state.k) });
  if (state.viewing) query.set("viewing", state.viewing);
  for (const id of state.basket) query.append("basket", id);
  const started = performance.now();
  const response = await api(`/shop/recommendations/${encodeURIComponent(state.user)}?${query}`);
  const ms = performance.now() - started;
  recs.setAttribute("aria-busy", "false");
  if (!response.ok) { setStatus("recommendations unavailable: " + (await errorText(response))); return; }
  const data = await response.json();
  $("recs-title").textContent = data.heading || "Recommended for you";
  recs.replaceChildren();
  for (const item of data.items) {
    if (item.image) names.set(item.item_id, { ...names.get(item.item_id), ...item });
    const li = el("li", { "data-item": item.item_id, "data-category": item.category || "", class: data.fallback ? "fallback" : "" });
    const img = picture(item);
    img.setAttribute("width", "48");
    img.setAttribute("height", "38");
    li.appendChild(img);
    const text = el("div");
    text.appendChild(el("strong", {}, item.name || item.item_id));
    const detail = [item.category_name, price(item.price)].filter(Boolean).join(" · ");
    if (detail) text.appendChild(el("span", { class: "cat" }, " " + detail));
    const why = item.reason || (data.fallback ? "popular now" : "");
    if (why) { text.appendChild(el("br")); text.appendChild(el("span", { class: "reason" }, why)); }
    li.appendChild(text);
    recs.appendChild(li);
  }
  $("recs-note").textContent = data.fallback ? "New here: popular items until you click."
    : state.viewing ? "Never the product you are looking at, nor what is in your basket." : "Based on what you just did.";
  const parts = [`model v${data.model_version || "?"}`];
  if (data.arm) parts.push(`arm ${data.arm}`);
  parts.push(`${Math.round(ms)} ms`);
  $("meta").textContent = parts.join(" · ");
  recs.dataset.version = data.model_version || "";
  recs.dataset.viewing = state.viewing || "";
}

function useUser(user) {
  state.user = user;
  state.viewing = null;
  state.basket.clear();
  renderViewing();
  renderBasket();
  $("user-id").value = user;
  setStatus(`shopping as ${user}`);
  loadRecommendations();
}

// The page's own anonymous shopper is the user its session is bound to: the server picks the id.
function anonymousId() { return session.user_id; }

document.addEventListener("DOMContentLoaded", () => {
  $("user-form").addEventListener("submit", (event) => event.preventDefault());
  // A new anonymous shopper is a new server-issued session.
  $("anon").addEventListener("click", () => openSession(false).then((s) => useUser(s.user_id)));
  ensureSession()
    .then((s) => { useUser(s.user_id); loadCatalogue(); })
    .catch((err) => setStatus(String(err.message || err)));
});
