"""The TLS broker's access control, against the real Mosquitto (trustfleet.broker, TLS mode).

Who a client is comes from its certificate only (CN = device or node id, fleet CA); what it may
do is the generated dynamic-security ACL. Refusals are read from the broker's own answers
(TLS alerts, PUBACK / SUBACK reason codes), and "nothing arrived" is checked with a barrier:
a later message from the same publisher, which MQTT delivers after the earlier ones.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tlskit import (
    TlsBroker,
    TlsClient,
    TlsMaterial,
    foreign_identity,
    make_material,
    raw_connect,
    start_tls_broker,
)
from trustfleet.broker import client_tls_context
from trustfleet.procs import stop_process

FLEET = "test"
DEVICES = ["truck-a", "truck-b"]
NODES = ["node-1", "node-2"]
UP_A, UP_B = f"tf/v1/{FLEET}/truck-a/up", f"tf/v1/{FLEET}/truck-b/up"
RECEIPT_A, RECEIPT_B = f"tf/v1/{FLEET}/truck-a/receipt", f"tf/v1/{FLEET}/truck-b/receipt"
SHARED_UP = "$share/ledger/tf/v1/+/+/up"
GRANTED = "Granted QoS 1"
DENIED = "Not authorized"
DELIVERED = ("Success", "No matching subscribers")


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    # "stranger" holds a valid fleet-CA device certificate but is not in the broker's ACL.
    return make_material(tmp_path_factory.mktemp("tls"), [*DEVICES, "stranger"], NODES)


@pytest.fixture
def broker(tmp_path: Path, material: TlsMaterial) -> Iterator[TlsBroker]:
    b = start_tls_broker(tmp_path / "broker", material, {FLEET: DEVICES}, NODES)
    yield b
    stop_process(b.proc)


def client(broker: TlsBroker, material: TlsMaterial, name: str, client_id: str = ""
           ) -> TlsClient:
    return TlsClient(broker.port, material.files[name], client_id=client_id)


def test_a_device_with_a_fleet_certificate_publishes_to_its_topic_and_the_node_receives_it(
        broker: TlsBroker, material: TlsMaterial) -> None:
    with client(broker, material, "node-1") as node, client(broker, material, "truck-a") as a:
        assert node.subscribe(SHARED_UP) == GRANTED
        assert a.publish(UP_A, b"reading") == "Success"
        msg = node.next_message()
        assert (msg.topic, msg.payload) == (UP_A, b"reading")


def test_a_client_without_a_certificate_is_refused_in_the_handshake(
        broker: TlsBroker, material: TlsMaterial) -> None:
    anonymous = client_tls_context(material.ca)  # trusts the broker, shows no certificate
    assert raw_connect(broker.port, anonymous) == "TLSV13_ALERT_CERTIFICATE_REQUIRED"


def test_a_certificate_from_another_ca_is_refused_even_for_a_known_device_id(
        broker: TlsBroker, material: TlsMaterial, tmp_path: Path) -> None:
    other = foreign_identity(tmp_path / "other", "truck-a")
    ctx = client_tls_context(material.ca, other.cert, other.key)
    assert raw_connect(broker.port, ctx) == "TLSV1_ALERT_UNKNOWN_CA"
    good = material.files["truck-a"]
    assert raw_connect(broker.port, client_tls_context(material.ca, good.cert, good.key)
                       ) == "connack"


def test_clients_check_the_brokers_certificate_chain_and_name(
        broker: TlsBroker, material: TlsMaterial, tmp_path: Path) -> None:
    mine = material.files["truck-a"]
    ctx = client_tls_context(material.ca, mine.cert, mine.key)
    assert raw_connect(broker.port, ctx, host="localhost") == "connack"  # DNS name in its SAN
    assert raw_connect(broker.port, ctx, host="mqtt.example.org") == "CERTIFICATE_VERIFY_FAILED"
    other = foreign_identity(tmp_path / "other", "truck-a")
    wrong_anchor = client_tls_context(other.ca, mine.cert, mine.key)
    assert raw_connect(broker.port, wrong_anchor) == "CERTIFICATE_VERIFY_FAILED"


def test_a_device_cannot_publish_as_another_device_and_nobody_receives_the_forgery(
        broker: TlsBroker, material: TlsMaterial) -> None:
    with client(broker, material, "node-2") as observer, \
            client(broker, material, "truck-a") as a:
        assert observer.subscribe("tf/v1/+/+/up") == GRANTED
        assert a.publish(UP_B, b"forged") == DENIED
        assert a.publish("tf/v1/other-fleet/truck-a/up", b"forged") == DENIED
        assert a.publish(RECEIPT_A, b"forged receipt") == DENIED
        assert a.publish(f"tf/v1/{FLEET}/events/alarm", b"forged event") == DENIED
        assert a.publish(UP_A, b"barrier") == "Success"
        got = observer.messages_until(b"barrier")
        assert [(m.topic, m.payload) for m in got] == [(UP_A, b"barrier")]


def test_a_device_cannot_subscribe_to_another_devices_receipts(
        broker: TlsBroker, material: TlsMaterial) -> None:
    with client(broker, material, "node-1") as node:
        assert node.publish(RECEIPT_A, b"receipt for a", retain=True) in DELIVERED
        assert node.publish(RECEIPT_B, b"receipt for b", retain=True) in DELIVERED
        with client(broker, material, "truck-b") as b:
            for other in (RECEIPT_A, f"tf/v1/{FLEET}/+/receipt", "tf/v1/#", "#",
                          f"$share/g/{RECEIPT_A}"):
                assert b.subscribe(other) == DENIED, other
            assert b.subscribe(RECEIPT_B) == GRANTED
            assert b.next_message().payload == b"receipt for b"  # its own, retained
            assert node.publish(RECEIPT_A, b"again for a") in DELIVERED
            assert node.publish(RECEIPT_B, b"barrier") == "Success"
            got = b.messages_until(b"barrier")
            assert [(m.topic, m.payload) for m in got] == [(RECEIPT_B, b"barrier")]


def test_only_nodes_join_the_ledgers_shared_subscription(
        broker: TlsBroker, material: TlsMaterial) -> None:
    # Were a device let in, the broker would hand it a share of the readings and then drop
    # them for lack of read access (Mosquitto's acl_file never checks a SUBSCRIBE).
    with client(broker, material, "node-1") as node, client(broker, material, "truck-b") as b, \
            client(broker, material, "truck-a") as a:
        assert b.subscribe(SHARED_UP) == DENIED
        assert b.subscribe("$share/ledger/tf/v1/test/+/up") == DENIED
        assert node.subscribe(SHARED_UP) == GRANTED
        sent = [f"reading {i}".encode() for i in range(10)]
        for payload in sent:
            assert a.publish(UP_A, payload) == "Success"
        assert [node.next_message().payload for _ in sent] == sent


def test_the_node_sends_receipts_and_events_but_cannot_forge_readings(
        broker: TlsBroker, material: TlsMaterial) -> None:
    with client(broker, material, "node-1") as node:
        assert node.publish(RECEIPT_A, b"receipt") in DELIVERED
        assert node.publish(f"tf/v1/{FLEET}/events/excursion", b"event") in DELIVERED
        assert node.publish(UP_A, b"forged reading") == DENIED
        assert node.subscribe("#") == DENIED


def test_a_fleet_certificate_missing_from_the_acl_can_do_nothing(
        broker: TlsBroker, material: TlsMaterial) -> None:
    with client(broker, material, "stranger") as s:
        assert s.publish(f"tf/v1/{FLEET}/stranger/up", b"hello") == DENIED
        assert s.subscribe(f"tf/v1/{FLEET}/stranger/receipt") == DENIED


def test_a_client_id_cannot_be_used_to_take_over_another_clients_session(
        broker: TlsBroker, material: TlsMaterial) -> None:
    # The broker replaces every client id by the certificate's CN, so a device reusing the
    # node's (or another device's) client id neither kicks it off nor inherits its session.
    with client(broker, material, "node-1", client_id="node-1") as node, \
            client(broker, material, "truck-b", client_id="dev-truck-b") as b:
        assert node.subscribe(SHARED_UP) == GRANTED
        for stolen in ("node-1", "dev-truck-b"):
            with client(broker, material, "truck-a", client_id=stolen) as a:
                assert a.publish(UP_A, stolen.encode()) == "Success"
                # Had the broker taken the id, it would have closed the victim's connection
                # before answering this publish, and the node could not receive it first.
                assert node.next_message().payload == stolen.encode()
        assert node.disconnects == [] and b.disconnects == []
        assert b.publish(UP_B, b"still here") == "Success"


def test_the_tls_listener_speaks_no_plaintext(broker: TlsBroker) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", broker.port), timeout=15) as raw:
        raw.sendall(bytes.fromhex("100e00044d5154540502003c00000178"))  # a plain CONNECT
        try:
            answer = raw.recv(1)
        except ConnectionResetError:
            answer = b""
        assert answer in (b"", b"\x15")  # closed, or a TLS alert record: never a CONNACK


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_are_accepted(broker: TlsBroker, material: TlsMaterial,
                                      version: ssl.TLSVersion) -> None:
    mine = material.files["truck-a"]
    ctx = client_tls_context(material.ca, mine.cert, mine.key)
    ctx.minimum_version = ctx.maximum_version = version
    assert raw_connect(broker.port, ctx) == "connack"
