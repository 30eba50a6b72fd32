"""COSE_Sign1 envelopes (RFC 9052 §4.2) with ES256, as fixed by DESIGN.md §4.

    COSE_Sign1 = #6.18([ protected: bstr .cbor {1: -7, 4: kid}, unprotected: {},
                         payload: bstr, signature: bstr (64 bytes, raw r||s) ])

We write the tagged form; we accept tagged and untagged. The signature covers the
Sig_structure ["Signature1", protected, h'', payload], hashed with SHA-256 by the signer
(what PKCS#11 CKM_ECDSA over a SHA-256 digest produces). Verification itself is done by
`hsm.verify_es256`; this module only builds and takes apart the structure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import cbor2

from trustfleet import cbor
from trustfleet.errors import BAD_ENVELOPE, UNSUPPORTED_ALG, WireError

COSE_SIGN1_TAG: Final = 18
HEADER_ALG: Final = 1
HEADER_KID: Final = 4
ALG_ES256: Final = -7
SIGNATURE_SIZE: Final = 64
KID_SIZE: Final = 32

SignFunction = Callable[[bytes], bytes]

# Order of the P-256 group. ECDSA signatures are malleable: (r, s) and (r, n - s) both verify.
# We write only the low-S form and the ledger refuses the other, so that one reading has one
# envelope byte string (and one hash, which the next reading's `prev` points to).
P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def low_s(signature: bytes) -> bytes:
    """The low-S form of a raw r||s P-256 signature (the same signature if already low-S)."""
    r, s = signature[:32], int.from_bytes(signature[32:], "big")
    if s > P256_ORDER // 2:
        s = P256_ORDER - s
    return r + s.to_bytes(32, "big")


def is_low_s(signature: bytes) -> bool:
    return int.from_bytes(signature[32:], "big") <= P256_ORDER // 2


@dataclass(frozen=True)
class Sign1:
    """A decoded COSE_Sign1 message. `protected` is the serialized protected header."""

    protected: bytes
    kid: bytes
    payload: bytes
    signature: bytes

    def to_be_signed(self) -> bytes:
        """The bytes the signature covers (the Sig_structure)."""
        return sig_structure(self.protected, self.payload)


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """Sig_structure for COSE_Sign1 with empty external AAD (RFC 9052 §4.4).

    Written out directly: the same bytes as cbor.dumps(["Signature1", protected, b"",
    payload]) (a 4-array, a 10-character text string, byte strings with their shortest
    length headers), without the generic encoder's cost on the ledger's hot path."""
    return b"".join((_SIG_STRUCTURE_HEAD, _bstr_head(len(protected)), protected, b"\x40",
                     _bstr_head(len(payload)), payload))


_SIG_STRUCTURE_HEAD: Final = b"\x84\x6aSignature1"


def _bstr_head(n: int) -> bytes:
    """The deterministic CBOR head of a byte string of n bytes (major type 2)."""
    if n < 24:
        return bytes((0x40 + n,))
    if n < 0x100:
        return bytes((0x58, n))
    if n < 0x10000:
        return b"\x59" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\x5a" + n.to_bytes(4, "big")
    return b"\x5b" + n.to_bytes(8, "big")


def protected_header(kid: bytes) -> bytes:
    """Serialized protected header {alg: ES256, kid: kid}."""
    return cbor.dumps({HEADER_ALG: ALG_ES256, HEADER_KID: kid})


def sign1(payload: bytes, kid: bytes, sign: SignFunction) -> bytes:
    """Build a tagged COSE_Sign1 over `payload`; `sign` returns raw r||s ES256 over its input."""
    protected = protected_header(kid)
    signature = sign(sig_structure(protected, payload))
    if len(signature) != SIGNATURE_SIZE:
        raise ValueError(f"signer returned {len(signature)} bytes, expected raw r||s of 64")
    signature = low_s(signature)
    return cbor.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, signature]))


def decode_sign1(data: bytes, *, max_size: int = 64 * 1024) -> Sign1:
    """Take a COSE_Sign1 apart. Raises WireError with a quarantine reason on any defect."""
    fast = _sign1_fast(data, max_size)
    return fast if fast is not None else _decode_sign1_generic(data, max_size)


def _decode_sign1_generic(data: bytes, max_size: int) -> Sign1:
    return sign1_from_item(cbor.loads_strict(data, max_size=max_size))


# The protected header we write, {1: -7, 4: kid}, as deterministic CBOR, up to the kid;
# wrapped in its byte string head (38 bytes).
_PROTECTED_HEAD: Final = b"\x58\x26\xa2\x01\x26\x04\x58\x20"
_SIGNATURE_HEAD: Final = b"\x58\x40"


def _sign1_fast(data: bytes, max_size: int) -> Sign1 | None:
    """The envelope we write (tagged or not; protected header exactly {1: -7, 4: kid};
    empty unprotected map; payload of any length; 64-byte signature), taken apart without
    the generic decoder. None for anything else, which then takes the generic path: when
    this returns a Sign1, `sign1_from_item(cbor.loads_strict(data))` returns the same one.
    """
    parts = sign1_parts(data, max_size)
    return None if parts is None else Sign1(*parts)


def sign1_parts(data: bytes, max_size: int = 64 * 1024
                ) -> tuple[bytes, bytes, bytes, bytes] | None:
    """(protected, kid, payload, signature) of an envelope in the layout `_sign1_fast` takes
    apart, as `decode_sign1` would give them, without making a Sign1; None for anything
    else (then `decode_sign1` decides)."""
    found = _layout(data, max_size)
    if found is None:
        return None
    head, start, end = found
    return data[head + 2:head + 40], data[head + 8:head + 40], data[start:end], data[end + 2:]


def is_plain_sign1(data: bytes, max_size: int = 64 * 1024) -> bool:
    """True if `data` is exactly one envelope in the layout we write (see `_sign1_fast`):
    then it is one well-formed CBOR item, a COSE_Sign1 whose fields have the right types,
    checked without decoding it (the payload's contents are not looked at)."""
    return _layout(data, max_size) is not None


def _layout(data: bytes, max_size: int) -> tuple[int, int, int] | None:
    """(where the protected header's bstr starts, where the payload starts, where it ends)
    of an envelope in the layout `_sign1_fast` takes apart; None for anything else."""
    n = len(data)
    if n > max_size or type(data) is not bytes:
        return None
    if data[:2] == b"\xd2\x84":
        i = 2
    elif data[:1] == b"\x84":
        i = 1
    else:
        return None
    head = i
    if data[i:i + 8] != _PROTECTED_HEAD or n < i + 41 or data[i + 40] != 0xA0:
        return None
    i += 41
    if n <= i + 2:
        return None
    first = data[i]  # the payload's byte string head, in its shortest form
    if 0x40 <= first <= 0x57:
        size, i = first - 0x40, i + 1
    elif first == 0x58 and data[i + 1] >= 24:
        size, i = data[i + 1], i + 2
    elif first == 0x59 and int.from_bytes(data[i + 1:i + 3], "big") >= 0x100:
        size, i = int.from_bytes(data[i + 1:i + 3], "big"), i + 3
    else:
        return None
    if n != i + size + 2 + SIGNATURE_SIZE or data[i + size:i + size + 2] != _SIGNATURE_HEAD:
        return None
    return head, i, i + size


def sign1_from_item(item: object) -> Sign1:
    """Check the structure of an already-decoded CBOR item and return it as Sign1."""
    if isinstance(item, cbor2.CBORTag):
        if item.tag != COSE_SIGN1_TAG:
            raise WireError(BAD_ENVELOPE, f"CBOR tag {item.tag}, expected 18 (COSE_Sign1)")
        item = item.value
    if not isinstance(item, (list, tuple)) or len(item) != 4:
        raise WireError(BAD_ENVELOPE, "not a COSE_Sign1: expected an array of 4 items")
    protected, unprotected, payload, signature = item
    if not isinstance(protected, bytes) or not isinstance(unprotected, Mapping):
        raise WireError(BAD_ENVELOPE, "protected header must be bstr, unprotected a map")
    if not isinstance(payload, bytes):
        raise WireError(BAD_ENVELOPE, "payload must be an embedded bstr (detached not allowed)")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        raise WireError(BAD_ENVELOPE, "signature must be a 64-byte bstr (raw r||s)")
    try:
        header = cbor.loads_strict(protected, max_size=8192)  # room for an x5chain
    except WireError as exc:
        raise WireError(BAD_ENVELOPE, f"protected header: {exc.detail}") from None
    if not isinstance(header, dict):
        raise WireError(BAD_ENVELOPE, "protected header is not a map")
    alg = header.get(HEADER_ALG)
    if alg != ALG_ES256:
        raise WireError(UNSUPPORTED_ALG, f"alg {alg!r}; only ES256 (-7) is accepted")
    kid = header.get(HEADER_KID)
    if not isinstance(kid, bytes) or len(kid) != KID_SIZE:
        raise WireError(BAD_ENVELOPE, "kid must be the 32-byte SHA-256 of the device key SPKI")
    if unprotected:
        raise WireError(BAD_ENVELOPE, "unprotected header must be empty")
    return Sign1(protected=protected, kid=kid, payload=payload, signature=signature)
