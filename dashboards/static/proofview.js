// The verification panel: fetch a proof bundle from the node, check it in the browser
// (proof.js) and show the verdict with every check that was made, and what was not checked.

import { ApiError, getJson } from "./api.js";
import { verifyBundle } from "./proof.js";
import { fill, h, iso } from "./ui.js";

export function renderVerification(result) {
  const verdict = result.verified ? "verified" : "not verified";
  return h("div", { class: `verification ${result.verified ? "ok" : "bad"}`,
    dataset: { verified: String(result.verified) } },
  h("p", { class: "verdict" }, h("strong", { class: "verdict-text" }, verdict),
    result.head ? ` against block ${result.head.height} (${iso(result.head.time)}, tree size ${result.head.size})` : "",
    result.reason && !result.verified ? ` — ${result.reason}` : ""),
  h("ul", { class: "checks" }, result.checks.map((c) =>
    h("li", { class: c.ok ? "ok" : "bad" }, c.ok ? "✓ " : "✗ ", h("b", {}, c.what), `: ${c.detail}`))),
  h("p", { class: "muted small" }, "Checked here, in your browser (WebCrypto): the head's ES256 "
    + "signature and every entry's RFC 9162 inclusion proof. Not checked here: certificates, "
    + "operator entries and device signatures — run trustfleet verify-bundle with a pinned CA "
    + "or node key for the full check."));
}

/** Fetch `path` (a proof bundle) and fill `el` with its verification. */
export async function verifyInto(el, path, signal) {
  fill(el, h("p", { class: "muted" }, "checking the proof…"));
  let bundle;
  try {
    bundle = await getJson(path, { signal });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    const why = err instanceof ApiError && err.status === 404 ? "the node has no proof for it" : err.message;
    fill(el, renderVerification({ verified: false, reason: why, head: null, checks: [] }));
    return null;
  }
  const result = await verifyBundle(bundle);
  if (!signal?.aborted) fill(el, renderVerification(result));
  return result;
}
