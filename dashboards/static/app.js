// The dashboard's shell: login, who is logged in, the router (#/map, #/devices, #/alerts,
// #/shipments, #/shipments/<id>, #/chain) and the live alert feed every page shares.
//
// A page module exports mount(view, ctx) and gets an AbortSignal in ctx.signal: it stops its
// timers and requests when the signal aborts (on navigation or logout). Pages marked fleet
// (map, devices, chain) are hidden for partner tokens; the node enforces what each token may
// read, the page only shows what the node returns.

import { ApiError, checkToken, clearToken, getJson, getToken, setToken, TokenError } from "./api.js";
import { AlertFeed, mountAlerts } from "./alerts.js";
import { mountChain } from "./chain.js";
import { mountDevices } from "./devices.js";
import { mountMap } from "./map.js";
import { mountShipment, mountShipments } from "./shipment.js";
import { fill, h, notice } from "./ui.js";

const ROUTES = {
  map: { mount: mountMap, fleet: true, title: "Fleet map" },
  devices: { mount: mountDevices, fleet: true, title: "Devices" },
  alerts: { mount: mountAlerts, fleet: false, title: "Alerts" },
  shipments: { mount: mountShipments, fleet: false, title: "Shipments" },
  shipment: { mount: mountShipment, fleet: false, title: "Shipment" },
  chain: { mount: mountChain, fleet: true, title: "Chain" },
};

const state = { who: null, page: null, feed: null, session: null };
const view = () => document.getElementById("view");

/** Parse a location hash into {name, arg}: "#/shipments/S-1" -> {shipment, "S-1"}. */
export function parseRoute(hash) {
  const parts = String(hash || "").replace(/^#\/?/, "").split("/");
  const [first, ...rest] = parts;
  if (first === "shipments" && rest.length && rest[0]) {
    let id;
    try { id = decodeURIComponent(rest.join("/")); } catch { id = rest.join("/"); }
    return { name: "shipment", arg: id };
  }
  return { name: ROUTES[first] ? first : "", arg: null };
}

export function canSee(who, name) {
  return !(ROUTES[name]?.fleet && who?.kind === "partner");
}

function home(who) { return who?.kind === "partner" ? "#/shipments" : "#/map"; }

function showLogin(message) {
  state.who = null;
  state.session?.abort();
  state.session = null;
  state.page?.abort();
  state.page = null;
  document.body.dataset.auth = "out";
  fill(document.getElementById("who"));
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "off",
    spellcheck: "false", placeholder: "paste your API token", "aria-label": "API token" });
  const error = h("p", { id: "login-error", class: "notice error", role: "alert",
    hidden: !message }, message || "");
  const form = h("form", { id: "login", class: "card login" },
    h("h2", {}, "Log in"),
    h("p", {}, "Paste a token made with ", h("code", {}, "trustfleet token create"),
      ". It is kept in this tab only (sessionStorage)."),
    input, h("button", { type: "submit" }, "Log in"), error);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.hidden = true;
    try {
      setToken(checkToken(input.value));
    } catch (err) {
      if (!(err instanceof TokenError)) throw err;
      error.hidden = false;
      error.textContent = err.message;
      return;
    }
    start();
  });
  fill(view(), form);
  input.focus();
}

async function whoami() {
  try {
    return await getJson("/v1/whoami");
  } catch (err) {
    // A node without token checks (before the API's auth existed) has no /v1/whoami.
    if (err instanceof ApiError && err.status === 404) {
      return { kind: "operator", name: "anyone", org: null, unchecked: true };
    }
    throw err;
  }
}

async function start() {
  if (!getToken()) return showLogin();
  let who;
  try {
    who = await whoami();
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      clearToken();
      return showLogin("The node refused this token.");
    }
    fill(view(), notice(`Cannot reach the node: ${err.message}`, "error"),
      h("button", { type: "button", onclick: start }, "Try again"));
    return;
  }
  state.who = who;
  document.body.dataset.auth = "in";
  document.body.dataset.kind = who.kind;
  for (const a of document.querySelectorAll("#nav a[data-page]")) {
    a.hidden = !canSee(who, a.dataset.page);
  }
  fill(document.getElementById("who"),
    h("span", { id: "who-kind", class: `badge ${who.kind}` }, who.kind),
    ` ${who.name ?? ""}${who.org ? " · " + who.org : ""}`,
    who.unchecked ? h("span", { class: "warn" }, " (this node does not check tokens)") : null,
    " ", h("button", { id: "logout", type: "button", onclick: logout }, "Log out"));
  state.session = new AbortController();
  state.feed = new AlertFeed(state.session.signal);
  state.feed.onChange(() => {
    const n = state.feed.unseen;
    document.getElementById("alert-count").textContent = n ? String(n) : "";
  });
  state.feed.start();
  route();
}

function logout() {
  clearToken();
  showLogin();
  history.replaceState(null, "", "#/");
}

function route() {
  if (!state.who) return;
  const { name, arg } = parseRoute(location.hash);
  if (!name) {
    location.hash = home(state.who);
    return;
  }
  state.page?.abort();
  state.page = new AbortController();
  for (const a of document.querySelectorAll("#nav a[data-page]")) {
    a.classList.toggle("active", a.dataset.page === (name === "shipment" ? "shipments" : name));
  }
  const el = fill(view());
  el.dataset.page = name;
  if (!canSee(state.who, name)) {
    fill(el, notice(`The ${ROUTES[name].title} page is for fleet operators and auditors.`));
    return;
  }
  document.title = `TrustFleet — ${ROUTES[name].title}`;
  ROUTES[name].mount(el, { who: state.who, feed: state.feed, signal: state.page.signal, arg });
}

window.addEventListener("hashchange", route);
window.addEventListener("tf-unauthorized", () => {
  if (state.who) { clearToken(); showLogin("The node refused this token (expired or revoked?)."); }
});
start();
