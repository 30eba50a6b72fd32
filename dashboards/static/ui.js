// Small DOM and formatting helpers shared by the pages. Everything the node sends is put
// on the page as text (textContent), never parsed as HTML: a device id or an event's data
// cannot inject markup.

/** Create an element: h("td", {class: "x", dataset: {dev: id}}, "text", childElement). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replace the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A table with a header row; rows are arrays of cells (text or elements, or h("td")). */
export function table(headings, rows, attrs = {}) {
  return h("table", attrs,
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", {}, t)))),
    h("tbody", {}, rows.map((r) => r instanceof Node ? r
      : h("tr", {}, r.map((c) => c instanceof Node && c.tagName === "TD" ? c : h("td", {}, c))))));
}

/** ISO 8601 (UTC, seconds) of ms since the epoch (a string is shown as it is), or "–". */
export function iso(ms) {
  if (typeof ms === "string" && ms) return ms.slice(0, 40);
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "–";
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? "–" : d.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** "12 s ago", "3 min ago", "2 h ago" from ms since the epoch (to `now`, default the clock). */
export function ago(ms, now = Date.now()) {
  if (typeof ms !== "number" || !Number.isFinite(ms)) return "never";
  const s = Math.round((now - ms) / 1000);
  if (s < 0) return "in the future";
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

export function num(v, digits = 0) {
  return typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "–";
}

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22"];

/** A colour that stays the same for the same id across pages and reloads. */
export function colour(id) {
  let x = 0;
  for (const ch of String(id)) x = (x * 31 + ch.codePointAt(0)) >>> 0;
  return PALETTE[x % PALETTE.length];
}

const TIME_KEYS = new Set(["start", "end", "at", "t", "deadline"]);

function field(k, v) {
  if (typeof v === "number" && TIME_KEYS.has(k) && v > 1e11) return iso(v);
  if (typeof v === "number" && k.endsWith("_ms")) return `${(v / 1000).toFixed(1)} s`;
  return typeof v === "object" ? JSON.stringify(v) : String(v);
}

/** A short one-line rendering of a JSON value (event data): `k=v, k=v`, at most `max` chars;
 *  times (start, end, at) as ISO 8601, durations (`*_ms`) in seconds; null as "–". */
export function summary(value, max = 160) {
  let text;
  if (value === null || value === undefined) {
    text = "–";
  } else if (typeof value === "object" && !Array.isArray(value)) {
    text = Object.entries(value).map(([k, v]) => `${k.replace(/_ms$/, "")}=${field(k, v)}`)
      .join(", ");
  } else if (Array.isArray(value) && value.every((v) => typeof v === "string")) {
    text = value.join(", ");
  } else {
    text = JSON.stringify(value);
  }
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

/** A message box for a failure or an empty state. */
export function notice(text, kind = "info") {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

/** setInterval that also runs `fn` at once, skips a tick while the last run is unfinished,
 *  and stops when `signal` aborts. */
export function every(ms, fn, signal) {
  let busy = false;
  const tick = async () => {
    if (busy || signal.aborted) return;
    busy = true;
    try {
      await fn();
    } catch (err) {
      if (err?.name !== "AbortError") throw err;
    } finally {
      busy = false;
    }
  };
  tick();
  const id = setInterval(tick, ms);
  signal.addEventListener("abort", () => clearInterval(id));
}
