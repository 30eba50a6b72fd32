// Devices: every enrolled device's health, refreshed every REFRESH_MS.
//
// From GET /v1/devices: last seen (ledger time of its last accepted reading), readings,
// last and contiguous seq, gaps, prev mismatches, revoked. From the device's recent readings
// (GET /v1/devices/{id}/readings, the last WINDOW seqs): the clock source (`ts`) and kind of
// its last reading, its flags, the last temperature; and from its last `status` reading the
// agent's own report: backlog (readings not yet receipted) and clock. A device that has sent
// no status reading has no backlog to show: the node knows only what the chain holds.

import { enc, getJson, pollDevices } from "./api.js";
import { ago, fill, h, iso, notice, num, table } from "./ui.js";

const REFRESH_MS = 3000;
const WINDOW = 300;
const STATUS_WINDOW = 5000;

/** The latest reading of `kind` in `readings` (seq order), or null. */
export function lastOf(readings, kind) {
  for (let i = readings.length - 1; i >= 0; i--) if (readings[i]?.kind === kind) return readings[i];
  return null;
}

class Health {
  constructor(id) {
    this.id = id;
    this.last = null;
    this.temp = null;
    this.status = null;
    this.statusAsked = false;
    this.error = "";
  }

  async update(d, signal) {
    const last = d.last_seq ?? 0;
    if (last <= 0 || (this.last && this.last.seq === last)) return;
    const base = `/v1/devices/${enc(this.id)}/readings`;
    const doc = await getJson(`${base}?after_seq=${Math.max(0, last - WINDOW)}&limit=1000`, { signal });
    const rs = Array.isArray(doc?.readings) ? doc.readings : [];
    this.last = rs.at(-1) ?? this.last;
    this.temp = lastOf(rs, "temp") ?? this.temp;
    this.status = lastOf(rs, "status") ?? this.status;
    if (!this.status && !this.statusAsked) {
      // A status reading comes about once a minute: look further back once.
      this.statusAsked = true;
      const more = await getJson(`${base}?kind=status&after_seq=${Math.max(0, last - STATUS_WINDOW)}&limit=1000`,
        { signal });
      this.status = lastOf(Array.isArray(more?.readings) ? more.readings : [], "status");
    }
  }
}

function row(d, hl) {
  const st = hl?.status?.values;
  const flags = hl?.last?.flags ?? [];
  return h("tr", { dataset: { device: d.id } },
    h("td", { class: "id" }, d.id),
    h("td", {}, d.revoked ? h("span", { class: "bad" }, "revoked") : h("span", { class: "ok" }, "enrolled")),
    h("td", { title: "ledger time of its last accepted reading" }, iso(d.last_seen), h("br"),
      h("small", { class: "muted" }, ago(d.last_seen))),
    h("td", { class: "n" }, d.readings ?? "–"),
    h("td", { class: "n" }, `${d.last_seq ?? "–"} / ${d.contiguous_seq ?? "–"}`),
    h("td", { class: `n ${d.gaps ? "warn" : "ok"}` }, d.gaps ?? "–"),
    h("td", { class: `n ${d.prev_mismatches ? "warn" : "ok"}` }, d.prev_mismatches ?? "–"),
    h("td", { class: "clock" }, hl?.last ? `${hl.last.time_source} (a ${hl.last.kind} reading)` : "–",
      flags.length ? h("span", { class: "warn" }, ` ${flags.join(", ")}`) : null),
    h("td", { class: "n" }, hl?.temp ? `${num(hl.temp.values?.c, 2)} °C` : "–"),
    h("td", { class: "n", title: st ? `status reading seq ${hl.status.seq}, device time ${iso(hl.status.device_time)}` : "" },
      st ? `${st.backlog ?? "–"}` : "–",
      st ? h("small", { class: "muted" }, ` (${ago(hl.status.device_time)}${st.clock ? ", clock " + st.clock : ""})`) : null),
  );
}

export function mountDevices(view, { signal }) {
  const status = h("p", { id: "devices-status", class: "muted" }, "loading…");
  const holder = h("div", { id: "devices" });
  fill(view, h("section", { class: "card" }, h("h2", {}, "Devices"), status, holder));
  const health = new Map();
  const update = (d) => {
    if (!health.has(d.id)) health.set(d.id, new Health(d.id));
    return health.get(d.id).update(d, signal);
  };
  const render = (list, problems) => {
    status.textContent = `${list.length} device(s) · refreshed ${iso(Date.now())}`
      + (problems.length ? ` · ${problems.join("; ")}` : "");
    fill(holder, list.length ? table(["device", "state", "last seen (ledger)", "readings",
      "last / contiguous seq", "gaps", "prev mismatches", "clock of last reading", "temperature",
      "backlog (agent status)"], list.map((d) => row(d, health.get(d.id))), { class: "devices" })
      : notice("No device is enrolled yet."));
  };
  pollDevices(REFRESH_MS, signal, { update, render,
    unreadable: (err) => { status.textContent = `cannot read devices: ${err.message}`; } });
}
