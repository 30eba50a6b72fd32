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
* with the batch hook `on_messages` set, every PUBLISH of QoS 0 or 1 without v5
  properties (what devices send) is parsed in that loop, and those of one read are
  delivered in one call, as (topic, payload) pairs in order, so that the receiver does its
  bookkeeping (the node: one inbox lock) once per read rather than once per message; a
  packet paho handles ends the batch first, so the order of all messages is kept. Their
  PUBACKs are queued after the hook returns, exactly when paho would send them, and
  consecutive PUBACKs leave in one `send`. Without the hook every PUBLISH is paho's;
* every other packet (CONNACK, SUBACK, PUBACKs for our receipts, PINGRESP, QoS 2, a
  PUBLISH with properties or a topic that is not UTF-8, ...) is handed to paho's own
  handler, unchanged.

Connecting, TLS, reconnecting, keepalive, subscriptions and publishing are paho's. This
relies on paho 2.x internals (`_sock`, `_in_packet`, `_out_packet`, `_packet_handle`,
`_loop_rc_handle`, the callback mutexes; pyproject allows paho-mqtt >=2.1,<3);
tests/test_mqtt_ingest.py checks it against a real broker, in MQTT 5 and 3.1.1, and
tests/test_ingest_wire.py against stock paho on crafted streams (the packets a broker
rarely sends, any split into reads).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import (
    MQTT_LOG_DEBUG,
    MQTT_LOG_ERR,
    MQTTErrorCode,
)
from paho.mqtt.client import time_func as _time_func
from paho.mqtt.exception import MalformedPacket

PUBLISH = 0x30
PUBACK = 0x40
READ_SIZE = 64 * 1024
PUBACK_WORD = PUBACK << 24 | 2 << 16
"""A PUBACK is 4 bytes: its command, remaining length 2, the message id (big-endian); as
one big-endian 32-bit word, this ORed with the message id."""

MessagesHook = Callable[[list[tuple[str, bytes]]], None]
"""`IngestClient.on_messages`: the plain PUBLISHes of one read, as (topic, payload) in order."""


class IngestClient(mqtt.Client):
    """paho's Client with a faster receive path (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rsock: object = None
        self._filtered = False
        # The batch hook (module doc). Read once per socket read; paho's own handler, which
        # never sees a fast-path PUBLISH, keeps calling `on_message` for the others.
        self.on_messages: MessagesHook | None = None

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
        hook = self.on_messages
        # without the hook, or with per-filter callbacks or manual acks, every PUBLISH is paho's
        plain = hook is not None and not (self._filtered or self._manual_ack)
        props = int(self._protocol == mqtt.MQTTv5)  # a v5 PUBLISH has a property length
        batch: list[tuple[str, bytes]] = []  # for the hook, with the PUBACKs they are owed
        acks: list[int] = []
        try:
            while True:  # every complete packet read so far (at most READ_SIZE more bytes)
                # fixed header: the command byte, then the remaining length in 1 to 4
                # bytes of 7 bits each, the last one without its top bit
                head, length, mult, i, complete = pos, 0, 1, pos + 1, False
                while i < end:
                    byte = buf[i]
                    i += 1
                    length += (byte & 0x7F) * mult
                    if not byte & 0x80:
                        complete = True
                        break
                    if i - pos > 4:
                        if batch:  # what came before the malformed packet, as paho would
                            self._deliver(hook, batch, acks)
                        return self._loop_rc_handle(MQTTErrorCode.MQTT_ERR_PROTOCOL)
                    mult <<= 7
                if not complete or end - i < length:
                    break  # the rest of this packet is still on its way
                command, start, pos = buf[pos], i, i + length
                # A plain PUBLISH (QoS 0 or 1, no v5 properties, a non-empty UTF-8 topic),
                # parsed here rather than in a method: a call per packet would cost as much
                # as the parsing. Anything else goes to paho (below), which handles or
                # rejects it as it would without this class.
                if (command & 0xF0) == PUBLISH and plain and command & 6 != 4 and length >= 2:
                    acked = command & 6  # QoS 1
                    topic_end = start + 2 + (buf[start] << 8 | buf[start + 1])
                    if topic_end > pos:  # a topic longer than the packet: what there is
                        topic_end = pos
                    payload_at = topic_end + 2 if acked else topic_end  # after the message id
                    if payload_at + props <= pos and not (props and buf[payload_at]) \
                            and topic_end > start + 2:
                        try:
                            text = buf[start + 2:topic_end].decode("utf-8")
                        except UnicodeDecodeError:
                            text = ""
                        if text:
                            mid = buf[topic_end] << 8 | buf[topic_end + 1] if acked else 0
                            payload = buf[payload_at + props:pos]
                            batch.append((text, payload))
                            if acked:
                                acks.append(PUBACK_WORD | mid)
                            continue
                if batch:  # delivered before the packet paho handles, to keep the order
                    pos = head  # (if the hook raises, that packet waits for the next read)
                    self._deliver(hook, batch, acks)
                    batch, acks, pos = [], [], i + length
                rc = self._paho_handle(command, buf[start:pos])
                if rc:
                    pos = end
                    return self._loop_rc_handle(rc)
                if self._sock is None:
                    pos = end
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
        finally:
            self._rbuf = buf[pos:]
        if batch:
            self._deliver(hook, batch, acks)
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

    def _deliver(self, hook: MessagesHook | None, batch: list[tuple[str, bytes]],
                 acks: list[int]) -> None:
        """One batch to the hook, then its PUBACKs queued (acknowledged once the hook has the
        messages, as paho acknowledges after on_message). An exception from the hook is
        logged and, unless suppress_exceptions, raised, as paho does for on_message; the
        batch then gets no PUBACKs, so the broker sends its QoS 1 messages again."""
        if hook is None:  # not reached: loop_read collects a batch only for a hook
            return
        with self._in_callback_mutex:
            try:
                hook(batch)
            except Exception as err:
                self._easy_log(MQTT_LOG_ERR, "Caught exception in on_messages: %s", err)
                if not self.suppress_exceptions:
                    raise
        if acks:
            self._queue_pubacks(struct.pack(f">{len(acks)}I", *acks))

    def _queue_pubacks(self, packet: bytes) -> None:
        """Queue `packet`, one PUBACK or several in a row, to be sent."""
        # "mid" is paho's only for a PUBLISH (on_publish); _packet_write joins PUBACKs too
        self._out_packet.append({"command": PUBACK, "mid": 0, "qos": 1, "pos": 0,
                                 "to_process": len(packet), "packet": packet, "info": None})

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
