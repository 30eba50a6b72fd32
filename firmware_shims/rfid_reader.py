"""A serial RFID reader on a pseudo-terminal: one tag per line, as keyboard-wedge readers send.

``RfidReaderShim(link=DIR/rfid.tty)`` opens a raw pty (the same pty machinery as the NMEA
shim) and writes ``scan(...)`` lines when asked: ``EPC-hex,RSSI,ANTENNA\\r\\n``. The agent's
``SerialRfidCollector`` opens the slave like a serial port.

Pure helpers: :func:`epc_hex` encodes a GS1 pure-identity URI (SSCC, SGTIN, GRAI) into the
96-bit EPC a tag carries (via epcpy's encoder), :func:`tag_line` formats one reader line.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from firmware_shims.nmea_pty import NmeaPtyShim

__all__ = ["RfidReaderShim", "epc_hex", "tag_line"]


def epc_hex(uri: str) -> str:
    """The 96-bit EPC (hex) of an SSCC (filter: full case), SGTIN (POS item) or GRAI URI."""
    from epcpy.epc_schemes import GRAI, SGTIN, SSCC
    from epcpy.epc_schemes.grai import GRAIFilterValue
    from epcpy.epc_schemes.sgtin import SGTINFilterValue
    from epcpy.epc_schemes.sscc import SSCCFilterValue

    if uri.startswith("urn:epc:id:sscc:"):
        return str(SSCC(uri).hex(filter_value=SSCCFilterValue.FULL_CASE))
    if uri.startswith("urn:epc:id:sgtin:"):
        return str(SGTIN(uri).hex(filter_value=SGTINFilterValue.POS_ITEM,
                                  binary_coding_scheme=SGTIN.BinaryCodingScheme.SGTIN_96))
    if uri.startswith("urn:epc:id:grai:"):
        return str(GRAI(uri).hex(filter_value=GRAIFilterValue.ALL_OTHERS,
                                 binary_coding_scheme=GRAI.BinaryCodingScheme.GRAI_96))
    raise ValueError(f"no 96-bit encoding here for {uri!r}")


def tag_line(hex_epc: str, rssi: float | None = -55.0, antenna: int | None = 1) -> bytes:
    fields = [hex_epc] + ([f"{rssi:.1f}"] if rssi is not None else []) + (
        [str(antenna)] if antenna is not None and rssi is not None else [])
    return ",".join(fields).encode("ascii") + b"\r\n"


class RfidReaderShim:
    """A reader that sends the lines given to ``scan``/``send`` (from any thread)."""

    def __init__(self, *, link: Path | None = None, poll_s: float = 0.05) -> None:
        self._lines: queue.Queue[bytes] = queue.Queue()
        self._pty = NmeaPtyShim(self._epochs(), interval=poll_s, link=link)

    def _epochs(self) -> Iterator[list[bytes]]:
        while True:
            batch = []
            while not self._lines.empty():
                batch.append(self._lines.get_nowait())
            yield batch

    @property
    def device_path(self) -> str:
        return self._pty.device_path

    def scan(self, uri_or_hex: str, rssi: float | None = -55.0, antenna: int | None = 1) -> None:
        """The reader sees a tag: a URI is encoded to its EPC first."""
        hex_epc = epc_hex(uri_or_hex) if uri_or_hex.startswith("urn:") else uri_or_hex
        self._lines.put(tag_line(hex_epc, rssi, antenna))

    def send(self, raw: bytes) -> None:
        """Raw bytes on the line (garbage, a wrong baud rate)."""
        self._lines.put(raw)

    def start(self) -> RfidReaderShim:
        self._pty.start()
        return self

    def stop(self) -> None:
        self._pty.stop()

    def __enter__(self) -> RfidReaderShim:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
