// Fleet map: every device's last GPS fix (a marker labelled with its id) and its recent track
// (a polyline), refreshed every REFRESH_MS, over an offline basemap: Natural Earth 1:50m
// country boundaries (vendor/world-atlas, TopoJSON) drawn as a Leaflet GeoJSON layer. No tile
// server, nothing fetched from outside the node.
//
// Positions come from GET /v1/devices and, per device, GET /v1/devices/{id}/readings?kind=gps:
// the first time the last fixes before the device's last seq, then only fixes after the last
// seq seen (one small request per device per refresh). Each marker's element carries
// data-device, data-lat, data-lon, data-seq and data-time (device time) for tests and tools.

import { enc, getJson, pollDevices } from "./api.js";
import { ago, colour, fill, h, iso, notice, num, table } from "./ui.js";

const BASEMAP = "/static/vendor/world-atlas/countries-50m.json";
const REFRESH_MS = 1500;
const TRACK_POINTS = 300;
const FIRST_WINDOW = 600;    // seqs before a device's last seq to look for fixes at first

let basemap = null;          // the GeoJSON, loaded once per page load

/** A GPS reading's position as [lat, lon], or null if it has none that is on Earth. */
export function fixOf(reading) {
  const v = reading?.values;
  const lat = v?.lat;
  const lon = v?.lon;
  if (typeof lat !== "number" || typeof lon !== "number" || !Number.isFinite(lat)
      || !Number.isFinite(lon) || Math.abs(lat) > 90 || Math.abs(lon) > 180) return null;
  return [lat, lon];
}

async function loadBasemap() {
  if (!basemap) {
    const resp = await fetch(BASEMAP);
    if (!resp.ok) throw new Error(`basemap: HTTP ${resp.status}`);
    const topo = await resp.json();
    basemap = window.topojson.feature(topo, topo.objects.countries);
  }
  return basemap;
}

class Track {
  constructor(id, map) {
    this.id = id;
    this.map = map;
    this.after = null;        // last seq asked for
    this.points = [];         // [{lat, lon, seq, t, speed}]
    this.marker = null;
    this.line = null;
  }

  async update(device, signal) {
    if (this.after === null) this.after = Math.max(0, (device.last_seq ?? 0) - FIRST_WINDOW);
    if ((device.last_seq ?? 0) <= this.after) return;
    const doc = await getJson(`/v1/devices/${enc(this.id)}/readings?kind=gps&after_seq=${this.after}&limit=1000`,
      { signal });
    if (signal.aborted) return;
    const readings = Array.isArray(doc?.readings) ? doc.readings : [];
    for (const r of readings) {
      if (Number.isSafeInteger(r.seq) && r.seq > this.after) this.after = r.seq;
      const fix = fixOf(r);
      if (fix) {
        this.points.push({ lat: fix[0], lon: fix[1], seq: r.seq, t: r.device_time,
          speed: r.values.speed, ledger: r.ledger_time });
      }
    }
    if (doc?.next_after_seq == null && readings.length === 0) this.after = device.last_seq;
    if (this.points.length > TRACK_POINTS) this.points.splice(0, this.points.length - TRACK_POINTS);
    this.draw();
  }

  draw() {
    const last = this.points.at(-1);
    if (!last) return;
    const L = window.L;
    const latlngs = this.points.map((p) => [p.lat, p.lon]);
    if (!this.marker) {
      const label = h("span", { class: "truck-label" }, this.id);
      const dot = h("span", { class: "truck-dot" });
      label.style.borderColor = colour(this.id);
      dot.style.background = colour(this.id);
      const icon = L.divIcon({ className: "truck-marker", html: h("span", {}, dot, label),
        iconSize: [0, 0] });
      this.marker = L.marker([last.lat, last.lon], { icon, title: this.id, keyboard: false })
        .addTo(this.map);
      this.line = L.polyline(latlngs, { color: colour(this.id), weight: 3, opacity: 0.7 })
        .addTo(this.map);
    } else {
      this.marker.setLatLng([last.lat, last.lon]);
      this.line.setLatLngs(latlngs);
    }
    const el = this.marker.getElement();
    if (el) {
      Object.assign(el.dataset, { device: this.id, lat: String(last.lat), lon: String(last.lon),
        seq: String(last.seq), time: String(last.t) });
    }
  }
}

export function mountMap(view, { signal }) {
  const mapEl = h("div", { id: "map", class: "map", role: "region", "aria-label": "fleet map" });
  const status = h("p", { id: "map-status", class: "muted" }, "loading positions…");
  const legend = h("div", { id: "fleet-table" });
  const fit = h("button", { type: "button", id: "fit" }, "Fit all trucks");
  fill(view, h("section", { class: "card map-card" },
    h("div", { class: "row" }, h("h2", {}, "Fleet map"), fit, status), mapEl), h("section", { class: "card" }, legend));

  const L = window.L;
  const map = L.map(mapEl, { center: [51, 8], zoom: 5, minZoom: 2, maxZoom: 16,
    worldCopyJump: true });
  map.attributionControl.setPrefix("Leaflet");
  map.attributionControl.addAttribution("Boundaries: Natural Earth");
  L.control.scale({ imperial: false }).addTo(map);
  // Stop any pan or zoom animation first: Leaflet throws if one ends on a removed map.
  signal.addEventListener("abort", () => { map.stop(); map.off(); map.remove(); });

  loadBasemap().then((geo) => {
    if (signal.aborted) return;
    const layer = L.geoJSON(geo, { interactive: false, style: { color: "#8a9bab", weight: 1,
      fillColor: "#f3f1ea", fillOpacity: 1 } }).addTo(map);
    layer.bringToBack();
    mapEl.dataset.basemap = "loaded";
  }).catch((err) => { status.textContent = `basemap not loaded: ${err.message}`; });

  const tracks = new Map();
  let fitted = false;
  const fitAll = () => {
    const pts = [...tracks.values()].map((t) => t.points.at(-1)).filter(Boolean);
    if (!pts.length) return false;
    map.fitBounds(L.latLngBounds(pts.map((p) => [p.lat, p.lon])).pad(0.3),
      { maxZoom: 11, animate: false });
    return true;
  };
  fit.addEventListener("click", fitAll);

  const update = (d) => {
    if (!tracks.has(d.id)) tracks.set(d.id, new Track(d.id, map));
    return tracks.get(d.id).update(d, signal);
  };
  const render = (list, problems) => {
    if (!fitted) fitted = fitAll();
    const shown = [...tracks.values()].filter((t) => t.points.length);
    status.textContent = `${shown.length} of ${list.length} device(s) with a position`
      + (problems.length ? ` · ${problems.join("; ")}` : "");
    fill(legend, shown.length ? table(["device", "last fix (device time)", "age", "position", "speed"],
      shown.map((t) => {
        const p = t.points.at(-1);
        return h("tr", { dataset: { device: t.id }, title: "show on the map",
          onclick: () => map.setView([p.lat, p.lon], 15) },
          h("td", {}, h("span", { class: "swatch", style: null }, ""), t.id),
          h("td", {}, iso(p.t)), h("td", {}, ago(p.t)),
          h("td", {}, `${num(p.lat, 5)}, ${num(p.lon, 5)}`), h("td", {}, `${num(p.speed, 1)} m/s`));
      }), { class: "fleet" }) : notice("No GPS fixes yet."));
    for (const sw of legend.querySelectorAll("tr[data-device] .swatch")) {
      sw.style.background = colour(sw.closest("tr").dataset.device);
    }
  };
  pollDevices(REFRESH_MS, signal, { update, render,
    unreadable: (err) => { status.textContent = `cannot read devices: ${err.message}`; } });
}
