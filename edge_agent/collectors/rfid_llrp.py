"""RFID scans from a fixed UHF reader over LLRP (EPCglobal LLRP 1.0.1), with sllurp's client.

``LlrpRfidCollector(host, port)`` keeps one LLRP session with the reader: sllurp connects,
reads the reader's capabilities, sets its config (a keepalive every ``keepalive_s``),
deletes what a previous client left, adds and enables a ROSpec that inventories the
configured antennas (``antennas=(0,)``: all of them) and reports after every tag with its
AntennaID, PeakRSSI, LastSeenTimestampUTC and TagSeenCount. Each reported tag becomes the
same ``rfid`` sample the serial reader gives (edge_agent.collectors.rfid_scan: EPC decoded
to a GS1 URI, undecodable ones kept raw and flagged, repeats within ``repeat_s`` counted
and dropped), ``rssi`` being the PeakRSSI in dBm (float) and ``antenna`` the port.

Threads. sllurp reads the socket in a thread of its own; tag reads go through a bounded
queue (``MAX_QUEUED`` reads; more are counted as ``dropped``) to ``read_available()``, which
runs in the agent's thread and stamps them with the agent's clock. A supervisor thread
connects, watches and reconnects: after a failed connection or a lost session it waits
``backoff_initial`` doubling up to ``backoff_max`` (reset once a session inventories).
Each failed attempt or lost session is reported once: the next ``read_available()`` that
has no samples to return raises :class:`DeviceUnavailable` with reason
``connect_failed`` or ``session_lost``.

A reader that hangs without closing the connection (power cut on the far side of a switch,
a frozen firmware) is noticed by silence: no message, keepalives included, for three
keepalive periods ends the session and reconnects. So does a session that is not
inventorying ``handshake_s`` after connecting (a reply went missing).

Bad input. The reader's byte stream is framed here, not by sllurp, so a bad message costs
that message only:

- a length field outside 10 bytes..``MAX_MESSAGE_BYTES`` loses the framing: counted as
  ``bad:bad_length``, the session ends and reconnects;
- a parameter whose length runs past its message (sllurp would decode it from whatever
  follows): ``bad:bad_parameter``, message skipped;
- a message sllurp cannot decode (an unknown type, a field too short):
  ``bad:undecodable``, skipped;
- a reader answer sllurp's state machine rejects: ``bad:reader_refused``, session ends;
- a tag report without an EPC, or with an EPC that is not a whole number of 16-bit words:
  ``bad:bad_epc``, skipped; an RSSI outside -120..0 dBm or an antenna outside 1..64 is
  reported as None and counted (``bad_rssi``, ``bad_antenna``), the scan is kept.

``stats["bad_messages"]`` adds up the ``bad:`` counters.

Concurrency rule: ``read_available()`` and ``close()`` from one thread (the agent's);
``stats`` may be read from any thread (it is updated under a lock).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sllurp.llrp import (
    LLRPMessage,
    LLRPReaderClient,
    LLRPReaderConfig,
    LLRPReaderState,
)
from sllurp.llrp_decoder import TVE_PARAM_FORMATS
from sllurp.llrp_errors import ReaderConfigurationError

from edge_agent.collectors.base import Clock, Sample, system_clock
from edge_agent.collectors.epc import normalise_hex
from edge_agent.collectors.errors import CollectorError, DeviceUnavailable
from edge_agent.collectors.rfid_scan import ScanFilter

__all__ = ["DEFAULT_LLRP_PORT", "MAX_MESSAGE_BYTES", "MAX_QUEUED", "LlrpRfidCollector"]

log = logging.getLogger(__name__)

DEFAULT_LLRP_PORT = 5084
MAX_MESSAGE_BYTES = 1 << 20
"""Longest LLRP message accepted from a reader; a report of thousands of tags fits."""
MAX_QUEUED = 10_000
_HEADER = struct.Struct("!HII")
_CONTENT = {
    "EnableROSpecID": False, "EnableSpecIndex": False, "EnableInventoryParameterSpecID": False,
    "EnableAntennaID": True, "EnableChannelIndex": False, "EnablePeakRSSI": True,
    "EnableFirstSeenTimestamp": False, "EnableLastSeenTimestamp": True,
    "EnableTagSeenCount": True, "EnableAccessSpecID": False,
}

TagRead = tuple[Any, Any, Any]  # EPC, PeakRSSI, AntennaID as sllurp decoded them
_CUSTOM_MESSAGE = 1023
_RO_ACCESS_REPORT = 61
_TAG_REPORT_DATA = 240
_TV_SIZES = {t: fmt[1].size for t, fmt in TVE_PARAM_FORMATS.items()}


def malformed(frame: bytes) -> str | None:
    """What is wrong with the parameter framing of a reader's message, or None.

    sllurp's decoder is lenient: a parameter whose length runs past its message is decoded
    from whatever bytes are there. A reader's messages carry only TLV parameters at the
    top level; inside a TagReportData, TV parameters of known sizes and TLVs. Each must
    fit in its container.
    """
    msg_type = _HEADER.unpack_from(frame)[0] & 0x3FF
    if msg_type == _CUSTOM_MESSAGE:
        return None  # vendor framing: left to sllurp
    return _check_params(frame[_HEADER.size:], tv_allowed=False,
                         report=msg_type == _RO_ACCESS_REPORT)


def _check_params(data: bytes, *, tv_allowed: bool, report: bool = False) -> str | None:
    i = 0
    while i < len(data):
        if data[i] & 0x80:
            size = _TV_SIZES.get(data[i] & 0x7F) if tv_allowed else None
            if size is None or i + 1 + size > len(data):
                return f"TV parameter {data[i] & 0x7F} at byte {i}"
            i += 1 + size
            continue
        if i + 4 > len(data):
            return f"truncated parameter header at byte {i}"
        param_type, length = struct.unpack_from("!HH", data, i)
        if length < 4 or i + length > len(data):
            return f"parameter {param_type & 0x3FF} of {length} bytes at byte {i}"
        if report and param_type & 0x3FF == _TAG_REPORT_DATA:
            inner = _check_params(data[i + 4:i + length], tv_allowed=True)
            if inner is not None:
                return f"TagReportData: {inner}"
        i += length
    return None


class _Session(LLRPReaderClient):  # type: ignore[misc]
    """sllurp's reader client with our own framing of the byte stream (see module doc)."""

    def __init__(self, owner: LlrpRfidCollector, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner = owner
        self.last_heard = time.monotonic()
        self.rx = bytearray()
        self.closing = False
        self.rospec_deleted = threading.Event()

    def raw_data_received(self, data: bytes) -> None:
        self.rx += data
        while len(self.rx) >= _HEADER.size:
            _, length, _ = _HEADER.unpack_from(self.rx)
            if not _HEADER.size <= length <= MAX_MESSAGE_BYTES:
                self.owner.count("bad:bad_length")
                log.warning("llrp %s: message length %d: framing lost, reconnecting",
                            self.owner.where, length)
                raise ReaderConfigurationError(f"message length {length}")
            if len(self.rx) < length:
                return
            frame = bytes(self.rx[:length])
            del self.rx[:length]
            self.last_heard = time.monotonic()
            problem = malformed(frame)
            if problem is not None:
                self.owner.count("bad:bad_parameter")
                log.debug("llrp %s: malformed message skipped (%s): %r", self.owner.where,
                          problem, frame[:64])
                continue
            try:
                msg = LLRPMessage(msgbytes=frame)
            except Exception as exc:  # sllurp raises LLRPError, struct.error, KeyError, ...
                self.owner.count("bad:undecodable")
                log.debug("llrp %s: undecodable message skipped (%s): %r", self.owner.where,
                          exc, frame[:64])
                continue
            if self.closing:  # sllurp's state machine is done with; only the answer counts
                if msg.getName() == "DELETE_ROSPEC_RESPONSE":
                    self.rospec_deleted.set()
                continue
            self._on_llrp_message_received(msg)
            try:
                self.llrp.handleMessage(msg)
            except ReaderConfigurationError:
                self.owner.count("bad:reader_refused")
                raise
            except Exception as exc:  # a reply sllurp's state machine cannot follow
                self.owner.count("bad:reader_refused")
                raise ReaderConfigurationError(f"{msg.getName()}: {exc}") from exc

    def polite_close(self, timeout: float) -> bool:
        """Delete every AccessSpec and ROSpec on the reader; True once it confirms.

        sllurp's own ``disconnect()`` sends DELETE_ACCESSSPEC and only then registers, from
        the caller's thread, the callback that sends DELETE_ROSPEC; when its reading thread
        handled the quick answer first, the callback never ran and the ROSpec stayed on
        the reader. Here both requests go out at once (a reader answers in order), and the
        reading thread signals the DELETE_ROSPEC_RESPONSE through ``rospec_deleted``.
        """
        self.closing = True
        self.llrp.sendMessage({"DELETE_ACCESSSPEC": {"AccessSpecID": 0}})
        self.llrp.sendMessage({"DELETE_ROSPEC": {"ROSpecID": 0}})
        return self.rospec_deleted.wait(timeout)

    def end(self, timeout: float = 1.0) -> None:
        """Stop sllurp's reading thread and close the socket.

        Shutting the socket down wakes the thread's select() with an end of file, and the
        stop flag makes it leave quietly; only then is the socket closed.
        """
        self._stop_main_loop.set()
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.join(timeout)
        self.hard_disconnect()


POLITE_CLOSE_S = 3.0
"""How long closing waits for the reader to confirm the ROSpec's deletion; one that does not
is counted as ``close_unconfirmed`` and the socket is closed anyway."""


class LlrpRfidCollector:
    """Tag reads from an LLRP reader at ``host:port`` as ``rfid`` samples."""

    def __init__(self, host: str, port: int = DEFAULT_LLRP_PORT, *,
                 antennas: Sequence[int] = (0,), clock: Clock = system_clock,
                 repeat_s: float = 10.0, keepalive_s: float = 10.0,
                 connect_timeout: float = 5.0, handshake_s: float = 15.0,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0) -> None:
        self.host, self.port = host, port
        self.antennas = list(antennas)
        self.keepalive_s = keepalive_s
        self.connect_timeout = connect_timeout
        self.handshake_s = handshake_s
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.stats: Counter[str] = Counter()
        self.scans = ScanFilter(clock, repeat_s, self.stats, self.where)
        self._lock = threading.Lock()
        self._reads: queue.Queue[TagRead] = queue.Queue(MAX_QUEUED)
        self._errors: queue.Queue[CollectorError] = queue.Queue()
        self._closed = threading.Event()
        self._inventorying = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="llrp-supervisor",
                                        daemon=True)
        self._thread.start()

    @property
    def where(self) -> str:
        return f"llrp://{self.host}:{self.port}"

    @property
    def inventorying(self) -> bool:
        """True while a session is up and the reader's ROSpec runs."""
        return self._inventorying.is_set()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n
            if key.startswith("bad:"):
                self.stats["bad_messages"] += n

    def read_available(self) -> list[Sample]:
        """Samples for the tags reported since the last call.

        Raises DeviceUnavailable once per failed connection attempt or lost session (when
        there is nothing to return), and after close().
        """
        if self._closed.is_set():
            raise DeviceUnavailable("closed", self.where, "collector closed")
        out: list[Sample] = []
        while True:
            try:
                epc, rssi, antenna = self._reads.get_nowait()
            except queue.Empty:
                break
            sample = self._sample(epc, rssi, antenna)
            if sample is not None:
                out.append(sample)
        if not out and not self._errors.empty():
            raise self._errors.get_nowait()
        return out

    def close(self, timeout: float = 6.0) -> None:
        """End the session politely (delete the ROSpec, waiting up to POLITE_CLOSE_S for the
        reader's answer), stop reconnecting."""
        self._closed.set()
        self._thread.join(timeout)

    def __enter__(self) -> LlrpRfidCollector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- agent thread ---------------------------------------------------------------------

    def _sample(self, epc: Any, rssi: Any, antenna: Any) -> Sample | None:
        text = epc.decode("ascii", "replace") if isinstance(epc, bytes) else epc
        hex_epc = normalise_hex(text) if isinstance(text, str) else None
        if hex_epc is None:
            self.count("bad:bad_epc")
            log.debug("llrp %s: tag report with EPC %r skipped", self.where, epc)
            return None
        if not (isinstance(rssi, int) and -120 <= rssi <= 0):
            if rssi is not None:
                self.count("bad_rssi")
            rssi = None
        if not (isinstance(antenna, int) and 1 <= antenna <= 64):
            if antenna is not None:
                self.count("bad_antenna")
            antenna = None
        with self._lock:
            return self.scans.sample(hex_epc, None if rssi is None else float(rssi), antenna)

    # -- sllurp's thread ------------------------------------------------------------------

    def _on_tags(self, session: _Session, tags: list[dict[str, Any]]) -> None:
        for tag in tags:
            read = (tag.get("EPC", tag.get("EPC-96")), tag.get("PeakRSSI"),
                    tag.get("AntennaID"))
            try:
                self._reads.put_nowait(read)
            except queue.Full:
                self.count("dropped")
        self.count("tags_reported", len(tags))

    def _on_state(self, session: _Session, state: int) -> None:
        if state == LLRPReaderState.STATE_INVENTORYING:
            self._inventorying.set()
            log.info("%s: inventorying antennas %s", self.where, self.antennas)

    # -- supervisor thread ----------------------------------------------------------------

    def _supervise(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                session = self._connect()
                if session is not None:
                    if self._watch(session):
                        failures = 0
                    if self._closed.is_set():
                        break
            except Exception:  # never let the supervisor die: log, back off, try again
                self.count("supervisor_errors")
                log.exception("%s: unexpected error in the LLRP session", self.where)
            failures += 1
            delay = min(self.backoff_max, self.backoff_initial * 2 ** (failures - 1))
            self._closed.wait(delay)

    def _config(self) -> Any:
        return LLRPReaderConfig({
            "antennas": self.antennas, "tx_power": 0, "report_every_n_tags": 1,
            "start_inventory": True, "reset_on_connect": True, "reconnect": False,
            "keepalive_interval": int(self.keepalive_s * 1000),
            "tag_content_selector": dict(_CONTENT),
        })

    def _connect(self) -> _Session | None:
        session = _Session(self, self.host, self.port, self._config(),
                           timeout=self.connect_timeout)
        session.add_tag_report_callback(self._on_tags)
        session.add_state_callback(LLRPReaderState.STATE_INVENTORYING, self._on_state)
        try:
            session.connect()
        except OSError as exc:
            self.count("connect_failures")
            self._errors.put(DeviceUnavailable("connect_failed", self.where, str(exc)))
            return None
        self.count("connects")
        return session

    def _watch(self, session: _Session) -> bool:
        """Until the session ends; True if it got as far as inventorying."""
        silence = 3 * self.keepalive_s
        started = time.monotonic()
        why = ""
        while not self._closed.wait(0.05):
            if not session.is_alive():
                why = "the reader closed the session"
                break
            if time.monotonic() - session.last_heard > silence:
                self.count("silent_sessions")
                why = f"nothing from the reader for {silence:g}s"
                break
            if not self._inventorying.is_set() and time.monotonic() - started > self.handshake_s:
                self.count("stalled_handshakes")
                why = f"not inventorying {self.handshake_s:g}s after connecting"
                break
        inventoried = self._inventorying.is_set()
        self._inventorying.clear()
        if self._closed.is_set():
            confirmed = False
            if session.is_alive():
                with contextlib.suppress(Exception):  # best effort: the reader may be gone
                    confirmed = session.polite_close(POLITE_CLOSE_S)
            if not confirmed:
                self.count("close_unconfirmed")
            session.end()
            return inventoried
        session.end()
        self.count("disconnects")
        log.warning("%s: session lost: %s; reconnecting", self.where, why)
        self._errors.put(DeviceUnavailable("session_lost", self.where, why))
        return inventoried
