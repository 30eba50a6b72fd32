// RFC 9162 (Certificate Transparency v2) Merkle hashing and the inclusion-proof check, in the
// browser with WebCrypto SHA-256 (crypto.subtle: a secure context, which localhost is).
// The same algorithm as ledger_node/merkle.py (§2.1.3.2), written again so the dashboard
// does not take the node's word for it:
//
//   leaf hash = SHA-256(0x00 || entry bytes)      node hash = SHA-256(0x01 || left || right)
//
// Errors: ProofError (malformed: index >= size, a hash that is not 32 bytes, a proof of the
// wrong length for (index, size)), and its subclass RootMismatchError (well formed, but it
// recomputes another root), which carries both roots.

export class ProofError extends Error {
  constructor(message) { super(message); this.name = "ProofError"; }
}

export class RootMismatchError extends ProofError {
  constructor(expected, calculated) {
    super(`root mismatch: expected ${hex(expected)}, calculated ${hex(calculated)}`);
    this.name = "RootMismatchError";
    this.expected = expected;
    this.calculated = calculated;
  }
}

const MAX_SIZE = 2n ** 64n;

export function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Strict standard base64 (RFC 4648 §4, padded, canonical) to bytes; ProofError if not. */
export function b64decode(text, what = "value") {
  if (typeof text !== "string" || !/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(text)) {
    throw new ProofError(`${what} is not standard base64`);
  }
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  if (b64encode(out) !== text) throw new ProofError(`${what} is not canonical base64`);
  return out;
}

export function b64encode(bytes) {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

export function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

function concat(prefix, ...parts) {
  const out = new Uint8Array(1 + parts.reduce((n, p) => n + p.length, 0));
  out[0] = prefix;
  let at = 1;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

export function leafHash(data) { return sha256(concat(0x00, data)); }
export function nodeHash(left, right) { return sha256(concat(0x01, left, right)); }

/** A cache of node hashes for checking many proofs of one tree: neighbouring entries'
 *  proofs recompute the same inner nodes, so n proofs cost about 2n hashes, not n log n. */
export class HashCache {
  constructor(max = 1 << 20) { this.map = new Map(); this.max = max; }

  async node(left, right) {
    const key = hex(left) + hex(right);
    let h = this.map.get(key);
    if (!h) {
      h = await nodeHash(left, right);
      if (this.map.size >= this.max) this.map.clear();
      this.map.set(key, h);
    }
    return h;
  }
}

function checkHash(what, h) {
  if (!(h instanceof Uint8Array) || h.length !== 32) {
    throw new ProofError(`${what} must be a 32-byte hash`);
  }
}

function toBig(what, v) {
  if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  if (typeof v === "bigint" && v >= 0n) return v;
  throw new ProofError(`${what} must be a non-negative integer, got ${String(v)}`);
}

/**
 * The root that `proof` gives for `leaf` at `index` in a tree of `size` leaves
 * (RFC 9162 §2.1.3.2). Requires 0 <= index < size < 2^64, 32-byte hashes, and exactly the
 * proof length PATH(index, size) has; else ProofError, before any hashing. `cache`, a
 * HashCache, is optional.
 */
export async function rootFromInclusionProof(leaf, index, size, proof, cache = null) {
  const fn0 = toBig("index", index);
  const sn0 = toBig("size", size);
  if (sn0 >= MAX_SIZE) throw new ProofError("size must be below 2^64");
  if (fn0 >= sn0) throw new ProofError(`index ${fn0} is not below size ${sn0}`);
  checkHash("leaf hash", leaf);
  if (!Array.isArray(proof)) throw new ProofError("proof must be a list of hashes");
  proof.forEach((p, i) => checkHash(`proof[${i}]`, p));
  // Walk the shape first (no hashing), so a proof of the wrong length fails up front.
  const steps = [];
  let fn = fn0;
  let sn = sn0 - 1n;
  for (let i = 0; i < proof.length; i++) {
    if (sn === 0n) throw new ProofError(`inclusion proof is too long (${proof.length} hashes)`);
    if ((fn & 1n) === 1n || fn === sn) {
      steps.push("left");
      if ((fn & 1n) === 0n) while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
    } else {
      steps.push("right");
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new ProofError(`inclusion proof is too short (${proof.length} hashes)`);
  const node = cache ? (l, r) => cache.node(l, r) : nodeHash;
  let r = leaf;
  for (let i = 0; i < proof.length; i++) {
    r = steps[i] === "left" ? await node(proof[i], r) : await node(r, proof[i]);
  }
  return r;
}

/** Check that `leaf` is leaf `index` of the tree of `size` leaves whose root is `root`:
 *  ProofError if malformed, RootMismatchError if it leads to another root. */
export async function verifyInclusion(leaf, index, size, proof, root, cache = null) {
  checkHash("root", root);
  const calculated = await rootFromInclusionProof(leaf, index, size, proof, cache);
  if (!equalBytes(calculated, root)) throw new RootMismatchError(root, calculated);
}
