"""Errors raised while decoding the fixed wire formats (DESIGN.md §4).

    WireError(reason, detail)        bytes that are not a valid TrustFleet message
      `reason` is the machine-readable code that quarantine stores (DESIGN.md §6):
      bad_cbor, bad_envelope, unsupported_alg, bad_payload, non_deterministic_cbor, too_large
"""

from __future__ import annotations

from typing import Final

BAD_CBOR: Final = "bad_cbor"
BAD_ENVELOPE: Final = "bad_envelope"
UNSUPPORTED_ALG: Final = "unsupported_alg"
BAD_PAYLOAD: Final = "bad_payload"
NON_DETERMINISTIC: Final = "non_deterministic_cbor"
TOO_LARGE: Final = "too_large"


class WireError(ValueError):
    """Bytes that do not form a valid TrustFleet message; `reason` is a quarantine code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
