// The dashboard's one door to the node: JSON GETs and the server-sent event stream, each
// with `Authorization: Bearer <token>`. The token is typed on the login screen and kept in
// sessionStorage (gone when the tab closes). Errors are typed:
//
//   ApiError      the node answered with an error status, or with something that is not JSON
//   TokenError    a token that cannot be sent in a header (empty, too long, not printable ASCII)
//   SseError      the event stream broke its format (an event over MAX_EVENT bytes)
//
// A 401 from any call also fires a `tf-unauthorized` event on window, so the app can go
// back to the login screen wherever the call was made. `pollDevices` is the refresh loop of
// the pages that follow every device (devices, map).

import { every } from "./ui.js";

const TOKEN_KEY = "trustfleet.token";
export const MAX_TOKEN = 512;
export const MAX_EVENT = 256 * 1024;

export class ApiError extends Error {
  constructor(path, status, detail) {
    super(`${path}: ${status ? "HTTP " + status : "no answer"}${detail ? " — " + detail : ""}`);
    this.name = "ApiError";
    this.path = path;
    this.status = status;
    this.detail = detail;
  }
}

export class TokenError extends Error {
  constructor(message) { super(message); this.name = "TokenError"; }
}

export class SseError extends Error {
  constructor(message) { super(message); this.name = "SseError"; }
}

/** Throw TokenError unless `text` can be a bearer token; return it trimmed. */
export function checkToken(text) {
  const t = String(text ?? "").trim();
  if (!t) throw new TokenError("type a token");
  if (t.length > MAX_TOKEN) throw new TokenError(`a token is at most ${MAX_TOKEN} characters`);
  if (!/^[\x21-\x7e]+$/.test(t)) {
    throw new TokenError("a token is printable ASCII with no spaces (paste it as printed)");
  }
  return t;
}

export function getToken() { return sessionStorage.getItem(TOKEN_KEY); }
export function setToken(text) { sessionStorage.setItem(TOKEN_KEY, checkToken(text)); }
export function clearToken() { sessionStorage.removeItem(TOKEN_KEY); }

export const enc = encodeURIComponent;

function headers(accept) {
  const h = { Accept: accept };
  const t = getToken();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

async function failure(path, resp) {
  let detail = "";
  try {
    const body = await resp.json();
    detail = typeof body?.detail === "string" ? body.detail : JSON.stringify(body?.detail ?? "");
  } catch { /* not JSON: the status says enough */ }
  if (resp.status === 401) window.dispatchEvent(new CustomEvent("tf-unauthorized"));
  return new ApiError(path, resp.status, detail.slice(0, 300));
}

/** GET a node path (`/v1/...`) and return its JSON; ApiError on any failure. */
export async function getJson(path, { signal } = {}) {
  if (!path.startsWith("/v1/")) throw new ApiError(path, 0, "not an API path");
  let resp;
  try {
    resp = await fetch(path, { headers: headers("application/json"), signal, cache: "no-store" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(path, 0, "the node did not answer");
  }
  if (!resp.ok) throw await failure(path, resp);
  try {
    return await resp.json();
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(path, resp.status, "the answer is not JSON");
  }
}

/**
 * Every `ms` (ui.js `every`: at once, never two runs at a time, until `signal` aborts): GET
 * /v1/devices, then `update(device)` for each device with a string id, all at once; one that
 * fails is named in `problems` ("id: message") and the others go on. Then, unless `signal`
 * aborted, `render(devices, problems)` with those devices (entries without an id left out).
 * When the list cannot be read, `unreadable(err)` instead, and the next tick tries again.
 */
export function pollDevices(ms, signal, { update, render, unreadable }) {
  every(ms, async () => {
    let devices;
    try {
      devices = await getJson("/v1/devices", { signal });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      unreadable(err);
      return;
    }
    const list = (Array.isArray(devices) ? devices : []).filter((d) => typeof d?.id === "string");
    const problems = [];
    await Promise.all(list.map(async (d) => {
      try {
        await update(d);
      } catch (err) {
        if (err.name === "AbortError") throw err;
        problems.push(`${d.id}: ${err.message}`);
      }
    }));
    if (signal.aborted) return;
    render(list, problems);
  }, signal);
}

/** The items of a list answer, whether the node sends a bare array or {items, next}. */
export function itemsOf(doc, key = "items") {
  if (Array.isArray(doc)) return doc;
  if (doc && Array.isArray(doc[key])) return doc[key];
  return [];
}

/**
 * Incremental parser of `text/event-stream` (the WHATWG format): feed it text as it
 * arrives, get back complete events {event, data, id}. Comments and unknown fields are
 * ignored; an event longer than `maxEvent` characters is an SseError.
 */
export class SseParser {
  constructor(maxEvent = MAX_EVENT) {
    this.maxEvent = maxEvent;
    this.buffer = "";
    this.reset();
  }

  reset() { this.event = ""; this.data = []; this.size = 0; this.id = null; }

  push(text) {
    this.buffer += text;
    const out = [];
    for (;;) {
      const m = /\r\n|\n|\r/.exec(this.buffer);
      if (!m) break;
      // A lone \r at the end of a chunk may be the first half of \r\n: wait for more.
      if (m[0] === "\r" && m.index === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, m.index);
      this.buffer = this.buffer.slice(m.index + m[0].length);
      const ev = this.line(line);
      if (ev) out.push(ev);
    }
    if (this.buffer.length + this.size > this.maxEvent) {
      throw new SseError(`an event is longer than ${this.maxEvent} characters`);
    }
    return out;
  }

  line(line) {
    if (line === "") {
      const ev = this.data.length ? { event: this.event || "message", data: this.data.join("\n"),
        id: this.id } : null;
      this.reset();
      return ev;
    }
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    this.size += value.length;
    if (this.size > this.maxEvent) {
      throw new SseError(`an event is longer than ${this.maxEvent} characters`);
    }
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id") this.id = value;
    return null;
  }
}

/**
 * Read the server-sent event stream at `path` with fetch (so the token goes in the
 * Authorization header, not the URL) and call onEvent({event, data, id}) for each event;
 * onOpen() once the node has answered 200; `lastEventId` resumes after that event. Resolves when the node ends the stream; rejects
 * with ApiError (refused), SseError (malformed) or AbortError (signal).
 */
export async function readStream(path, { onEvent, onOpen, signal, lastEventId = null }) {
  let resp;
  const h = headers("text/event-stream");
  if (lastEventId !== null) h["Last-Event-ID"] = lastEventId;
  try {
    resp = await fetch(path, { headers: h, signal, cache: "no-store" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(path, 0, "the node did not answer");
  }
  if (!resp.ok) throw await failure(path, resp);
  if (!(resp.headers.get("content-type") || "").startsWith("text/event-stream")) {
    throw new ApiError(path, resp.status, "not an event stream");
  }
  onOpen?.();
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      for (const ev of parser.push(value)) onEvent(ev);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
