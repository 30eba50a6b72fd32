"""EPC decoding (pure): a tag's EPC bank, in hex, to a GS1 pure-identity URI (epcpy).

``decode_epc("3074257BF7194E4000001A85")`` gives ``urn:epc:id:sgtin:0614141.812345.6789``:
SSCC for pallets, SGTIN for items, GRAI for returnable assets, and every other scheme of
the GS1 EPC Tag Data Standard that epcpy decodes (GIAI, SGLN, ...). A tag that is not a
GS1 EPC (an unknown header, a TID-only or user-programmed tag, a corrupt read) is not an
error: it is kept with its raw hex and ``decoded`` false, so a scan is never lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["EpcResult", "decode_epc", "normalise_hex"]

_HEX_RE = re.compile(r"^[0-9A-F]{8,124}$")


@dataclass(frozen=True)
class EpcResult:
    hex: str
    uri: str | None
    scheme: str | None
    reason: str | None = None

    @property
    def decoded(self) -> bool:
        return self.uri is not None


def normalise_hex(text: str) -> str | None:
    """Upper-case hex without spaces or dashes if it is a whole number of 16-bit words."""
    value = re.sub(r"[\s:-]", "", text).upper()
    if value.startswith("0X"):
        value = value[2:]
    if not _HEX_RE.match(value) or len(value) % 4:
        return None
    return value


def decode_epc(hex_text: str) -> EpcResult:
    """Decode an EPC; never raises. Requires `hex_text` from normalise_hex."""
    from epcpy import hex_to_tag_encodable

    try:
        tag = hex_to_tag_encodable(hex_text)
        uri = str(tag.epc_uri)
    except Exception as exc:  # epcpy raises ConvertException, ValueError, KeyError, ...
        return EpcResult(hex_text, None, None, f"undecodable: {exc}"[:120])
    scheme = uri.split(":")[3] if uri.startswith("urn:epc:id:") else None
    return EpcResult(hex_text, uri, scheme)
