"""Helpers for tests of MQTT over TLS with the real Mosquitto: TLS material from a SoftHSM rig's
fleet CA (hsm.tlsfiles), a TLS broker with its ACL (trustfleet.broker), and a small MQTT 5
client that reports the broker's reason codes (CONNACK, PUBACK, SUBACK)."""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion

from hsm import FleetCA, SoftHsmRig, SoftwareSigner, make_csr
from hsm.tlsfiles import TlsFiles, TlsIdentity, broker_identity, ensure_tls_files
from hsm.x509 import der_to_pem
from trustfleet.broker import BrokerTls, client_tls_context, start_broker
from trustfleet.procs import free_port

WAIT_S = 15.0  # an upper bound for a broker answer on loopback, never a measured duration


@dataclass
class TlsMaterial:
    rig: SoftHsmRig
    files: dict[str, TlsFiles]  # subject id -> files; the broker's under "mqtt-broker"

    @property
    def broker(self) -> TlsFiles:
        return self.files["mqtt-broker"]

    @property
    def ca(self) -> Path:
        return self.broker.ca


def make_material(root: Path, devices: list[str], nodes: list[str]) -> TlsMaterial:
    rig = SoftHsmRig(root / "rig")
    identities = [broker_identity(root / "broker-tls"),
                  *(TlsIdentity(n, "node", root / "tls" / n) for n in nodes),
                  *(TlsIdentity(d, "device", root / "tls" / d) for d in devices)]
    return TlsMaterial(rig, ensure_tls_files(rig, identities))


@dataclass
class TlsBroker:
    proc: subprocess.Popen[bytes]
    port: int
    directory: Path


def start_tls_broker(directory: Path, material: TlsMaterial, devices: dict[str, list[str]],
                     nodes: list[str]) -> TlsBroker:
    port = free_port()
    own = material.broker
    tls = BrokerTls(own.ca, own.cert, own.key,
                    devices={f: tuple(d) for f, d in devices.items()}, nodes=tuple(nodes))
    proc = start_broker(directory, port, directory / "mosquitto.log", tls=tls)
    return TlsBroker(proc, port, directory)


def foreign_identity(directory: Path, subject_id: str) -> TlsFiles:
    """A device certificate for `subject_id` from ANOTHER CA (same policy, other key)."""
    ca = FleetCA()
    ca_signer = SoftwareSigner.generate()
    t0 = 1_700_000_000_000
    t1 = 4_000_000_000_000
    ca_cert = ca.create_ca_certificate(ca_signer, "Some Other CA", t0, t1)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue(ca_signer, ca_cert, make_csr(SoftwareSigner(key), subject_id), "device",
                    t0, t1, 7)
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "other-ca.pem", directory / f"{subject_id}.pem",
                     directory / f"{subject_id}.key")
    files.ca.write_text(der_to_pem(ca_cert))
    files.cert.write_text(der_to_pem(cert))
    files.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                            serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()))
    files.key.chmod(0o600)
    return files


MQTT5_CONNECT = bytes.fromhex("100e00044d5154540502003c00000178")  # client id "x", clean start


def raw_connect(port: int, ctx: ssl.SSLContext, host: str = "127.0.0.1") -> str:
    """One TLS handshake and MQTT 5 CONNECT: "connack" if the broker answers with a CONNACK,
    else what ended it ("eof", or the SSL error's reason, e.g. TLSV1_ALERT_UNKNOWN_CA)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                # With TLS 1.3 the server judges our certificate after the handshake; its
                # alert may already have arrived, making the send fail: read it anyway.
                with contextlib.suppress(ssl.SSLError, OSError):
                    tls.sendall(MQTT5_CONNECT)
                first = tls.recv(1)
        except ssl.SSLError as exc:
            return str(exc.reason) if exc.reason else repr(exc)
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
    if not first:
        return "eof"
    return "connack" if first[0] >> 4 == 2 else f"packet type {first[0] >> 4}"


class TlsClient:
    """An MQTT 5 client over TLS that records reason codes; thread-safe enough for tests."""

    __test__ = False

    def __init__(self, port: int, files: TlsFiles, client_id: str = "",
                 host: str = "127.0.0.1") -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._lock = threading.Condition()
        self._pubacks: dict[int, str] = {}
        self._subacks: dict[int, list[str]] = {}
        self.connack: str | None = None
        self.disconnects: list[str] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set_context(client_tls_context(files.ca, files.cert, files.key))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(host, port)
        self.client.loop_start()
        with self._lock:
            if not self._lock.wait_for(lambda: self.connack is not None, WAIT_S):
                raise TimeoutError("no CONNACK from the TLS broker")
        if self.connack != "Success":
            raise ConnectionError(f"broker refused the connection: {self.connack}")

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._lock:
            self.connack = str(reason)
            self._lock.notify_all()

    def _on_disconnect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._lock:
            self.disconnects.append(str(reason))
            self._lock.notify_all()

    def _on_publish(self, c: Any, u: Any, mid: int, reason: Any, props: Any) -> None:
        with self._lock:
            self._pubacks[mid] = str(reason)
            self._lock.notify_all()

    def _on_subscribe(self, c: Any, u: Any, mid: int, reasons: Any, props: Any) -> None:
        with self._lock:
            self._subacks[mid] = [str(r) for r in reasons]
            self._lock.notify_all()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> str:
        """Publish with QoS 1; the PUBACK's reason ("Success", "Not authorized", ...)."""
        # Not under self._lock: paho calls on_publish holding its own lock, which publish()
        # takes too. A PUBACK recorded before we wait is found by wait_for's first check.
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._lock:
            if not self._lock.wait_for(lambda: info.mid in self._pubacks, WAIT_S):
                raise TimeoutError(f"no PUBACK for {topic}")
            return self._pubacks.pop(info.mid)

    def subscribe(self, topic: str) -> str:
        """Subscribe with QoS 1; the SUBACK's reason ("Granted QoS 1", "Not authorized")."""
        rc, mid = self.client.subscribe(topic, qos=1)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionError(f"cannot subscribe to {topic}: {mqtt.error_string(rc)}")
        with self._lock:
            if not self._lock.wait_for(lambda: mid in self._subacks, WAIT_S):
                raise TimeoutError(f"no SUBACK for {topic}")
            return self._subacks.pop(mid)[0]

    def next_message(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=WAIT_S)

    def messages_until(self, payload: bytes) -> list[mqtt.MQTTMessage]:
        """Every message received up to and including the first whose payload is `payload`."""
        got = []
        while True:
            msg = self.next_message()
            got.append(msg)
            if msg.payload == payload:
                return got

    @property
    def connected(self) -> bool:
        return bool(self.client.is_connected())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> TlsClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
