// A strict decoder for deterministic CBOR (RFC 8949 §4.2.1), enough to read block headers
// and genesis entries of a proof bundle in the browser: unsigned and negative integers, byte
// and text strings, arrays, maps (as Map), tags ({tag, value}), false/true/null and floats.
// It refuses what a deterministic encoder never writes — indefinite lengths, integers or
// lengths not in their shortest form, map keys out of order or repeated — and trailing
// bytes, with a CborError naming the offset. Integers beyond 2^53 come back as BigInt.

export class CborError extends Error {
  constructor(message, offset) {
    super(`CBOR at byte ${offset}: ${message}`);
    this.name = "CborError";
    this.offset = offset;
  }
}

const MAX_DEPTH = 32;

function compareBytes(a, b) {
  // Deterministic order: bytewise lexicographic order of the keys' encodings.
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

class Reader {
  constructor(bytes) {
    this.b = bytes;
    this.pos = 0;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  need(n) {
    if (n > this.b.length - this.pos) throw new CborError(`${n} byte(s) needed, data ends`, this.pos);
  }

  argument(info, start) {
    if (info < 24) return info;
    if (info > 27) throw new CborError(`reserved or indefinite length (info ${info})`, start);
    const size = 1 << (info - 24);
    this.need(size);
    let v;
    if (size === 1) v = this.b[this.pos];
    else if (size === 2) v = this.view.getUint16(this.pos);
    else if (size === 4) v = this.view.getUint32(this.pos);
    else {
      const big = this.view.getBigUint64(this.pos);
      v = big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
    }
    this.pos += size;
    const min = [24, 256, 65536, 2 ** 32][info - 24];
    if (v < min) throw new CborError("integer or length not in its shortest form", start);
    return v;
  }

  length(v, start) {
    if (typeof v === "bigint" || v > this.b.length) throw new CborError("length too large", start);
    return v;
  }

  item(depth) {
    if (depth > MAX_DEPTH) throw new CborError("nested too deep", this.pos);
    const start = this.pos;
    this.need(1);
    const first = this.b[this.pos++];
    const major = first >> 5;
    const info = first & 31;
    if (major === 7) return this.simple(info, start);
    const arg = this.argument(info, start);
    switch (major) {
      case 0: return arg;
      case 1: return typeof arg === "bigint" || arg >= Number.MAX_SAFE_INTEGER
        ? -1n - BigInt(arg) : -1 - arg;
      case 2: case 3: {
        const n = this.length(arg, start);
        this.need(n);
        const raw = this.b.subarray(this.pos, this.pos + n);
        this.pos += n;
        if (major === 2) return raw.slice();
        try {
          return new TextDecoder("utf-8", { fatal: true }).decode(raw);
        } catch {
          throw new CborError("text string is not UTF-8", start);
        }
      }
      case 4: {
        const n = this.length(arg, start);
        const out = [];
        for (let i = 0; i < n; i++) out.push(this.item(depth + 1));
        return out;
      }
      case 5: {
        const n = this.length(arg, start);
        const out = new Map();
        let prev = null;
        for (let i = 0; i < n; i++) {
          const keyStart = this.pos;
          const key = this.item(depth + 1);
          const keyBytes = this.b.subarray(keyStart, this.pos);
          if (prev && compareBytes(prev, keyBytes) >= 0) {
            throw new CborError("map keys out of deterministic order or repeated", keyStart);
          }
          prev = keyBytes;
          out.set(key, this.item(depth + 1));
        }
        return out;
      }
      default: return { tag: arg, value: this.item(depth + 1) };
    }
  }

  simple(info, start) {
    if (info === 20) return false;
    if (info === 21) return true;
    if (info === 22) return null;
    if (info === 23) return undefined;
    if (info === 25 || info === 26 || info === 27) {
      const size = 1 << (info - 24);
      this.need(size);
      let v;
      if (size === 2) v = halfToNumber(this.view.getUint16(this.pos));
      else if (size === 4) v = this.view.getFloat32(this.pos);
      else v = this.view.getFloat64(this.pos);
      this.pos += size;
      return v;
    }
    throw new CborError(`unsupported simple value (info ${info})`, start);
  }
}

function halfToNumber(h) {
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  const sign = h & 0x8000 ? -1 : 1;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

/** Decode exactly one CBOR item from `bytes` (Uint8Array); CborError if anything is left. */
export function decode(bytes) {
  if (!(bytes instanceof Uint8Array)) throw new CborError("input is not bytes", 0);
  const r = new Reader(bytes);
  const value = r.item(0);
  if (r.pos !== bytes.length) throw new CborError("trailing bytes after the item", r.pos);
  return value;
}
