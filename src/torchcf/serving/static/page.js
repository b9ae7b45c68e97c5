"use strict";
const $ = (id) => document.getElementById(id);
const views = ["user", "new", "item", "run"];
let picked = [];
let runs = [{ run: 0, model: "" }];

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

function say(text) {
  const box = $("message");
  box.textContent = text || "";
  box.classList.toggle("shown", Boolean(text));
}

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error("the server did not answer (" + err.message + ")");
  }
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (!response.ok) {
    let detail = body && body.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => (d.loc || []).join(".") + ": " + d.msg).join("; ");
    throw new Error(detail || ("request failed with status " + response.status));
  }
  return body;
}

function itemLink(item, title) {
  return el("a", { href: "#item/" + encodeURIComponent(item), text: title || ("item " + item) });
}

function show(view) {
  for (const name of views) {
    $("view-" + name).hidden = name !== view;
    const link = $("nav-" + name);
    if (name === view) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
}

function kValue() {
  const k = parseInt($("k").value, 10);
  return Number.isFinite(k) && k > 0 ? k : 10;
}

function recommendationSection(data, index, lists) {
  const both = runs.length > 1 ? lists[1 - index] : new Set();
  const recs = el("ol", { id: index === 0 ? "recommendations" : "recommendations-b" });
  for (const r of data.recommendations) {
    const li = el("li", { class: both.has(String(r.item)) ? "rec both" : "rec" },
      itemLink(r.item, r.title), el("span", { class: "score", text: r.score.toFixed(3) }));
    if (both.has(String(r.item))) li.append(el("span", { class: "badge both", text: "in both lists" }));
    if (r.held_out) {
      li.append(el("span", { class: "badge " + r.held_out, text: "held-out " + r.held_out + " item" }));
    }
    if (r.genres) li.append(el("div", { class: "genres", text: r.genres.replaceAll("|", " · ") }));
    if (r.because && r.because.length) {
      li.append(el("div", { class: "why", text: "because you watched " + r.because.join(", ") }));
    }
    recs.append(li);
  }
  const verdicts = el("div", { class: "held-out" });
  for (const h of data.held_out) {
    const made = h.position != null;
    verdicts.append(el("p", {},
      el("span", { text: "Held-out " + h.holdout + " item: " }), itemLink(h.item, h.title),
      el("span", { class: "verdict " + (made ? "hit" : "miss"),
        text: made ? " — in the list at #" + h.position : " — not in the top " + data.k })));
  }
  if (!data.held_out.length) {
    verdicts.append(el("p", { class: "note", text: "No held-out item known for this user." }));
  }
  const title = (runs.length > 1 ? "ABCD"[index] + ": " + runs[index].model + ", top " : "Top ")
    + data.k + " for user " + data.user;
  return el("section", { class: "card" }, el("h2", { text: title }), verdicts, recs);
}

function historySection(data) {
  const history = el("ol", { id: "history" });
  for (const h of data.history) {
    const li = el("li", {}, itemLink(h.item, h.title));
    if (h.genres) li.append(el("span", { class: "genres", text: "  " + h.genres.replaceAll("|", " · ") }));
    history.append(li);
  }
  const more = data.history_total > data.history.length
    ? el("p", { class: "note", text: "showing the first " + data.history.length }) : null;
  return el("section", { class: "card" },
    el("h2", { text: "History (" + data.history_total + " items)" }),
    el("p", { class: "note", text: "Order: " + data.history_order + "." }), history, more);
}

async function loadUser(user) {
  show("user");
  $("user-id").value = user;
  $("user-result").replaceChildren();
  say("");
  let views;
  try {
    views = await Promise.all(runs.map((r) => api("/explore/user?user=" + encodeURIComponent(user)
      + "&k=" + kValue() + "&run=" + r.run)));
  } catch (err) { say(err.message); return; }
  const lists = views.map((v) => new Set(v.recommendations.map((r) => String(r.item))));
  const sections = views.map((data, i) => recommendationSection(data, i, lists));
  const layout = runs.length > 1 ? "columns three" : "columns";
  $("user-result").append(el("div", { class: layout }, ...sections, historySection(views[0])));
}

async function randomUser() {
  try {
    const data = await api("/explore/random-user");
    location.hash = "#user/" + encodeURIComponent(data.user);
  } catch (err) { say(err.message); }
}

function renderPicked() {
  const chips = $("picked");
  chips.replaceChildren();
  for (const p of picked) {
    chips.append(el("button", { type: "button", class: "plain", "aria-label": "remove " + (p.title || p.item),
      text: "✕ " + (p.title || p.item), onclick: () => { picked = picked.filter((q) => q.item !== p.item); renderPicked(); } }));
  }
  if (!picked.length) chips.append(el("span", { class: "note", text: "No titles picked yet." }));
}

async function searchTitles(event) {
  event.preventDefault();
  say("");
  const query = $("search").value;
  const list = $("search-results");
  list.replaceChildren();
  let items;
  try { items = await api("/explore/items?limit=20&q=" + encodeURIComponent(query)); }
  catch (err) { say(err.message); return; }
  if (!items.length) { say("No title matches \"" + query + "\"."); return; }
  for (const it of items) {
    list.append(el("li", {}, el("button", { type: "button", class: "plain pick", text: "Add",
      onclick: () => { if (!picked.some((p) => p.item === it.item)) picked.push(it); renderPicked(); } }),
      el("span", { text: " " + (it.title || ("item " + it.item)) }),
      it.genres ? el("span", { class: "genres", text: "  " + it.genres.replaceAll("|", " · ") }) : null));
  }
}

async function foldIn() {
  say("");
  const out = $("new-result");
  out.replaceChildren();
  if (!picked.length) { say("Pick at least one title first."); return; }
  let data;
  try {
    data = await api("/recommend", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ items: picked.map((p) => p.item), k: kValue() }) });
  } catch (err) { say(err.message); return; }
  const list = el("ol", { id: "new-recommendations" });
  for (const r of data[0].items) list.append(el("li", {}, itemLink(r.item, r.title), el("span", { class: "score", text: r.score.toFixed(3) })));
  out.append(el("section", { class: "card" }, el("h2", { text: "Top " + kValue() + " for a new user who liked " + picked.length + " titles" }), list));
}

async function loadItem(item) {
  show("item");
  say("");
  $("item-id").value = item;
  const out = $("item-result");
  out.replaceChildren();
  let info, similar;
  try {
    info = await api("/explore/item?item=" + encodeURIComponent(item));
    similar = await api("/similar?item=" + encodeURIComponent(item) + "&k=" + kValue());
  } catch (err) { say(err.message); return; }
  const list = el("ol", { id: "similar" });
  for (const r of similar.items) list.append(el("li", {}, itemLink(r.item, r.title), el("span", { class: "score", text: r.score.toFixed(3) })));
  out.append(el("section", { class: "card" },
    el("h2", { id: "item-title", text: info.title || ("item " + info.item) }),
    info.genres ? el("p", { class: "genres", text: info.genres.replaceAll("|", " · ") }) : null,
    el("h2", { text: "Similar items (cosine of item vectors)" }), list));
}

function row(name, value) {
  return el("tr", {}, el("td", { text: name }), el("td", { text: value == null ? "—" : String(value) }));
}

function modelCard(card, index) {
  const table = el("table", { class: "kv", id: index === 0 ? "model-card" : "model-card-b" });
  const source = card.source || {};
  const protocol = card.protocol || {};
  const selected = (card.metrics || {}).selected || {};
  const epoch = selected.epoch != null ? selected.epoch + " (by " + selected.by + ")" : null;
  table.append(row("model", card.model), row("users × items", card.num_users + " × " + card.num_items),
    row("data", source.path || source.dataset), row("split", protocol.split),
    row("candidates", protocol.candidates), row("selected epoch", epoch));
  for (const [name, value] of Object.entries(selected.test || {})) {
    if (name.includes("@")) table.append(row("test " + name, Number(value).toFixed(4)));
  }
  const hp = card.hparams || {};
  if (hp.parts) {
    hp.parts.forEach((part, i) => table.append(row("part " + (i + 1), part.model + " × weight " + hp.weights[i])));
  } else {
    for (const [name, value] of Object.entries(hp)) table.append(row(name, value));
  }
  const title = runs.length > 1 ? "ABCD"[index] + ": the run" : "The run";
  return el("section", { class: "card" }, el("h2", { text: title }), table);
}

async function loadRun() {
  show("run");
  say("");
  const out = $("run-result");
  out.replaceChildren();
  let cards;
  try { cards = await Promise.all(runs.map((r) => api("/explore/model?run=" + r.run))); }
  catch (err) { say(err.message); return; }
  out.append(el("div", { class: runs.length > 1 ? "columns two" : "" }, ...cards.map(modelCard)));
}

function route() {
  const hash = decodeURIComponent(location.hash.slice(1));
  const [view, ...rest] = hash.split("/");
  const arg = rest.join("/");
  if (view === "user" && arg) loadUser(arg);
  else if (view === "item" && arg) loadItem(arg);
  else if (view === "new") { show("new"); say(""); }
  else if (view === "item") { show("item"); say(""); }
  else if (view === "run") loadRun();
  else { show("user"); say(""); }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("user-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("user-id").value.trim();
    if (!user) { say("Type a user id, or pick a random user."); return; }
    const next = "#user/" + encodeURIComponent(user);
    if (location.hash === next) loadUser(user); else location.hash = next;
  });
  $("random").addEventListener("click", randomUser);
  $("item-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const item = $("item-id").value.trim();
    if (!item) { say("Type an item id, or click a title."); return; }
    const next = "#item/" + encodeURIComponent(item);
    if (location.hash === next) loadItem(item); else location.hash = next;
  });
  $("search-form").addEventListener("submit", searchTitles);
  $("fold-in").addEventListener("click", foldIn);
  window.addEventListener("hashchange", route);
  renderPicked();
  try { runs = await api("/explore/runs"); } catch (err) { say(err.message); }
  route();
});
