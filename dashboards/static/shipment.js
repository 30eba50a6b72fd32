// Shipments: the list (GET /v1/shipments: only those the token's principal may see — the
// node filters) and one shipment's page (GET /v1/shipments/{id}): state, parties, devices,
// the temperature chart over time with excursions shaded, the custody timeline, its recent
// events, and whether its proof bundle (GET /v1/shipments/{id}/proof) verifies in the browser.
//
// History: GET /v1/shipments/{id}/history?kind=readings|events|custody&limit=&cursor= pages
// of {items, next_cursor}. Excursions are the events named "excursion" (docs/contracts.md):
// shaded from data.start over data.duration_ms (or to data.end, or to `at`), device time.
// A shipment the node will not show (404 or 403) is "not found": the page never tells an
// unknown shipment from another partner's.

import { ApiError, enc, getJson, itemsOf } from "./api.js";
import { renderAlert, normaliseEvent } from "./alerts.js";
import { verifyInto } from "./proofview.js";
import { colour, every, fill, h, iso, notice, summary, table } from "./ui.js";

const REFRESH_MS = 5000;
const PAGE = 1000;
const MAX_PAGES = 50;

function parties(s) {
  return (Array.isArray(s.parties) ? s.parties : []).map((p) => `${p?.org ?? "?"} (${p?.role ?? "?"})`).join(", ");
}

export function mountShipments(view, { signal }) {
  const holder = h("div", { id: "shipments" }, notice("loading…"));
  fill(view, h("section", { class: "card" }, h("h2", {}, "Shipments"), holder));
  every(REFRESH_MS, async () => {
    const list = [];
    try {
      let cursor = null;
      for (let page = 0; page < MAX_PAGES; page++) {
        const q = new URLSearchParams({ limit: String(PAGE) });
        if (cursor) q.set("cursor", cursor);
        const doc = await getJson(`/v1/shipments?${q}`, { signal });
        list.push(...itemsOf(doc));
        cursor = doc?.next_cursor ?? null;
        if (!cursor) break;
      }
    } catch (err) {
      if (err.name === "AbortError") throw err;
      fill(holder, notice(`cannot list shipments: ${err.message}`, "error"));
      return;
    }
    fill(holder, list.length ? table(["shipment", "state", "parties", "custodian", "deadline", "created"],
      list.filter((s) => typeof s?.id === "string").map((s) => h("tr", { dataset: { shipment: s.id } },
        h("td", {}, h("a", { href: `#/shipments/${enc(s.id)}` }, s.id)),
        h("td", {}, h("span", { class: `badge state ${String(s.state)}` }, String(s.state ?? "–"))),
        h("td", {}, parties(s)), h("td", {}, String(s.custodian ?? "–")),
        h("td", {}, iso(s.deadline)), h("td", {}, iso(s.created)))), { class: "shipments" })
      : notice("No shipment is visible to this token."));
  }, signal);
}

/** Every item of a history kind, following `next_cursor`s (at most MAX_PAGES pages). */
export async function history(id, kind, signal, from = null) {
  const out = [];
  let cursor = null;
  for (let i = 0; i < MAX_PAGES; i++) {
    const q = new URLSearchParams({ kind, limit: String(PAGE) });
    if (cursor) q.set("cursor", cursor);
    if (from !== null) q.set("from", String(from));
    const doc = await getJson(`/v1/shipments/${enc(id)}/history?${q}`, { signal });
    out.push(...itemsOf(doc));
    cursor = doc?.next_cursor ?? doc?.next ?? null;
    if (!cursor) break;
  }
  return out;
}

/** A temperature point from a history item: {dev, t (device ms), c}, or null. */
export function tempPoint(item) {
  const kind = item?.kind ?? item?.k;
  const values = item?.values ?? item?.d;
  const t = item?.device_time ?? item?.t;
  const c = values?.c;
  if (kind !== "temp" || typeof c !== "number" || !Number.isFinite(c) || typeof t !== "number") return null;
  return { dev: String(item.dev ?? item.device ?? "?"), t, c };
}

/** Shaded bands [{start, end}] (device ms) from excursion events: from data.start to
 *  data.end, or to start + data.duration_ms (the contracts' hold window), or to `at` (when
 *  it fired); an event with neither start nor at is skipped. */
export function excursionBands(events) {
  const bands = [];
  const n = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  for (const ev of events) {
    if (ev?.event !== "excursion") continue;
    const d = ev.data ?? {};
    const start = n(d.start) ?? n(ev.at);
    if (start === null) continue;
    const dur = n(d.duration_ms);
    const end = n(d.end) ?? (dur !== null ? start + dur : null) ?? n(ev.at) ?? start;
    if (end >= start) bands.push({ start, end });
  }
  return bands;
}

function chartSeries(points) {
  const devs = [...new Set(points.map((p) => p.dev))].sort();
  const times = [...new Set(points.map((p) => p.t))].sort((a, b) => a - b);
  const at = new Map(times.map((t, i) => [t, i]));
  const cols = devs.map(() => new Array(times.length).fill(null));
  for (const p of points) cols[devs.indexOf(p.dev)][at.get(p.t)] = p.c;
  return { devs, data: [times.map((t) => t / 1000), ...cols] };
}

/** Draw (or update) the temperature chart in `el`; returns the chart to pass back next time. */
function drawChart(el, points, bands, previous) {
  if (!points.length) {
    previous?.chart.destroy();
    fill(el, notice("No temperature readings for this shipment yet."));
    return null;
  }
  const { devs, data } = chartSeries(points);
  if (previous && previous.devs.join() === devs.join()) {
    previous.bands.splice(0, previous.bands.length, ...bands);
    previous.chart.setData(data);
    return previous;
  }
  previous?.chart.destroy();
  fill(el);
  const shaded = [...bands];
  const width = Math.max(320, el.clientWidth || 800);
  const chart = new window.uPlot({
    width, height: 260,
    scales: { x: { time: true } },
    axes: [{}, { label: "°C" }],
    series: [{}, ...devs.map((d) => ({ label: d, stroke: colour(d), width: 2, spanGaps: true }))],
    hooks: {
      drawClear: [(u) => {
        const { ctx } = u;
        ctx.save();
        ctx.fillStyle = "rgba(220, 40, 40, 0.18)";
        for (const b of shaded) {
          const x0 = u.valToPos(b.start / 1000, "x", true);
          const x1 = u.valToPos(b.end / 1000, "x", true);
          const left = Math.max(u.bbox.left, Math.min(x0, x1));
          const right = Math.min(u.bbox.left + u.bbox.width, Math.max(x0, x1));
          if (right >= left) ctx.fillRect(left - 1, u.bbox.top, Math.max(right - left, 3), u.bbox.height);
        }
        ctx.restore();
      }],
    },
  }, data, el);
  el.dataset.bands = String(shaded.length);
  return { chart, devs, bands: shaded };
}

function custodyTimeline(items) {
  if (!items.length) return notice("No custody transfer recorded.");
  return h("ol", { class: "timeline", id: "custody" }, items.map((c) => {
    const d = c.data ?? c;
    return h("li", {}, h("span", { class: "alert-time" }, iso(c.at ?? c.time)), " ",
      h("b", {}, `${d.from ?? "?"} → ${d.to ?? "?"}`), " ", summary(d, 120));
  }));
}

export function mountShipment(view, { arg: id, signal }) {
  const head = h("div", { id: "shipment-head" }, notice("loading…"));
  const verify = h("div", { id: "shipment-verification" });
  const chartEl = h("div", { id: "shipment-chart", class: "chart" });
  const custodyEl = h("div", { id: "shipment-custody" });
  const eventsEl = h("ol", { id: "shipment-events", class: "alerts", reversed: true });
  const card = h("section", { class: "card" }, h("h2", {}, "Shipment ", h("code", {}, id)), head);
  fill(view, card);
  let chart = null;
  let detailsShown = false;
  signal.addEventListener("abort", () => chart?.chart.destroy());

  const showDetails = () => {
    fill(view, card,
      h("section", { class: "card" }, h("h2", {}, "Verification"), verify),
      h("section", { class: "card" }, h("h2", {}, "Temperature"), chartEl,
        h("p", { class: "muted small" }, "Shaded: excursions reported by the shipment's contracts.")),
      h("section", { class: "card" }, h("h2", {}, "Custody"), custodyEl),
      h("section", { class: "card" }, h("h2", {}, "Events"), eventsEl));
    detailsShown = true;
    verifyInto(verify, `/v1/shipments/${enc(id)}/proof`, signal)
      .catch((err) => { if (err.name !== "AbortError") throw err; });
  };

  let points = [];
  let lastT = null;
  every(REFRESH_MS, async () => {
    let s;
    try {
      s = await getJson(`/v1/shipments/${enc(id)}`, { signal });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      if (err instanceof ApiError && (err.status === 404 || err.status === 403)) {
        fill(view, h("section", { class: "card" }, h("h2", {}, "Shipment ", h("code", {}, id)),
          h("p", { id: "shipment-not-found", class: "notice error", role: "alert" },
            "Shipment not found (or not shared with you).")));
        detailsShown = false;
        return;
      }
      fill(head, notice(`cannot read the shipment: ${err.message}`, "error"));
      return;
    }
    fill(head, table(["", ""], [
      ["state", h("span", { id: "shipment-state", class: `badge state ${String(s.state)}` }, String(s.state ?? "–"))],
      ["parties", parties(s)], ["custodian", String(s.custodian ?? "–")],
      ["devices", (Array.isArray(s.assignments) ? s.assignments : []).map((a) =>
        `${a?.dev ?? "?"} (${iso(a?.start)} – ${a?.end ? iso(a.end) : "now"})`).join(", ") || "–"],
      ["units", summary(s.units ?? [], 200)],
      ["on board", h("span", { id: "shipment-on-board" }, Array.isArray(s.on_board)
        ? `${s.on_board.length} of ${(s.units ?? []).length}` : "–")],
      ["route", s.route ? "yes (GeoJSON)" : "–"],
      ["geofences", Object.keys(s.geofences ?? {}).join(", ") || "–"],
      ["contracts", summary(s.contracts ?? [], 200)],
      ["deadline", iso(s.deadline)], ["created", iso(s.created)],
    ], { class: "kv" }));
    if (!detailsShown) showDetails();

    const [readings, events, custody] = await Promise.all([
      history(id, "readings", signal, lastT === null ? null : lastT + 1).catch(noHistory),
      history(id, "events", signal).catch(noHistory),
      history(id, "custody", signal).catch(noHistory),
    ]);
    if (signal.aborted) return;
    const fresh = (readings ?? []).map(tempPoint).filter(Boolean);
    points = points.concat(fresh);
    for (const p of fresh) lastT = lastT === null ? p.t : Math.max(lastT, p.t);
    const evs = (events ?? []).map(normaliseEvent).filter(Boolean).sort((a, b) => b.idx - a.idx);
    if (readings === null) fill(chartEl, notice("The node does not serve this shipment's history.", "error"));
    else if (fresh.length || !chart) chart = drawChart(chartEl, points, excursionBands(evs), chart);
    if (chart) chartEl.dataset.bands = String(chart.bands.length);
    const transfers = custody ?? evs.filter((e) => e.event === "custody_transfer").reverse();
    fill(custodyEl, custodyTimeline(transfers));
    fill(eventsEl, evs.slice(0, 50).map(renderAlert));
  }, signal);
}

function noHistory(err) {
  if (err.name === "AbortError") throw err;
  return null;
}
