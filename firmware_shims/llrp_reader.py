"""A fixed UHF RFID reader speaking LLRP 1.0.1 on a loopback TCP port (default: a free one).

Enough of a reader for sllurp's client and the agent's ``LlrpRfidCollector``:

- on connect: READER_EVENT_NOTIFICATION with a ConnectionAttemptEvent (Success; a second
  client while one is connected gets "a Client initiated connection already exists" and is
  closed, as readers do);
- GET_READER_CAPABILITIES (antennas, a power table, a hop table, one C1G2 RF mode),
  GET_READER_CONFIG, SET_READER_CONFIG (its KeepaliveSpec is obeyed: KEEPALIVE every
  period, KEEPALIVE_ACKs counted), ENABLE_EVENTS_AND_REPORTS;
- ADD / ENABLE / START / STOP / DISABLE / DELETE ROSpec with a state per ROSpec: a ROSpec
  with an Immediate start trigger runs once enabled, others once started; DELETE_ROSPEC 0
  deletes all; the AccessSpec messages are acknowledged; CLOSE_CONNECTION answered;
- while a ROSpec runs, tags put in the field with :meth:`scan` are reported in
  RO_ACCESS_REPORTs: one TagReportData each, EPC-96 (or EPCData for other lengths) plus
  exactly the fields the ROSpec's TagReportContentSelector enabled (ROSpecID, AntennaID,
  PeakRSSI, LastSeenTimestampUTC, TagSeenCount). Tags scanned while nothing runs stay in
  the field until a ROSpec runs;
- any other message type gets an ERROR_MESSAGE (UnsupportedMessage), another version
  UnsupportedVersion, a body it cannot walk a FieldError.

Faults for tests, callable from any thread: :meth:`inject` (raw bytes to the client),
:meth:`drop` (the connection cut, as a reader reboot), :meth:`mute` (the reader hangs for a
while — the connection stays open, nothing is read or sent, new clients are refused — and
then its watchdog reboots it, which cuts the connection).
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import struct
import threading
import time
from collections import Counter
from types import TracebackType

from firmware_shims import llrp_codec as codec
from firmware_shims.llrp_codec import MSG, LlrpFormatError, ROSpecInfo, TagRead

__all__ = ["LlrpReaderShim"]

MAX_MESSAGE_BYTES = 1 << 20
_ACK_ONLY = {MSG["ADD_ACCESSSPEC"]: MSG["ADD_ACCESSSPEC_RESPONSE"],
             MSG["DELETE_ACCESSSPEC"]: MSG["DELETE_ACCESSSPEC_RESPONSE"],
             MSG["ENABLE_ACCESSSPEC"]: MSG["ENABLE_ACCESSSPEC_RESPONSE"],
             MSG["DISABLE_ACCESSSPEC"]: MSG["DISABLE_ACCESSSPEC_RESPONSE"]}


def _utc_us() -> int:
    return time.time_ns() // 1000


class _Rospec:
    def __init__(self, info: ROSpecInfo) -> None:
        self.info = info
        self.state = "disabled"  # -> inactive (enabled) -> active (running)


class LlrpReaderShim:
    """An LLRP reader endpoint. Use as a context manager or call start()/stop()."""

    def __init__(self, *, port: int = 0, antennas: int = 4, model: str = "TF-LLRP-1",
                 tick_s: float = 0.02) -> None:
        self.antennas = antennas
        self.model = model
        self.tick_s = tick_s
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._field: queue.Queue[TagRead] = queue.Queue()
        self._inject: queue.Queue[bytes] = queue.Queue()
        self._drop = threading.Event()
        self._mute = threading.Event()
        self._mute_until = 0.0
        self._stop = threading.Event()
        self._server = socket.create_server(("127.0.0.1", port))
        self.port: int = self._server.getsockname()[1]
        self._thread: threading.Thread | None = None
        self._busy = threading.Event()  # a client is connected
        self._rospecs: dict[int, _Rospec] = {}
        self._keepalive_ms = 0
        self._msg_id = 0

    # -- control (any thread) -------------------------------------------------------------

    def scan(self, epc: str | bytes, *, antenna: int = 1, rssi: int = -55, count: int = 1) -> None:
        """A tag enters the field: a URI is encoded to its 96-bit EPC, hex is taken as is."""
        if isinstance(epc, str):
            if epc.startswith("urn:"):
                from firmware_shims.rfid_reader import epc_hex

                epc = epc_hex(epc)
            epc = bytes.fromhex(epc)
        self._field.put(TagRead(epc, antenna, rssi, count))

    def inject(self, raw: bytes) -> None:
        self._inject.put(bytes(raw))

    def drop(self) -> None:
        """Cut the current connection (a reader reboot)."""
        self._drop.set()

    def mute(self, for_s: float) -> None:
        """Hang for ``for_s`` seconds (nothing read or sent, socket left open), then reboot."""
        self._mute_until = time.monotonic() + for_s
        self._mute.set()

    @property
    def connected(self) -> bool:
        return self._busy.is_set()

    @property
    def inventorying(self) -> bool:
        with self._lock:
            return any(r.state == "active" for r in self._rospecs.values())

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> LlrpReaderShim:
        self._server.listen(4)
        self._thread = threading.Thread(target=self._accept_loop, name="llrp-reader-shim",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._server.close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> LlrpReaderShim:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- server ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._server], [], [], self.tick_s * 5)
            if not ready:
                continue
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            if self._busy.is_set():
                self.stats["refused"] += 1
                with contextlib.suppress(OSError), conn:
                    conn.sendall(codec.connection_event(self._next_id(), _utc_us(), status=2))
                continue
            self._busy.set()
            threading.Thread(target=self._serve, args=(conn,), name="llrp-reader-conn",
                             daemon=True).start()

    def _next_id(self) -> int:
        self._msg_id = self._msg_id % 0xFFFFFFFF + 1
        return self._msg_id

    def _serve(self, conn: socket.socket) -> None:
        self.stats["connections"] += 1
        self._drop.clear()
        self._mute.clear()
        with self._lock:
            self._rospecs.clear()  # a new session: the reader was reset
        self._keepalive_ms = 0
        rx = bytearray()
        next_keepalive = float("inf")
        try:
            conn.sendall(codec.connection_event(self._next_id(), _utc_us()))
            while not self._stop.is_set() and not self._drop.is_set():
                if self._mute.is_set():
                    if time.monotonic() >= self._mute_until:
                        self.stats["reboots"] += 1
                        break
                    self.stats["muted_ticks"] += 1
                    time.sleep(self.tick_s)
                    continue
                ready, _, _ = select.select([conn], [], [], self.tick_s)
                if ready:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    rx += chunk
                    for frame in self._frames(rx):
                        for reply in self._handle(frame):
                            conn.sendall(reply)
                        if frame[:2] and codec.parse_header(frame)[1] == MSG["CLOSE_CONNECTION"]:
                            return
                    if self._keepalive_ms and next_keepalive == float("inf"):
                        next_keepalive = time.monotonic() + self._keepalive_ms / 1000
                while not self._inject.empty():
                    conn.sendall(self._inject.get_nowait())
                if self.inventorying and not self._field.empty():
                    conn.sendall(self._report())
                if self._keepalive_ms and time.monotonic() >= next_keepalive:
                    conn.sendall(codec.keepalive(self._next_id()))
                    self.stats["keepalives"] += 1
                    next_keepalive = time.monotonic() + self._keepalive_ms / 1000
        except OSError:
            self.stats["connection_errors"] += 1
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            with self._lock:
                self._rospecs.clear()
            self._busy.clear()

    def _frames(self, rx: bytearray) -> list[bytes]:
        frames = []
        while len(rx) >= codec.HEADER.size:
            _, _, length, _ = codec.parse_header(bytes(rx[:codec.HEADER.size]))
            if not codec.HEADER.size <= length <= MAX_MESSAGE_BYTES:
                self.stats["bad_frames"] += 1
                raise OSError(f"message length {length}: framing lost")
            if len(rx) < length:
                break
            frames.append(bytes(rx[:length]))
            del rx[:length]
        return frames

    def _report(self) -> bytes:
        with self._lock:
            running = [r.info for r in self._rospecs.values() if r.state == "active"]
        info = running[0]
        tags = []
        while not self._field.empty():
            tag = self._field.get_nowait()
            if info.antennas in ((), (0,)) or tag.antenna in info.antennas:
                tags.append(tag)
            else:
                self.stats["tags_on_other_antennas"] += 1
        self.stats["tags_reported"] += len(tags)
        self.stats["reports"] += 1
        return codec.ro_access_report(self._next_id(), tags, selector=info.selector,
                                      rospec_id=info.rospec_id, utc_us=_utc_us())

    def _handle(self, frame: bytes) -> list[bytes]:
        version, msg_type, _, msg_id = codec.parse_header(frame)
        name = codec.MSG_NAME.get(msg_type, f"type-{msg_type}")
        self.stats[f"rx:{name}"] += 1
        body = frame[codec.HEADER.size:]
        if version != codec.VERSION:
            return [codec.error_message(msg_id, "UnsupportedVersion", f"version {version}")]
        try:
            return self._dispatch(msg_type, msg_id, body)
        except (LlrpFormatError, struct.error) as err:
            self.stats["bad_messages"] += 1
            response = {MSG["ADD_ROSPEC"]: MSG["ADD_ROSPEC_RESPONSE"],
                        MSG["SET_READER_CONFIG"]: MSG["SET_READER_CONFIG_RESPONSE"]}
            if msg_type in response:
                return [codec.status_response(response[msg_type], msg_id, "FieldError",
                                              str(err))]
            return [codec.error_message(msg_id, "FieldError", str(err))]

    def _dispatch(self, msg_type: int, msg_id: int, body: bytes) -> list[bytes]:
        if msg_type == MSG["GET_READER_CAPABILITIES"]:
            return [codec.capabilities_response(msg_id, antennas=self.antennas,
                                                model=self.model,
                                                power_dbm=[10.0 + 0.25 * i for i in range(81)])]
        if msg_type == MSG["GET_READER_CONFIG"]:
            return [codec.reader_config_response(msg_id, antennas=self.antennas,
                                                 keepalive_ms=self._keepalive_ms)]
        if msg_type == MSG["SET_READER_CONFIG"]:
            period = codec.parse_keepalive_spec(body)
            if period is not None:
                self._keepalive_ms = period
            return [codec.status_response(MSG["SET_READER_CONFIG_RESPONSE"], msg_id)]
        if msg_type in (MSG["ENABLE_EVENTS_AND_REPORTS"], MSG["KEEPALIVE_ACK"]):
            return []
        if msg_type in _ACK_ONLY:
            return [codec.status_response(_ACK_ONLY[msg_type], msg_id)]
        if msg_type == MSG["CLOSE_CONNECTION"]:
            return [codec.status_response(MSG["CLOSE_CONNECTION_RESPONSE"], msg_id)]
        if msg_type == MSG["ADD_ROSPEC"]:
            info = codec.parse_rospec(body)
            with self._lock:
                if info.rospec_id == 0 or info.rospec_id in self._rospecs:
                    return [codec.status_response(MSG["ADD_ROSPEC_RESPONSE"], msg_id,
                                                  "FieldError", "ROSpecID in use or 0")]
                self._rospecs[info.rospec_id] = _Rospec(info)
            return [codec.status_response(MSG["ADD_ROSPEC_RESPONSE"], msg_id)]
        transitions = {
            MSG["ENABLE_ROSPEC"]: MSG["ENABLE_ROSPEC_RESPONSE"],
            MSG["START_ROSPEC"]: MSG["START_ROSPEC_RESPONSE"],
            MSG["STOP_ROSPEC"]: MSG["STOP_ROSPEC_RESPONSE"],
            MSG["DISABLE_ROSPEC"]: MSG["DISABLE_ROSPEC_RESPONSE"],
            MSG["DELETE_ROSPEC"]: MSG["DELETE_ROSPEC_RESPONSE"],
        }
        if msg_type in transitions:
            if len(body) < 4:
                raise LlrpFormatError("ROSpecID missing")
            ok = self._rospec_command(msg_type, struct.unpack_from("!I", body)[0])
            return [codec.status_response(transitions[msg_type], msg_id,
                                          "Success" if ok else "A_Invalid",
                                          "" if ok else "no such ROSpec in that state")]
        return [codec.error_message(msg_id, "UnsupportedMessage", f"message type {msg_type}")]

    def _rospec_command(self, msg_type: int, rospec_id: int) -> bool:
        with self._lock:
            if msg_type == MSG["DELETE_ROSPEC"]:
                if rospec_id == 0:
                    self._rospecs.clear()
                    return True
                return self._rospecs.pop(rospec_id, None) is not None
            targets = (list(self._rospecs.values()) if rospec_id == 0
                       else [self._rospecs[rospec_id]] if rospec_id in self._rospecs else [])
            if not targets:
                return False
            for spec in targets:
                if msg_type == MSG["ENABLE_ROSPEC"] and spec.state == "disabled":
                    spec.state = "active" if spec.info.immediate else "inactive"
                elif msg_type == MSG["START_ROSPEC"]:
                    if spec.state == "disabled":
                        return False
                    spec.state = "active"
                elif msg_type == MSG["STOP_ROSPEC"] and spec.state == "active":
                    spec.state = "inactive"
                elif msg_type == MSG["DISABLE_ROSPEC"]:
                    spec.state = "disabled"
            return True
