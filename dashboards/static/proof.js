// Checking a proof bundle (docs/proof-bundle.md) in the browser, so the dashboard's
// "verified" does not rest on the node's word. What it checks:
//
//   1. the signed head: its header bytes decode as a block header (deterministic CBOR map of
//      the ten header fields);
//   2. the head's signature: the genesis entry (index 0, itself proven below) names the node
//      and its key; the proposer's ES256 signature over the header bytes verifies with that
//      key (WebCrypto ECDSA P-256, raw r||s);
//   3. every entry: RFC 9162 inclusion proof of SHA-256(0x00 || data) at its index in the
//      tree of the header's size must recompute exactly the header's root.
//
// "verified" means all three passed. What it does not check (the offline verifier,
// `trustfleet verify-bundle`, does): certificates and the fleet CA, operator entries, device
// signatures of readings, older blocks' consistency proofs; and nothing is pinned: the node
// key comes from the bundle itself, which the page says.
//
// verifyBundle never throws for a bad bundle: it returns {verified: false, checks, reason}.

import { CborError, decode } from "./cbor.js";
import { b64decode, HashCache, hex, leafHash, ProofError, RootMismatchError, verifyInclusion }
  from "./merkle.js";

export const MAX_ENTRIES = 100000;
const HEADER_FIELDS = ["chain", "count", "first", "height", "prev", "proposer", "root", "size",
  "time", "v"];

export class BundleError extends Error {
  constructor(message) { super(message); this.name = "BundleError"; }
}

function isObject(v) { return v !== null && typeof v === "object" && !Array.isArray(v); }

/** The fields of a block header (bytes), or BundleError. */
export function decodeHeader(bytes) {
  let m;
  try {
    m = decode(bytes);
  } catch (err) {
    if (err instanceof CborError) throw new BundleError(`header: ${err.message}`);
    throw err;
  }
  if (!(m instanceof Map)) throw new BundleError("header is not a CBOR map");
  const keys = [...m.keys()];
  if (keys.length !== HEADER_FIELDS.length || !HEADER_FIELDS.every((k) => m.has(k))) {
    throw new BundleError(`header fields are ${JSON.stringify(keys.map(String))}`);
  }
  const h = Object.fromEntries(m);
  for (const k of ["count", "first", "height", "size", "time", "v"]) {
    if (typeof h[k] !== "number" || !Number.isSafeInteger(h[k]) || h[k] < 0) {
      throw new BundleError(`header ${k} is not a non-negative integer`);
    }
  }
  for (const k of ["prev", "root"]) {
    if (!(h[k] instanceof Uint8Array) || h[k].length !== 32) {
      throw new BundleError(`header ${k} is not 32 bytes`);
    }
  }
  if (typeof h.chain !== "string" || typeof h.proposer !== "string") {
    throw new BundleError("header chain and proposer must be text");
  }
  if (h.v !== 1) throw new BundleError(`header version ${h.v} is not 1`);
  return h;
}

/** The genesis entry's node id and key (SPKI DER), or null if `data` is not a genesis map. */
export function genesisKey(data) {
  let m;
  try { m = decode(data); } catch { return null; }
  if (!(m instanceof Map) || m.get("type") !== "genesis") return null;
  const node = m.get("node");
  const key = m.get("node_key");
  if (typeof node !== "string" || !(key instanceof Uint8Array)) return null;
  return { node, key, chain: m.get("chain") };
}

async function verifySignature(spki, sig, message) {
  let key;
  try {
    key = await crypto.subtle.importKey("spki", spki, { name: "ECDSA", namedCurve: "P-256" },
      false, ["verify"]);
  } catch {
    throw new BundleError("the genesis entry's node key is not a P-256 public key");
  }
  return crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, key, sig, message);
}

function parseEntries(bundle, size) {
  if (!Array.isArray(bundle.entries) || bundle.entries.length === 0) {
    throw new BundleError("the bundle has no entries");
  }
  if (bundle.entries.length > MAX_ENTRIES) {
    throw new BundleError(`more than ${MAX_ENTRIES} entries`);
  }
  let last = -1;
  return bundle.entries.map((e, i) => {
    if (!isObject(e) || !Number.isSafeInteger(e.index) || e.index < 0 || !Array.isArray(e.proof)) {
      throw new BundleError(`entries[${i}] is not {index, data, proof}`);
    }
    if (e.index <= last) throw new BundleError(`entries[${i}]: indexes must increase`);
    if (e.index >= size) {
      throw new BundleError(`entries[${i}]: index ${e.index} is not below the head's size ${size}`);
    }
    last = e.index;
    return { index: e.index, data: b64decode(e.data, `entries[${i}].data`),
      proof: e.proof.map((p, j) => b64decode(p, `entries[${i}].proof[${j}]`)) };
  });
}

/**
 * Check a bundle (parsed JSON). Returns {verified, reason, head, checks: [{ok, what, detail}],
 * entries, signer}. `verified` is true only when the header decodes, the proposer's
 * signature verifies with the genesis entry's key, and every inclusion proof recomputes the
 * header's root.
 */
export async function verifyBundle(bundle) {
  const checks = [];
  const result = { verified: false, reason: "", head: null, checks, entries: 0, signer: null };
  const fail = (reason) => { result.reason = reason; return result; };
  try {
    if (!isObject(bundle)) return fail("the proof is not a JSON object");
    checks.push({ ok: true, what: "format",
      detail: `${String(bundle.format)} version ${String(bundle.version)}` });
    if (!isObject(bundle.head) || typeof bundle.head.header !== "string"
        || !Array.isArray(bundle.head.signatures)) {
      return fail("the bundle has no signed head {header, signatures}");
    }
    const headerBytes = b64decode(bundle.head.header, "head.header");
    const head = decodeHeader(headerBytes);
    result.head = { height: head.height, size: head.size, time: head.time, chain: head.chain,
      proposer: head.proposer, root: hex(head.root) };
    checks.push({ ok: true, what: "signed head",
      detail: `block ${head.height} of chain ${head.chain}: tree size ${head.size}, root ${hex(head.root).slice(0, 16)}…` });

    const entries = parseEntries(bundle, head.size);
    let allIn = true;
    const cache = new HashCache();
    for (const e of entries) {
      try {
        await verifyInclusion(await leafHash(e.data), e.index, head.size, e.proof, head.root,
          cache);
      } catch (err) {
        if (!(err instanceof ProofError)) throw err;
        allIn = false;
        checks.push({ ok: false, what: `entry ${e.index}`,
          detail: err instanceof RootMismatchError ? "its inclusion proof leads to another root"
            : err.message });
      }
    }
    result.entries = entries.length;
    if (allIn) {
      checks.push({ ok: true, what: "inclusion",
        detail: `${entries.length} entr${entries.length === 1 ? "y" : "ies"}: each RFC 9162 inclusion proof recomputes the head's root` });
    }

    const genesis = entries[0].index === 0 ? genesisKey(entries[0].data) : null;
    let signed = false;
    if (!genesis) {
      checks.push({ ok: false, what: "head signature",
        detail: "no genesis entry (index 0) naming the node key in the bundle" });
    } else {
      const sig = bundle.head.signatures.find((s) => isObject(s) && s.node === head.proposer);
      if (!sig) {
        checks.push({ ok: false, what: "head signature", detail: `no signature by the proposer ${head.proposer}` });
      } else if (genesis.node !== head.proposer) {
        checks.push({ ok: false, what: "head signature",
          detail: `proposer ${head.proposer} is not the genesis node ${genesis.node}` });
      } else {
        const raw = b64decode(sig.sig, "head signature");
        signed = raw.length === 64 && await verifySignature(genesis.key, raw, headerBytes);
        result.signer = head.proposer;
        checks.push({ ok: signed, what: "head signature",
          detail: signed ? `ES256 by ${head.proposer}, with the key the genesis entry names (not pinned: compare it with the node operator's)`
            : `the ES256 signature of ${head.proposer} does not verify` });
      }
    }
    result.verified = allIn && signed;
    result.reason = result.verified ? "" : "a check failed";
    return result;
  } catch (err) {
    if (err instanceof BundleError || err instanceof ProofError) return fail(err.message);
    throw err;
  }
}
