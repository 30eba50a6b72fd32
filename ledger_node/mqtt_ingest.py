"""The node's MQTT client: paho's, with a receive path that keeps up with a fleet.

A ledger node receives one small PUBLISH per reading, tens of thousands a second. Stock
paho reads each packet with three or more `recv` calls (command byte, length bytes, body),
decodes MQTT v5 properties into a Properties object even when there are none, matches the
topic against per-filter callbacks, and wakes its own loop through a socket pair to send
each PUBACK in its own `send`. That costs about 40 us of interpreter time per message, on
the same interpreter lock as the apply thread.

`IngestClient` changes only how bytes become messages and acknowledgements:

* `loop_read` reads what the socket has (64 KiB at a time) and frames every complete
  packet in it;
* a PUBLISH of QoS 0 or 1 without v5 properties (what devices send) becomes a
  ReceivedMessage (an MQTTMessage with its topic decoded once and no MQTTMessageInfo made
  unless asked for) for `on_message` directly; the PUBACK is queued after the callback
  returns, exactly when paho would send it, and consecutive PUBACKs leave in one `send`;
* every other packet (CONNACK, SUBACK, PUBACKs for our receipts, PINGRESP, QoS 2, a
  PUBLISH with properties or a topic that is not UTF-8, ...) is handed to paho's own
  handler, unchanged.

Connecting, TLS, reconnecting, keepalive, subscriptions and publishing are paho's. This
relies on paho 2.x internals (`_sock`, `_in_packet`, `_out_packet`, `_packet_handle`,
`_loop_rc_handle`, the callback mutexes; pyproject allows paho-mqtt >=2.1,<3);
tests/test_mqtt_ingest.py checks it against a real broker, in MQTT 5 and 3.1.1.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import (
    MQTT_LOG_DEBUG,
    MQTT_LOG_ERR,
    MQTTErrorCode,
    MQTTMessage,
    MQTTMessageInfo,
)
from paho.mqtt.client import time_func as _time_func
from paho.mqtt.exception import MalformedPacket

PUBLISH = 0x30
PUBACK = 0x40
READ_SIZE = 64 * 1024


_INFO_SLOT: Any = MQTTMessage.__dict__["info"]


class ReceivedMessage(MQTTMessage):
    """A PUBLISH as received on the fast path: an MQTTMessage whose topic is decoded once,
    and whose `info` (an MQTTMessageInfo, with a threading.Condition, which only a message
    being sent uses) is made only if asked for. Everything else is paho's."""

    __slots__ = ("_text",)

    def __init__(self, mid: int, topic: bytes, text: str, payload: bytes, qos: int,
                 retain: bool, dup: bool, timestamp: float) -> None:
        # MQTTMessage.__init__'s fields, set once each (no MQTTMessageInfo made here)
        self.timestamp, self.state, self.dup, self.mid = timestamp, mqtt.mqtt_ms_invalid, dup, mid
        self._topic, self._text, self.payload = topic, text, payload
        self.qos, self.retain, self.properties = qos, retain, None

    @property
    def topic(self) -> str:
        return self._text

    @topic.setter
    def topic(self, value: bytes) -> None:
        self._topic, self._text = value, value.decode("utf-8")

    @property
    def info(self) -> MQTTMessageInfo:
        try:
            got: MQTTMessageInfo = _INFO_SLOT.__get__(self, MQTTMessage)
        except AttributeError:
            got = MQTTMessageInfo(self.mid)
            _INFO_SLOT.__set__(self, got)
        return got

    @info.setter
    def info(self, value: MQTTMessageInfo) -> None:
        _INFO_SLOT.__set__(self, value)


class IngestClient(mqtt.Client):
    """paho's Client with a faster receive path (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rsock: object = None
        self._filtered = False

    def message_callback_add(self, sub: str, callback: Any) -> None:
        self._filtered = True  # per-filter callbacks: every PUBLISH goes through paho
        super().message_callback_add(sub, callback)

    # -- reading ---------------------------------------------------------------------------
    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        if self._rsock is not self._sock:  # a new connection: nothing of the old one
            self._rbuf, self._rsock = b"", self._sock
        try:
            data = self._sock_recv(READ_SIZE)
        except BlockingIOError:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        except OSError as err:  # includes ConnectionError, TimeoutError
            self._easy_log(MQTT_LOG_ERR, "failed to receive on socket: %s", err)
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        if not data:
            return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        with self._msgtime_mutex:
            self._last_bytes_received = _time_func()
        buf = self._rbuf + data if self._rbuf else data
        pos, end = 0, len(buf)
        try:
            while True:  # every complete packet read so far (at most READ_SIZE more bytes)
                # fixed header: the command byte, then the remaining length in 1 to 4
                # bytes of 7 bits each, the last one without its top bit
                length, mult, i, complete = 0, 1, pos + 1, False
                while i < end:
                    byte = buf[i]
                    i += 1
                    length += (byte & 0x7F) * mult
                    if not byte & 0x80:
                        complete = True
                        break
                    if i - pos > 4:
                        return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)
                    mult <<= 7
                if not complete or end - i < length:
                    break  # the rest of this packet is still on its way
                command, body = buf[pos], buf[i:i + length]
                pos = i + length
                if (command & 0xF0) == PUBLISH and self._fast_publish(command, body):
                    continue
                rc = self._paho_handle(command, body)
                if rc:
                    pos = end
                    return self._loop_rc_handle(rc)
                if self._sock is None:
                    pos = end
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
        finally:
            self._rbuf = buf[pos:]
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _paho_handle(self, command: int, body: bytes) -> MQTTErrorCode:
        """One packet through paho's own handler, as its `_packet_read` would pass it."""
        self._in_packet = {"command": command, "have_remaining": 1, "remaining_count": [],
                           "remaining_mult": 1, "remaining_length": len(body),
                           "packet": bytearray(body), "to_process": 0, "pos": 0}
        try:
            return self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            self._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [],
                               "remaining_mult": 1, "remaining_length": 0,
                               "packet": bytearray(b""), "to_process": 0, "pos": 0}

    def _fast_publish(self, command: int, body: bytes) -> bool:
        """Deliver a plain QoS 0/1 PUBLISH; False leaves the packet to paho."""
        qos = (command >> 1) & 3
        if qos == 2 or self._filtered or self._manual_ack or len(body) < 2:
            return False
        topic_end = 2 + (body[0] << 8 | body[1])
        pos, mid = topic_end, 0
        if qos:
            if len(body) < pos + 2:
                return False
            mid = body[pos] << 8 | body[pos + 1]
            pos += 2
        if self._protocol == mqtt.MQTTv5:
            if len(body) <= pos or body[pos] != 0:
                return False  # properties (or a topic alias): paho decodes them
            pos += 1
        topic = body[2:topic_end]
        if not topic:
            return False
        try:
            text = topic.decode("utf-8")
        except UnicodeDecodeError:
            return False
        message = ReceivedMessage(mid, topic, text, body[pos:], qos, bool(command & 1),
                                  bool(command & 8), _time_func())
        with self._callback_mutex:
            on_message = self.on_message
        if on_message:
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, message)
                except Exception as err:
                    self._easy_log(MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise
        if qos:  # acknowledged once the callback has it, as paho does
            self._out_packet.append({"command": PUBACK, "mid": mid, "qos": 1, "pos": 0,
                                     "to_process": 4, "info": None,
                                     "packet": bytes((PUBACK, 2, mid >> 8, mid & 0xFF))})
        return True

    # -- writing ---------------------------------------------------------------------------
    def _packet_write(self) -> MQTTErrorCode:
        """paho's, after joining the queued PUBACKs at the head into one packet."""
        out = self._out_packet
        if len(out) > 1 and out[0]["command"] == PUBACK and out[0]["pos"] == 0 \
                and out[1]["command"] == PUBACK:
            parts = []
            while out and out[0]["command"] == PUBACK and out[0]["pos"] == 0:
                parts.append(out.popleft()["packet"])
            joined = b"".join(parts)
            out.appendleft({"command": PUBACK, "mid": 0, "qos": 1, "pos": 0,
                            "to_process": len(joined), "packet": joined, "info": None})
        return super()._packet_write()
