"""ES256 verification (ECDSA P-256 over SHA-256, raw r||s signatures; DESIGN.md §4).

Pure functions over bytes, no HSM needed: the ledger calls `verify_es256` thousands of
times per second, so parsed public keys are cached by their SPKI bytes.

Note: ECDSA signatures are malleable ((r, s) and (r, n - s) both verify). Never use
signature bytes as an identifier; identify envelopes by their payload.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from hsm.errors import BadPublicKey

# Order of the P-256 base point (SEC 2, secp256r1).
P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
SIGNATURE_LEN: Final = 64
_KEY_CACHE_SIZE: Final = 65536
_ES256: Final = ec.ECDSA(hashes.SHA256())

PublicKeyLike = bytes | bytearray | memoryview | ec.EllipticCurvePublicKey


def kid_for(spki_der: bytes) -> bytes:
    """Key id used in COSE headers: SHA-256 of the DER SubjectPublicKeyInfo (32 bytes)."""
    return hashlib.sha256(bytes(spki_der)).digest()


def load_public_key(spki_der: bytes) -> ec.EllipticCurvePublicKey:
    """Parse a DER SubjectPublicKeyInfo of a P-256 key (cached).

    Requires the canonical encoding (named curve, uncompressed point) so that one key has
    exactly one kid. Raises BadPublicKey otherwise.
    """
    if not isinstance(spki_der, bytes | bytearray | memoryview):
        raise BadPublicKey(f"public key must be DER bytes, not {type(spki_der).__name__}")
    return _load_cached(bytes(spki_der))


@functools.lru_cache(maxsize=_KEY_CACHE_SIZE)
def _load_cached(spki_der: bytes) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_der_public_key(spki_der)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise BadPublicKey(f"not a DER SubjectPublicKeyInfo: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise BadPublicKey(f"not a P-256 key ({type(key).__name__}); ES256 needs P-256")
    canonical = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if canonical != spki_der:
        raise BadPublicKey("non-canonical SPKI (compressed point or extra data); re-encode it")
    return key


def verify_es256(public_key: PublicKeyLike, message: bytes, signature: bytes) -> bool:
    """True iff `signature` (raw r||s, 64 bytes) is a valid ES256 signature of `message`.

    `public_key` is SPKI DER bytes or a cryptography EC public key; `message` is hashed
    with SHA-256 here. Returns False, and never raises, for a malformed signature (wrong
    length, r or s zero or >= n), a malformed or non-P-256 key, or a bad signature.
    """
    try:
        if not isinstance(signature, bytes | bytearray | memoryview) or not isinstance(
            message, bytes | bytearray | memoryview
        ):
            return False
        sig = bytes(signature)
        if len(sig) != SIGNATURE_LEN:
            return False
        r = int.from_bytes(sig[:32], "big")
        s = int.from_bytes(sig[32:], "big")
        if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
            return False
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            if not isinstance(public_key.curve, ec.SECP256R1):
                return False
            key = public_key
        elif isinstance(public_key, bytes | bytearray | memoryview):
            key = load_public_key(bytes(public_key))
        else:
            return False
        key.verify(encode_dss_signature(r, s), bytes(message), _ES256)
        return True
    except (InvalidSignature, BadPublicKey):
        return False
    except Exception:  # contract: hostile input never raises out of the verifier
        return False
