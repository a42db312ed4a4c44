// Building and updating the DOM without HTML strings.
//
// Every text goes in through textContent or a text node and every attribute through
// setAttribute with a fixed name, so nothing a device or an operator typed can become markup.
// Tables are updated in place, row by row and cell by cell, so a refresh every second keeps
// focus, selection and open forms as they are.

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = String(value);
    else if (key === "data") for (const [k, v] of Object.entries(value)) el.dataset[k] = String(v);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "style" || key.startsWith("on")) throw new Error(`refusing attribute ${key}`);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function setText(el, text) {
  const value = text == null ? "" : String(text);
  if (el.textContent !== value) el.textContent = value;
}

export function setAttr(el, name, value) {
  if (value == null || value === false) {
    if (el.hasAttribute(name)) el.removeAttribute(name);
  } else {
    const v = value === true ? "" : String(value);
    if (el.getAttribute(name) !== v) el.setAttribute(name, v);
  }
}

export function toggleClass(el, name, on) {
  if (el.classList.contains(name) !== Boolean(on)) el.classList.toggle(name, Boolean(on));
}

// Replace el's children only when what they would show differs (for small cells with links or lists).
export function setChildren(el, signature, build) {
  if (el.dataset.sig === signature) return;
  el.dataset.sig = signature;
  clear(el);
  append(el, [build()]);
}

// Keep tbody's rows equal to `items`, in order: rows are found by key, created by build(item)
// when new, updated by update(row, item) every time, and removed when their item is gone.
export function syncRows(tbody, items, keyOf, build, update) {
  const existing = new Map();
  for (const row of tbody.children) existing.set(row.dataset.key, row);
  let prev = null;
  for (const item of items) {
    const key = String(keyOf(item));
    let row = existing.get(key);
    if (row) existing.delete(key);
    else {
      row = build(item);
      row.dataset.key = key;
    }
    update(row, item);
    const want = prev ? prev.nextElementSibling : tbody.firstElementChild;
    if (row !== want) tbody.insertBefore(row, want);
    prev = row;
  }
  for (const row of existing.values()) row.remove();
}

// Keep a <select>'s options equal to [{value, label}] without losing what is selected.
export function syncOptions(select, options) {
  const chosen = select.value;
  const sig = JSON.stringify(options);
  if (select.dataset.sig === sig) return;
  select.dataset.sig = sig;
  clear(select);
  for (const o of options) select.append(h("option", { value: o.value, text: o.label }));
  if (options.some((o) => o.value === chosen)) select.value = chosen;
}

// A table in a horizontally scrolling box (phone widths), with a caption for screen readers.
export function table(caption, headings, cls = "") {
  const tbody = h("tbody");
  const tbl = h("table", { class: cls },
    h("caption", { class: "visually-hidden", text: caption }),
    h("thead", null, h("tr", null, headings.map((t) => h("th", { scope: "col", text: t })))),
    tbody);
  const wrap = h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption }, tbl);
  return { wrap, table: tbl, tbody };
}

// A row's cells, kept on the row so updates find them again.
const cells = new WeakMap();
export function row(names, props) {
  const tr = h("tr", props);
  const map = {};
  for (const name of names) {
    const td = h("td", { class: `c-${name}` });
    map[name] = td;
    tr.append(td);
  }
  cells.set(tr, map);
  return tr;
}
export function cellsOf(tr) {
  return cells.get(tr);
}

export function link(href, text) {
  return h("a", { href, text });
}

// A state name with a class for its colour (done, in progress, error).
export function stateClass(state, error) {
  if (error) return "st-error";
  if (state === "pending") return "st-pending";
  if (["CREATED_VOLUME", "LOADED", "DELIVERED", "RUNNING", "INSTALLED"].includes(state)) return "st-done";
  if (state === "ERROR") return "st-error";
  return "st-busy";
}

export function progressCell(td, percent) {
  let bar = td.querySelector("progress");
  let label = td.querySelector("span");
  if (!bar) {
    bar = h("progress", { max: "100" });
    label = h("span", { class: "pct" });
    td.append(bar, label);
  }
  const p = Math.max(0, Math.min(100, Number(percent) || 0));
  if (!bar.hasAttribute("value") || Number(bar.value) !== p) bar.value = p; // no value: indeterminate
  setAttr(bar, "aria-label", `${p}%`);
  setText(label, `${p}%`);
}
