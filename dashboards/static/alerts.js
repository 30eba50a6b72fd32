// Alerts: the node's contract events (excursions, shocks, geofence exits, late deliveries,
// doors opened en route, custody transfers…), newest first, live.
//
// AlertFeed runs for the whole login session: it loads the latest events (GET /v1/events),
// then follows the server-sent stream GET /v1/events/stream (`event: contract_event` with the
// event JSON, `event: block` with {height, size, time, count}). When the stream is refused
// or drops, it polls GET /v1/events every POLL_MS and tries the stream again after
// RETRY_MS. Events are kept by their log index `idx` (no duplicates), at most MAX_ALERTS.

import { ApiError, getJson, itemsOf, readStream, SseError } from "./api.js";
import { fill, h, iso, notice, summary } from "./ui.js";

export const MAX_ALERTS = 500;
const MAX_PAGES = 20;
const POLL_MS = 2000;
const RETRY_MS = 15000;

/** A contract event from the node ({entry|idx, event, device|dev, ...}), or null if `raw`
 *  is not one (no integer index, no event name). */
export function normaliseEvent(raw) {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) return null;
  const idx = raw.entry ?? raw.idx;
  if (!Number.isSafeInteger(idx) || idx < 0 || typeof raw.event !== "string") return null;
  const str = (v) => (typeof v === "string" || typeof v === "number" ? String(v) : null);
  return {
    idx, event: raw.event, contract: str(raw.contract), version: str(raw.version),
    shipment: str(raw.shipment), dev: str(raw.device ?? raw.dev),
    at: typeof raw.at === "number" ? raw.at : null,
    ledgerTime: typeof raw.ledger_time === "number" ? raw.ledger_time : null,
    state: str(raw.state),
    data: raw.data && typeof raw.data === "object" ? raw.data : {},
  };
}

export class AlertFeed {
  constructor(signal) {
    this.signal = signal;
    this.byIdx = new Map();
    this.listeners = new Set();
    this.mode = "starting";
    this.lastBlock = null;
    this.unseen = 0;
    this.watching = false;
    this.error = "";
    this.since = null;
    this.primed = false;
  }

  onChange(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  changed() { for (const fn of this.listeners) fn(this); }

  /** Events newest first. */
  list() { return [...this.byIdx.values()].sort((a, b) => b.idx - a.idx); }

  add(raws, { live }) {
    let added = 0;
    for (const raw of raws) {
      const ev = normaliseEvent(raw);
      if (!ev || this.byIdx.has(ev.idx)) continue;
      this.byIdx.set(ev.idx, ev);
      if (ev.ledgerTime !== null) this.since = Math.max(this.since ?? 0, ev.ledgerTime);
      added++;
    }
    if (this.byIdx.size > MAX_ALERTS) {
      for (const ev of this.list().slice(MAX_ALERTS)) this.byIdx.delete(ev.idx);
    }
    if (added && live && !this.watching) this.unseen += added;
    return added;
  }

  seen() { this.unseen = 0; this.changed(); }

  /** Load events: the first time every page (at most MAX_PAGES), then those logged since the
   *  newest ledger time seen (inclusive: duplicates are dropped by index). */
  async poll() {
    let cursor = null;
    let added = 0;
    for (let page = 0; page < MAX_PAGES; page++) {
      const q = new URLSearchParams({ limit: "1000" });
      if (cursor) q.set("cursor", cursor);
      else if (this.since !== null) q.set("since", String(this.since));
      const doc = await getJson(`/v1/events?${q}`, { signal: this.signal });
      const items = itemsOf(doc);
      added += this.add(items, { live: this.primed });
      cursor = doc?.next_cursor ?? doc?.next ?? null;
      if (!cursor) break;
    }
    this.primed = true;
    if (added) this.changed();
  }

  setMode(mode, error = "") {
    this.mode = mode;
    this.error = error;
    this.changed();
  }

  async start() {
    const sleep = (ms) => new Promise((r) => {
      const id = setTimeout(r, ms);
      this.signal.addEventListener("abort", () => { clearTimeout(id); r(); }, { once: true });
    });
    const pollQuietly = async () => {
      try {
        await this.poll();
      } catch (err) {
        if (err?.name === "AbortError" || !(err instanceof ApiError)) throw err;
        this.setMode(this.mode === "live" ? "live" : "polling", err.message);
      }
    };
    while (!this.signal.aborted) {
      try {
        await pollQuietly();
        // Events logged between the poll and the stream's start: the poll after onOpen.
        await readStream("/v1/events/stream", {
          signal: this.signal,
          lastEventId: this.byIdx.size ? String(Math.max(...this.byIdx.keys())) : null,
          onOpen: () => {
            this.setMode("live");
            pollQuietly().catch((err) => { if (err?.name !== "AbortError") throw err; });
          },
          onEvent: (ev) => this.onStreamEvent(ev),
        });
        this.setMode("reconnecting", "the node ended the stream");
      } catch (err) {
        if (err?.name === "AbortError" || this.signal.aborted) return;
        if (!(err instanceof ApiError || err instanceof SseError || err instanceof TypeError)) throw err;
        this.setMode("polling", err.message);
        const until = Date.now() + RETRY_MS;
        while (!this.signal.aborted && Date.now() < until) {
          await sleep(POLL_MS);
          await pollQuietly();
        }
      }
    }
  }

  onStreamEvent(ev) {
    let doc;
    try { doc = JSON.parse(ev.data); } catch { return; }
    if (ev.event === "contract_event") {
      if (this.add([doc], { live: true })) this.changed();
    } else if (ev.event === "block" && doc && typeof doc === "object") {
      this.lastBlock = doc;
      this.changed();
    } else if (ev.event === "revoked") {
      window.dispatchEvent(new CustomEvent("tf-unauthorized"));
    } else if (ev.event === "error") {
      throw new SseError(`the node ended the stream: ${doc?.detail ?? "error"}`);
    }
  }
}

const SEVERE = new Set(["excursion", "shock", "geofence_exit", "geofence", "late", "late_delivery",
  "door_opened", "door_open", "tamper"]);

/** One alert as a list item; every value goes in as text. */
export function renderAlert(ev) {
  const kind = SEVERE.has(ev.event) ? "bad" : "info";
  return h("li", { class: `alert ${kind}`, dataset: { idx: String(ev.idx), event: ev.event } },
    h("span", { class: "alert-time", title: `device time of the reading that fired it; logged ${iso(ev.ledgerTime)} (ledger time)` },
      iso(ev.at ?? ev.ledgerTime)),
    h("span", { class: "badge event" }, ev.event),
    ev.shipment ? h("a", { href: `#/shipments/${encodeURIComponent(ev.shipment)}` }, ev.shipment) : null,
    ev.dev ? h("span", { class: "dev" }, ev.dev) : null,
    ev.state ? h("span", { class: "state" }, `→ ${ev.state}`) : null,
    h("span", { class: "data" }, summary(ev.data)),
    h("span", { class: "contract" }, ev.contract ? `${ev.contract}${ev.version != null ? " v" + ev.version : ""}` : ""),
  );
}

export function mountAlerts(view, { feed, signal }) {
  const status = h("p", { id: "alerts-status", class: "muted" });
  const list = h("ol", { id: "alerts", class: "alerts", reversed: true });
  const empty = notice("No contract events yet.");
  fill(view, h("section", { class: "card" }, h("h2", {}, "Alerts"), status, empty, list));
  const render = () => {
    const items = feed.list();
    const mode = { live: "live (event stream)", polling: "polling /v1/events", starting: "connecting…",
      reconnecting: "reconnecting…" }[feed.mode] || feed.mode;
    status.textContent = `${items.length} event(s) · ${mode}${feed.error ? " · " + feed.error : ""}`
      + (feed.lastBlock ? ` · block ${feed.lastBlock.height}` : "");
    empty.hidden = items.length > 0;
    fill(list, items.map(renderAlert));
  };
  const off = feed.onChange(render);
  feed.watching = true;
  signal.addEventListener("abort", () => { off(); feed.watching = false; });
  feed.seen();
}
